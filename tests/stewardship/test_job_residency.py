"""Residency over a whole job (`sidecar.job_residency`): hypothesis properties over random jobs and
GPU pictures, plus the worked examples of issue 14."""

from __future__ import annotations

import math
from dataclasses import dataclass

from hypothesis import given
from hypothesis import strategies as st

from sidecar.job_residency import (
    JOB_HOLD_S,
    RULES,
    YIELD_RULES,
    GpuView,
    JobResidency,
    PageStep,
    shares_the_card,
)
from sidecar.loaded_models import LoadedModel
from sidecar.residency_policy import RULES as AFTER_JOB_RULES
from sidecar.residency_policy import calculate_ocr_residency
from sidecar.schemas import OcrProfile
from sidecar.vram_monitor import VramSnapshot
from tests.fixtures.residency import LLM, OCR, snapshot
from tests.fixtures.residency import PolicySettings as Settings
from tests.fixtures.residency import loaded as model

vram = snapshot


# --- strategies --------------------------------------------------------------------------------

settings_st = st.builds(
    Settings,
    llm_reserve_mib=st.integers(0, 16000),
    vram_pressure_pct=st.floats(50, 90),
    vram_critical_pct=st.floats(90, 100),
    priority_keep_alive_s=st.one_of(
        st.floats(0, 7200), st.sampled_from([300.0, 0.0, 1.0, 2.0, math.inf])
    ),
    ocr_yield_max_s=st.one_of(st.floats(0, 120), st.just(60.0)),
)
ceilings = st.one_of(st.none(), st.sampled_from(["0", "30s", "5m", "10m", "1h", "-1m", 45]))
llm_states = st.one_of(
    st.none(),  # not loaded
    st.builds(
        lambda size, squeeze: model(LLM + ":latest", size, size - squeeze),
        st.integers(1000, 12000),
        st.sampled_from([0, 0, 0, 500, 3000]),
    ),
)


@st.composite
def pictures(draw: st.DrawFn) -> tuple[VramSnapshot | None, LoadedModel | None, int | None]:
    """One moment of the GPU: VRAM (or unknown), the LLM (or not loaded), the OCR footprint."""
    total = draw(st.sampled_from([16311, 24000, 8000]))
    snapshot = draw(st.one_of(st.none(), st.integers(0, total).map(lambda u: vram(total, u))))
    return snapshot, draw(llm_states), draw(st.one_of(st.none(), st.integers(500, 6000)))


@dataclass
class Run:
    steps: list[tuple[PageStep, GpuView, float]]  # every step with what it saw and waited_s
    evictions: int  # times "Ollama" took the OCR model away after it was loaded
    job: JobResidency


@st.composite
def jobs(draw: st.DrawFn) -> Run:
    """Drive a JobResidency as the pipeline would: the OCR model is listed once a page loaded it,
    until an outside eviction (drawn) takes it away; a wait is followed by a retry."""
    settings = draw(settings_st)
    profile = OcrProfile(model=OCR, keep_alive=draw(ceilings))
    pages = draw(st.integers(1, 25))
    job = JobResidency(profile, settings, pages=pages)
    ocr_up = draw(st.booleans())  # loaded before the job started
    steps: list[tuple[PageStep, GpuView, float]] = []
    evictions = 0
    for _ in range(pages):
        waited = 0.0
        while True:
            snapshot, llm, size = draw(pictures())
            listed = [m for m in (llm,) if m is not None]
            if ocr_up:
                listed.append(model(OCR + ":latest", 3300))
            view = GpuView(snapshot, listed, size)
            step = job.next_step(view, waited_s=waited)
            steps.append((step, view, waited))
            if step.action == "run":
                break
            waited += draw(st.sampled_from([step.retry_in_s, step.retry_in_s * 0.5, 30.0]))
        if step.loading:
            ocr_up = True
        job.page_done()
        if ocr_up and draw(st.integers(0, 9)) == 0:  # Ollama evicts it (for the LLM)
            ocr_up = False
            evictions += 1
    return Run(steps, evictions, job)


def runs(run: Run) -> list[tuple[PageStep, GpuView, float]]:
    return [entry for entry in run.steps if entry[0].action == "run"]


# --- properties --------------------------------------------------------------------------------


@given(jobs())
def test_at_most_one_load_per_job_without_outside_eviction(run: Run):
    assert run.job.loads <= 1 + run.evictions
    assert run.job.loads == sum(step.loading for step, _, _ in runs(run))


@given(jobs())
def test_a_page_that_loads_the_model_carries_zero_only_as_the_jobs_last(run: Run):
    """A loading page with 0 loads, reads and unloads: only right when no page follows."""
    for step, _, _ in runs(run):
        if step.loading and step.keep_alive_seconds == 0:
            assert step.last and step.rule in AFTER_JOB_RULES


@given(jobs())
def test_never_zero_between_pages_and_always_below_the_llms_keep_alive(run: Run):
    settings = run.job.settings
    for index, (step, _, _) in enumerate(runs(run)):
        last = index == run.job.pages - 1
        assert step.last == last
        if not last:
            assert step.keep_alive_seconds > 0
            assert step.rule == "job_hold"
        if settings.priority_keep_alive_s > 1:
            assert step.keep_alive_seconds < settings.priority_keep_alive_s
        else:  # no whole second fits below it: the hold (1 s) wins, after the job it is 0
            assert step.keep_alive_seconds <= 1
        assert step.keep_alive == f"{step.keep_alive_seconds}s"


@given(jobs())
def test_the_last_page_carries_the_after_job_value(run: Run):
    step, view, _ = runs(run)[-1]
    decision = calculate_ocr_residency(
        run.job.profile,
        view.vram,
        view.loaded,
        run.job.settings,
        ocr_footprint_mib=view.ocr_size_mib,
    )
    assert (step.keep_alive_seconds, step.rule) == (decision.keep_alive_seconds, decision.rule)
    assert step.rule in AFTER_JOB_RULES


@given(jobs())
def test_waits_only_before_a_load_and_only_up_to_the_yield_bound(run: Run):
    bound = run.job.settings.ocr_yield_max_s
    for step, view, waited in run.steps:
        if step.action == "wait":
            assert step.loading
            assert step.rule in YIELD_RULES
            assert waited < bound
            assert 0 < step.retry_in_s <= bound - waited
        else:
            assert step.rule in RULES or step.rule in AFTER_JOB_RULES
        if waited >= bound:
            assert step.action == "run"
        if any(m.name.startswith(OCR) for m in view.loaded):
            assert step.action == "run" and not step.loading  # a running job never pauses
    waited_runs = [waited for step, _, waited in runs(run) if waited > 0]
    assert run.job.yields == len(waited_runs)
    assert math.isclose(run.job.yield_s, sum(waited_runs))


@given(jobs())
def test_never_loads_beside_a_squeezed_or_unmeasured_llm_before_the_bound(run: Run):
    bound = run.job.settings.ocr_yield_max_s
    for step, view, waited in runs(run):
        if not step.loading or waited >= bound:
            continue
        for entry in view.loaded:
            if entry.name.startswith(LLM):
                assert entry.size_vram >= entry.size  # not squeezed
                assert view.vram is not None and view.ocr_size_mib is not None
                priority = [m for m in view.loaded if m.name.startswith(LLM)]
                settings = run.job.settings
                assert view.ocr_size_mib <= 0.8 * view.vram.free_mib or not shares_the_card(
                    view.vram.total_mib, priority, view.ocr_size_mib, settings.llm_reserve_mib
                )


# --- worked examples ---------------------------------------------------------------------------

LLM_UP = model(LLM + ":latest", 9000)
OCR_UP = model(OCR + ":latest", 3300)


def test_the_first_job_after_start_waits_instead_of_squeezing_the_llm():
    """Issue 14: only the LLM is loaded (9000 MiB), 15300 of 16311 MiB used, OCR not loaded."""
    job = JobResidency(OcrProfile(model=OCR, keep_alive="5m"), Settings(), pages=5)
    view = GpuView(vram(16311, 15300), [LLM_UP], ocr_size_mib=3500)
    step = job.next_step(view, waited_s=0)
    assert (step.action, step.rule) == ("wait", "yield_critical")
    assert step.retry_in_s == 1.0
    # the wait runs out: the page runs, its call loads the model and holds it for the job
    step = job.next_step(view, waited_s=60)
    assert (step.action, step.loading, step.keep_alive) == ("run", True, f"{JOB_HOLD_S}s")
    assert "waited 60s for the LLM" in step.reason
    assert job.loads == 1 and job.yields == 1 and job.yield_s == 60


def test_a_one_page_job_at_critical_loads_reads_and_unloads():
    job = JobResidency(OcrProfile(model=OCR, keep_alive="5m"), Settings(), pages=1)
    view = GpuView(vram(16311, 15300), [LLM_UP], ocr_size_mib=3500)
    step = job.next_step(view, waited_s=60)
    assert (step.action, step.keep_alive, step.rule) == ("run", "0s", "critical")
    assert step.loading  # the page call loads it, and its 0 unloads it after
    assert job.loads == 1


def test_an_unknown_footprint_waits_beside_a_loaded_llm():
    job = JobResidency(OcrProfile(model=OCR), Settings(), pages=3)
    step = job.next_step(GpuView(vram(16311, 9500), [LLM_UP], None), waited_s=0)
    assert (step.action, step.rule) == ("wait", "yield_no_room")
    step = job.next_step(GpuView(vram(16311, 9500), [LLM_UP], 3500), waited_s=1)
    assert (step.action, step.loading, step.rule) == ("run", True, "job_hold")


def test_a_twenty_page_job_loads_once_and_holds_between_pages():
    settings = Settings()
    job = JobResidency(OcrProfile(model=OCR, keep_alive="10m"), settings, pages=20)
    sent = []
    loaded: list[LoadedModel] = [LLM_UP]
    for _ in range(20):
        step = job.next_step(GpuView(vram(16311, 9500 + 3300 * (len(loaded) - 1)), loaded, 3500),
                             waited_s=0)  # fmt: skip
        sent.append(step.keep_alive)
        loaded = [LLM_UP, OCR_UP]
        job.page_done()
    assert job.loads == 1
    assert sent[:-1] == [f"{JOB_HOLD_S}s"] * 19
    assert sent[-1] == "299s"  # after the job: the ceiling, held below the LLM's 5m


def test_evicted_by_the_llm_mid_job_waits_before_taking_it_back():
    job = JobResidency(OcrProfile(model=OCR), Settings(), pages=3)
    assert job.next_step(GpuView(vram(16311, 700), [], 3500), waited_s=0).loading
    job.page_done()
    # the LLM loaded and evicted the OCR model; torch took memory since: no room beside it now
    step = job.next_step(GpuView(vram(16311, 11960), [LLM_UP], 3500), waited_s=0)
    assert (step.action, step.rule) == ("wait", "yield_no_room")
    # the LLM went away: it loads again (the second load, after an outside eviction)
    step = job.next_step(GpuView(vram(16311, 800), [], 3500), waited_s=7)
    assert step.action == "run" and step.loading and job.loads == 2 and job.yield_s == 7


def test_a_squeezed_llm_makes_the_load_wait():
    job = JobResidency(OcrProfile(model=OCR), Settings(), pages=2)
    squeezed = model(LLM + ":latest", 12000, 10000)
    step = job.next_step(GpuView(vram(16311, 10500), [squeezed], 3500), waited_s=0)
    assert (step.action, step.rule) == ("wait", "yield_squeezed")


def test_no_llm_loaded_the_job_runs_even_below_the_llm_room():
    """Nothing on the card needs the memory now: no wait (it would delay every job by
    OCR_YIELD_MAX_S and then load anyway); the LLM's room is kept by the after-job value."""
    job = JobResidency(OcrProfile(model=OCR), Settings(llm_reserve_mib=9000), pages=2)
    step = job.next_step(GpuView(vram(16311, 2700), [], 3500), waited_s=0)
    assert (step.action, step.loading, step.rule) == ("run", True, "job_hold")
    job.page_done()
    last = job.next_step(GpuView(vram(16311, 6200), [model(OCR, 3500, 3500)], 3500), waited_s=0)
    assert (last.keep_alive_seconds, last.rule) == (0, "llm_reserve")


def test_no_llm_loaded_a_critical_card_still_makes_the_load_wait():
    job = JobResidency(OcrProfile(model=OCR), Settings(llm_reserve_mib=12000), pages=2)
    step = job.next_step(GpuView(vram(16311, 13000), [], 3500), waited_s=0)
    assert (step.action, step.rule) == ("wait", "yield_critical")


def test_a_loaded_llm_that_cannot_share_the_card_is_not_waited_for():
    """Waiting frees nothing while the LLM stays: they take turns, and Ollama evicts the OCR
    model first when the LLM needs the card back (its keep_alive sorts first)."""
    job = JobResidency(OcrProfile(model=OCR), Settings(llm_reserve_mib=12300), pages=2)
    big = model(LLM + ":latest", 12300)
    step = job.next_step(GpuView(vram(16311, 12650), [big], 3300), waited_s=0)
    assert (step.action, step.loading, step.rule) == ("run", True, "job_hold")
    assert job.yields == 0


def test_the_last_page_holds_while_another_job_of_the_model_runs():
    job = JobResidency(OcrProfile(model=OCR), Settings(), pages=1)
    step = job.next_step(GpuView(vram(16311, 3700), [OCR_UP], 3300, other_jobs=1), waited_s=0)
    assert (step.keep_alive, step.rule) == (f"{JOB_HOLD_S}s", "job_hold")
    assert "1 other job" in step.reason
