"""Key rotation through the secret mount compose.yaml uses, with real bind mounts (no Docker).

Compose mounts the secret *directory* read-only into the container. These tests rebuild that with
`unshare --mount` + `mount --bind`: the real `sidecar` process reads its key file through a
read-only directory bind mount while the test, playing the operator on the host, rotates the file
by atomic rename and by in-place rewrite. The sidecar is never restarted.

They also pin down why the directory is mounted: through a single-file bind mount a file replaced
by rename stays invisible (the mount holds the old inode); only an in-place write shows through.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.conftest import new_api_key
from tests.deploy.sidecar_process import SidecarProcess, sidecar_env
from tests.reliability.eventually import eventually
from tests.server import free_port

STARTUP_DEADLINE_S = 90
# compose.yaml: the secret directory is mounted here and the key file is `api_keys` inside it.
SECRET_FILE_NAME = "api_keys"

# Mount the host directory read-only on the container path, then run the command ("$@").
MOUNT_THEN_EXEC = 'mount --bind "$SRC" "$DST" && mount -o remount,bind,ro "$DST" && exec "$@"'


def mount_namespaces_reason() -> str | None:
    if not sys.platform.startswith("linux"):
        return "bind mounts in a private mount namespace are Linux-only"
    if os.geteuid() != 0:
        return "bind mounts need root"
    if shutil.which("unshare") is None or shutil.which("mount") is None:
        return "util-linux `unshare`/`mount` not installed"
    probe = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "true"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    if probe.returncode != 0:
        return f"`unshare --mount` refused: {probe.stderr.strip()}"
    return None


@pytest.fixture(scope="module", autouse=True)
def _needs_mount_namespaces() -> None:
    reason = mount_namespaces_reason()
    if reason:
        pytest.skip(f"secret mount rotation tests skipped: {reason}")


def replace_atomically(path: Path, keys: list[str]) -> None:
    """What the runbook does on the host: write a temporary file beside it, then rename."""
    temporary = path.with_name(f".{path.name}.new")
    temporary.write_text("".join(f"{key}\n" for key in keys), encoding="utf-8")
    temporary.chmod(0o400)
    os.replace(temporary, path)


def rewrite_in_place(path: Path, text: str) -> None:
    path.chmod(0o600)
    with path.open("r+", encoding="utf-8") as handle:  # same inode: truncate and write
        handle.truncate(0)
        handle.write(text)
    path.chmod(0o400)


def test_single_file_bind_mount_misses_a_rename_but_sees_an_in_place_write(
    tmp_path: Path,
) -> None:
    host = tmp_path / "host"
    host.mkdir()
    source = host / SECRET_FILE_NAME
    source.write_text("old\n")
    target = tmp_path / "container-view"
    target.write_text("")
    script = (
        'mount --bind "$SRC" "$DST" '
        '&& printf "in-place\\n" > "$SRC" && cat "$DST" '
        '&& printf "renamed\\n" > "$SRC.new" && mv "$SRC.new" "$SRC" && cat "$DST" "$SRC"'
    )
    result = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
        env={"SRC": str(source), "DST": str(target), "PATH": os.environ["PATH"]},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    # The in-place write shows through (same inode); after the rename the host has the new file
    # but the mount still shows the old inode. Hence compose mounts the directory.
    assert result.stdout.splitlines() == ["in-place", "in-place", "renamed"]


@dataclass
class MountedSidecar:
    url: str
    host_key_file: Path
    process: SidecarProcess

    def statuses(self, *keys: str) -> tuple[int, ...]:
        return tuple(self.status(key) for key in keys)

    def status(self, key: str | None) -> int:
        headers = {"X-API-Key": key} if key is not None else {}
        return httpx.get(f"{self.url}/health", headers=headers, timeout=10).status_code

    def reloads(self, key: str) -> dict[str, float]:
        text = httpx.get(f"{self.url}/metrics", headers={"X-API-Key": key}, timeout=10).text
        return {
            line.split('outcome="')[1].split('"')[0]: float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith("sidecar_api_key_reloads_total{")
        }


@pytest.fixture
def first_key() -> str:
    return new_api_key()


@pytest.fixture
def mounted_sidecar(tmp_path: Path, first_key: str) -> Iterator[MountedSidecar]:
    """A sidecar reading /run/secrets/…/api_keys through a read-only directory bind mount."""
    host_dir = tmp_path / "secrets" / "sidecar_api_keys"  # OCR_SECRETS_DIR on the host
    host_dir.mkdir(parents=True, mode=0o700)
    host_key_file = host_dir / SECRET_FILE_NAME
    replace_atomically(host_key_file, [first_key])
    container_dir = tmp_path / "run-secrets" / "sidecar_api_keys"  # the secret's target
    container_dir.mkdir(parents=True)
    uploads = tmp_path / "uploads"
    uploads.mkdir(mode=0o700)
    port = free_port()
    env = sidecar_env(uploads, api_key_file=str(container_dir / SECRET_FILE_NAME), port=str(port))
    env.update({"SRC": str(host_dir), "DST": str(container_dir)})
    wrapper = ["unshare", "--mount", "--propagation", "private", "sh", "-c", MOUNT_THEN_EXEC, "sh"]
    process = SidecarProcess(env, tmp_path, wrapper).start()
    sidecar = MountedSidecar(f"http://127.0.0.1:{port}", host_key_file, process)
    try:
        deadline = time.monotonic() + STARTUP_DEADLINE_S
        while True:  # bounded wait for the port to answer
            assert process.alive(), process.output()
            try:
                if httpx.get(f"{sidecar.url}/live", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, f"sidecar did not start:\n{process.output()}"
            time.sleep(0.05)
        yield sidecar
    finally:
        process.stop()


def test_rotation_through_the_mounted_secret_directory(
    mounted_sidecar: MountedSidecar, first_key: str
) -> None:
    sidecar, old, new = mounted_sidecar, first_key, new_api_key()
    pid = sidecar.process.process.pid  # type: ignore[union-attr]
    assert sidecar.status(old) == 200
    assert sidecar.status(new) == 401

    # The sidecar re-checks the file at most twice a second: each change shows within a bound.
    # 1. Add the new key (atomic rename on the host): both work, no restart.
    replace_atomically(sidecar.host_key_file, [old, new])
    assert eventually(lambda: sidecar.statuses(old, new), (200, 200)) == (200, 200)
    # 2. Put the new key first (the backend sends the first line): still both work.
    replace_atomically(sidecar.host_key_file, [new, old])
    assert eventually(lambda: sidecar.reloads(new).get("ok", 0) >= 2, True)
    assert sidecar.statuses(old, new) == (200, 200)
    # 3. Drop the old key: it is refused once the file has been re-checked.
    replace_atomically(sidecar.host_key_file, [new])
    assert eventually(lambda: sidecar.statuses(old, new), (401, 200)) == (401, 200)
    assert sidecar.status(None) == 401

    assert sidecar.process.process.pid == pid and sidecar.process.alive()  # type: ignore[union-attr]
    assert sidecar.reloads(new).get("ok", 0) >= 3


def test_in_place_rewrite_is_seen_and_a_bad_file_keeps_the_old_keys(
    mounted_sidecar: MountedSidecar, first_key: str
) -> None:
    sidecar, old, new = mounted_sidecar, first_key, new_api_key()
    # An operator editing the file in place (same inode) instead of renaming.
    rewrite_in_place(sidecar.host_key_file, f"# rotated\n{new}\n")
    assert eventually(lambda: sidecar.statuses(old, new), (401, 200)) == (401, 200)
    # A botched rotation (placeholder pasted) must not lock everyone out.
    replace_atomically(sidecar.host_key_file, ["changeme"])
    assert eventually(lambda: sidecar.reloads(new).get("rejected", 0) >= 1, True)
    assert sidecar.status(new) == 200
    assert "changeme" not in sidecar.process.output()
