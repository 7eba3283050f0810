"""The Ollama option rules of an OCR job: which options the profile columns become, and the type
and range every option must have (docs/api.md).

Part of the contract both halves import, so it uses pydantic models and the standard library only:
the sidecar refuses a bad option with 422, the backend refuses the same stored profile before it
sends anything.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from sidecar.schemas import MAX_TOKENS_LIMIT, OcrJob

# Profile columns and the Ollama option each one becomes.
PROFILE_OPTION_NAMES = {
    "temperature": "temperature",
    "top_p": "top_p",
    "repeat_penalty": "repeat_penalty",
    "max_tokens": "num_predict",
}
# Names Ollama silently ignores (HF/OpenAI spellings): refuse them rather than drop the setting.
IGNORED_ALIASES = {"max_tokens": "num_predict", "repetition_penalty": "repeat_penalty"}
FLOAT_OPTIONS = frozenset(
    {"temperature", "top_p", "min_p", "typical_p", "repeat_penalty", "presence_penalty",
     "frequency_penalty", "tfs_z", "mirostat_tau", "mirostat_eta"}
)  # fmt: skip
INT_OPTIONS = frozenset(
    {"num_predict", "num_ctx", "num_batch", "num_gpu", "main_gpu", "num_thread", "num_keep",
     "top_k", "repeat_last_n", "seed", "mirostat"}
)  # fmt: skip
BOOL_OPTIONS = frozenset({"use_mmap", "numa", "penalize_newline"})


class OptionError(ValueError):
    """An option the contract refuses; `field` names it (e.g. `profile.options.num_ctx`).

    The sidecar turns it into 422 `validation_error`, the backend into `InvalidProfile`."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


def _check_range(field: str, name: str, value: float) -> None:
    if name == "temperature" and not 0 <= value <= 2:
        raise OptionError(field, "must be between 0 and 2")
    if name == "top_p" and not 0 < value <= 1:
        raise OptionError(field, "must be greater than 0 and at most 1")
    if name == "repeat_penalty" and not value > 0:
        raise OptionError(field, "must be greater than 0")
    if name == "num_predict" and not 1 <= value <= MAX_TOKENS_LIMIT:
        raise OptionError(field, f"must be between 1 and {MAX_TOKENS_LIMIT}")
    if name in ("num_ctx", "num_batch") and value < 1:
        raise OptionError(field, "must be at least 1")


def check_option(field: str, name: str, value: Any) -> None:
    """Type and range of one Ollama option (a wrong JSON type makes Ollama answer 500)."""
    if name in IGNORED_ALIASES:
        raise OptionError(field, f"Ollama ignores {name!r}; use {IGNORED_ALIASES[name]!r}")
    if name in BOOL_OPTIONS:
        if not isinstance(value, bool):
            raise OptionError(field, "must be true or false")
        return
    if name == "stop":
        if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
            raise OptionError(field, "must be a list of strings")
        return
    if name in FLOAT_OPTIONS or name in INT_OPTIONS:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise OptionError(field, "must be a number")
        if not math.isfinite(value):
            raise OptionError(field, "must be a finite number")
        if name in INT_OPTIONS and float(value) != int(value):
            raise OptionError(field, "must be a whole number")
        _check_range(field, name, value)


def _merge(
    target: dict[str, Any], source: Mapping[str, Any], prefix: str, *, replace: bool
) -> None:
    for name, value in source.items():
        field = f"{prefix}.{name}"
        if value is None:
            # null means "not set": Ollama uses the Modelfile value (an override can unset one)
            if replace:
                target.pop(name, None)
            continue
        check_option(field, name, value)
        if not replace and name in target:
            raise OptionError(field, "is already set by its profile column; set it there only")
        target[name] = value


def build_options(job: OcrJob) -> dict[str, Any]:
    """Ollama options: profile columns (null → omitted), then `profile.options`, then
    `options_override`, which wins. keep_alive never appears (the schema refuses it).

    Raises `OptionError` for the first option the rules refuse."""
    options: dict[str, Any] = {}
    profile = job.profile
    for column, name in PROFILE_OPTION_NAMES.items():
        value = getattr(profile, column)
        if value is not None:
            options[name] = value
    _merge(options, profile.options, "profile.options", replace=False)
    if job.options_override:
        _merge(options, job.options_override, "options_override", replace=True)
    return options
