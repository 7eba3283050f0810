"""GPU benchmark of the retrieval models (needs CUDA; writes a "skipped" result without it).

Measures, on the real models (BAAI/bge-m3 and BAAI/bge-reranker-v2-m3 unless --embed/--rerank
name others, e.g. local directories on an offline machine):

1. VRAM of both models in fp16 once placed on the GPU (target: <= 2.5 GB together);
2. time to fall back to the CPU (pressure) and to come back (settled), per model;
3. zero CUDA OOM while a VRAM hog pushes usage past 95%: a client keeps embedding and reranking
   while a hog thread allocates VRAM in steps; the placement (NVML-driven, production code) must
   move both models to the CPU, every request must still succeed, then the hog frees and the
   models must come back.

    .venv/bin/python bench/bench_gpu_retrieval.py  ->  bench/results/retrieval_gpu.json
"""

from __future__ import annotations

import argparse
import json
import platform
import threading
import time
from pathlib import Path
from typing import Any

import torch

from sidecar.units import MIB

ROOT = Path(__file__).resolve().parent.parent
RESULT = ROOT / "bench" / "results" / "retrieval_gpu.json"
HOG_STEP_MIB = 512
TEXTS = [
    "The invoice total is 1,250 baht, due in thirty days.",
    "ใบกำกับภาษีเลขที่ 17 ออกเมื่อเดือนมีนาคม",
    "Payment by bank transfer to the supplier's account.",
] * 8


def write(result: dict[str, Any]) -> None:
    RESULT.parent.mkdir(parents=True, exist_ok=True)
    RESULT.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(result, indent=2))


def allocated_mib() -> float:
    torch.cuda.synchronize()
    return torch.cuda.memory_allocated() / MIB


class Hog:
    """Allocates VRAM in steps until NVML reports usage at/above `target_pct`."""

    def __init__(self, monitor: Any, target_pct: float) -> None:
        self.monitor = monitor
        self.target_pct = target_pct
        self.blocks: list[torch.Tensor] = []
        self.peak_pct = 0.0

    def fill(self) -> None:
        while True:
            snap = self.monitor.snapshot()
            self.peak_pct = max(self.peak_pct, snap.used_pct)
            if snap.used_pct >= self.target_pct or snap.free_mib < HOG_STEP_MIB:
                return
            step = min(HOG_STEP_MIB, max(64, snap.free_mib - 256))
            try:
                self.blocks.append(torch.empty(step * MIB, dtype=torch.uint8, device="cuda"))
            except torch.cuda.OutOfMemoryError:
                return

    def free(self) -> None:
        self.blocks.clear()
        torch.cuda.empty_cache()


def run(embed_name: str, rerank_name: str, settle_s: float) -> dict[str, Any]:
    from sidecar.devices import DeviceManager
    from sidecar.observability import Metrics
    from sidecar.retrieval.items import EmbedItem
    from sidecar.retrieval.loading import load_embedder, load_reranker
    from sidecar.vram_monitor import NvmlVramMonitor

    monitor = NvmlVramMonitor()
    if monitor.snapshot() is None:
        return {"skipped": "NVML unavailable"}
    metrics = Metrics()
    manager = DeviceManager(monitor, metrics, pressure_pct=85.0, settle_s=settle_s)
    embedder, reranker = load_embedder(embed_name), load_reranker(rerank_name)

    base = allocated_mib()
    placed_embed = manager.add("embed", embedder.module)
    embed_mib = allocated_mib() - base
    placed_rerank = manager.add("rerank", reranker.module)
    rerank_mib = allocated_mib() - base - embed_mib
    on_gpu = placed_embed.device == "cuda" and placed_rerank.device == "cuda"

    items = [EmbedItem(ids, True) for ids in embedder.tokenize(TEXTS, True)]
    pairs = reranker.tokenize("invoice total", TEXTS, True)
    failures: list[str] = []
    ooms = 0
    served = {"cuda": 0, "cpu": 0}
    stop = threading.Event()

    def client() -> None:
        nonlocal ooms
        while not stop.is_set():
            for placed, model, batch in (
                (placed_embed, embedder, items),
                (placed_rerank, reranker, pairs),
            ):
                try:
                    _, device, _ = manager.run(placed, lambda d, m=model, b=batch: m.forward(b, d))
                    served[device] += 1
                except torch.cuda.OutOfMemoryError:
                    ooms += 1
                except Exception as exc:
                    failures.append(f"{type(exc).__name__}: {exc}"[:200])

    worker = threading.Thread(target=client, daemon=True)
    worker.start()

    def reconcile_until(device: str, timeout_s: float) -> float | None:
        started = time.perf_counter()
        while time.perf_counter() - started < timeout_s:
            manager.reconcile_all()
            if placed_embed.device == device and placed_rerank.device == device:
                return time.perf_counter() - started
        return None

    hog = Hog(monitor, target_pct=96.0)
    hog_started = time.perf_counter()
    hog.fill()
    fallback_s = reconcile_until("cpu", 60)
    hog.fill()  # push on into the room the models left
    hog_fill_s = time.perf_counter() - hog_started
    hog.free()
    back_s = reconcile_until("cuda", settle_s + 60)
    stop.set()
    worker.join(30)

    together_mib = embed_mib + rerank_mib
    return {
        "gpu": torch.cuda.get_device_name(0),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "models": {"embed": embed_name, "rerank": rerank_name},
        "initial_placement_gpu": on_gpu,
        "vram_fp16_mib": {
            "embed": round(embed_mib, 1),
            "rerank": round(rerank_mib, 1),
            "together": round(together_mib, 1),
        },
        "vram_target_mib": 2.5 * 1000**3 / MIB,
        "meets_vram_target": together_mib * MIB <= 2.5 * 1000**3,
        "hog_peak_used_pct": round(hog.peak_pct, 1),
        "hog_fill_s": round(hog_fill_s, 2),
        "fallback_to_cpu_s": None if fallback_s is None else round(fallback_s, 3),
        "settle_s": settle_s,
        "back_to_gpu_s_after_settling": None if back_s is None else round(back_s, 3),
        "batches_served": served,
        "cuda_oom": ooms,
        "failures": failures[:5],
        "meets_no_oom_target": ooms == 0 and not failures and hog.peak_pct > 95.0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--embed", default="BAAI/bge-m3")
    parser.add_argument("--rerank", default="BAAI/bge-reranker-v2-m3")
    parser.add_argument("--settle-s", type=float, default=5.0)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        write({"skipped": "skipped: no CUDA", "torch": torch.__version__})
        return
    write(run(args.embed, args.rerank, args.settle_s))


if __name__ == "__main__":
    main()
