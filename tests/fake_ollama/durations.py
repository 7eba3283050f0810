"""Ollama's `keep_alive` decoding (api.Duration.UnmarshalJSON + Go time.ParseDuration), with Go's
error texts. Written apart from `sidecar.durations` on purpose: the fake must not share the
sidecar's bugs.
"""

from __future__ import annotations

import math

FOREVER = math.inf
_UNITS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,  # U+00B5
    "μs": 1e-6,  # U+03BC
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}
_NUMBER_CHARS = set(".0123456789")


class GoDurationError(ValueError):
    pass


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def parse_go_duration(text: str) -> float:
    """Seconds (negative allowed), or GoDurationError with Go's message."""
    original = text
    negative = False
    if text[:1] in ("-", "+"):
        negative = text[0] == "-"
        text = text[1:]
    if text == "0":
        return 0.0
    if not text:
        raise GoDurationError(f"time: invalid duration {_quote(original)}")
    total = 0.0
    while text:
        if text[0] not in _NUMBER_CHARS:
            raise GoDurationError(f"time: invalid duration {_quote(original)}")
        end = 0
        while end < len(text) and text[end].isdigit():
            end += 1
        whole = text[:end]
        fraction = ""
        if end < len(text) and text[end] == ".":
            end += 1
            start = end
            while end < len(text) and text[end].isdigit():
                end += 1
            fraction = text[start:end]
        if not whole and not fraction:
            raise GoDurationError(f"time: invalid duration {_quote(original)}")
        value = float(f"{whole or '0'}.{fraction or '0'}")
        text = text[end:]
        unit_end = 0
        while unit_end < len(text) and text[unit_end] not in _NUMBER_CHARS:
            unit_end += 1
        unit = text[:unit_end]
        if not unit:
            raise GoDurationError(f"time: missing unit in duration {_quote(original)}")
        if unit not in _UNITS:
            raise GoDurationError(
                f"time: unknown unit {_quote(unit)} in duration {_quote(original)}"
            )
        total += value * _UNITS[unit]
        text = text[unit_end:]
    return -total if negative else total


def decode_keep_alive(value: object) -> float:
    """A JSON keep_alive value → seconds (`FOREVER` for negative); GoDurationError otherwise."""
    if isinstance(value, bool):
        raise GoDurationError("Unsupported type: 'bool'")
    if isinstance(value, int | float):
        return FOREVER if value < 0 else float(value)
    if isinstance(value, str):
        seconds = parse_go_duration(value)
        return FOREVER if seconds < 0 else seconds
    kind = {dict: "map[string]interface {}", list: "[]interface {}"}.get(type(value), "unknown")
    raise GoDurationError(f"Unsupported type: '{kind}'")
