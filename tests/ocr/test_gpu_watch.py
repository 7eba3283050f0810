"""GpuWatch against the fake Ollama over loopback: the OCR model's footprint before it is loaded
(/api/tags plus headroom, cached), after (/api/ps), and what `priority_loaded` says."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from sidecar.loaded_models import MIB
from sidecar.ocr.gpu_watch import KV_HEADROOM_MIB, GpuWatch
from sidecar.ollama import OllamaClient
from sidecar.vram_monitor import VramSnapshot
from tests.fake_ollama import FakeModel, FakeOllama
from tests.ocr.conftest import LLM_MODEL, OCR_MODEL

OCR_SIZE = 3200 * MIB


class FixedVram:
    def snapshot(self) -> VramSnapshot | None:
        return VramSnapshot(total_mib=16311, used_mib=2000, free_mib=14311, source="test",
                            taken_at=0.0)  # fmt: skip


@pytest.fixture
async def fake_and_client() -> AsyncIterator[tuple[FakeOllama, OllamaClient]]:
    models = [FakeModel(OCR_MODEL, size=OCR_SIZE), FakeModel(LLM_MODEL, size=9000 * MIB)]
    with FakeOllama(models) as fake:
        async with httpx.AsyncClient() as http:
            yield fake, OllamaClient(http, fake.url, read_timeout_s=5, connect_timeout_s=1)


def load(fake: FakeOllama, model: str) -> None:
    assert httpx.post(f"{fake.url}/api/generate", json={"model": model}).status_code == 200


async def test_footprint_from_tags_until_the_model_is_seen_loaded(fake_and_client):
    fake, client = fake_and_client
    watch = GpuWatch(client, FixedVram(), ["typhoon2.5*"])
    first = await watch.view(OCR_MODEL)
    second = await watch.view(OCR_MODEL)
    assert first.ocr_size_mib == second.ocr_size_mib == 3200 + KV_HEADROOM_MIB
    assert len(fake.bodies("/api/tags")) == 1  # sizes are cached between pages and jobs
    assert first.vram is not None and first.vram.used_mib == 2000 and first.loaded == []
    load(fake, OCR_MODEL)
    loaded = await watch.view(OCR_MODEL)
    assert [m.name for m in loaded.loaded] == ["scb10x/typhoon-ocr1.5-3b:latest"]
    assert loaded.ocr_size_mib == 3200  # what /api/ps says it takes, once seen


async def test_an_unknown_model_has_no_footprint(fake_and_client):
    _, client = fake_and_client
    view = await GpuWatch(client, FixedVram(), []).view("not/installed")
    assert view.ocr_size_mib is None  # the policy counts it as not fitting beside the LLM


async def test_priority_loaded_never_counts_the_ocr_model(fake_and_client):
    fake, client = fake_and_client
    watch = GpuWatch(client, FixedVram(), ["typhoon*"])  # a glob that matches both models
    assert watch.priority_loaded() is None  # nothing seen yet
    load(fake, OCR_MODEL)
    await watch.view(OCR_MODEL)
    assert watch.priority_loaded() is False
    load(fake, LLM_MODEL)
    await watch.view(OCR_MODEL)
    assert watch.priority_loaded() is True
