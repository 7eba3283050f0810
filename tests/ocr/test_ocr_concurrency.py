"""Admission control over real HTTP: slots, the bounded queue, 429, and /live staying responsive."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import httpx

from tests.fake_ollama import FakeOllama
from tests.fixtures.documents import make_image
from tests.ocr.conftest import Sidecar, eventually, make_job
from tests.ocr.test_ocr_api import assert_problem

PNG = make_image("PNG", (1800, 1200))


def upload_kwargs() -> dict:
    return {"files": {"file": ("a.png", PNG), "job": (None, json.dumps(make_job()))}}


def queue(sidecar: Sidecar) -> dict[str, int]:
    return sidecar.client.get("/health").json()["queues"]["ocr"]


@dataclass
class HeldJobs:
    client: httpx.AsyncClient
    responses: list[httpx.Response] = field(default_factory=list)  # filled on release


@contextlib.asynccontextmanager
async def held_jobs(
    sidecar: Sidecar, fake: FakeOllama, count: int, *, in_ollama: int
) -> AsyncIterator[HeldJobs]:
    """`count` uploads in flight while the fake holds its answers: `in_ollama` of them reach
    Ollama, the rest wait in the sidecar's queue. On the way out the fake is released and every
    job's response collected."""
    limits = httpx.Limits(max_connections=count + 10)
    async with httpx.AsyncClient(
        base_url=sidecar.url, headers=sidecar.client.headers, limits=limits, timeout=60
    ) as client:
        held = HeldJobs(client)
        fake.hold()
        try:
            jobs = [
                asyncio.create_task(client.post("/ocr", **upload_kwargs())) for _ in range(count)
            ]
            assert await asyncio.to_thread(fake.wait_for, lambda f: f.held == in_ollama)
            waiting = count - in_ollama
            assert await asyncio.to_thread(eventually, lambda: queue(sidecar)["waiting"] == waiting)
            yield held
        finally:
            fake.release()
        held.responses = await asyncio.gather(*jobs)


async def test_fifty_concurrent_jobs_never_block_live(start_sidecar, fake_ollama: FakeOllama):
    sidecar = start_sidecar(max_concurrent_ocr=2, queue_size=64)
    async with held_jobs(sidecar, fake_ollama, 50, in_ollama=2) as held:
        for _ in range(5):  # while 2 jobs sit in Ollama and 48 wait in the queue
            live = await held.client.get("/live")
            assert live.status_code == 200
        assert queue(sidecar)["active"] == 2
        assert sidecar.metric("sidecar_ocr_queue_depth") == 48
    responses = held.responses
    assert [r.status_code for r in responses] == [200] * 50
    assert fake_ollama.peak_in_flight == 2  # never more than MAX_CONCURRENT_OCR in Ollama
    assert max(r.json()["timings"]["queue_ms"] for r in responses) > 0
    assert sidecar.metric("sidecar_ocr_queue_wait_seconds_count") == 50
    assert queue(sidecar) | {"limit": 2} == {
        "active": 0,
        "waiting": 0,
        "max_concurrent": 2,
        "limit": 2,
        "queue_size": 64,
    }


async def test_full_queue_is_429_with_retry_after(start_sidecar, fake_ollama: FakeOllama):
    sidecar = start_sidecar(max_concurrent_ocr=1, queue_size=2)
    async with held_jobs(sidecar, fake_ollama, 3, in_ollama=1) as held:
        refused = await held.client.post("/ocr", **upload_kwargs())
        assert_problem(refused, 429, "overloaded")
        assert int(refused.headers["retry-after"]) >= 1
    assert [r.status_code for r in held.responses] == [200] * 3
    assert sidecar.metric("sidecar_ocr_rejected_total") == 1
    assert sidecar.upload(PNG, make_job()).status_code == 200  # room again


async def test_critical_vram_admits_one_job_at_a_time(start_sidecar, fake_ollama, vram):
    # no yield to the LLM (OCR_YIELD_MAX_S=0): this is about admission only
    sidecar = start_sidecar(max_concurrent_ocr=3, queue_size=8, ocr_yield_max_s=0)
    vram.used_pct(97)
    async with held_jobs(sidecar, fake_ollama, 3, in_ollama=1) as held:
        assert fake_ollama.held == 1
        assert queue(sidecar)["limit"] == 1
    responses = held.responses
    assert [r.status_code for r in responses] == [200] * 3
    assert {r.json()["residency"]["keep_alive"] for r in responses} == {"0s"}
    assert fake_ollama.peak_in_flight == 1
