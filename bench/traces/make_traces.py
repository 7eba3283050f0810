"""Generate the GPU-simulation traces (`bench/traces/*.json`) from a seed: deterministic, so the
committed files are exactly what `uv run python bench/traces/make_traces.py` writes.

One working day (08:00–17:00) of the three kinds of GPU traffic (docs/gpu-stewardship.md):
- **LLM chat sessions**, bursty: sessions start at a rate that peaks mid-morning and mid-afternoon
  and dips at lunch; a session is a handful of requests separated by reading/typing pauses
  (log-normal, a few seconds to minutes); each request generates for a few seconds.
- **OCR jobs** of 1–60 pages: most are short (a letter, an invoice), some are long reports.
- **Embed/rerank bursts**: an indexing or search burst of requests a fraction of a second apart.

Two GPU set-ups over the same traffic (one seed): **fits** (the LLM at 9000 MiB: LLM, OCR model
and the two BGE models fit on the card together) and **tight** (the LLM with a long context near
12 GB: the LLM and the OCR model do not both fit by Ollama's rule). **short** is one busy hour
of the fits set-up for the test suite.
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path
from typing import Any

HERE = Path(__file__).parent
SEED = 14
DAY_S = 9 * 3600  # 08:00–17:00

GPU = {"total_mib": 16311, "base_mib": 350, "name": "RTX 5060 Ti 16 GB"}
OLLAMA = {"load_fixed_s": 1.0, "load_rate_mib_s": 2000.0, "unload_s": 1.0, "fit_share": 0.8}
OCR_MODEL = {"name": "scb10x/typhoon-ocr1.5-3b", "size_mib": 3300, "tags_mib": 2100}
TORCH = {"embed_mib": 1100, "rerank_mib": 1100, "headroom_mib": 1024, "settle_s": 30.0,
         "cpu_slowdown": 12.0}  # fmt: skip
SIDECAR = {"priority_keep_alive_s": 300.0, "ocr_yield_max_s": 60.0, "vram_pressure_pct": 85.0,
           "vram_critical_pct": 95.0, "profile_keep_alive": "5m", "max_concurrent_ocr": 2,
           "kv_headroom_mib": 1536}  # fmt: skip


def _rate(hour: float, peak: float) -> float:
    """Sessions (or jobs) per hour at `hour` of the day: two peaks, a lunch dip."""
    morning = math.exp(-(((hour - 10.0) / 1.3) ** 2))
    afternoon = 0.8 * math.exp(-(((hour - 14.5) / 1.5) ** 2))
    lunch = 1.0 - 0.6 * math.exp(-(((hour - 12.5) / 0.5) ** 2))
    return peak * max(morning + afternoon, 0.15) * lunch


def _arrivals(rng: random.Random, start: float, end: float, peak: float) -> list[float]:
    """A non-homogeneous Poisson process by thinning."""
    times, t = [], start
    while True:
        t += rng.expovariate(peak / 3600.0)
        if t >= end:
            return times
        if rng.random() < _rate(8 + t / 3600.0, peak) / peak:
            times.append(t)


def chat(rng: random.Random, start: float, end: float) -> list[list[float]]:
    requests = []
    for session in _arrivals(rng, start, end, peak=14.0):
        t = session
        for _ in range(1 + min(int(rng.expovariate(1 / 5.0)), 24)):
            if t >= end:
                break
            requests.append([round(t, 3), round(rng.uniform(2.0, 14.0), 3)])
            t += rng.lognormvariate(math.log(35.0), 0.9)  # reading and typing, 10 s – 3 min
    return sorted(requests)


def ocr(rng: random.Random, start: float, end: float) -> list[list[float]]:
    jobs = []
    for t in _arrivals(rng, start, end, peak=9.0):
        kind = rng.random()
        if kind < 0.55:
            pages = rng.randint(1, 3)
        elif kind < 0.88:
            pages = rng.randint(4, 20)
        else:
            pages = rng.randint(21, 60)
        jobs.append([round(t, 3), pages, round(rng.uniform(4.0, 8.0), 3)])
    return jobs


def retrieval(rng: random.Random, start: float, end: float) -> list[list[Any]]:
    requests = []
    for t in _arrivals(rng, start, end, peak=14.0):
        kind = "rerank" if rng.random() < 0.4 else "embed"
        for _ in range(rng.randint(3, 40)):
            requests.append([round(t, 3), kind, round(rng.uniform(0.03, 0.25), 3)])
            t += rng.expovariate(2.0)
    return sorted(requests, key=lambda r: (r[0], r[1]))


def trace(name: str, llm_mib: int, reserve_mib: int, seed: int, start: float, end: float,
          note: str) -> dict[str, Any]:  # fmt: skip
    rng = random.Random(seed)
    return {
        "name": name,
        "note": note,
        "seed": seed,
        "start_s": start,
        "end_s": end,
        "clock_origin": "08:00",
        "gpu": GPU,
        "ollama": OLLAMA,
        "llm": {"name": "typhoon2.5-qwen3-4b", "size_mib": llm_mib},
        "ocr_model": OCR_MODEL,
        "torch": TORCH,
        "sidecar": {**SIDECAR, "llm_reserve_mib": reserve_mib},
        "llm_requests": chat(rng, start, end),  # [arrival s, generation s]
        "ocr_jobs": ocr(rng, start, end),  # [arrival s, pages, seconds per page]
        "retrieval": retrieval(rng, start, end),  # [arrival s, embed|rerank, GPU seconds]
    }


def _dump(item: dict[str, Any]) -> str:
    """JSON with one line per record (diffable, and small)."""
    lines = ["{"]
    keys = list(item)
    for index, key in enumerate(keys):
        comma = "," if index < len(keys) - 1 else ""
        value = item[key]
        if isinstance(value, list):
            rows = [json.dumps(row, separators=(",", ":")) for row in value]
            body = ",\n  ".join(rows)
            lines.append(f' "{key}": [\n  {body}\n ]{comma}' if rows else f' "{key}": []{comma}')
        else:
            lines.append(f" {json.dumps(key)}: {json.dumps(value, ensure_ascii=False)}{comma}")
    lines.append("}")
    return "\n".join(lines) + "\n"


def day_traces(seed: int) -> list[dict[str, Any]]:
    """The working day of `seed`, in the fits and the tight set-up (the same traffic)."""
    return [
        trace("fits", 9000, 9000, seed, 0.0, DAY_S,
              "LLM 9000 MiB + OCR 3300 MiB + BGE-M3 and reranker (1100 MiB each) fit on 16 GB"),
        trace("tight", 12300, 12300, seed, 0.0, DAY_S,
              "LLM with a long context (12300 MiB): it and the OCR model do not both fit "
              "(Ollama loads a model beside others only within 0.8 of the free VRAM)"),
    ]  # fmt: skip


def main() -> None:
    traces = [
        *day_traces(SEED),
        trace("short", 9000, 9000, SEED + 1, 7200.0, 10800.0,
              "one busy hour (10:00–11:00) of the fits set-up, for the test suite"),
    ]  # fmt: skip
    for item in traces:
        path = HERE / f"{item['name']}.json"
        path.write_text(_dump(item), encoding="utf-8")
        print(f"{path.name}: {len(item['llm_requests'])} LLM requests, "
              f"{len(item['ocr_jobs'])} OCR jobs "
              f"({sum(j[1] for j in item['ocr_jobs'])} pages), "
              f"{len(item['retrieval'])} retrieval requests")  # fmt: skip


if __name__ == "__main__":
    main()
