"""The GPU simulation over more working days than the committed traces: is the bar
(`gpu_sim.check_done`) a property of the policy or of one seed? (docs/gpu-stewardship.md)

    uv run python bench/gpu_sim_seeds.py                  # seeds 20–25
    uv run python bench/gpu_sim_seeds.py --seeds 30 31

Per seed and set-up (fits, tight): each policy's squeezes, delay in all and OCR loads, and the
lines of each bar (`check_done`: the issue's; `check_llm_first`: no fixed keep_alive delays the
LLM less) that do not hold. Written to bench/results/gpu_sim_seeds.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.gpu_sim import POLICIES, RESULTS, check_done, check_llm_first, simulate  # noqa: E402
from bench.traces.make_traces import day_traces  # noqa: E402

DEFAULT_SEEDS = list(range(20, 26))
SHOWN = ("squeezes", "squeeze_total_s", "squeeze_p95_s", "ocr_cold_loads", "llm_cold_loads")


def run_seed(seed: int) -> dict[str, Any]:
    full = {trace["name"]: simulate(trace, POLICIES)[0] for trace in day_traces(seed)}
    shown = {
        name: {policy: {key: s[key] for key in SHOWN} for policy, s in by_policy.items()}
        for name, by_policy in full.items()
    }
    return {"results": shown, "done": check_done(full), "llm_first": check_llm_first(full)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=DEFAULT_SEEDS)
    parser.add_argument("--out", type=Path, default=RESULTS / "gpu_sim_seeds.json")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    by_seed = {str(seed): run_seed(seed) for seed in args.seeds}
    holds = {bar: [seed for seed, run in by_seed.items() if not run[bar]]
             for bar in ("done", "llm_first")}  # fmt: skip
    payload = {
        "about": "bench/gpu_sim_seeds.py: bench/gpu_sim.py over the working days of more seeds "
        "(bench/traces/make_traces.py); 'done' and 'llm_first' list the lines of each bar "
        "(check_done, check_llm_first) that fail",
        "seeds": args.seeds,
        "bar_holds_on": holds,
        "by_seed": by_seed,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(payload, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    for seed, run in by_seed.items():
        for name, by_policy in run["results"].items():
            line = "  ".join(
                f"{policy.removeprefix('keep_alive_')}: {s['squeezes']}/{s['squeeze_total_s']:g}s"
                f"/{s['ocr_cold_loads']}"
                for policy, s in by_policy.items()
            )
            print(f"seed {seed} {name:5} {line}")
        for problem in run["done"] + run["llm_first"]:
            print(f"seed {seed}   not held: {problem}")
    for bar, seeds in holds.items():
        print(f"{bar}: holds on {len(seeds)} of {len(by_seed)} seeds: {', '.join(seeds)}")
    print(f"{time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
