"""The residency policy (docs/gpu-stewardship.md): hypothesis properties, worked examples."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from sidecar.residency_policy import (
    FOREVER_CAP_S,
    RULES,
    calculate_ocr_residency,
    ceiling_seconds,
    is_priority_model,
)
from sidecar.schemas import OcrProfile
from sidecar.vram_monitor import VramSnapshot
from tests.fixtures.residency import OCR, loaded, snapshot
from tests.fixtures.residency import PolicySettings as Thresholds

# --- strategies --------------------------------------------------------------------------------

ceilings = st.one_of(
    st.none(),
    st.integers(min_value=-5, max_value=7200),
    st.sampled_from(["0", "0s", "90s", "5m", "1h", "-1m", "1h30m", "2.5m"]),
)
priority_keep_alives = st.one_of(
    st.floats(min_value=0, max_value=7200), st.sampled_from([300.0, 1.0, 0.0, float("inf")])
)
thresholds = st.builds(
    lambda pressure, gap, reserve, priority: Thresholds(
        llm_reserve_mib=reserve,
        vram_pressure_pct=pressure,
        vram_critical_pct=min(100.0, pressure + gap),
        priority_keep_alive_s=priority,
    ),
    st.floats(min_value=10, max_value=99),
    st.floats(min_value=0, max_value=40),
    st.integers(min_value=0, max_value=20000),
    priority_keep_alives,
)
model_lists = st.lists(
    st.builds(
        loaded,
        st.sampled_from([OCR, "typhoon2.5-qwen3-4b", "typhoon2.5:latest", "llama3:8b", "other"]),
        st.integers(min_value=100, max_value=12000),
        st.one_of(st.none(), st.integers(min_value=0, max_value=12000)),
    ),
    max_size=3,
    unique_by=lambda model: model.name,
)
footprints = st.one_of(st.none(), st.integers(min_value=0, max_value=8000))


@st.composite
def vram_pairs(draw: st.DrawFn) -> tuple[VramSnapshot, VramSnapshot]:
    """Two snapshots of one GPU, the second with at least as much free memory."""
    total = draw(st.integers(min_value=1000, max_value=200_000))
    reserved = draw(st.integers(min_value=0, max_value=total // 20))
    used_a = draw(st.integers(min_value=0, max_value=total - reserved))
    used_b = draw(st.integers(min_value=0, max_value=used_a))
    a = snapshot(total, used_a, total - reserved - used_a)
    b = snapshot(total, used_b, total - reserved - used_b)
    return a, b


def decide(ceiling, vram, models, settings, footprint=None):
    profile = OcrProfile(model=OCR, keep_alive=ceiling)
    return calculate_ocr_residency(profile, vram, models, settings, ocr_footprint_mib=footprint)


# --- properties --------------------------------------------------------------------------------


@given(ceilings, vram_pairs(), model_lists, thresholds, footprints)
def test_never_above_the_profile_ceiling(ceiling, pair, models, settings, footprint):
    decision = decide(ceiling, pair[0], models, settings, footprint)
    assert (
        0
        <= decision.keep_alive_seconds
        <= ceiling_seconds(OcrProfile(model=OCR, keep_alive=ceiling))
    )


@given(ceilings, vram_pairs(), model_lists, thresholds, footprints)
def test_zero_at_or_above_critical(ceiling, pair, models, settings, footprint):
    vram = pair[0]
    decision = decide(ceiling, vram, models, settings, footprint)
    if vram.used_pct >= settings.vram_critical_pct:
        assert decision.keep_alive_seconds == 0


@given(ceilings, model_lists, thresholds)
def test_zero_when_vram_is_unknown(ceiling, models, settings):
    decision = decide(ceiling, None, models, settings)
    assert decision.keep_alive_seconds == 0
    # a 0s ceiling is reported as the ceiling, a priority keep_alive under 1 s as the order
    assert decision.rule in ("unknown", "ceiling", "priority_order")


@given(ceilings, vram_pairs(), model_lists, thresholds, footprints)
def test_zero_when_a_loaded_priority_model_is_squeezed(ceiling, pair, models, settings, footprint):
    decision = decide(ceiling, pair[0], models, settings, footprint)
    squeezed = [
        m for m in models
        if m.name != OCR and is_priority_model(m.name, settings.priority_models)
        and m.size_vram < m.size
    ]  # fmt: skip
    if squeezed:
        assert decision.keep_alive_seconds == 0


@given(ceilings, vram_pairs(), model_lists, thresholds, footprints)
def test_more_free_vram_never_shortens_keep_alive(ceiling, pair, models, settings, footprint):
    tighter, roomier = pair
    shorter = decide(ceiling, tighter, models, settings, footprint).keep_alive_seconds
    longer = decide(ceiling, roomier, models, settings, footprint).keep_alive_seconds
    assert longer >= shorter


@given(ceilings, st.one_of(st.none(), vram_pairs()), model_lists, thresholds, footprints)
def test_always_below_the_priority_keep_alive(ceiling, pair, models, settings, footprint):
    """Ollama evicts the idle model with the shortest configured keep_alive first (§8.3)."""
    vram = None if pair is None else pair[0]
    decision = decide(ceiling, vram, models, settings, footprint)
    assert decision.keep_alive_seconds < settings.priority_keep_alive_s or (
        decision.keep_alive_seconds == 0
    )


@given(ceilings, vram_pairs(), model_lists, thresholds)
def test_an_unknown_footprint_never_fits_beside_a_loaded_priority_model(
    ceiling, pair, models, settings
):
    decision = decide(ceiling, pair[0], models, settings, None)
    ocr_listed = any(m.name.startswith(OCR) for m in models)
    priority = [
        m for m in models
        if not m.name.startswith(OCR) and is_priority_model(m.name, settings.priority_models)
    ]  # fmt: skip
    if priority and not ocr_listed:
        assert decision.keep_alive_seconds == 0


@given(ceilings, vram_pairs(), model_lists, thresholds, footprints)
def test_every_decision_has_a_known_rule_and_a_sendable_value(
    ceiling, pair, models, settings, footprint
):
    decision = decide(ceiling, pair[0], models, settings, footprint)
    assert decision.rule in RULES
    assert decision.keep_alive == f"{decision.keep_alive_seconds}s"
    assert decision.reason


# --- worked examples ---------------------------------------------------------------------------

LLM = loaded("typhoon2.5-qwen3-4b:latest", 9000)
# The OCR model listed in /api/ps: its memory is already in "used".
OCR_UP = loaded(OCR + ":latest", 3000)


def test_room_gives_the_ceiling():
    decision = decide(
        "10m", snapshot(16000, 4000), [LLM, OCR_UP], Thresholds(priority_keep_alive_s=3600)
    )
    assert (decision.keep_alive_seconds, decision.rule) == (600, "ceiling")
    assert decision.reason == "room: 25% used, 12000 MiB free; profile ceiling 600s"


def test_room_stays_below_the_llms_keep_alive():
    decision = decide("10m", snapshot(16000, 4000), [LLM, OCR_UP], Thresholds())
    assert (decision.keep_alive_seconds, decision.rule) == (299, "priority_order")
    assert decision.reason.startswith("room: 25% used, 12000 MiB free; priority order: 299s")
    # a "forever" LLM: any finite value sorts before it
    forever = Thresholds(priority_keep_alive_s=float("inf"))
    assert decide("10m", snapshot(16000, 4000), [LLM, OCR_UP], forever).keep_alive_seconds == 600


def test_null_ceiling_is_ollamas_five_minutes_and_forever_is_capped():
    late = Thresholds(priority_keep_alive_s=float("inf"))
    assert decide(None, snapshot(16000, 4000), [LLM, OCR_UP], late).keep_alive_seconds == 300
    assert (
        decide(-1, snapshot(16000, 4000), [LLM, OCR_UP], late).keep_alive_seconds == FOREVER_CAP_S
    )
    assert decide("-1m", snapshot(16000, 4000), [LLM, OCR_UP], late).keep_alive_seconds == 3600


def test_pressure_band_scales_linearly():
    settings = Thresholds(priority_keep_alive_s=600)
    at = {
        pct: decide("5m", snapshot(10000, pct * 100), [LLM, OCR_UP], settings)
        for pct in (85, 90, 94)
    }
    assert [at[p].keep_alive_seconds for p in (85, 90, 94)] == [300, 150, 30]
    assert at[90].rule == "pressure"
    assert at[90].reason == "vram pressure: 90% used, between 85% and 95%: 150s of 300s"


def test_critical_reason_matches_the_design_example():
    decision = decide("5m", snapshot(16311, 15700), [LLM, OCR_UP], Thresholds())
    assert decision.keep_alive_seconds == 0
    assert decision.reason == "vram critical: 96% used ≥ 95%"


def test_reserve_for_an_unloaded_llm_counts_the_ocr_footprint():
    settings = Thresholds(priority_keep_alive_s=600)
    # 12000 MiB free now, but the OCR model (3500 MiB when last seen) is not loaded yet
    assert decide("5m", snapshot(16000, 4000), [], settings).keep_alive_seconds == 300
    decision = decide("5m", snapshot(16000, 4000), [], settings, footprint=3500)
    assert (decision.keep_alive_seconds, decision.rule) == (0, "llm_reserve")
    assert decision.reason == (
        "llm reserve: 8500 MiB free < 11250 MiB typhoon2.5* (9000 MiB) needs to load beside the "
        "OCR model"
    )
    # once /api/ps lists the OCR model, its memory is already in "used"
    ocr = loaded(OCR + ":latest", 3500)
    assert decide("5m", snapshot(16000, 4000), [ocr], settings, footprint=3500).rule == "ceiling"


def test_squeezed_llm_reason_names_it():
    squeezed = loaded("typhoon2.5-qwen3-4b:latest", 9000, 7000)
    decision = decide("5m", snapshot(16000, 8000), [squeezed, OCR_UP], Thresholds())
    assert decision.reason == (
        "priority model typhoon2.5-qwen3-4b:latest squeezed: 7000 of 9000 MiB in VRAM"
    )


def test_priority_globs_match_ps_names_with_and_without_latest():
    assert is_priority_model("typhoon2.5:latest", ["typhoon2.5"])
    assert is_priority_model("typhoon2.5-qwen3-4b:latest", ["typhoon2.5*"])
    assert is_priority_model("Typhoon2.5:Q4", ["typhoon2.5:q4"])
    assert not is_priority_model("llama3:8b", ["typhoon2.5*"])
    # the OCR model itself is never a priority model, even if a glob matches it
    decision = decide("5m", snapshot(16000, 4000), [loaded(OCR + ":latest", 3000, 1000)],
                      Thresholds(priority_models=["scb10x/*"]))  # fmt: skip
    assert decision.rule != "priority_squeezed"


def test_the_first_job_after_start_does_not_squeeze_a_loaded_llm():
    """Issue 14: only the LLM is loaded, the OCR model is not, 15300 of 16311 MiB are used."""
    vram = snapshot(16311, 15300)
    # its size from /api/tags (3.2 GB + KV headroom): loading it would pass critical
    decision = decide("5m", vram, [LLM], Thresholds(), footprint=3500)
    assert (decision.keep_alive_seconds, decision.rule) == (0, "critical")
    # its size unknown: it does not count as fitting beside the LLM
    decision = decide("5m", snapshot(16311, 9500), [LLM], Thresholds(), footprint=None)
    assert (decision.keep_alive_seconds, decision.rule) == (0, "footprint_unknown")
