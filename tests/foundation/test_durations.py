"""keep_alive values are parsed with Go's rules, so the sidecar refuses what Ollama would."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sidecar.durations import MAX_SECONDS, InvalidDuration, format_seconds, parse_ollama_duration


@pytest.mark.parametrize(
    ("value", "seconds"),
    [("5m", 300), ("1h30m", 5400), ("1.5h", 5400), ("0", 0), ("+0", 0), ("-0", 0),
     ("90s", 90), ("250ms", 0.25), (300, 300), (42.5, 42.5), (0, 0),
     (-1, math.inf), ("-1m", math.inf), ("2562047h", 2562047 * 3600)],
)  # fmt: skip
def test_accepted(value: object, seconds: float) -> None:
    assert parse_ollama_duration(value) == pytest.approx(seconds)


@pytest.mark.parametrize(
    "value",
    ["300", "-1", "5 m", "1d", "", "forever", "+", True, None, [], {}, float("nan"),
     "2562048h", "9999999999999s", 1e10],
)  # fmt: skip
def test_refused(value: object) -> None:
    with pytest.raises(InvalidDuration):
        parse_ollama_duration(value)


@given(st.integers(min_value=0, max_value=int(MAX_SECONDS)))
def test_what_we_send_parses_back(seconds: int) -> None:
    assert parse_ollama_duration(format_seconds(seconds)) == seconds
