"""Hostile `/ocr` paths against a real sidecar running as the production user (uid 1000).

Shared by `test_hostile_paths.py` (CI size) and `bench/bench_reliability.py` (full size):

- `HostileTree`: a temporary tree owned by uid 1000: the upload base holding no document at all
  (only traps: links out, a hard link out, loops, a FIFO, a socket, device nodes, a text file),
  and beside it `outside/secret.pdf` carrying `SECRET_MARKER`, readable by uid 1000.
- `corpus_paths`: a deterministic corpus (/proc, /dev, traversal in every encoding, long names,
  non-UTF-8 bytes); `hostile_path_strategy`: a hypothesis generator composing the same parts.
- `unprivileged_sidecar`: `python -m sidecar` under `setpriv --reuid 1000`; `StraceAudit`:
  `strace -f -y` on it (every file the process opens while under attack, with its resolved path);
  `audited_attack`: the paths sent under that audit, descriptors compared before and after.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import stat
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from hypothesis import strategies as st

from tests.deploy.sidecar_process import sidecar_env
from tests.fixtures.jobs import make_job
from tests.reliability.processes import RunningSidecar, open_fds, running_sidecar
from tests.server import free_port

PRODUCTION_UID = 1000  # the container's user (Dockerfile)
SECRET_MARKER = b"H5-OUTSIDE-SECRET-MARKER"
REFUSED = frozenset({403, 404, 415})


def privilege_drop_reason() -> str | None:
    """Why the uid-1000 tests cannot run here, or None."""
    if not sys.platform.startswith("linux"):
        return "dropping to uid 1000 with setpriv is Linux-only"
    if os.geteuid() != 0:
        return "dropping privileges to uid 1000 needs root"
    if shutil.which("setpriv") is None:
        return "util-linux `setpriv` is not installed"
    return None


@dataclass
class HostileTree:
    root: Path
    base: Path
    secret: Path
    listener: socket.socket

    def close(self) -> None:
        self.listener.close()
        shutil.rmtree(self.root, ignore_errors=True)


def build_tree() -> HostileTree:
    """The tree under /tmp (pytest's tmp dirs are 0700 root: uid 1000 could not enter them)."""
    root = Path(tempfile.mkdtemp(prefix="hostile-paths-", dir="/tmp"))
    root.chmod(0o755)
    base = root / "base"
    (base / "sub" / "deep").mkdir(parents=True)
    outside = root / "outside"
    outside.mkdir()
    secret = outside / "secret.pdf"
    secret.write_bytes(b"%PDF-1.4\n" + SECRET_MARKER + b"\n%%EOF\n")
    (root / "base2").mkdir()  # a sibling whose name has the base as a string prefix
    (root / "base2" / "doc.pdf").write_bytes(secret.read_bytes())
    (base / "notes.txt").write_bytes(b"inside, but not a document\n")
    os.symlink(outside, base / "link_out_dir")
    os.symlink(secret, base / "link_out_file")
    os.symlink("/etc/passwd", base / "link_etc")
    os.symlink("/proc/1/root", base / "link_proc_root")
    os.symlink("/proc/self/fd", base / "link_self_fd")
    os.symlink("../../..", base / "sub" / "deep" / "up3")
    os.symlink("loop_b", base / "loop_a")
    os.symlink("loop_a", base / "loop_b")
    os.symlink("self_loop", base / "self_loop")
    os.link(secret, base / "hard_out.pdf")
    os.mkfifo(base / "fifo.pdf")
    os.mknod(base / "zero.pdf", stat.S_IFCHR | 0o666, os.makedev(1, 5))  # /dev/zero's numbers
    os.mknod(base / "null.pdf", stat.S_IFCHR | 0o666, os.makedev(1, 3))  # /dev/null's
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(base / "sock.pdf"))
    listener.listen(1)
    for path in [root, *root.rglob("*")]:
        os.chown(path, PRODUCTION_UID, PRODUCTION_UID, follow_symlinks=False)
    base.chmod(0o700)
    return HostileTree(root, base, secret, listener)


BASE_ENTRIES = [
    "notes.txt", "sub", "sub/deep", "link_out_dir", "link_out_dir/secret.pdf", "link_out_file",
    "link_etc", "link_proc_root/etc/passwd", "link_self_fd/0", "link_self_fd/3",
    "sub/deep/up3/outside/secret.pdf", "loop_a", "loop_b/x.pdf", "self_loop", "hard_out.pdf",
    "fifo.pdf", "zero.pdf", "null.pdf", "sock.pdf", "missing.pdf", ".", "sub/..",
]  # fmt: skip
TRAVERSALS = [
    "../", "..%2f", "%2e%2e/", "%2e%2e%2f", "%252e%252e%252f", "..%5c", "..\\", "%c0%ae%c0%ae/",
    "..%c0%af", "..%ef%bc%8f", "\uff0e\uff0e/", "....//", ".%2e/", "%2e./", "..;/", "../" * 8,
]  # fmt: skip
TARGETS = [
    "outside/secret.pdf", "base2/doc.pdf", "etc/passwd", "etc/shadow", "proc/self/environ",
    "proc/1/root/etc/passwd", "dev/zero",
]  # fmt: skip
ODD_NAMES = [
    "a" * 255 + ".pdf", "a" * 256 + ".pdf", "a" * 4096, "b/" * 2048, "%ff%fe.pdf", "%c3%28.pdf",
    "%80%80", "\udcff\udcfe.pdf", "\ud800.pdf", "doc.pdf\x00.png", "%00", "%2500", " ", "\n",
    "\t../x", "~/x", "~root/.ssh/id_rsa", "//etc/passwd", "\\\\server\\share\\x.pdf",
    "C:\\Windows\\win.ini", "file:///etc/passwd", "%2fetc%2fpasswd", "%252fetc%252fpasswd",
]  # fmt: skip
PROC_LEAVES = [
    "root/etc/passwd", "root", "cwd", "cwd/x.pdf", "environ", "cmdline", "maps", "mem",
    "fd/0", "fd/1", "fd/2", "fd/3", "fd/5", "fd/8", "fd/13", "fdinfo/3", "exe", "mounts",
    "task/1/root/etc/passwd", "map_files", "net/tcp", "auxv", "stack",
]  # fmt: skip
DEVICES = [
    "/dev/zero", "/dev/null", "/dev/random", "/dev/urandom", "/dev/tty", "/dev/stdin",
    "/dev/fd/0", "/dev/fd/3", "/dev/shm", "/dev/kmsg", "/dev/full", "/dev/mem", "/dev/port",
    "/sys/kernel/notes", "/sys/class/net", "/etc/passwd", "/etc/shadow", "/root/.bashrc",
]  # fmt: skip


def corpus_paths(tree: HostileTree, pids: list[int]) -> list[str]:
    """Every hostile form the test knows, deterministic, de-duplicated, in a stable order."""
    base, root = str(tree.base), str(tree.root)
    paths: list[str] = []
    for pid in ["self", "thread-self", *map(str, pids)]:
        paths += [f"/proc/{pid}/{leaf}" for leaf in PROC_LEAVES]
    paths += DEVICES
    for entry in BASE_ENTRIES:
        paths += [entry, f"{entry}/", f"{entry}/x.pdf", f"./{entry}", f"{base}/{entry}"]
        paths += [f"sub/../{entry}", f"{entry}%00.pdf"]
    for traversal in TRAVERSALS:
        for target in TARGETS:
            paths += [f"{traversal}{target}", f"sub/{traversal * 2}{target}"]
            paths += [f"{base}/{traversal * 3}{target}", f"{traversal * 12}{target}"]
    paths += ODD_NAMES
    paths += [f"{root}/outside/secret.pdf", f"{root}/base2/doc.pdf", f"{base}2/doc.pdf", root]
    paths += [f"{base}/../outside/secret.pdf", f"{base}/sub/deep/up3/outside/secret.pdf"]
    return list(dict.fromkeys(path for path in paths if path))


def hostile_path_strategy(tree: HostileTree, pids: list[int]) -> st.SearchStrategy[str]:
    """Paths composed of hostile segments, optionally absolute or below /proc/<pid>."""
    segment = st.sampled_from(
        ["..", ".", "", "%2e%2e", "%252e%252e", "..%2f", "%2f", "%00", "%ff", "\udcff"]
        + [entry.split("/")[0] for entry in BASE_ENTRIES]
        + ["outside", "secret.pdf", "base2", "doc.pdf", "etc", "passwd", "proc", "self", "fd"]
    ) | st.text(st.characters(codec="utf-8", exclude_characters="/\x00"), max_size=12)
    prefix = st.sampled_from(
        ["", "/", f"{tree.base}/", f"{tree.root}/", "/proc/self/", "/dev/"]
        + [f"/proc/{pid}/root/" for pid in pids]
        + [f"/proc/{pid}/cwd/" for pid in pids]
    )
    parts = st.lists(segment, min_size=1, max_size=8)
    return st.builds(lambda head, names: head + "/".join(names), prefix, parts).filter(bool)


def ocr_body(path: str) -> bytes:
    """The JSON request; ensure_ascii keeps lone surrogates as `\\udXXX` escapes on the wire."""
    return json.dumps({"source": {"path": path}, **make_job()}).encode("ascii")


@dataclass
class OpenedFile:
    pid: int
    target: str


_OPENED = re.compile(r"^(\d+)\s+(?:open|openat|openat2)\(.*\)\s+=\s+\d+<(.*)>$")


def parse_strace_opens(text: str) -> list[OpenedFile]:
    """Successful opens from `strace -f -y` output: the resolved path of each new descriptor."""
    opened = []
    for line in text.splitlines():
        match = _OPENED.match(line.strip())
        if match:
            opened.append(OpenedFile(int(match.group(1)), match.group(2)))
    return opened


def code_prefixes() -> tuple[str, ...]:
    """Where Python may lazily import code from during a request (not documents)."""
    paths = sysconfig.get_paths()
    found = {sys.prefix, sys.base_prefix, os.path.realpath(sys.base_prefix)}
    found |= {paths[name] for name in ("stdlib", "platstdlib", "purelib", "platlib")}
    found |= {str(Path(__file__).resolve().parents[2])}  # the checkout (editable install)
    return tuple(sorted(found))


# Files the runtime itself opens, whatever the request: glibc's get_nprocs() reads this when
# asyncio's default thread pool is first sized (the guard runs in that pool).
RUNTIME_FILES = frozenset({"/sys/devices/system/cpu/online"})


def outside_opens(opened: list[OpenedFile], base: Path) -> list[OpenedFile]:
    """Opens of anything that is neither in the upload base, nor Python code, nor a runtime file."""
    allowed = (str(base.resolve()), *code_prefixes())
    return [
        item
        for item in opened
        if not item.target.startswith(allowed) and item.target not in RUNTIME_FILES
    ]


class StraceAudit:
    """`strace -f -y` attached to every thread of a running process, logging successful opens."""

    def __init__(self, pid: int, log: Path) -> None:
        self.pid = pid
        self.log = log
        self.strace = subprocess.Popen(
            [*STRACE_OPENS, "-o", str(log), "-p", str(pid)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 30
        while not all_threads_traced(pid):
            assert self.strace.poll() is None, f"strace exited: {self.strace.returncode}"
            assert time.monotonic() < deadline, "strace did not attach"
            time.sleep(0.01)  # polling interval of a bounded wait

    def stop(self) -> list[OpenedFile]:
        if self.strace.poll() is None:
            self.strace.terminate()
            self.strace.wait(timeout=30)
        return parse_strace_opens(self.log.read_text(errors="replace"))


# Successful opens only, with resolved descriptor paths (-y); seccomp-bpf stops the tracee only
# on these calls, so the attack runs near full speed.
STRACE_OPENS = ["strace", "-f", "-y", "-qq", "--seccomp-bpf", "-e", "trace=open,openat,openat2"]
STRACE_OPENS += ["-e", "status=successful"]


def all_threads_traced(pid: int) -> bool:
    for task in Path(f"/proc/{pid}/task").iterdir():
        status = (task / "status").read_text()
        if "TracerPid:\t0\n" in status:
            return False
    return True


@contextmanager
def unprivileged_sidecar(
    tree: HostileTree, ollama_url: str, api_key: str
) -> Iterator[RunningSidecar]:
    """`python -m sidecar` as uid/gid 1000 with no supplementary groups and no capabilities."""
    env = sidecar_env(tree.base, api_key=api_key, port=str(free_port()), ollama_url=ollama_url)
    # No retrieval models: the path guard is under test, not torch (and uid 1000 has no HOME).
    no_model = str(tree.root / "no-model")
    env |= {"OCR_SIDECAR_EMBED_MODEL": no_model, "OCR_SIDECAR_RERANK_MODEL": no_model}
    env["HOME"] = str(tree.root)
    uid = str(PRODUCTION_UID)
    wrapper = ["setpriv", "--reuid", uid, "--regid", uid, "--clear-groups", "--inh-caps=-all"]
    with running_sidecar(env, tree.root, api_key, wrapper=wrapper) as sidecar:
        sidecar.wait_until_models_settled()  # descriptor audits start on a quiet process
        yield sidecar


@dataclass
class AttackResult:
    statuses: dict[int, int] = field(default_factory=dict)
    unexpected: list[tuple[str, int, str]] = field(default_factory=list)
    marker_seen: int = 0

    @property
    def sent(self) -> int:
        return sum(self.statuses.values())


def is_unicode(path: str) -> bool:
    """False for lone surrogates: JSON can escape them, but they are no Unicode text."""
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def refused_as_expected(path: str, status: int) -> bool:
    """403/404/415 from the guard; a path that is not Unicode text is already refused as a
    malformed request (422) before any guard sees it."""
    return status in REFUSED or (status == 422 and not is_unicode(path))


@dataclass
class AuditedAttack:
    """What one attack did to the sidecar: answers, the opens strace saw (empty when strace is
    not installed), the descriptors before and after, and its duration."""

    result: AttackResult
    audited: bool
    opened: list[OpenedFile]
    fds_before: dict[int, str]
    fds_after: dict[int, str]
    elapsed_s: float

    def new_files(self) -> list[str]:
        """Filesystem targets open after but not before (pipes, sockets and inodes have no '/')."""
        added = set(self.fds_after.values()) - set(self.fds_before.values())
        return sorted(path for path in added if path[:1] == "/")


def audited_attack(
    sidecar: RunningSidecar, paths: list[str], strace_log: Path, timeout_s: float
) -> AuditedAttack:
    """Send every path to `sidecar`, under `strace` when it is installed."""
    audited = shutil.which("strace") is not None
    fds_before = open_fds(sidecar.pid)
    audit = StraceAudit(sidecar.pid, strace_log) if audited else None
    result = AttackResult()
    started = time.monotonic()
    with sidecar.client(timeout=timeout_s) as client:
        send_paths(client, paths, result)
    elapsed = time.monotonic() - started
    opened = audit.stop() if audit is not None else []
    return AuditedAttack(result, audited, opened, fds_before, open_fds(sidecar.pid), elapsed)


def send_paths(client: httpx.Client, paths: list[str], result: AttackResult) -> None:
    """POST each path; tally statuses; keep the first few anything-but-refused answers."""
    for path in paths:
        response = client.post(
            "/ocr", content=ocr_body(path), headers={"content-type": "application/json"}
        )
        status = response.status_code
        result.statuses[status] = result.statuses.get(status, 0) + 1
        if SECRET_MARKER in response.content:
            result.marker_seen += 1
        if not refused_as_expected(path, status) and len(result.unexpected) < 20:
            result.unexpected.append((repr(path)[:200], status, response.text[:300]))
