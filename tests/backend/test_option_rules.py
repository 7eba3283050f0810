"""Property tests of the contract's Ollama option rules (`sidecar.option_rules`): the backend
refuses exactly the stored profiles the sidecar would refuse, naming the same field, and what
passes only holds options that pass their own check.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from backend_client.errors import InvalidProfile
from backend_client.snapshot import validate_profile
from sidecar.ocr.messages import InvalidOption
from sidecar.ocr.messages import build_options as sidecar_build_options
from sidecar.option_rules import (
    BOOL_OPTIONS,
    FLOAT_OPTIONS,
    IGNORED_ALIASES,
    INT_OPTIONS,
    PROFILE_OPTION_NAMES,
    OptionError,
    build_options,
    check_option,
)
from sidecar.schemas import OcrJob, OcrProfile, OcrPrompt

NAMES = sorted(
    {*FLOAT_OPTIONS, *INT_OPTIONS, *BOOL_OPTIONS, *IGNORED_ALIASES, "stop", "some_future_option"}
)
VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**40), max_value=2**40),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=5),
    st.lists(st.text(max_size=3), max_size=3),
    st.lists(st.integers(), min_size=1, max_size=2),
)
OPTIONS = st.dictionaries(st.sampled_from(NAMES), VALUES, max_size=4)


def _sidecar_refusal(options: dict[str, Any]) -> str | None:
    """The field the sidecar's 422 names for a profile with these options (None: accepted)."""
    job = OcrJob(profile=OcrProfile(model="m", options=options), prompt=OcrPrompt())
    try:
        sidecar_build_options(job)
    except InvalidOption as exc:
        return exc.field
    return None


@given(OPTIONS)
def test_backend_refuses_exactly_what_the_sidecar_refuses(options: dict[str, Any]) -> None:
    sidecar_field = _sidecar_refusal(options)
    try:
        validate_profile("ocr-extract", {"model": "m", "options": options})
    except InvalidProfile as exc:
        assert sidecar_field == f"profile.{exc.field}"
    else:
        assert sidecar_field is None


@given(OPTIONS, OPTIONS)
def test_what_passes_holds_only_checked_options_and_the_override_wins(
    options: dict[str, Any], override: dict[str, Any]
) -> None:
    job = OcrJob(
        profile=OcrProfile(model="m", temperature=0.5, options=options),
        prompt=OcrPrompt(),
        options_override=override,
    )
    try:
        built = build_options(job)
    except OptionError as exc:
        assert exc.field.split(".")[-1] in {*options, *override}
        return
    assert "keep_alive" not in built
    for name, value in built.items():
        check_option(name, name, value)  # raises if it would not pass on its own
        assert value is not None
        if isinstance(value, float):
            assert math.isfinite(value)
    for name, value in override.items():
        assert built.get(name) == value  # set wins; null removes
    if "temperature" not in override:
        assert built["temperature"] == 0.5


@pytest.mark.parametrize(("column", "option"), sorted(PROFILE_OPTION_NAMES.items()))
def test_a_column_set_twice_is_refused_naming_the_option(column: str, option: str) -> None:
    profile = OcrProfile(model="m", **{column: 1}, options={option: 1})
    with pytest.raises(OptionError) as raised:
        build_options(OcrJob(profile=profile, prompt=OcrPrompt()))
    assert raised.value.field == f"profile.options.{option}"
