"""The fake's model registry: installed models, and a view of the loaded runners.

Sessions, expiry, the load queue, eviction and the VRAM books live in `scheduler.py`
(Ollama's server: api/types.go, server/routes.go, server/sched.go): a request without keep_alive
keeps a loaded model's session
(5m on a fresh load); the expiry timer starts when the last in-flight request finishes; 0 unloads
as soon as the model is idle; negative means forever; different runner options reload. All times
come from the injectable `clock` (epoch seconds), so tests can move time by hand.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from tests.fake_ollama.scheduler import Runner, Scheduler

MIB = 1024 * 1024
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
    """A loaded runner as the fake's observers see it (a view of the scheduler's books)."""

    model: FakeModel
    session_s: float
    runner_options: dict[str, Any]
    expires_at: float | None = None  # None while busy or forever
    in_flight: int = 0
    size_vram: int = 0  # bytes on the GPU


def size_mib(size_bytes: int) -> int:
    return math.ceil(size_bytes / MIB)


@dataclass
class Registry:
    """Installed models, and the loaded runners of the scheduler (`tests.fake_ollama.scheduler`)
    that keeps the sessions, the load queue and the VRAM books. Not thread-safe by itself:
    `FakeOllama` calls it under its lock."""

    clock: Callable[[], float]
    scheduler: Scheduler = field(default_factory=Scheduler)
    installed: dict[str, FakeModel] = field(default_factory=dict)

    @property
    def load_count(self) -> int:
        return self.scheduler.load_count

    @property
    def reload_count(self) -> int:
        return self.scheduler.reload_count

    def install(self, model: FakeModel) -> None:
        key = name_key(model.name)
        self.installed[key] = model
        self.scheduler.set_size(key, size_mib(model.size))

    def uninstall(self, name: str) -> None:
        key = name_key(name)
        self.installed.pop(key, None)
        runner = self.scheduler.runners.get(key)
        if runner is not None:
            self.scheduler.runners.pop(key)
            self.scheduler._changed()

    def find(self, name: str) -> FakeModel | None:
        return self.installed.get(name_key(name))

    def expire(self) -> None:
        self.scheduler.advance(self.clock())

    def runner_options(self, options: dict[str, Any]) -> tuple[tuple[str, Any], ...]:
        return tuple(sorted((k, options[k]) for k in RUNNER_OPTIONS if k in options))

    @property
    def loaded(self) -> dict[str, LoadedRunner]:
        """The loaded runners by model key (what /api/ps lists)."""
        views: dict[str, LoadedRunner] = {}
        for runner in self.scheduler.loaded():
            model = self.installed.get(runner.key)
            if model is None:
                continue
            views[runner.key] = LoadedRunner(
                model,
                runner.session_s,
                dict(runner.options),
                runner.expires_at,
                runner.refcount,
                self._size_vram(model, runner),
            )
        return views

    @staticmethod
    def _size_vram(model: FakeModel, runner: Runner) -> int:
        if model.size_vram is not None:
            return model.size_vram  # a test forces what /api/ps shows
        if runner.size_mib <= 0 or runner.vram_mib >= runner.size_mib:
            return model.size
        return model.size * runner.vram_mib // runner.size_mib

    def ps(self) -> list[dict[str, Any]]:
        self.expire()
        now = self.clock()
        entries: list[tuple[float, dict[str, Any]]] = []
        for runner in self.scheduler.loaded():
            model = self.installed.get(runner.key)
            if model is None:
                continue
            expires = runner.expiry_shown(now)
            entries.append(
                (
                    expires,
                    {
                        "name": model.display_name,
                        "model": model.display_name,
                        "size": model.size,
                        "size_vram": self._size_vram(model, runner),
                        "digest": model.digest,
                        "details": model.details(),
                        "expires_at": local_timestamp(expires),
                        "context_length": dict(runner.options).get("num_ctx", model.context_length),
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
