"""Residency over a whole OCR job: what to do before each page (docs/gpu-stewardship.md).

`calculate_ocr_residency` answers "how long may the OCR model stay *after* the job". This module
answers the question the pipeline asks before *every* page: run the page now or yield to the LLM,
which `keep_alive` to send on the page's call, and whether that call will load the model. It is
pure: no I/O, no clock, no HTTP client; the caller brings what it saw (`GpuView`) and how long it
has already waited before this page, and tells it when a page's call finished.

Rules (the `rule` names are stable and machine-readable; `RULES` lists them):

| rule              | when                                                       | step  |
|-------------------|------------------------------------------------------------|-------|
| `job_hold`        | any page but the last, and the last while another job of   | run   |
|                   | the same model runs (`GpuView.other_jobs`)                 |       |
| after-job rules   | the last page: `calculate_ocr_residency`'s rule and value  | run   |
| `yield_squeezed`  | the model must load; a loaded priority model is not wholly | wait  |
|                   | in VRAM (`size_vram < size`)                               |       |
| `yield_no_room`   | the model must load; a priority model is loaded and the    | wait  |
|                   | OCR footprint does not fit beside it (an unknown footprint |       |
|                   | or unknown VRAM never fits)                                |       |
| `yield_critical`  | the model must load; VRAM with it would reach              | wait  |
|                   | `VRAM_CRITICAL_PCT`                                        |       |

Holding the model for the job. Every page call but the last carries `hold_seconds`: at least
`JOB_HOLD_S` (the gap to the next page is a render and an HTTP round trip, a retry's backoff at
worst), never 0, and a whole second below `PRIORITY_KEEP_ALIVE`. The last page carries the
after-job value (`calculate_ocr_residency`, which also stays below the priority keep_alive). Since
every value the sidecar sends sorts before the LLM's keep_alive in Ollama's eviction order
(Ollama's server/sched.go), an LLM that needs the memory between two pages gets it from Ollama:
the idle OCR model is evicted, whatever time it has left.

Loads. A step loads (`loading=True`) only when `/api/ps` does not list the model; the page's
own call loads it (no separate load call: a request for another model that arrived between a
load call's answer and the page call would evict the model just loaded, and be evicted in turn).
Since the hold covers the gap between pages, the model is then listed for the rest of the job
unless Ollama evicted it, so a job loads at most once unless Ollama evicted the model. A last page
whose after-job value is 0 loads the model, reads the page and leaves: Ollama unloads a model
whose call carried 0 as soon as that call is done.

Yielding, and why only before a load, and only when waiting can help. These are checked when the
OCR model is *not* listed, i.e. when running the page would (re)load it: that load is what would
evict the LLM (Ollama evicts the idle LLM when the newcomer does not fit) or over-commit the card.
When the OCR model is listed its memory is already taken; pausing would keep that memory idle and
only delay the job, and an LLM that needs to load gets it anyway, because Ollama evicts the idle
OCR model first. So a job that is running never pauses; a job whose model was evicted by the LLM
waits before taking it back. The job waits when:

- a loaded priority model is squeezed (`yield_squeezed`);
- a loaded priority model that the OCR model *could* share the card with (`shares_the_card`: it
  fits beside it by Ollama's rule with only Ollama's models on the card) has no room for it now
  (`yield_no_room`: an unknown footprint or VRAM never fits) or VRAM with it would be critical
  (`yield_critical`): other memory (torch, another process) is in the way, and it may go;
- no priority model is loaded and VRAM with the OCR model would be critical (`yield_critical`).
  With no priority model loaded and room below critical the job does not wait, even when the load
  leaves less than the LLM's room: nothing on the card needs the memory now, and a wait would only
  delay every job by `OCR_YIELD_MAX_S` and then load anyway. The LLM's room is kept by the
  after-job value (`llm_reserve` gives 0s, so the model leaves when the job ends) and by the torch
  placement marks; an LLM that arrives mid-job waits for at most the page in flight, then Ollama
  evicts the idle OCR model (its keep_alive sorts first).

A loaded LLM that the OCR model can never share the card with (a long context) is not waited
for: waiting frees nothing while it stays, and `bench/gpu_sim.py` measured that waiting for it only
made jobs longer and the LLM's reloads more frequent (docs/gpu-stewardship.md). The two take
turns; Ollama evicts the OCR model first whenever the LLM needs the card back.

The wait is bounded: while `waited_s` (what the caller already yielded before this page) is below
`OCR_YIELD_MAX_S` the step says `wait` and `retry_in_s` (`YIELD_POLL_S`, or what is left); once
the bound is reached the page runs anyway, loading the model (the job must finish; the LLM's
clients resend and Ollama loads it again, evicting the OCR model first). The reason then says
that the wait ran out. A wait never carries a load: the caller asks again after `retry_in_s`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from sidecar.durations import format_seconds
from sidecar.loaded_models import LoadedModel
from sidecar.residency_policy import (
    OLLAMA_FIT_SHARE,
    ResidencySettings,
    calculate_ocr_residency,
    is_listed,
    llm_room_mib,
    priority_cap_seconds,
    priority_loaded,
)
from sidecar.schemas import OcrProfile
from sidecar.units import pct_text as _pct
from sidecar.vram_monitor import VramSnapshot

# The in-job hold: covers the gap between two pages (render, round trip, a retry's backoff).
JOB_HOLD_S = 60
# How often a yielding job looks again at VRAM and /api/ps.
YIELD_POLL_S = 1.0

YIELD_RULES = ("yield_squeezed", "yield_no_room", "yield_critical")
RULES = ("job_hold", *YIELD_RULES)  # plus calculate_ocr_residency's rules on the last page


@dataclass(frozen=True, slots=True)
class GpuView:
    """What the caller saw just before a page."""

    vram: VramSnapshot | None  # None = unknown
    loaded: Sequence[LoadedModel]  # /api/ps now
    # OCR model footprint if it must load: /api/tags size + KV headroom; None = unknown.
    ocr_size_mib: int | None
    # Other jobs of the same OCR model running in this sidecar now: while one is, the last page
    # of this job holds the model too (the job that ends last sends the after-job value).
    other_jobs: int = 0


@dataclass(frozen=True, slots=True)
class PageStep:
    action: Literal["run", "wait"]  # run this page now, or yield to the LLM and ask again
    keep_alive_seconds: int  # send on this page's call
    # /api/ps does not list the OCR model: the page's call will load it.
    loading: bool
    rule: str  # stable machine-readable rule name (RULES, or an after-job rule)
    reason: str  # human text
    retry_in_s: float = 0.0  # when action == "wait": ask again after this long
    last: bool = False  # the job's last page: keep_alive is the after-job value

    @property
    def keep_alive(self) -> str:
        """The value sent to Ollama, e.g. `"0s"`, `"60s"`."""
        return format_seconds(self.keep_alive_seconds)


def hold_seconds(settings: ResidencySettings) -> int:
    """The in-job keep_alive: `JOB_HOLD_S`, kept a whole second below the priority keep_alive,
    and never 0 (with a priority keep_alive of 1 s or less, the hold wins: 1 s)."""
    cap = priority_cap_seconds(settings)
    hold = JOB_HOLD_S if cap is None else min(JOB_HOLD_S, cap)
    return max(hold, 1)


def shares_the_card(
    total_mib: int, priority: Sequence[LoadedModel], footprint_mib: int, llm_reserve_mib: int
) -> bool:
    """Whether the OCR model and the priority LLM can be resident together by Ollama's rule
    (the newcomer takes at most 80% of the free VRAM), counting Ollama's models alone on the card:
    the loaded priority models' sizes, or `LLM_RESERVE_MIB` when none is loaded."""
    if priority:
        taken = sum(model.size_mib for model in priority)
        return footprint_mib <= OLLAMA_FIT_SHARE * (total_mib - taken)
    return llm_room_mib(llm_reserve_mib) + footprint_mib <= total_mib


def llm_needs_memory(
    profile: OcrProfile, view: GpuView, settings: ResidencySettings
) -> tuple[str, str] | None:
    """(rule, reason) when loading the OCR model now would take memory the priority LLM needs
    now and waiting can give it back; None when the OCR model may load. Only meaningful while
    the OCR model is not listed. The cases are in the module docstring."""
    priority = priority_loaded(profile.model, view.loaded, settings)
    for model in priority:
        if model.size_vram < model.size:
            return (
                "yield_squeezed",
                f"priority model {model.name} squeezed: {model.size_vram_mib} of "
                f"{model.size_mib} MiB in VRAM",
            )
    vram = view.vram
    footprint = view.ocr_size_mib
    if vram is None:
        if priority:
            return ("yield_no_room", f"vram unknown: {profile.model} may not fit beside "
                    f"{priority[0].name}")  # fmt: skip
        return None  # nothing to protect that we can see, and nothing to measure
    if footprint is None:
        if priority:
            return (
                "yield_no_room",
                f"footprint unknown: {profile.model} does not count as fitting beside "
                f"{priority[0].name}",
            )
        footprint = 0
    sharing = shares_the_card(vram.total_mib, priority, footprint, settings.llm_reserve_mib)
    used_after = vram.used_mib + footprint
    used_pct = 100.0 * used_after / vram.total_mib if vram.total_mib > 0 else 100.0
    if priority:
        if not sharing:
            return None  # they take turns: waiting frees nothing while the LLM stays (see above)
        if used_pct >= settings.vram_critical_pct:
            return (
                "yield_critical",
                f"vram critical with {profile.model}: {_pct(used_pct)} ≥ "
                f"{_pct(settings.vram_critical_pct)}",
            )
        if footprint > OLLAMA_FIT_SHARE * vram.free_mib:
            return (
                "yield_no_room",
                f"no room beside {priority[0].name}: {profile.model} needs {footprint} MiB, "
                f"{vram.free_mib} MiB free",
            )
        return None
    if used_pct >= settings.vram_critical_pct:
        return (
            "yield_critical",
            f"vram critical with {profile.model}: {_pct(used_pct)} ≥ "
            f"{_pct(settings.vram_critical_pct)}",
        )
    # No priority model is loaded: nothing on the card needs the memory now. The LLM's room is
    # kept by the after-job value (`llm_reserve`: 0s) and by the torch placement marks, not by
    # holding the job back: a wait here would delay every job by OCR_YIELD_MAX_S whenever other
    # memory is in use, and then load anyway.
    return None


class JobResidency:
    """The residency of one OCR job of `pages` pages: ask `next_step` before every page (again
    after each `wait`), call `page_done` when the page's call finished, success or not."""

    def __init__(self, profile: OcrProfile, settings: ResidencySettings, *, pages: int) -> None:
        if pages < 1:
            raise ValueError("a job has at least one page")
        self.profile = profile
        self.settings = settings
        self.pages = pages
        self.done = 0
        self._loads = 0
        self._yield_s = 0.0  # waited before pages that then ran
        self._yields = 0  # pages that waited at all

    @property
    def loads(self) -> int:
        """Loads this job caused (steps that ran a page while /api/ps did not list the model)."""
        return self._loads

    @property
    def yield_s(self) -> float:
        """Seconds the job waited for the priority LLM before pages that then ran."""
        return self._yield_s

    @property
    def yields(self) -> int:
        """Pages that waited for the priority LLM before running."""
        return self._yields

    @property
    def remaining(self) -> int:
        return self.pages - self.done

    @property
    def hold_seconds(self) -> int:
        return hold_seconds(self.settings)

    def next_step(self, view: GpuView, *, waited_s: float) -> PageStep:
        """What to do before the next page; `waited_s`: seconds already yielded before it."""
        if self.done >= self.pages:
            raise RuntimeError("every page of the job is done")
        loading = not is_listed(self.profile.model, view.loaded)
        last = self.remaining == 1
        need = llm_needs_memory(self.profile, view, self.settings) if loading else None
        yield_max = max(self.settings.ocr_yield_max_s, 0.0)
        hold = self.hold_seconds
        if need is not None and waited_s < yield_max:
            rule, reason = need
            return PageStep(
                "wait",
                hold,
                loading,
                rule,
                f"{reason}: waiting for the LLM ({waited_s:.0f}s of {yield_max:.0f}s)",
                retry_in_s=min(YIELD_POLL_S, yield_max - waited_s),
                last=last,
            )
        suffix = ""
        if need is not None:
            suffix = f"; waited {waited_s:.0f}s for the LLM ({need[1]}), loading anyway"
        if not last:
            keep_alive, rule = hold, "job_hold"
            reason = (
                f"job hold: {format_seconds(hold)} between pages, {self.remaining - 1} "
                f"page{'s' if self.remaining != 2 else ''} after this one"
            )
        elif view.other_jobs > 0:
            keep_alive, rule = hold, "job_hold"
            reason = (
                f"job hold: {format_seconds(hold)}, {view.other_jobs} other job"
                f"{'s' if view.other_jobs != 1 else ''} of the model still running"
            )
        else:
            decision = calculate_ocr_residency(
                self.profile,
                view.vram,
                view.loaded,
                self.settings,
                ocr_footprint_mib=view.ocr_size_mib,
            )
            keep_alive, rule, reason = (
                decision.keep_alive_seconds,
                decision.rule,
                decision.reason,
            )
        step = PageStep("run", keep_alive, loading, rule, reason + suffix, last=last)
        self._ran(step, waited_s)
        return step

    def _ran(self, step: PageStep, waited_s: float) -> None:
        if step.loading:
            self._loads += 1
        if waited_s > 0:
            self._yields += 1
            self._yield_s += waited_s

    def page_done(self) -> None:
        """The page's call finished (success or not)."""
        if self.done >= self.pages:
            raise RuntimeError("every page of the job is done")
        self.done += 1
