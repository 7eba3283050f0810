"""`bench/gpu_sim.py` over the short trace: the books balance, the run is deterministic, and it
drives the sidecar's real policy code (no copy)."""

from __future__ import annotations

import json
import math

import pytest

import sidecar.job_residency
import sidecar.placement_policy
from bench import gpu_sim
from tests.fake_ollama import scheduler


@pytest.fixture(scope="module")
def short() -> dict:
    (trace,) = gpu_sim.load_traces(["short"])
    return trace


@pytest.fixture(scope="module")
def results(short: dict) -> tuple[dict, dict]:
    return gpu_sim.simulate(short, ["ours", "keep_alive_0", "keep_alive_forever"])


def test_it_drives_the_real_policy_and_the_shared_scheduler():
    assert gpu_sim.JobResidency is sidecar.job_residency.JobResidency
    assert gpu_sim.decide_placement is sidecar.placement_policy.decide_placement
    assert gpu_sim.Scheduler is scheduler.Scheduler


def test_the_books_balance(short: dict, results: tuple[dict, dict]):
    summaries, runs = results
    total = short["gpu"]["total_mib"]
    for policy, run in runs.items():
        sched = run.sched
        assert sched is not None
        assert sched.check() == [], policy  # every load matched by an unload, or still resident
        assert summaries[policy]["books_balance"]
        for _, base, llm, ocr, torch in run.samples:
            assert min(base, llm, ocr, torch) >= 0
            assert base + llm + ocr + torch <= total, policy  # VRAM never negative
        loads = [e for e in sched.events if e.kind == "load_start"]
        unloads = [e for e in sched.events if e.kind == "unload"]
        assert len(loads) == len(unloads) + len(sched.runners)
        assert all(e.at >= short["start_s"] for e in sched.events)
        assert all(not math.isnan(r.done) for r in run.llm + run.ocr), policy  # all work done


def test_the_run_is_deterministic(short: dict, results: tuple[dict, dict]):
    again, _ = gpu_sim.simulate(short, ["ours", "keep_alive_0", "keep_alive_forever"])
    assert json.dumps(again, sort_keys=True) == json.dumps(results[0], sort_keys=True)


def test_the_figures_read_as_expected(results: tuple[dict, dict]):
    summaries, _ = results
    ours, zero = summaries["ours"], summaries["keep_alive_0"]
    assert ours["overcommit_events"] == 0
    assert zero["ocr_cold_loads"] == zero["ocr_pages"]  # keep_alive 0 loads for every page
    assert ours["ocr_cold_loads"] < zero["ocr_cold_loads"]
    assert ours["squeezes"] <= zero["squeezes"]
    for summary in summaries.values():
        assert summary["llm_cold_loads"] >= summary["llm_cold_loads_alone"] or (
            summary["squeezes"] == 0
        )


def test_the_command_writes_json_and_a_png(tmp_path, monkeypatch):
    monkeypatch.setattr(gpu_sim, "RESULTS", tmp_path)
    out = tmp_path / "gpu_sim.json"
    assert gpu_sim.main(["--trace", "short", "--out", str(out)]) == 0
    payload = json.loads(out.read_text())
    assert set(payload["results"]["short"]) == set(gpu_sim.POLICIES)
    assert (tmp_path / "gpu_sim_short.png").stat().st_size > 10_000


def test_the_seed_study_runs_the_generator_of_the_committed_traces():
    """`bench/gpu_sim_seeds.py` simulates `day_traces(seed)`: for the committed seed that is
    exactly what `bench/traces/` holds."""
    from bench.traces import make_traces

    for generated in make_traces.day_traces(make_traces.SEED):
        (committed,) = gpu_sim.load_traces([generated["name"]])
        assert json.loads(json.dumps(generated)) == committed


def summary(squeezes: int, total_s: float, ocr_loads: int) -> dict:
    return {"squeezes": squeezes, "squeeze_total_s": total_s, "ocr_cold_loads": ocr_loads,
            "overcommit_events": 0}  # fmt: skip


def test_the_bars_flag_a_baseline_that_serves_the_llm_better():
    ours_best = {"tight": {"ours": summary(40, 400, 60), "keep_alive_0": summary(59, 1600, 531),
                           "keep_alive_5m": summary(54, 500, 44)}}  # fmt: skip
    assert gpu_sim.check_done(ours_best) == []
    assert gpu_sim.check_llm_first(ours_best) == []
    fewer_but_longer = {"tight": {**ours_best["tight"], "ours": summary(40, 600, 60)}}
    assert gpu_sim.check_done(fewer_but_longer) == []  # the bar counts squeezes only
    assert gpu_sim.check_llm_first(fewer_but_longer) == [
        "tight: keep_alive_5m delays the LLM less in all than ours"
    ]
    dominated = {"tight": {**ours_best["tight"], "ours": summary(55, 600, 60)}}
    assert "tight: keep_alive_5m dominates ours (squeezes and OCR loads)" in gpu_sim.check_done(
        dominated
    )
