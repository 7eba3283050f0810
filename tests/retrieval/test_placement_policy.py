"""Properties of the pure placement policy `decide_placement`."""

from __future__ import annotations

import dataclasses

from hypothesis import assume, given
from hypothesis import strategies as st

from sidecar.placement_policy import (
    PlacementInputs,
    decide_placement,
    placement_keep_free_mib,
    placement_reserve_mib,
)
from sidecar.vram_monitor import VramSnapshot


@st.composite
def snapshots(draw: st.DrawFn) -> VramSnapshot:
    total = draw(st.integers(1000, 200_000))
    used = draw(st.integers(0, total))
    return VramSnapshot(total, used, total - used, "file", 0.0)


@st.composite
def placement_inputs(draw: st.DrawFn) -> PlacementInputs:
    return PlacementInputs(
        mode=draw(st.sampled_from(["auto", "cpu", "cuda"])),
        cuda_available=draw(st.booleans()),
        vram=draw(st.none() | snapshots()),
        model_mib=draw(st.integers(1, 5000)),
        headroom_mib=draw(st.integers(0, 4000)),
        pressure_pct=draw(st.floats(10, 100)),
        current=draw(st.sampled_from(["cpu", "cuda"])),
        fit_held_s=draw(st.floats(0, 1000)),
        settle_s=draw(st.floats(0, 300)),
        reserve_mib=draw(st.sampled_from([0, 0, 9000]) | st.integers(0, 20_000)),
        keep_free_mib=draw(st.sampled_from([0, 0, 9000]) | st.integers(0, 20_000)),
    )


auto_inputs = placement_inputs().map(
    lambda i: dataclasses.replace(i, mode="auto", cuda_available=True)
)


@st.composite
def gpu_fits_inputs(draw: st.DrawFn) -> PlacementInputs:
    """A model on the CPU, VRAM with room for it, settled: the policy must move it up."""
    total = draw(st.integers(16_000, 200_000))
    pressure = draw(st.floats(50, 100))
    model, headroom = draw(st.integers(1, 2000)), draw(st.integers(0, 2000))
    max_used = int(total * pressure / 100) - model - headroom - 1
    used = draw(st.integers(0, max_used))
    settle = draw(st.floats(0, 300))
    return PlacementInputs(
        mode="auto",
        cuda_available=True,
        vram=VramSnapshot(total, used, total - used, "file", 0.0),
        model_mib=model,
        headroom_mib=headroom,
        pressure_pct=pressure,
        current="cpu",
        fit_held_s=settle + draw(st.floats(0, 100)),
        settle_s=settle,
    )


@given(placement_inputs())
def test_cpu_when_pinned_to_cpu_or_cuda_absent(inputs: PlacementInputs) -> None:
    decision = decide_placement(inputs)
    if inputs.mode == "cpu":
        assert decision.device == "cpu" and decision.reason == "MODEL_DEVICE=cpu"
    elif not inputs.cuda_available:
        assert decision.device == "cpu" and decision.reason == "cuda unavailable"
    assert decision.reason  # always says why


@given(auto_inputs)
def test_cpu_when_vram_unknown_or_under_pressure(inputs: PlacementInputs) -> None:
    decision = decide_placement(inputs)
    if inputs.vram is None:
        assert decision.device == "cpu" and decision.reason == "vram unknown"
    elif inputs.vram.used_pct >= inputs.pressure_pct:
        assert decision.device == "cpu"
        assert decision.reason.startswith("vram pressure ")


@given(auto_inputs)
def test_gpu_only_when_the_model_and_headroom_fit_and_settled(inputs: PlacementInputs) -> None:
    decision = decide_placement(inputs)
    if decision.device != "cuda":
        return
    vram = inputs.vram
    assert vram is not None and vram.used_pct < inputs.pressure_pct
    if inputs.current == "cpu":
        needed = inputs.model_mib + inputs.headroom_mib
        assert vram.free_mib >= needed
        assert vram.free_mib - needed >= inputs.reserve_mib  # the LLM's room stays free
        assert 100.0 * (vram.used_mib + needed) / vram.total_mib < inputs.pressure_pct
        assert inputs.fit_held_s >= inputs.settle_s


@given(gpu_fits_inputs())
def test_a_move_up_never_bounces_straight_back(inputs: PlacementInputs) -> None:
    assert decide_placement(inputs).device == "cuda"
    vram = inputs.vram
    assert vram is not None
    after = VramSnapshot(
        vram.total_mib,
        vram.used_mib + inputs.model_mib,
        vram.free_mib - inputs.model_mib,
        "file",
        0.0,
    )
    moved = dataclasses.replace(inputs, vram=after, current="cuda", fit_held_s=0.0)
    assert decide_placement(moved).device == "cuda"


@given(
    gpu_fits_inputs() | auto_inputs.map(lambda i: dataclasses.replace(i, current="cuda")),
    st.floats(0, 1000),
    st.integers(0, 100_000),
)
def test_monotone_in_waiting_and_in_free_vram(
    inputs: PlacementInputs, more_wait: float, freed_mib: int
) -> None:
    """Waiting longer, or having more free VRAM, never turns a GPU decision into a CPU one."""
    assume(decide_placement(inputs).device == "cuda")
    vram = inputs.vram
    assert vram is not None
    freed = min(freed_mib, vram.used_mib)
    roomier = VramSnapshot(vram.total_mib, vram.used_mib - freed, vram.free_mib + freed, "f", 0.0)
    later = dataclasses.replace(inputs, fit_held_s=inputs.fit_held_s + more_wait, vram=roomier)
    assert decide_placement(later).device == "cuda"


@given(auto_inputs)
def test_settling_reports_that_the_gpu_fits(inputs: PlacementInputs) -> None:
    """The caller keeps the settling clock from `gpu_fits`: it is set exactly when VRAM allows."""
    assume(inputs.current == "cpu")
    decision = decide_placement(inputs)
    unsettled = dataclasses.replace(inputs, fit_held_s=0.0, settle_s=inputs.settle_s + 1.0)
    waited = dataclasses.replace(inputs, fit_held_s=1e9)
    assert decide_placement(unsettled).gpu_fits == (decide_placement(waited).device == "cuda")
    if decision.device == "cpu" and decision.gpu_fits:
        assert decision.reason.startswith("settling")


@given(snapshots(), st.sampled_from(["cpu", "cuda"]))
def test_pinned_cuda_ignores_vram(vram: VramSnapshot, current: str) -> None:
    inputs = PlacementInputs("cuda", True, vram, 100, 100, 85.0, current, 0.0, 30.0)  # type: ignore[arg-type]
    assert decide_placement(inputs).device == "cuda"


def test_reason_reads_like_the_contract() -> None:
    vram = VramSnapshot(16000, 14560, 1440, "nvml", 0.0)
    inputs = PlacementInputs("auto", True, vram, 1100, 1024, 85.0, "cuda", 0.0, 30.0)
    assert decide_placement(inputs).reason == "vram pressure 91% ≥ 85%"


@given(auto_inputs)
def test_the_reserve_is_kept_both_ways_without_flapping(inputs: PlacementInputs) -> None:
    """A model moves up only when the move leaves `reserve_mib` free; a model on the GPU moves
    down when free VRAM is below `keep_free_mib`; with neither the policy is what it was; and a
    model that just moved down does not qualify to move straight back up (with the caller's
    marks, `keep_free_mib` ≤ `reserve_mib`)."""
    decision = decide_placement(inputs)
    unreserved = decide_placement(dataclasses.replace(inputs, reserve_mib=0, keep_free_mib=0))
    vram = inputs.vram
    if decision.device == "cuda":
        assert unreserved.device == "cuda"
        if vram is not None and inputs.current == "cuda":
            assert vram.free_mib >= inputs.keep_free_mib
    if unreserved.device == "cuda" and decision.device == "cpu":
        assert decision.reason.startswith("llm reserve: ")
        assert not decision.gpu_fits  # the settling clock does not run against the reserve
        if inputs.current == "cuda" and vram is not None:
            down = VramSnapshot(vram.total_mib, vram.used_mib - inputs.model_mib,
                                vram.free_mib + inputs.model_mib, "f", 0.0)  # fmt: skip
            again = dataclasses.replace(inputs, vram=down, current="cpu", fit_held_s=1e9,
                                        reserve_mib=max(inputs.reserve_mib,
                                                        inputs.keep_free_mib))  # fmt: skip
            assert decide_placement(again).device == "cpu"


@given(auto_inputs)
def test_without_keep_free_the_reserve_never_pushes_a_model_off_the_gpu(
    inputs: PlacementInputs,
) -> None:
    on_gpu = dataclasses.replace(inputs, current="cuda", keep_free_mib=0)
    unreserved = dataclasses.replace(on_gpu, reserve_mib=0)
    assert decide_placement(on_gpu) == decide_placement(unreserved)


def test_placement_reserve_keeps_room_for_the_llm_beside_the_ocr_model_when_it_can() -> None:
    # a 9000 MiB LLM can share 16 GB with the OCR model: room for it (11250) and the OCR model
    assert placement_reserve_mib(16311, 9000, 3300) == 11250 + 3300
    assert placement_keep_free_mib(16311, 9000, 3300) == 11250 + 3300
    # a 12300 MiB LLM cannot: it evicts the OCR model, then needs its own size; models stay
    assert placement_reserve_mib(16311, 12300, 3300) == 12300
    assert placement_keep_free_mib(16311, 12300, 3300) == 0
    assert placement_reserve_mib(None, 9000, 3300) == 9000
    assert placement_reserve_mib(16311, 9000, None) == 9000


@given(gpu_fits_inputs(), st.integers(0, 20_000))
def test_a_larger_reserve_never_moves_a_model_up_that_a_smaller_one_keeps_down(
    inputs: PlacementInputs, reserve: int
) -> None:
    small = decide_placement(dataclasses.replace(inputs, reserve_mib=reserve))
    large = decide_placement(dataclasses.replace(inputs, reserve_mib=reserve + 1000))
    assert not (large.device == "cuda" and small.device == "cpu")


def test_reserve_reason_names_the_shortfall() -> None:
    vram = VramSnapshot(16311, 3000, 13311, "nvml", 0.0)
    inputs = PlacementInputs("auto", True, vram, 1100, 1024, 85.0, "cpu", 60.0, 30.0, 12000)
    decision = decide_placement(inputs)
    assert decision.device == "cpu"
    assert decision.reason == "llm reserve: 11187 MiB would be free < 12000 MiB kept for the LLM"
    assert decide_placement(dataclasses.replace(inputs, reserve_mib=9000)).device == "cuda"
