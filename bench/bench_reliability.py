"""Reliability and security figures (issue 12), the long forms of tests/reliability.

Every run starts real `python -m sidecar` processes on loopback, with the fake Ollama behind them.
Each section compares against a baseline measured in the same run where a ratio means something
(`/live` idle vs under load, RSS after warm-up vs at the end, descriptors before vs after).

1. paths:    >= 5,000 hostile /ocr paths as uid 1000 (setpriv), every open audited with strace.
2. fuzz:     schemathesis 4, every operation, positive and negative, with and without the key.
3. soak:     300 OCR jobs at concurrency 32, then 1,000 at 64, mixed with /embed and /rerank.
4. rotation: the key rotated by rename under 32 clients, 5 times; delay until the old key is
             refused (the key file is re-checked at most twice a second).
5. faults:   Ollama killed after page 2, hanging, four kinds of garbage; fds before and after.
6. bombs:    18 document bombs: status, time, peak RSS each.

Results: bench/results/reliability.json (sections merged, so one section can be re-run).

    .venv/bin/python bench/bench_reliability.py [paths|fuzz|soak|rotation|faults|bombs ...]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import secrets
import shutil
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from sidecar.auth import KEY_FILE_RECHECK_S  # noqa: E402
from tests.deploy.sidecar_process import sidecar_env  # noqa: E402
from tests.fake_ollama import FakeModel, FakeOllama  # noqa: E402
from tests.fake_ollama.server import Fault  # noqa: E402
from tests.fixtures.jobs import BASE_JOB  # noqa: E402
from tests.reliability.bombs import ACCEPTABLE, BOMBS  # noqa: E402
from tests.reliability.faults import ocr, ollama_killed_at_page  # noqa: E402
from tests.reliability.fuzz import fuzz, served_schema  # noqa: E402
from tests.reliability.generated import generated_examples  # noqa: E402
from tests.reliability.hostile import (  # noqa: E402
    audited_attack,
    build_tree,
    corpus_paths,
    hostile_path_strategy,
    outside_opens,
    privilege_drop_reason,
    unprivileged_sidecar,
)
from tests.reliability.memory import peak_rss_bytes, reset_peak_rss, rss_bytes  # noqa: E402
from tests.reliability.processes import RunningSidecar, running_sidecar  # noqa: E402
from tests.reliability.rotation import replace_key_file, rotate_under_load  # noqa: E402
from tests.reliability.soak import percentile, settled_idle, soak  # noqa: E402
from tests.server import free_port  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "reliability.json"
MODEL = BASE_JOB["profile"]["model"]
PATHS_TARGET = 5_000
FUZZ_CASES_PER_OPERATION_AND_MODE = 450
ROTATIONS = 5
MIB = 1024 * 1024


def new_key() -> str:
    return secrets.token_urlsafe(32)


@contextmanager
def fake_ollama(**kwargs: Any) -> Iterator[FakeOllama]:
    with FakeOllama([FakeModel(MODEL)], **kwargs) as fake:
        yield fake


@contextmanager
def sidecar_process(
    fake: FakeOllama | None, *, models: bool, wait_for: str = "/live", **settings: str
) -> Iterator[RunningSidecar]:
    """A sidecar in a fresh temp dir; `models=False` points both models at nothing (no torch)."""
    root = Path(tempfile.mkdtemp(prefix="bench-reliability-"))
    try:
        (root / "uploads").mkdir()
        key = new_key()
        if "api_key_file" not in settings:  # both at once is a startup error
            settings["api_key"] = key
        if fake is not None:
            settings["ollama_url"] = fake.url
        env = sidecar_env(root / "uploads", port=str(free_port()), **settings)
        if not models:
            env |= {"OCR_SIDECAR_EMBED_MODEL": "/nonexistent", "OCR_SIDECAR_RERANK_MODEL": "/x"}
        with running_sidecar(env, root, key, wait_for=wait_for) as running:
            yield running
    finally:
        shutil.rmtree(root, ignore_errors=True)


# --- 1. hostile paths --------------------------------------------------------------------------


def bench_paths() -> dict[str, Any]:
    reason = privilege_drop_reason()
    if reason:
        return {"skipped": reason}
    tree = build_tree()
    try:
        with fake_ollama() as fake, unprivileged_sidecar(tree, fake.url, new_key()) as sidecar:
            pids = [1, sidecar.pid, os.getpid(), 999_999]
            paths = corpus_paths(tree, pids)
            corpus_size = len(paths)
            strategy = hostile_path_strategy(tree, pids)
            paths += generated_examples(strategy, PATHS_TARGET - corpus_size + 200, seed_value=7)
            fake.clear_requests()
            log = tree.root.parent / f"strace-{sidecar.pid}.log"
            attack = audited_attack(sidecar, paths, log, timeout_s=60)
            result, opened = attack.result, attack.opened
            outside = outside_opens(opened, tree.base)
            return {
                "user": "uid 1000 (setpriv --reuid 1000 --regid 1000 --clear-groups)",
                "paths_sent": result.sent,
                "corpus": corpus_size,
                "generated": result.sent - corpus_size,
                "statuses": {str(k): v for k, v in sorted(result.statuses.items())},
                "refused_share": sum(
                    v for k, v in result.statuses.items() if k in (403, 404, 415, 422)
                )
                / result.sent,
                "status_500": result.statuses.get(500, 0),
                "unexpected": result.unexpected,
                "secret_marker_in_responses": result.marker_seen,
                "ollama_requests": len(fake.requests),
                "strace_audit": attack.audited,
                "opens_audited": len(opened),
                "opens_outside_base": [item.target for item in outside],
                "fds_before_after": [len(attack.fds_before), len(attack.fds_after)],
                "paths_per_s": round(result.sent / attack.elapsed_s, 1),
            }
    finally:
        tree.close()


# --- 2. schema fuzzing -------------------------------------------------------------------------


def bench_fuzz() -> dict[str, Any]:
    with (
        fake_ollama(parallel=2) as fake,
        sidecar_process(fake, models=True, wait_for="/ready", docs="true") as sidecar,
    ):
        schema = served_schema(sidecar.url, sidecar.api_key, dict)
        if "paths" not in schema:
            return {"skipped": "/openapi.json is not served"}
        started = time.monotonic()
        report = fuzz(schema, sidecar.url, sidecar.api_key, FUZZ_CASES_PER_OPERATION_AND_MODE, 99)
        return report.as_dict() | {
            "wall_s": round(time.monotonic() - started, 1),
            "failures": report.failures[:10],
            "sidecar_alive": sidecar.process.alive(),
        }


# --- 3. soak -----------------------------------------------------------------------------------


def live_latencies_ms(url: str, count: int) -> list[float]:
    samples = []
    with httpx.Client(base_url=url, timeout=10) as client:
        for _ in range(count):
            started = time.perf_counter()
            client.get("/live")
            samples.append((time.perf_counter() - started) * 1000)
    return samples


def bench_soak() -> dict[str, Any]:
    with (
        fake_ollama(parallel=2, latency_s=0.01) as fake,
        sidecar_process(fake, models=True, wait_for="/ready") as sidecar,
    ):
        idle = live_latencies_ms(sidecar.url, 200)
        idle_p99 = percentile(idle, 0.99)
        start_rss = rss_bytes(sidecar.pid)
        first = soak(sidecar, 300, 32).summary()
        second = soak(sidecar, 1000, 64).summary()
        end_idle = settled_idle(sidecar.pid)
        return {
            "live_idle_p50_ms": round(statistics.median(idle), 2),
            "live_idle_p99_ms": round(idle_p99, 2),
            "rss_at_start_mib": round(start_rss / MIB, 1),
            "runs": [first, second],
            "live_p99_under_load_vs_idle": [
                round(run["live_p99_ms"] / idle_p99, 2) for run in (first, second)
            ],
            "idle_after_both": {"fds": end_idle.fds, "tcp": end_idle.tcp},
        }


# --- 4. key rotation under load ----------------------------------------------------------------


def bench_rotation() -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix="bench-rotation-"))
    key_file = root / "api_keys"
    old = new_key()
    replace_key_file(key_file, [old])
    try:
        with sidecar_process(None, models=False, api_key_file=str(key_file)) as sc:
            sent = failed = 0
            delays = []
            for _ in range(ROTATIONS):
                new = new_key()
                run = rotate_under_load(sc.url, key_file, old, new, clients=32, per_phase=500)
                sent, failed = sent + run.sent, failed + run.failed
                delays.append(run.old_key_refused_after_s)
                old = new
            measured = [d for d in delays if d is not None]
            return {
                "clients": 32,
                "rotations": ROTATIONS,
                "requests": sent,
                "failed": failed,
                "old_key_refused_after_s": [round(d, 3) for d in measured],
                "old_key_refused_after_max_s": round(max(measured), 3) if measured else None,
                "never_refused": len(delays) - len(measured),
                "recheck_interval_s": KEY_FILE_RECHECK_S,
            }
    finally:
        shutil.rmtree(root, ignore_errors=True)


# --- 5. faults mid-job -------------------------------------------------------------------------


def _outcome(response: httpx.Response) -> dict[str, Any]:
    body = response.json()
    if response.status_code == 200:
        errors = [page["error"]["code"] for page in body["pages"] if page.get("error")]
        done = sum(1 for page in body["pages"] if page.get("text"))
        return {"status": 200, "complete": body["complete"], "pages_done": done, "errors": errors}
    return {"status": response.status_code, "code": body.get("code")}


def bench_faults() -> dict[str, Any]:
    results: dict[str, Any] = {}
    with (
        fake_ollama() as fake,
        sidecar_process(fake, models=False, ollama_timeout_s="2") as sidecar,
    ):
        ocr(sidecar)  # warm: the pool holds its connection
        before = settled_idle(sidecar.pid)
        with ollama_killed_at_page(fake, 3):
            results["ollama_killed_at_page_3_of_4"] = _outcome(ocr(sidecar))
        fake.hold()
        results["ollama_hanging_timeout_2s"] = _outcome(ocr(sidecar, pages=1))
        fake.release()
        for fault in (Fault.GARBAGE, Fault.INVALID_JSON, Fault.BAD_SHAPE, Fault.CUT):
            codes: Counter[str] = Counter()
            for _ in range(20):
                fake.fail(fault, times=1)
                outcome = _outcome(ocr(sidecar, pages=1))
                codes[f"{outcome['status']} {outcome.get('code')}"] += 1
            results[f"garbage_{fault.value}_x20"] = dict(codes)
        recovered = ocr(sidecar).status_code
        after = settled_idle(sidecar.pid)
        results["recovered_status"] = recovered
        results["idle_fds_before_after"] = [before.fds, after.fds]
        results["idle_tcp_before_after"] = [before.tcp, after.tcp]
        results["sidecar_alive"] = sidecar.process.alive()
    return results


# --- 6. document bombs -------------------------------------------------------------------------


def bench_bombs() -> dict[str, Any]:
    rows = {}
    with fake_ollama() as fake, sidecar_process(fake, models=False) as sidecar:
        idle_rss = rss_bytes(sidecar.pid)
        for name, build in sorted(BOMBS.items()):
            data = build()
            reset_peak_rss(sidecar.pid)
            started = time.monotonic()
            response = upload_bomb(sidecar, data)
            rows[name] = {
                "bytes": len(data),
                "status": response.status_code,
                "code": response.json().get("code") if response.status_code != 200 else None,
                "acceptable": response.status_code in ACCEPTABLE,
                "seconds": round(time.monotonic() - started, 2),
                "peak_rss_mib": round(peak_rss_bytes(sidecar.pid) / MIB, 1),
            }
        return {
            "idle_rss_mib": round(idle_rss / MIB, 1),
            "max_peak_rss_mib": max(row["peak_rss_mib"] for row in rows.values()),
            "bombs": rows,
            "sidecar_alive": sidecar.process.alive(),
        }


def upload_bomb(sidecar: RunningSidecar, data: bytes) -> httpx.Response:
    job = json.dumps(BASE_JOB)
    files = {"file": ("document", data, "application/octet-stream"), "job": (None, job)}
    with sidecar.client(timeout=300) as client:
        return client.post("/ocr", files=files)


SECTIONS: dict[str, Callable[[], dict[str, Any]]] = {
    "paths": bench_paths,
    "fuzz": bench_fuzz,
    "soak": bench_soak,
    "rotation": bench_rotation,
    "faults": bench_faults,
    "bombs": bench_bombs,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("sections", nargs="*", help=f"any of {', '.join(SECTIONS)} (default all)")
    chosen = parser.parse_args().sections or list(SECTIONS)
    unknown = set(chosen) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown sections: {', '.join(sorted(unknown))}")
    merged: dict[str, Any] = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    for name in chosen:
        started = time.monotonic()
        print(f"== {name}", flush=True)
        merged[name] = SECTIONS[name]() | {"section_wall_s": round(time.monotonic() - started, 1)}
        print(json.dumps(merged[name], indent=2)[:4000], flush=True)
        merged["machine"] = {
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "load_1m_at_end": round(os.getloadavg()[0], 2),
        }
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(merged, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
