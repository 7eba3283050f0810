"""Soak: OCR jobs at high concurrency, mixed with /embed and /rerank, against a real sidecar
process (the fake Ollama behind it). Records statuses, RSS after warm-up and at the end,
descriptors and TCP connections at idle before and after, and `/live` latency throughout.
Shared by `test_soak.py` (short form) and `bench/bench_reliability.py` (long form).
"""

from __future__ import annotations

import json
import statistics
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import httpx
import psutil

from tests.fixtures.documents import make_image
from tests.fixtures.jobs import make_job
from tests.reliability.memory import rss_bytes
from tests.reliability.processes import RunningSidecar, open_fds

ALLOWED = frozenset({200, 429, 503})
LIVE_PROBE_INTERVAL_S = 0.05
WARM_UP_SHARE = 0.1
EMBED_TEXTS = ["an invoice from the tax office", "รายงานประจำปี 2569", "the total is 1,250.00"]


def percentile(values: list[float], share: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


@dataclass
class Idle:
    """What the sidecar holds while nothing is in flight."""

    fds: int
    tcp: int

    @classmethod
    def of(cls, pid: int) -> Idle:
        return cls(len(open_fds(pid)), len(psutil.Process(pid).net_connections("tcp")))


@dataclass
class SoakResult:
    ocr_jobs: int = 0
    concurrency: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    by_route: Counter[str] = field(default_factory=Counter)
    rss_after_warm_up: int = 0
    rss_end: int = 0
    idle_before: Idle | None = None
    idle_after: Idle | None = None
    live_ms: list[float] = field(default_factory=list)
    live_failures: int = 0
    wall_s: float = 0.0

    @property
    def unexpected(self) -> dict[int, int]:
        return {status: n for status, n in self.statuses.items() if status not in ALLOWED}

    @property
    def rss_growth(self) -> float:
        return (self.rss_end - self.rss_after_warm_up) / self.rss_after_warm_up

    def summary(self) -> dict[str, Any]:
        return {
            "ocr_jobs": self.ocr_jobs,
            "concurrency": self.concurrency,
            "requests": dict(self.by_route),
            "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
            "unexpected_statuses": {str(k): v for k, v in self.unexpected.items()},
            "rss_after_warm_up_mib": round(self.rss_after_warm_up / 2**20, 1),
            "rss_end_mib": round(self.rss_end / 2**20, 1),
            "rss_growth_pct": round(100 * self.rss_growth, 2),
            "idle_fds": [self.idle_before.fds, self.idle_after.fds]
            if self.idle_before and self.idle_after
            else None,
            "idle_tcp_connections": [self.idle_before.tcp, self.idle_after.tcp]
            if self.idle_before and self.idle_after
            else None,
            "live_probes": len(self.live_ms),
            "live_failures": self.live_failures,
            "live_p50_ms": round(statistics.median(self.live_ms), 2) if self.live_ms else None,
            "live_p99_ms": round(percentile(self.live_ms, 0.99), 2),
            "live_max_ms": round(max(self.live_ms), 2) if self.live_ms else None,
            "wall_s": round(self.wall_s, 1),
        }


class LiveProbe:
    """GET /live every 50 ms on its own connection while the load runs."""

    def __init__(self, url: str, result: SoakResult) -> None:
        self.url = url
        self.result = result
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="live-probe")

    def _run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=10) as client:
            while not self.stop.wait(LIVE_PROBE_INTERVAL_S):
                started = time.perf_counter()
                try:
                    ok = client.get("/live").status_code == 200
                except httpx.HTTPError:
                    ok = False
                self.result.live_ms.append((time.perf_counter() - started) * 1000)
                self.result.live_failures += not ok

    def __enter__(self) -> LiveProbe:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(timeout=30)


def _tasks(ocr_jobs: int) -> list[str]:
    """OCR jobs with one /embed and one /rerank after every fifth."""
    tasks = []
    for index in range(ocr_jobs):
        tasks.append("ocr")
        if index % 5 == 4:
            tasks += ["embed", "rerank"]
    return tasks


def _send(client: httpx.Client, task: str, document: bytes, job: str) -> int:
    if task == "ocr":
        files = {"file": ("page.png", document, "image/png"), "job": (None, job)}
        return client.post("/ocr", files=files).status_code
    if task == "embed":
        return client.post("/embed", json={"inputs": EMBED_TEXTS}).status_code
    body = {"query": "invoice total", "texts": EMBED_TEXTS}
    return client.post("/rerank", json=body).status_code


def _run_tasks(
    client: httpx.Client, tasks: list[str], concurrency: int, result: SoakResult
) -> None:
    document = make_image("png", (240, 180), label="soak")
    job = json.dumps(make_job())
    lock = threading.Lock()

    def one(task: str) -> None:
        status = _send(client, task, document, job)
        with lock:
            result.statuses[status] += 1
            result.by_route[task] += 1

    with ThreadPoolExecutor(concurrency) as pool:
        for done in [pool.submit(one, task) for task in tasks]:
            done.result()


def settled_idle(pid: int, polls: int = 5) -> Idle:
    """The idle state once it stops changing (connections the client closed are gone)."""
    seen = [Idle.of(pid)]
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and not (
        len(seen) >= polls and all(state == seen[-1] for state in seen[-polls:])
    ):
        time.sleep(0.1)  # polling interval of a bounded wait
        seen.append(Idle.of(pid))
    return seen[-1]


def soak(sidecar: RunningSidecar, ocr_jobs: int, concurrency: int) -> SoakResult:
    result = SoakResult(ocr_jobs=ocr_jobs, concurrency=concurrency)
    tasks = _tasks(ocr_jobs)
    warm_up = max(1, int(len(tasks) * WARM_UP_SHARE))
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    started = time.monotonic()
    with LiveProbe(sidecar.url, result):
        with sidecar.client(timeout=120, limits=limits) as client:
            _run_tasks(client, tasks[:warm_up], concurrency, result)
        result.idle_before = settled_idle(sidecar.pid)
        result.rss_after_warm_up = rss_bytes(sidecar.pid)
        with sidecar.client(timeout=120, limits=limits) as client:
            _run_tasks(client, tasks[warm_up:], concurrency, result)
        result.rss_end = rss_bytes(sidecar.pid)
        result.idle_after = settled_idle(sidecar.pid)
    result.wall_s = time.monotonic() - started
    return result
