"""`bench/bench_stewardship.py` runs the real sidecar against the fake's VRAM books, and its
baselines really send one fixed keep_alive through the same pipeline (fast clockwork here)."""

from __future__ import annotations

from pathlib import Path

from bench import bench_stewardship as e2e

FAST = e2e.Timing(page_s=0.02, load_fixed_s=0.02, load_rate_mib_s=1e6, unload_s=0.02)
ONE_JOB = e2e.Scenario(llm=[], ocr=[(0.0, 3)])


def test_ours_loads_once_per_job_and_keep_alive_0_once_per_page(tmp_path: Path) -> None:
    ours = e2e.run("fits", "ours", ONE_JOB, tmp_path, FAST)
    zero = e2e.run("fits", "keep_alive_0", ONE_JOB, tmp_path, FAST)
    assert (ours["ocr_loads"], zero["ocr_loads"]) == (1, 3)
    assert len(ours["ocr_latencies"]) == len(zero["ocr_latencies"]) == 1
    assert ours["overcommits"] == zero["overcommits"] == 0


def test_llm_requests_are_compared_with_the_llm_alone(tmp_path: Path) -> None:
    plan = e2e.Scenario(llm=[(0.0, 0.05), (0.3, 0.05)], ocr=[])
    alone = e2e.run("tight", None, plan, tmp_path, FAST)
    assert alone["llm_loads"] == 1 and len(alone["llm_times"]) == 2
    slower = {**alone, "llm_times": [t + 1.0 for t in alone["llm_times"]]}
    figures = e2e.summarise(slower, alone)
    assert (figures["squeezes"], figures["squeeze_total_s"]) == (2, 2.0)
    assert e2e.summarise(alone, alone)["squeezes"] == 0


def test_the_scenario_is_seeded() -> None:
    assert e2e.scenario(14, 60) == e2e.scenario(14, 60)
    plan = e2e.scenario(14, 60)
    assert plan.llm and plan.ocr
    assert all(0 <= at < 60 and 0.4 <= d <= 2.8 for at, d in plan.llm)
    assert all(2 <= pages <= 10 for _, pages in plan.ocr)
