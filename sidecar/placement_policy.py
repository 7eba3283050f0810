"""Where the torch models (embedder, reranker) should run: the pure placement policy.

GPU when CUDA is available and free VRAM covers the model plus headroom without crossing
`VRAM_PRESSURE_PCT`; CPU when CUDA is absent, VRAM is unknown, or usage is at/above the pressure
threshold. A model on the CPU goes back to the GPU only after the fit has held for a settling
period, so a VRAM figure hovering around the threshold does not make it flap. `devices.py` applies
the decisions; this module imports no torch so its property tests run without it.

`reserve_mib`: VRAM a move up must leave free. The caller passes `LLM_RESERVE_MIB` when no
priority model is loaded (or it cannot tell) and 0 when one is: Ollama does not see VRAM that
torch takes after its runners loaded (ollama-api.md §8.4), so a torch model that moved up into the
LLM's room would make the LLM load squeezed, or make Ollama over-commit the card.

The reserve gates moves *up* only; a model already on the GPU stays (below the pressure mark).
The reserve is asked for while no priority model is loaded, which is exactly when the LLM's own
memory is free, so a shortfall then comes from the OCR model, whose residency is short and which
Ollama evicts for the LLM anyway (its keep_alive sorts first). Moving down on that would make the
torch models follow every OCR job down and (after the settling period) up again: a move costs
seconds of copying and a batch's wait each time, and the LLM would gain nothing Ollama does not
already give it. Real pressure on a resident model is handled by `VRAM_PRESSURE_PCT`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from sidecar.units import pct_text as _pct
from sidecar.vram_monitor import VramSnapshot

Device = Literal["cuda", "cpu"]
DeviceMode = Literal["auto", "cpu", "cuda"]


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
    reserve_mib: int = 0  # free VRAM a move up must leave (LLM_RESERVE_MIB with no LLM loaded)


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
        # Its weights are already counted in `used`; below the threshold it stays.
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
