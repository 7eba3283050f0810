"""Where the torch models (embedder, reranker) should run: the pure placement policy.

GPU when CUDA is available and free VRAM covers the model plus headroom without crossing
`VRAM_PRESSURE_PCT`; CPU when CUDA is absent, VRAM is unknown, or usage is at/above the pressure
threshold. A model on the CPU goes back to the GPU only after the fit has held for a settling
period, so a VRAM figure hovering around the threshold does not make it flap. `devices.py` applies
the decisions; this module imports no torch so its property tests run without it.

`reserve_mib` and `keep_free_mib`: VRAM kept for a priority model that is not loaded. A model
moves up only when the move leaves `reserve_mib` free; a model on the GPU moves down when free
VRAM is below `keep_free_mib` (the gap between the two marks is the model plus its headroom, so it
does not flap). While a priority model is loaded the caller passes 0 for both. While none is (or
it cannot tell) it passes `placement_reserve_mib(...)` and `placement_keep_free_mib(...)`:

- an LLM that can share the card with the OCR model by Ollama's rule (it takes at most 80% of the
  free VRAM): room for both, both ways. Ollama does not see VRAM that torch takes *or gives back*
  after its runners loaded (Ollama's server/sched.go): what counts is where the torch models were
  when Ollama last loaded a model. A torch model left on the GPU when the OCR model loads makes an
  LLM that arrives during the job evict the busy OCR model (a wait of up to a page) instead of
  loading beside it; `bench/gpu_sim.py` shows those squeezes, and none with the models moved
  down first.
- an LLM that cannot share the card (a long context): it evicts the OCR model anyway and then needs
  its own size beside the torch models: `LLM_RESERVE_MIB` for moves up, and a model on the GPU
  stays (moving it down would follow every OCR job down and up again for nothing).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from sidecar.residency_policy import llm_room_mib
from sidecar.units import pct_text as _pct
from sidecar.vram_monitor import VramSnapshot

Device = Literal["cuda", "cpu"]
DeviceMode = Literal["auto", "cpu", "cuda"]


def placement_reserve_mib(total_mib: int | None, llm_reserve_mib: int, ocr_mib: int | None) -> int:
    """The `reserve_mib` to pass while no priority model is loaded.

    When the card can hold the priority model beside the OCR model by Ollama's rule (the LLM takes
    at most 80% of the free VRAM: `llm_room_mib`), keep room for both, so an LLM that arrives
    during an OCR job loads beside it. When it cannot (a long-context LLM), the LLM will evict the
    OCR model anyway and then loads with nothing else of Ollama's resident: keep
    `LLM_RESERVE_MIB` for it. An unknown OCR size or total counts as the second case.
    """
    room = llm_room_mib(llm_reserve_mib)
    if total_mib is not None and ocr_mib is not None and room + ocr_mib <= total_mib:
        return room + ocr_mib
    return llm_reserve_mib


def placement_keep_free_mib(
    total_mib: int | None, llm_reserve_mib: int, ocr_mib: int | None
) -> int:
    """The `keep_free_mib` to pass while no priority model is loaded: the room for the LLM beside
    the OCR model when the card can hold both (see `placement_reserve_mib`), else 0 (stay)."""
    room = llm_room_mib(llm_reserve_mib)
    if total_mib is not None and ocr_mib is not None and room + ocr_mib <= total_mib:
        return room + ocr_mib
    return 0


@dataclass(frozen=True, slots=True)
class PlacementDecision:
    device: Device
    reason: str
    # True when the GPU would be chosen but for the settling period (the caller keeps its clock).
    gpu_fits: bool = False


@dataclass(frozen=True, slots=True)
class PlacementInputs:
    mode: DeviceMode
    cuda_available: bool
    vram: VramSnapshot | None
    model_mib: int
    headroom_mib: int
    pressure_pct: float
    current: Device
    fit_held_s: float  # how long the GPU has continuously fitted (0 when it just started)
    settle_s: float
    reserve_mib: int = 0  # free VRAM a move up must leave (placement_reserve_mib, no LLM loaded)
    keep_free_mib: int = 0  # below this much free VRAM a model on the GPU moves down


def decide_placement(inputs: PlacementInputs) -> PlacementDecision:
    """Where a model should run now. Pure: same inputs, same answer."""
    if inputs.mode == "cpu":
        return PlacementDecision("cpu", "MODEL_DEVICE=cpu")
    if not inputs.cuda_available:
        return PlacementDecision("cpu", "cuda unavailable")
    if inputs.mode == "cuda":
        # The operator pinned the GPU: no VRAM-based fallback.
        return PlacementDecision("cuda", "MODEL_DEVICE=cuda", gpu_fits=True)
    vram = inputs.vram
    if vram is None:
        return PlacementDecision("cpu", "vram unknown")
    if vram.used_pct >= inputs.pressure_pct:
        reason = f"vram pressure {_pct(vram.used_pct)} ≥ {_pct(inputs.pressure_pct)}"
        return PlacementDecision("cpu", reason)
    if inputs.current == "cuda":
        # Its weights are already counted in `used`; below the threshold it stays, unless it sits
        # in the room kept for a priority model that is not loaded.
        if vram.free_mib < inputs.keep_free_mib:
            reason = (
                f"llm reserve: {vram.free_mib} MiB free < {inputs.keep_free_mib} MiB kept for "
                "the LLM"
            )
            return PlacementDecision("cpu", reason)
        return PlacementDecision("cuda", "vram ok", gpu_fits=True)
    needed = inputs.model_mib + inputs.headroom_mib
    if vram.free_mib < needed:
        return PlacementDecision("cpu", f"free vram {vram.free_mib} MiB < {needed} MiB needed")
    if vram.free_mib - needed < inputs.reserve_mib:
        reason = (
            f"llm reserve: {vram.free_mib - needed} MiB would be free < {inputs.reserve_mib} MiB "
            "kept for the LLM"
        )
        return PlacementDecision("cpu", reason)
    after_pct = 100.0 * (vram.used_mib + needed) / vram.total_mib if vram.total_mib else 100.0
    if after_pct >= inputs.pressure_pct:
        # Moving up would itself cross the threshold and bounce straight back.
        reason = f"vram would reach {_pct(after_pct)} ≥ {_pct(inputs.pressure_pct)} on the gpu"
        return PlacementDecision("cpu", reason)
    if inputs.fit_held_s < inputs.settle_s:
        reason = f"settling: vram free for {inputs.fit_held_s:.0f}s < {inputs.settle_s:.0f}s"
        return PlacementDecision("cpu", reason, gpu_fits=True)
    return PlacementDecision("cuda", "vram ok", gpu_fits=True)


def fit_started_at(
    decision: PlacementDecision, fit_since: float | None, now: float
) -> float | None:
    """Since when the GPU has fitted without a break, after `decision` (None: it does not fit
    now); the caller keeps it and passes `now - fit_since` as the next `fit_held_s`."""
    if not decision.gpu_fits:
        return None
    return now if fit_since is None else fit_since
