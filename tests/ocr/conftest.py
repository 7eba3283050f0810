"""Fixtures for the OCR tests: a fake Ollama on loopback, a VRAM snapshot file, and the real
sidecar app served over HTTP, pointed at both."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from sidecar.app import create_app
from sidecar.config import Settings
from sidecar.observability import Metrics
from sidecar.vram_monitor import FileVramMonitor
from tests.fake_ollama import DEFAULT_LLM_MODEL, DEFAULT_OCR_MODEL, FakeModel, FakeOllama
from tests.fixtures.jobs import BASE_JOB, make_job  # noqa: F401 - re-exported to the tests
from tests.server import ThreadedServer

OCR_MODEL = DEFAULT_OCR_MODEL
LLM_MODEL = DEFAULT_LLM_MODEL
GIB = 1024**3


def eventually(predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
    """Wait for a condition another thread makes true (checked every few ms, bounded)."""
    deadline = time.monotonic() + timeout
    tick = threading.Event()
    while not predicate():
        if time.monotonic() > deadline:
            return False
        tick.wait(0.005)
    return True


class IdleRetrieval:
    """Stands in for the retrieval capability so the OCR tests load no torch model."""

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    def health(self) -> dict[str, Any]:
        return {}

    def ready_problems(self) -> list[str]:
        return []

    def queue_stats(self) -> dict[str, int]:
        return {}


class VramFile:
    """The JSON snapshot `OCR_SIDECAR_VRAM_SOURCE=file:PATH` re-reads on every call."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.set(total_mib=16311, used_mib=400)  # room for the OCR model and the LLM beside it

    @property
    def source(self) -> str:
        return f"file:{self.path}"

    def set(self, *, total_mib: int, used_mib: int, free_mib: int | None = None) -> None:
        data: dict[str, Any] = {"total_mib": total_mib, "used_mib": used_mib, "name": "RTX 5060 Ti"}
        if free_mib is not None:
            data["free_mib"] = free_mib
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data), encoding="utf-8")
        tmp.replace(self.path)  # atomic: the sidecar never reads half a file

    def used_pct(self, pct: float, total_mib: int = 16000) -> None:
        self.set(total_mib=total_mib, used_mib=round(total_mib * pct / 100))

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)


@dataclass
class Sidecar:
    server: ThreadedServer
    client: httpx.Client
    metrics: Metrics
    settings: Settings

    @property
    def url(self) -> str:
        return self.server.url

    def upload(
        self, data: bytes, job: dict[str, Any], filename: str = "document"
    ) -> httpx.Response:
        files = {
            "file": (filename, data, "application/octet-stream"),
            "job": (None, json.dumps(job)),
        }
        return self.client.post("/ocr", files=files)

    def by_path(self, path: str, job: dict[str, Any]) -> httpx.Response:
        return self.client.post("/ocr", json={"source": {"path": path}, **job})

    def metric(self, name: str, labels: dict[str, str] | None = None) -> float:
        value = self.metrics.registry.get_sample_value(name, labels or {})
        return 0.0 if value is None else value


@pytest.fixture
def fake_ollama() -> Iterator[FakeOllama]:
    models = [
        FakeModel(OCR_MODEL, size=3 * GIB),
        FakeModel(LLM_MODEL, size=9 * GIB, family="qwen3", capabilities=("completion",)),
    ]
    with FakeOllama(models) as fake:
        yield fake


@pytest.fixture
def vram(tmp_path: Path) -> VramFile:
    return VramFile(tmp_path / "vram.json")


@pytest.fixture
def start_sidecar(
    make_settings: Callable[..., Settings],
    fake_ollama: FakeOllama,
    vram: VramFile,
    api_key: str,
) -> Iterator[Callable[..., Sidecar]]:
    """`start_sidecar(**settings)` serves a fresh app on loopback; all are stopped at teardown."""
    with ExitStack() as stack:

        def start(**overrides: Any) -> Sidecar:
            values: dict[str, Any] = {"ollama_url": fake_ollama.url, "vram_source": vram.source}
            values.update(overrides)
            settings = make_settings(**values)
            metrics = Metrics()
            # The file read on every call (not sampled each second): a test's write shows at once.
            vram_now = FileVramMonitor(vram.path)
            app = create_app(
                settings, metrics=metrics, retrieval=IdleRetrieval(), vram_monitor=vram_now
            )
            server = ThreadedServer(app).start()
            stack.callback(server.stop)
            client = httpx.Client(base_url=server.url, headers={"X-API-Key": api_key}, timeout=30)
            stack.callback(client.close)
            return Sidecar(server, client, metrics, settings)

        yield start


@pytest.fixture
def sidecar(start_sidecar: Callable[..., Sidecar]) -> Sidecar:
    return start_sidecar()
