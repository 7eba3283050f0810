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
