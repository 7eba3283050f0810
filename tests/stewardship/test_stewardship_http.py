"""GPU stewardship end to end: the real sidecar on loopback, the fake Ollama keeping VRAM books and
writing the file the sidecar reads (`OCR_SIDECAR_VRAM_SOURCE=file:PATH`), LLM traffic played into
the fake. The 20-page single load and the first-job case are in tests/ocr/test_ocr_jobs.py."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable, Iterator

import httpx
import pytest

from sidecar.loaded_models import MIB
from tests.fake_ollama import FakeModel, FakeOllama
from tests.fake_ollama.server import LlmCall
from tests.fixtures.documents import multipage_tiff
from tests.ocr.conftest import LLM_MODEL, OCR_MODEL, Sidecar, VramFile, eventually, make_job

OCR_KEY, LLM_KEY = OCR_MODEL + ":latest", LLM_MODEL + ":latest"


@pytest.fixture
def books(vram: VramFile) -> Iterator[FakeOllama]:
    """16311 MiB card: driver 300, 3000 MiB of other processes (on the card before any runner,
    so Ollama sees them), OCR model 3300, LLM 9000: the LLM does not load beside the OCR model
    (9000 > 0.8 × 9711 free), and the OCR model does not fit beside the LLM (critical)."""
    models = [
        FakeModel(OCR_MODEL, size=3300 * MIB),
        FakeModel(LLM_MODEL, size=9000 * MIB, family="qwen3", capabilities=("completion",)),
    ]
    with FakeOllama(models, vram_total_mib=16311, base_mib=300, vram_file=vram.path,
                    latency_s=0.05) as fake:  # fmt: skip
        fake.set_external("others", 3000)
        yield fake


@contextlib.contextmanager
def llm_session(fake: FakeOllama) -> Iterator[tuple[LlmCall, threading.Event]]:
    """A priority model's request in a thread: it queues in the fake, gets the card, and holds
    it busy until the returned event is set."""
    started, done = threading.Event(), threading.Event()
    box: list[LlmCall] = []

    def play() -> None:
        with fake.llm_busy(LLM_MODEL) as call:
            box.append(call)
            started.set()
            done.wait(30)

    thread = threading.Thread(target=play, daemon=True)
    thread.start()
    try:
        yield box, started, done  # type: ignore[misc]
    finally:
        done.set()
        thread.join(10)


def chat_calls(fake: FakeOllama) -> int:
    return len(fake.bodies("/api/chat"))


async def wait_until(predicate: Callable[[], bool]) -> None:
    assert await asyncio.to_thread(eventually, predicate, 10.0)


async def test_the_llm_evicts_the_job_and_the_job_yields_until_it_is_served(
    start_sidecar: Callable[..., Sidecar], books: FakeOllama
):
    """Page 2 is in "Ollama" when the LLM asks for the card: Ollama waits for the page, evicts
    the OCR model, loads the LLM. Before page 3 the job sees the OCR model gone and no room
    beside the LLM: it yields (sends nothing) until the LLM has been served and gone, then
    loads again. The fake's books show the order: OCR, LLM, OCR; no over-commit."""
    fake = books
    # a small LLM_RESERVE_MIB so the job starts at once with no LLM loaded
    sidecar = start_sidecar(ollama_url=fake.url, ocr_yield_max_s=30, llm_reserve_mib=1000)
    fake.hold(after=1)  # page 1 is answered, page 2 waits in the fake, attached to its runner
    async with httpx.AsyncClient(base_url=sidecar.url, headers=sidecar.client.headers,
                                 timeout=60) as client:  # fmt: skip
        files = {"file": ("doc.tiff", multipage_tiff(4)), "job": (None, _job())}
        job = asyncio.create_task(client.post("/ocr", files=files))
        await wait_until(lambda: fake.held == 1)
        with llm_session(fake) as (box, started, done):
            # the LLM's load waits for the busy OCR model (§8.3), which it has picked as victim
            await wait_until(lambda: any(e[0] == "evict" for e in fake.events()))
            assert not started.is_set()
            fake.release()  # page 2 ends: the OCR model unloads, the LLM loads and is served
            await wait_until(started.is_set)
            # page 3 does not go out while the LLM holds the card: the job polls and waits
            polls = len(fake.bodies("/api/ps"))
            await wait_until(lambda: len(fake.bodies("/api/ps")) >= polls + 2)
            assert chat_calls(fake) == 2 and not job.done()
            done.set()
        call = box[0]
        await wait_until(lambda: call.finished_at is not None)
        # the LLM's client is done with it for now and lets it go (keep_alive 0)
        await client.post(f"{fake.url}/api/chat", json={"model": LLM_MODEL, "keep_alive": 0})
        response = await job
    assert response.status_code == 200, response.text
    body = response.json()
    assert [p["page"] for p in body["pages"]] == [1, 2, 3, 4] and body["complete"]
    residency = body["residency"]
    assert residency["yield_ms"] > 0
    assert residency["loads"] == 2  # once, and once more after Ollama evicted it for the LLM
    loads = fake.load_events
    assert [name for name, _ in loads] == [OCR_KEY, LLM_KEY, OCR_KEY]
    assert call.attached_at is not None and call.finished_at is not None
    assert loads[1][1] <= call.attached_at <= call.finished_at <= loads[2][1]
    evictions = [(model, detail) for kind, model, _, detail in fake.events("evict")]
    assert evictions == [(OCR_KEY, f"for {LLM_KEY}")]  # the LLM was never evicted
    assert fake.events("overcommit") == []


def test_a_job_does_not_wait_for_an_llm_it_can_never_share_the_card_with(
    start_sidecar: Callable[..., Sidecar], vram: VramFile
):
    """A long-context LLM (12300 MiB) and the OCR model never fit together by Ollama's rule:
    waiting frees nothing while the LLM stays, so the job loads at once (Ollama evicts the idle
    LLM) and unloads after the job (the LLM's room cannot be kept beside it)."""
    models = [
        FakeModel(OCR_MODEL, size=3300 * MIB),
        FakeModel(LLM_MODEL, size=12300 * MIB, family="qwen3", capabilities=("completion",)),
    ]
    with FakeOllama(models, vram_total_mib=16311, base_mib=300, vram_file=vram.path) as fake:
        sidecar = start_sidecar(ollama_url=fake.url, ocr_yield_max_s=30, llm_reserve_mib=12300)
        httpx.post(f"{fake.url}/api/chat", json={"model": LLM_MODEL, "keep_alive": "5m"})
        response = sidecar.upload(multipage_tiff(3), make_job(profile={"keep_alive": "5m"}))
        assert response.status_code == 200, response.text
        residency = response.json()["residency"]
        assert residency["yield_ms"] == 0 and residency["loads"] == 1
        assert residency["keep_alive"] == "0s" and residency["rule"] == "llm_reserve"
        assert [name for name, _ in fake.load_events] == [LLM_KEY, OCR_KEY]
        assert fake.loaded() == {}  # the OCR model left with its last page
        assert fake.events("overcommit") == []


def _job() -> str:
    import json

    return json.dumps(make_job(profile={"keep_alive": "5m"}))
