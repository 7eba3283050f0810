"""The fake's model registry: installed models, loaded runners, keep_alive sessions and expiry.

Follows reference/ollama-api.md §2 and §7: a request without keep_alive keeps a loaded model's
session (5m on a fresh load); the expiry timer starts when the last in-flight request finishes;
0 unloads as soon as the model is idle; negative means forever; different runner options reload.
All times come from the injectable `clock` (epoch seconds), so tests can move time by hand.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

DEFAULT_SESSION_S = 300.0
# Go's time.Add saturates: "forever" shows up about 292 years ahead.
FOREVER_SPAN_S = 292 * 365.25 * 86400
RUNNER_OPTIONS = ("num_ctx", "num_batch", "num_gpu", "main_gpu", "use_mmap", "num_thread")


def normalize_name(name: str) -> str:
    """Shortest display form: default host and `library/` dropped, `:latest` added."""
    name = name.strip()
    for prefix in ("registry.ollama.ai/library/", "registry.ollama.ai/", "library/"):
        if name.lower().startswith(prefix):
            name = name[len(prefix) :]
    if ":" not in name.rsplit("/", 1)[-1]:
        name += ":latest"
    return name


def name_key(name: str) -> str:
    return normalize_name(name).lower()


@dataclass
class FakeModel:
    """An installed model. `text`: what it "reads" on every image (None: derived from the image)."""

    name: str
    size: int = 3_415_000_000
    size_vram: int | None = None  # None: wholly in VRAM (= size)
    family: str = "qwen3vl"
    parameter_size: str = "2.1B"
    quantization_level: str = "Q4_K_M"
    capabilities: tuple[str, ...] = ("completion", "vision")
    context_length: int = 16384
    text: str | None = None

    @property
    def display_name(self) -> str:
        return normalize_name(self.name)

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.display_name.encode()).hexdigest()

    def details(self) -> dict[str, Any]:
        return {
            "parent_model": "",
            "format": "gguf",
            "family": self.family,
            "families": [self.family],
            "parameter_size": self.parameter_size,
            "quantization_level": self.quantization_level,
        }


@dataclass
class LoadedRunner:
    model: FakeModel
    session_s: float
    runner_options: dict[str, Any]
    expires_at: float | None = None  # None until the first request finishes
    in_flight: int = 0
    loads: int = 1


@dataclass
class Registry:
    """Not thread-safe by itself: `FakeOllama` calls it under its lock."""

    clock: Callable[[], float]
    installed: dict[str, FakeModel] = field(default_factory=dict)
    loaded: dict[str, LoadedRunner] = field(default_factory=dict)
    load_count: int = 0
    reload_count: int = 0

    def install(self, model: FakeModel) -> None:
        self.installed[name_key(model.name)] = model

    def uninstall(self, name: str) -> None:
        self.installed.pop(name_key(name), None)
        self.loaded.pop(name_key(name), None)

    def find(self, name: str) -> FakeModel | None:
        return self.installed.get(name_key(name))

    def expire(self) -> None:
        now = self.clock()
        for key, runner in list(self.loaded.items()):
            if runner.in_flight == 0 and runner.expires_at is not None and runner.expires_at <= now:
                del self.loaded[key]

    def begin(
        self, model: FakeModel, keep_alive_s: float | None, options: dict[str, Any]
    ) -> tuple[LoadedRunner, bool]:
        """Start a request on `model`; returns the runner and whether it had to (re)load."""
        self.expire()
        key = name_key(model.name)
        runner_options = {k: options[k] for k in RUNNER_OPTIONS if k in options}
        runner = self.loaded.get(key)
        fresh = runner is None or (
            runner.in_flight == 0 and runner.runner_options != runner_options
        )
        if runner is not None and fresh:
            self.reload_count += 1
        if fresh:
            session = DEFAULT_SESSION_S if keep_alive_s is None else keep_alive_s
            loads = runner.loads + 1 if runner is not None else 1
            runner = LoadedRunner(model, session, runner_options, loads=loads)
            self.loaded[key] = runner
            self.load_count += 1
        elif keep_alive_s is not None:
            assert runner is not None
            runner.session_s = keep_alive_s
        assert runner is not None
        runner.in_flight += 1
        return runner, fresh

    def finish(self, runner: LoadedRunner) -> None:
        runner.in_flight -= 1
        if runner.in_flight > 0:
            return
        key = name_key(runner.model.name)
        if runner.session_s == 0:
            self.loaded.pop(key, None)
            return
        span = FOREVER_SPAN_S if math.isinf(runner.session_s) else runner.session_s
        runner.expires_at = self.clock() + span

    def unload(self, name: str) -> None:
        self.loaded.pop(name_key(name), None)

    def ps(self) -> list[dict[str, Any]]:
        self.expire()
        now = self.clock()
        entries: list[tuple[float, dict[str, Any]]] = []
        for runner in self.loaded.values():
            if runner.expires_at is not None:
                expires = runner.expires_at
            else:
                expires = now + (
                    FOREVER_SPAN_S if math.isinf(runner.session_s) else runner.session_s
                )
            model = runner.model
            entries.append(
                (
                    expires,
                    {
                        "name": model.display_name,
                        "model": model.display_name,
                        "size": model.size,
                        "size_vram": model.size if model.size_vram is None else model.size_vram,
                        "digest": model.digest,
                        "details": model.details(),
                        "expires_at": local_timestamp(expires),
                        "context_length": runner.runner_options.get(
                            "num_ctx", model.context_length
                        ),
                    },
                )
            )
        entries.sort(key=lambda entry: entry[0], reverse=True)  # latest expiry first
        return [entry for _, entry in entries]

    def tags(self) -> list[dict[str, Any]]:
        return [
            {
                "name": model.display_name,
                "model": model.display_name,
                "modified_at": local_timestamp(self.clock()),
                "size": model.size,
                "digest": model.digest,
                "details": model.details(),
                "capabilities": list(model.capabilities),
            }
            for model in self.installed.values()
        ]


def local_timestamp(epoch: float) -> str:
    """RFC 3339 in the local zone with nanoseconds, as Go prints `time.Time`."""
    epoch = min(epoch, 253402300799.0)  # Python stops at year 9999; Go's saturation is near it
    text = datetime.fromtimestamp(epoch, tz=UTC).astimezone().isoformat(timespec="microseconds")
    return text[:26] + "000" + text[26:]  # "…T10:14:02.117265" + "000" + "+07:00"


def utc_timestamp(epoch: float) -> str:
    moment = datetime.fromtimestamp(epoch, tz=UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%f") + "000Z"


def seconds_to_ns(seconds: float) -> int:
    return int(seconds * 1e9)
