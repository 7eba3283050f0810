"""Ollama `keep_alive` durations: parse them exactly as Ollama does, and format our own.

Ollama accepts a JSON number (seconds; negative means "forever") or a Go duration string
(`"5m"`, `"1h30m"`, `"-1m"`; `"0"` is the only unit-less string). Anything else makes Ollama
answer 400, so the sidecar rejects it up front with a 422 naming the field.
"""

from __future__ import annotations

import math
import re

FOREVER = math.inf
# Go durations are int64 nanoseconds: ParseDuration refuses anything longer (about 292 years).
MAX_SECONDS = (2**63 - 1) / 1e9

_UNIT_SECONDS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "μs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}
_PART = re.compile(r"(\d+\.?\d*|\.\d+)(ns|us|µs|μs|ms|s|m|h)")


class InvalidDuration(ValueError):
    """The value is not a duration Ollama would accept."""


def parse_ollama_duration(value: object) -> float:
    """Return seconds (``math.inf`` for "forever") for a keep_alive value Ollama accepts."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise InvalidDuration(f"unsupported type {type(value).__name__}")
    if isinstance(value, int | float):
        if math.isnan(value):
            raise InvalidDuration("not a number")
        if value < 0:
            return FOREVER
        if value > MAX_SECONDS:
            raise InvalidDuration("longer than Go's maximum duration (about 292 years)")
        return float(value)
    return _parse_go_duration(value)


def _parse_go_duration(text: str) -> float:
    """Go's time.ParseDuration, reduced to what decides the value (sign, parts, units)."""
    original = text
    sign = 1.0
    if text.startswith(("+", "-")):
        sign = -1.0 if text[0] == "-" else 1.0
        text = text[1:]
    if text == "0":
        return 0.0
    if not text:
        raise InvalidDuration(f'invalid duration "{original}"')
    total = 0.0
    position = 0
    while position < len(text):
        match = _PART.match(text, position)
        if match is None:
            raise InvalidDuration(f'invalid duration "{original}"')
        total += float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
        position = match.end()
    if total > MAX_SECONDS:
        raise InvalidDuration(f'invalid duration "{original}"')
    if sign < 0 and total > 0:
        return FOREVER
    return total


def format_seconds(seconds: float) -> str:
    """Format a finite, non-negative whole number of seconds the way we send it: `"0s"`, `"90s"`."""
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError("keep_alive we send is always a finite, non-negative number of seconds")
    return f"{int(seconds)}s"
