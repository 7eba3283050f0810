"""Streamed OCR: time to the first page, and the sidecar's memory over a long job.

1. Time to first page: a 50-page PDF through `POST /ocr`, the fake Ollama taking a fixed time
   per page. Streamed (`Accept: application/x-ndjson`) the first page arrives after about one
   page time; the plain JSON reply brings it with the 50th. Both are run alternately in the same
   run (`runs` each) and both are read to the end, so the totals compare too. A page time is the
   plain job's time over its pages (the fake's delay plus rendering). Target: streamed p50
   time-to-first-page under 3 page times (page 1 renders, loads nothing, is read), not 50.
2. Memory: peak RSS of the sidecar process (psutil, sampled every 20 ms) over a streamed
   200-page job (MAX_PAGES), beside a 20-page job and the idle process in the same run: a page
   image is dropped once its page is sent, so the peak should not grow with the page count.

The sidecar and the fake Ollama run in their own processes (`bench_ocr.stack`), on loopback.
Results: bench/results/ocr_stream.json.

    .venv/bin/python bench/bench_ocr_stream.py      # ~1.5 min
"""

from __future__ import annotations

import json
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.bench_ocr import JOB, machine, stack, write  # noqa: E402
from tests.fixtures.documents import text_pdf  # noqa: E402

NDJSON = {"Accept": "application/x-ndjson"}


def upload(pdf: bytes) -> dict[str, Any]:
    return {"files": {"file": ("doc.pdf", pdf, "application/pdf"), "job": (None, json.dumps(JOB))}}


def streamed(client: httpx.Client, url: str, pdf: bytes) -> tuple[float, float, int]:
    """(seconds to the first page line, seconds to the end, page lines) of one streamed job."""
    started = time.perf_counter()
    first = None
    pages = 0
    with client.stream("POST", f"{url}/ocr", headers=NDJSON, **upload(pdf)) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            event = json.loads(line)
            if event["event"] == "page":
                pages += 1
                first = first if first is not None else time.perf_counter() - started
            elif event["event"] == "error":
                raise RuntimeError(event["detail"])
    assert first is not None
    return first, time.perf_counter() - started, pages


def plain(client: httpx.Client, url: str, pdf: bytes) -> tuple[float, int]:
    """(seconds to the answer, which brings the first page with the last, pages)."""
    started = time.perf_counter()
    response = client.post(f"{url}/ocr", **upload(pdf))
    response.raise_for_status()
    return time.perf_counter() - started, len(response.json()["pages"])


def bench_first_page(page_s: float = 0.1, pages: int = 50, runs: int = 5) -> dict[str, Any]:
    pdf = text_pdf(pages, lines_per_page=40)
    first_streamed: list[float] = []
    total_streamed: list[float] = []
    first_plain: list[float] = []
    with (
        stack(page_s, 1, max_concurrent=1) as running,
        httpx.Client(headers={"X-API-Key": running.key}, timeout=600) as client,
    ):
        plain(client, running.url, text_pdf(1))  # warm: model loaded, connections open
        for _ in range(runs):  # alternate, so drift affects both alike
            first, total, count = streamed(client, running.url, pdf)
            assert count == pages
            first_streamed.append(first)
            total_streamed.append(total)
            seconds, count = plain(client, running.url, pdf)
            assert count == pages
            first_plain.append(seconds)
    p50_streamed = statistics.median(first_streamed)
    p50_plain = statistics.median(first_plain)
    return {
        "document_pages": pages,
        "page_time_s": page_s,
        "runs_each": runs,
        "time_to_first_page_p50_s": {
            "streamed": round(p50_streamed, 3),
            "plain_json": round(p50_plain, 3),
        },
        # a page takes longer than the fake's `page_s`: rendering at 1800 px and the round trips
        "measured_page_time_s": round(p50_plain / pages, 3),
        "streamed_first_page_in_page_times": round(p50_streamed / (p50_plain / pages), 2),
        "ratio_plain_to_streamed": round(p50_plain / p50_streamed, 1),
        "total_p50_s": {
            "streamed": round(statistics.median(total_streamed), 3),
            "plain_json": round(p50_plain, 3),
        },
        "target": "streamed first page < 3 page times, not 50",
    }


class PeakRss:
    """The largest RSS a process reaches while the `with` block runs (sampled every 20 ms)."""

    def __init__(self, pid: int) -> None:
        self.process = psutil.Process(pid)
        self.peak = 0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while True:
            self.peak = max(self.peak, self.process.memory_info().rss)
            if self._done.wait(0.02):
                return

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()


def mib(value: int) -> float:
    return round(value / (1024 * 1024), 1)


def bench_memory(long_pages: int = 200, short_pages: int = 20) -> dict[str, Any]:
    result: dict[str, Any] = {}
    with (
        stack(0.0, 1, max_concurrent=1) as running,
        httpx.Client(headers={"X-API-Key": running.key}, timeout=600) as client,
    ):
        plain(client, running.url, text_pdf(1))  # warm
        result["idle_rss_mib"] = mib(psutil.Process(running.sidecar_pid).memory_info().rss)
        for pages in (short_pages, long_pages):
            pdf = text_pdf(pages, lines_per_page=40)
            with PeakRss(running.sidecar_pid) as peak:
                _, seconds, count = streamed(client, running.url, pdf)
            assert count == pages
            result[f"streamed_{pages}_pages"] = {
                "peak_rss_mib": mib(peak.peak),
                "document_kib": round(len(pdf) / 1024, 1),
                "seconds": round(seconds, 2),
            }
    short = result[f"streamed_{short_pages}_pages"]["peak_rss_mib"]
    long = result[f"streamed_{long_pages}_pages"]["peak_rss_mib"]
    result["peak_growth_mib_from_20_to_200_pages"] = round(long - short, 1)
    return result


def main() -> None:
    write(
        "ocr_stream.json",
        {
            "benchmark": "POST /ocr streamed as NDJSON vs one JSON answer, fake Ollama",
            "first_page": bench_first_page(),
            "memory": bench_memory(),
            "machine": machine(),
        },
    )


if __name__ == "__main__":
    main()
