"""How long the OCR model may stay in GPU memory after a job: the `keep_alive` sent to Ollama.

The GPU belongs to the LLM first (docs/gpu-stewardship.md). The OCR model may linger between
jobs only while it costs the LLM nothing. `calculate_ocr_residency` is pure: it sees the
profile's ceiling, a VRAM snapshot, the models Ollama has loaded (/api/ps) and the thresholds, and
returns `ResidencyDecision(keep_alive_seconds, reason, rule)`.

"Used" and "free" below are the VRAM figures *with the OCR model loaded*: when /api/ps does not
list it yet, its footprint (last seen size, when known) is added to used and taken from free.
Every rule yields a cap; the decision is the smallest cap, and its rule is the reason given:

| rule                | cap                                                                    |
|---------------------|------------------------------------------------------------------------|
| `ceiling`           | `profile.keep_alive` (null → Ollama's 5 min; "forever" → 1 h: the      |
|                     | sidecar never pins a model on a GPU the LLM has priority on)           |
| `unknown`           | 0 when VRAM is unknown (no GPU, NVML failure, unreadable file)         |
| `critical`          | 0 when used ≥ `VRAM_CRITICAL_PCT`                                       |
| `priority_squeezed` | 0 when a loaded priority model (`PRIORITY_MODELS` globs) is not wholly |
|                     | in VRAM (`size_vram < size`): it already has less than it needs         |
| `llm_reserve`       | 0 when no priority model is loaded and free < `LLM_RESERVE_MIB` / 0.8: |
|                     | the LLM must be able to load beside the OCR model without Ollama       |
|                     | evicting it first (Ollama loads a model beside others only when it    |
|                     | takes at most 80% of the free VRAM: Ollama's server/sched.go)          |
| `pressure`          | between `VRAM_PRESSURE_PCT` and `VRAM_CRITICAL_PCT` the ceiling shrinks |
|                     | linearly, from the full ceiling at the pressure mark to 0 at critical   |
| `footprint_unknown` | 0 when the OCR model is not loaded, its size is unknown and a priority |
|                     | model is loaded: an unknown footprint never counts as fitting beside it |
| `priority_order`    | below `PRIORITY_KEEP_ALIVE` (the LLM clients' keep_alive) by at least  |
|                     | one second: Ollama evicts the idle model with the shortest configured   |
|                     | keep_alive first (Ollama's server/sched.go), so under pressure it is   |
|                     | the OCR model that goes, never the LLM                                  |

So: never above the ceiling; always below the priority keep_alive; 0 at or above critical; 0 when a
priority model is squeezed; 0 when VRAM is unknown; and, since every cap only grows with free VRAM,
more free VRAM never gives a shorter keep_alive.

This is the *after-job* value: the last page of a job carries it. Between the pages of a job the
model is held by `sidecar.job_residency.JobResidency`, which asks this function for the last page.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Protocol

from sidecar.durations import format_seconds
from sidecar.loaded_models import LoadedModel, model_key
from sidecar.schemas import OcrProfile
from sidecar.units import pct_text as _pct
from sidecar.vram_monitor import VramSnapshot

# A "forever" ceiling (negative keep_alive) is held to this.
FOREVER_CAP_S = 3600
# Ollama loads a model beside others only when its estimate is at most this share of the free
# VRAM (Ollama's server/sched.go); above it, it evicts an idle runner first.
OLLAMA_FIT_SHARE = 0.8
RULES = (
    "ceiling",
    "unknown",
    "critical",
    "priority_squeezed",
    "llm_reserve",
    "pressure",
    "footprint_unknown",
    "priority_order",
)


class ResidencySettings(Protocol):
    """The part of `Settings` the policy reads."""

    @property
    def priority_models(self) -> list[str]: ...
    @property
    def llm_reserve_mib(self) -> int: ...
    @property
    def vram_pressure_pct(self) -> float: ...
    @property
    def vram_critical_pct(self) -> float: ...
    @property
    def priority_keep_alive_s(self) -> float: ...
    @property
    def ocr_yield_max_s(self) -> float: ...


@dataclass(frozen=True, slots=True)
class ResidencyDecision:
    keep_alive_seconds: int
    reason: str
    rule: str = "ceiling"

    @property
    def keep_alive(self) -> str:
        """The value sent to Ollama, e.g. `"0s"` or `"300s"`."""
        return format_seconds(self.keep_alive_seconds)


def ceiling_seconds(profile: OcrProfile) -> int:
    ceiling = profile.keep_alive_ceiling_s
    if math.isinf(ceiling):
        return FOREVER_CAP_S
    return int(ceiling)


def priority_cap_seconds(settings: ResidencySettings) -> int | None:
    """The longest keep_alive the OCR model may get: a whole second below `PRIORITY_KEEP_ALIVE`
    (None when the LLM's keep_alive is "forever": any finite value sorts before it)."""
    priority = settings.priority_keep_alive_s
    if math.isinf(priority):
        return None
    return max(math.ceil(priority) - 1, 0)


def llm_room_mib(llm_reserve_mib: int) -> int:
    """Free VRAM a priority model of `LLM_RESERVE_MIB` needs to load beside a resident model
    without Ollama evicting that one first."""
    return math.ceil(llm_reserve_mib / OLLAMA_FIT_SHARE)


def is_priority_model(name: str, patterns: Sequence[str]) -> bool:
    """Glob match on the /api/ps name, with and without its `:latest` tag."""
    key = model_key(name)
    candidates = {key, key.removesuffix(":latest")}
    return any(fnmatchcase(c, p.lower()) for c in candidates for p in patterns)


def is_listed(model: str, loaded: Sequence[LoadedModel]) -> bool:
    """Whether /api/ps lists `model` (names compared in Ollama's normal form)."""
    key = model_key(model)
    return any(model_key(m.name) == key for m in loaded)


def priority_loaded(
    model: str, loaded: Sequence[LoadedModel], settings: ResidencySettings
) -> list[LoadedModel]:
    """The loaded priority models, never the OCR model itself even when a glob matches it."""
    own = model_key(model)
    return [
        m
        for m in loaded
        if model_key(m.name) != own and is_priority_model(m.name, settings.priority_models)
    ]


def _ocr_footprint(model: str, loaded: Sequence[LoadedModel], known_mib: int | None) -> int:
    """MiB to add to "used" for the OCR model staying: 0 when /api/ps shows it loaded."""
    if is_listed(model, loaded):
        return 0
    return max(known_mib or 0, 0)


def calculate_ocr_residency(
    active_profile: OcrProfile,
    vram: VramSnapshot | None,
    loaded_models: Sequence[LoadedModel],
    settings: ResidencySettings,
    *,
    ocr_footprint_mib: int | None = None,
) -> ResidencyDecision:
    """keep_alive for the OCR model of `active_profile`; the rules are in the module docstring.

    `ocr_footprint_mib`: the OCR model's VRAM size when last seen in /api/ps (None: unknown),
    used only when the model is not loaded now.
    """
    ceiling = ceiling_seconds(active_profile)
    caps: list[ResidencyDecision] = [
        ResidencyDecision(ceiling, f"profile ceiling {format_seconds(ceiling)}", "ceiling")
    ]
    below_priority = priority_cap_seconds(settings)
    if below_priority is not None and below_priority < ceiling:
        caps.append(
            ResidencyDecision(
                below_priority,
                f"priority order: {format_seconds(below_priority)}, below the LLM's keep_alive "
                f"{format_seconds(below_priority + 1)} so Ollama evicts the OCR model first",
                "priority_order",
            )
        )
    if vram is None:
        caps.append(ResidencyDecision(0, "vram unknown: the OCR model does not stay", "unknown"))
        return _smallest(caps)

    footprint = _ocr_footprint(active_profile.model, loaded_models, ocr_footprint_mib)
    used = vram.used_mib + footprint
    free = max(vram.free_mib - footprint, 0)
    used_pct = 100.0 * used / vram.total_mib if vram.total_mib > 0 else 100.0
    critical = settings.vram_critical_pct
    pressure = settings.vram_pressure_pct

    if used_pct >= critical:
        caps.append(
            ResidencyDecision(
                0, f"vram critical: {_pct(used_pct)} used ≥ {_pct(critical)}", "critical"
            )
        )

    priority = priority_loaded(active_profile.model, loaded_models, settings)
    if (
        priority
        and ocr_footprint_mib is None
        and not is_listed(active_profile.model, loaded_models)
    ):
        caps.append(
            ResidencyDecision(
                0,
                f"footprint unknown: the size of {active_profile.model} is not known, so it "
                f"does not count as fitting beside {priority[0].name}",
                "footprint_unknown",
            )
        )
    for model in priority:
        if model.size_vram < model.size:
            caps.append(
                ResidencyDecision(
                    0,
                    f"priority model {model.name} squeezed: {model.size_vram_mib} of "
                    f"{model.size_mib} MiB in VRAM",
                    "priority_squeezed",
                )
            )
    room = llm_room_mib(settings.llm_reserve_mib)
    if not priority and free < room:
        caps.append(
            ResidencyDecision(
                0,
                f"llm reserve: {free} MiB free < {room} MiB "
                f"{', '.join(settings.priority_models) or 'the LLM'} "
                f"({settings.llm_reserve_mib} MiB) needs to load beside the OCR model",
                "llm_reserve",
            )
        )

    if pressure <= used_pct < critical:
        share = (critical - used_pct) / (critical - pressure)
        scaled = math.floor(ceiling * share)
        caps.append(
            ResidencyDecision(
                scaled,
                f"vram pressure: {_pct(used_pct)} used, between {_pct(pressure)} and "
                f"{_pct(critical)}: {format_seconds(scaled)} of {format_seconds(ceiling)}",
                "pressure",
            )
        )

    decision = _smallest(caps)
    if all(cap.rule in ("ceiling", "priority_order") for cap in caps):
        # no VRAM rule limits it: say why there is room
        return ResidencyDecision(
            decision.keep_alive_seconds,
            f"room: {_pct(used_pct)} used, {free} MiB free; "
            + (
                f"profile ceiling {format_seconds(ceiling)}"
                if decision.rule == "ceiling"
                else decision.reason
            ),
            decision.rule,
        )
    return decision


def _smallest(caps: list[ResidencyDecision]) -> ResidencyDecision:
    # min() keeps the first of equal caps, so a 0s ceiling is reported as the ceiling.
    return min(caps, key=lambda cap: cap.keep_alive_seconds)
