"""/live, /ready, /health and /metrics over real HTTP: what they say, and what they leave out."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from sidecar.app import create_app
from sidecar.config import Settings
from sidecar.readiness import Problem
from sidecar.vram_monitor import FileVramMonitor
from tests.fake_ollama import DEFAULT_OCR_MODEL, FakeModel, FakeOllama
from tests.server import serve


class StagedRetrieval:
    """Stands in for the retrieval capability: the test decides what it reports."""

    def __init__(self) -> None:
        self.problems: list[Problem] = []
        self.models = {
            "embed": {"name": "BAAI/bge-m3", "loaded": True},
            "rerank": {"name": ".../reranker", "loaded": False},
        }

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    def health(self) -> dict[str, Any]:
        return self.models

    def ready_problems(self) -> list[Problem]:
        return list(self.problems)

    def queue_stats(self) -> dict[str, int]:
        return {}


@pytest.fixture
def fake_ollama() -> Iterator[FakeOllama]:
    with FakeOllama([FakeModel(DEFAULT_OCR_MODEL)]) as fake:
        yield fake


@pytest.fixture
def probe(
    make_settings: Callable[..., Settings], fake_ollama: FakeOllama, api_key: str
) -> Iterator[Callable[..., tuple[httpx.Client, StagedRetrieval]]]:
    clients: list[httpx.Client] = []
    contexts: list[Any] = []

    def start(**injected: Any) -> tuple[httpx.Client, StagedRetrieval]:
        retrieval = StagedRetrieval()
        settings = make_settings(ollama_url=fake_ollama.url)
        context = serve(create_app(settings, retrieval=retrieval, **injected))
        server = context.__enter__()
        contexts.append(context)
        client = httpx.Client(base_url=server.url, headers={"X-API-Key": api_key}, timeout=30)
        clients.append(client)
        return client, retrieval

    yield start
    for client in clients:
        client.close()
    for context in contexts:
        context.__exit__(None, None, None)


def test_ready_says_what_to_do_and_retry_after_only_when_it_can_clear(
    probe: Callable[..., tuple[httpx.Client, StagedRetrieval]], fake_ollama: FakeOllama
) -> None:
    client, retrieval = probe()
    assert client.get("/ready").json() == {"status": "ready"}

    fake_ollama.go_down()
    down = client.get("/ready")
    assert down.status_code == 503 and down.headers["retry-after"] == "5"
    (reason,) = down.json()["reasons"]
    assert reason == (
        f"ollama unreachable at {fake_ollama.url}; start Ollama there or set OCR_SIDECAR_OLLAMA_URL"
    )

    failed = "embed model BAAI/bge-m3 failed to load: set OCR_SIDECAR_EMBED_MODEL"
    retrieval.problems = [Problem(failed, clears=False)]
    both = client.get("/ready")
    assert both.status_code == 503 and "retry-after" not in both.headers  # one never clears
    assert both.json()["reasons"] == [reason, failed]

    fake_ollama.come_up()
    assert client.get("/ready").json()["reasons"] == [failed]
    retrieval.problems = [Problem("embed model BAAI/bge-m3 is loading", clears=True)]
    loading = client.get("/ready")
    assert loading.status_code == 503 and loading.headers["retry-after"] == "5"
    assert client.get("/health").json()["problems"] == ["embed model BAAI/bge-m3 is loading"]


@pytest.mark.parametrize("path", ["/live", "/ready"])
def test_head_answers_like_get_without_a_body(
    probe: Callable[..., tuple[httpx.Client, StagedRetrieval]], path: str
) -> None:
    client, retrieval = probe()
    for staged in ([], [Problem("embed model x is loading", clears=True)]):
        retrieval.problems = staged
        get, head = client.get(path), client.head(path)
        assert head.status_code == get.status_code
        assert head.content == b""
        assert head.headers["content-type"] == get.headers["content-type"]
        assert head.headers.get("retry-after") == get.headers.get("retry-after")
        assert "x-request-id" in head.headers


def metric_lines(client: httpx.Client) -> list[str]:
    reply = client.get("/metrics")
    assert reply.status_code == 200
    return [line for line in reply.text.splitlines() if not line.startswith("#")]


def test_metrics_read_at_scrape_time(
    probe: Callable[..., tuple[httpx.Client, StagedRetrieval]],
    fake_ollama: FakeOllama,
    tmp_path: Path,
) -> None:
    vram_file = tmp_path / "vram.json"
    vram_file.write_text(json.dumps({"total_mib": 16000, "used_mib": 5000}), encoding="utf-8")
    client, retrieval = probe(vram_monitor=FileVramMonitor(vram_file))
    lines = metric_lines(client)
    assert "sidecar_vram_used_mib 5000.0" in lines and "sidecar_vram_total_mib 16000.0" in lines
    assert 'sidecar_model_loaded{kind="embed",model="BAAI/bge-m3"} 1.0' in lines
    assert 'sidecar_model_loaded{kind="rerank",model=".../reranker"} 0.0' in lines
    assert not [line for line in lines if line.startswith("sidecar_ollama_up")]  # never probed
    assert not [line for line in lines if "_created" in line]

    client.get("/ready")
    assert "sidecar_ollama_up 1.0" in metric_lines(client)
    fake_ollama.go_down()
    client.get("/ready")
    assert "sidecar_ollama_up 0.0" in metric_lines(client)

    vram_file.write_text(json.dumps({"total_mib": 16000, "used_mib": 7000}), encoding="utf-8")
    retrieval.models["rerank"]["loaded"] = True
    lines = metric_lines(client)
    assert "sidecar_vram_used_mib 7000.0" in lines
    assert 'sidecar_model_loaded{kind="rerank",model=".../reranker"} 1.0' in lines

    vram_file.unlink()  # VRAM unknown: the gauges disappear rather than read 0
    assert not [line for line in metric_lines(client) if line.startswith("sidecar_vram_")]


def test_without_a_gpu_vram_gauges_are_absent_and_health_says_so(
    probe: Callable[..., tuple[httpx.Client, StagedRetrieval]],
) -> None:
    client, _ = probe()  # VRAM_SOURCE=none, sampled in the background
    assert not [line for line in metric_lines(client) if line.startswith("sidecar_vram_")]
    assert client.get("/health").json()["gpu"] == {"available": False, "source": "none"}
