"""Admission control over real HTTP: slots, the bounded queue, 429, /live staying responsive, and
the page gate (one page call of a model in Ollama at a time across jobs)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import httpx
from PIL import Image

from tests.fake_ollama import FakeOllama
from tests.fixtures.documents import make_image, multipage_tiff
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
    sidecar: Sidecar, fake: FakeOllama, count: int, *, in_ollama: int, admitted: int | None = None
) -> AsyncIterator[HeldJobs]:
    """`count` uploads in flight while the fake holds its answers: `admitted` of them hold an
    admission slot (default `in_ollama`), `in_ollama` of those reach Ollama, the rest wait in the
    sidecar's queue. On the way out the fake is released and every job's response collected."""
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
            waiting = count - (in_ollama if admitted is None else admitted)
            assert await asyncio.to_thread(eventually, lambda: queue(sidecar)["waiting"] == waiting)
            yield held
        finally:
            fake.release()
        held.responses = await asyncio.gather(*jobs)


async def test_fifty_concurrent_jobs_never_block_live(start_sidecar, fake_ollama: FakeOllama):
    sidecar = start_sidecar(max_concurrent_ocr=2, queue_size=64)
    # one page of the model in Ollama at a time (the page gate): 2 jobs admitted, 1 in Ollama
    async with held_jobs(sidecar, fake_ollama, 50, in_ollama=1, admitted=2) as held:
        for _ in range(5):  # while 2 jobs are admitted and 48 wait in the queue
            live = await held.client.get("/live")
            assert live.status_code == 200
        assert queue(sidecar)["active"] == 2
        assert sidecar.metric("sidecar_ocr_queue_depth") == 48
    responses = held.responses
    assert [r.status_code for r in responses] == [200] * 50
    assert fake_ollama.peak_in_flight == 1  # never two page calls of one model in Ollama
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


# --- the page gate ------------------------------------------------------------------------------


WIDE, TALL = (400, 300), (300, 400)


def tiff_upload(pages: int, size: tuple[int, int]) -> dict:
    """A `pages`-page TIFF; its page shape tells one job's pages from another's at the fake."""
    data = multipage_tiff(pages, size=size)
    return {"files": {"file": ("doc.tiff", data), "job": (None, json.dumps(make_job()))}}


def page_shapes(fake: FakeOllama) -> list[str]:
    """ "wide" or "tall" for each page image sent to /api/chat, in the order the fake got them."""
    shapes = []
    for body in fake.bodies("/api/chat"):
        image = base64.b64decode(body["messages"][-1]["images"][0])
        width, height = Image.open(io.BytesIO(image)).size
        shapes.append("wide" if width > height else "tall")
    return shapes


def decisions(sidecar: Sidecar) -> float:
    """Residency decisions taken so far: one per page, just before the page waits for the gate."""
    return sidecar.metric("sidecar_ocr_keep_alive_seconds_count")


@contextlib.asynccontextmanager
async def jobs_at_the_gate(
    sidecar: Sidecar, fake_ollama: FakeOllama, first_pages: int, second_pages: int
) -> AsyncIterator[tuple[asyncio.Task[httpx.Response], asyncio.Task[httpx.Response]]]:
    """Two jobs of one model: the first's page 1 held at the fake, the second's page 1 decided
    and waiting at the sidecar's page gate (wide pages for the first, tall for the second)."""
    fake_ollama.hold()
    async with httpx.AsyncClient(
        base_url=sidecar.url, headers=sidecar.client.headers, timeout=30
    ) as client:
        first = asyncio.create_task(client.post("/ocr", **tiff_upload(first_pages, WIDE)))
        assert await asyncio.to_thread(fake_ollama.wait_for, lambda f: f.held == 1)
        second = asyncio.create_task(client.post("/ocr", **tiff_upload(second_pages, TALL)))
        assert await asyncio.to_thread(eventually, lambda: decisions(sidecar) == 2)
        yield first, second


async def test_two_jobs_of_one_model_take_turns_one_page_call_at_a_time(
    start_sidecar, fake_ollama: FakeOllama
):
    sidecar = start_sidecar(max_concurrent_ocr=2)
    async with jobs_at_the_gate(sidecar, fake_ollama, 3, 3) as (first, second):
        assert (fake_ollama.held, fake_ollama.in_flight) == (1, 1)
        fake_ollama.release()
        responses = [await first, await second]
    assert [r.status_code for r in responses] == [200, 200]
    assert fake_ollama.peak_in_flight == 1  # never two page calls of the model at once
    shapes = page_shapes(fake_ollama)
    assert sorted(shapes) == ["tall"] * 3 + ["wide"] * 3
    # FIFO: the waiting job's page 1 runs before page 2 of the other, so the pages interleave
    assert shapes[:2] == ["wide", "tall"]
    assert len(fake_ollama.load_events) == 1  # one model load for both jobs


async def test_a_cancelled_job_frees_the_gate_for_the_other(start_sidecar, fake_ollama: FakeOllama):
    sidecar = start_sidecar(max_concurrent_ocr=2)
    async with jobs_at_the_gate(sidecar, fake_ollama, 3, 2) as (gone, other):
        gone.cancel()  # the caller of the job holding the gate hangs up
        # its page call is closed, and the waiting job's page 1 goes to Ollama in its place
        assert await asyncio.to_thread(
            fake_ollama.wait_for, lambda f: f.client_gone == 1 and f.held == 1
        )
        fake_ollama.release()
        response = await other
    assert response.status_code == 200, response.text
    assert [page["text"] is not None for page in response.json()["pages"]] == [True, True]
    # (no peak_in_flight check: the fake notices a closed connection only when it next looks)
    assert page_shapes(fake_ollama) == ["wide", "tall", "tall"]
