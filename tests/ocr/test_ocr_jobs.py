"""Long OCR jobs over real HTTP against the fake Ollama: a caller that goes away, a page that
fails, the NDJSON stream, the job deadline, and one model load per job (docs/api.md)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest

from sidecar.loaded_models import MIB
from tests.fake_ollama import FakeModel, FakeOllama, Fault
from tests.fixtures.documents import make_image, multipage_tiff
from tests.ocr.conftest import LLM_MODEL, OCR_MODEL, Sidecar, eventually, make_job
from tests.ocr.test_ocr_api import assert_problem, fake_ollama_load

NDJSON = {"Accept": "application/x-ndjson"}


def page_calls(fake: FakeOllama) -> int:
    return len(fake.bodies("/api/chat"))


def upload_kwargs(data: bytes, job: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"files": {"file": ("doc.tiff", data), "job": (None, json.dumps(job or make_job()))}}


@asynccontextmanager
async def async_client(sidecar: Sidecar) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(
        base_url=sidecar.url, headers=sidecar.client.headers, timeout=30
    ) as client:
        yield client


async def until(predicate: Any) -> None:
    assert await asyncio.to_thread(eventually, predicate)


def active_jobs(sidecar: Sidecar) -> int:
    return sidecar.client.get("/health").json()["queues"]["ocr"]["active"]


# --- the caller goes away ----------------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True], ids=["json", "ndjson"])
async def test_a_caller_that_disconnects_stops_the_job_at_once(
    start_sidecar, fake_ollama: FakeOllama, stream: bool
):
    sidecar = start_sidecar(max_concurrent_ocr=1)
    fake_ollama.hold(after=1)  # page 1 is answered, page 2 waits in "Ollama"
    async with async_client(sidecar) as client:
        headers = NDJSON if stream else {}
        request = client.build_request("POST", "/ocr", headers=headers, **upload_kwargs(
            multipage_tiff(5)))  # fmt: skip
        job = asyncio.create_task(client.send(request, stream=True))
        await until(lambda: fake_ollama.held == 1)
        if stream:  # the first line (page 1) is already here; then the caller hangs up
            response = await job
            first = json.loads(await anext(response.aiter_lines()))
            assert (first["event"], first["page"]) == ("page", 1)
            await response.aclose()
        else:
            job.cancel()
        # the in-flight page call was closed, so Ollama stopped generating it ...
        assert await asyncio.to_thread(fake_ollama.wait_for, lambda f: f.client_gone == 1)
        # ... the job let go of its slot, and no further page was sent
        await until(lambda: active_jobs(sidecar) == 0)
        assert page_calls(fake_ollama) == 2
        labels = {"reason": "client_gone"}
        assert sidecar.metric("sidecar_ocr_jobs_cancelled_total", labels) == 1
    fake_ollama.release()
    next_job = sidecar.upload(make_image("PNG", (1800, 1200)), make_job())  # the slot is free
    assert next_job.status_code == 200, next_job.text
    assert page_calls(fake_ollama) == 3


# --- partial results ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fault", "code"),
    [(Fault.ERROR_500, "ollama_bad_response"), (Fault.CUT, "ollama_bad_response")],
)
def test_a_failed_page_does_not_throw_the_others_away(
    sidecar: Sidecar, fake_ollama: FakeOllama, fault: Fault, code: str
):
    fake_ollama.fail(fault, times=1, skip=2)  # pages 1 and 2, then page 3 fails
    response = sidecar.upload(multipage_tiff(5), make_job())
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["complete"] is False
    assert [page["page"] for page in body["pages"]] == [1, 2, 3, 4, 5]
    failed = body["pages"][2]
    assert failed["text"] is None and failed["complete"] is False
    assert failed["error"]["code"] == code and failed["error"]["detail"]
    for page in body["pages"][:2] + body["pages"][3:]:
        assert page["complete"] is True and page["error"] is None
        assert page["text"].startswith("Fake OCR text")
    assert page_calls(fake_ollama) == 5


def test_a_failure_before_any_page_succeeded_fails_the_request(
    sidecar: Sidecar, fake_ollama: FakeOllama
):
    fake_ollama.fail(Fault.ERROR_500, times=1)  # page 1 of 3
    assert_problem(sidecar.upload(multipage_tiff(3), make_job()), 502, "ollama_bad_response")
    assert page_calls(fake_ollama) == 1  # the job stopped there


# --- streaming ---------------------------------------------------------------------------------


async def test_ndjson_lines_arrive_while_the_job_still_runs(
    sidecar: Sidecar, fake_ollama: FakeOllama
):
    fake_ollama.hold(after=1)
    async with async_client(sidecar) as client:
        kwargs = upload_kwargs(multipage_tiff(3))
        async with client.stream("POST", "/ocr", headers=NDJSON, **kwargs) as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("application/x-ndjson")
            lines = response.aiter_lines()
            first = json.loads(await anext(lines))  # the job cannot end: page 2 is held
            assert first["event"] == "page" and first["page"] == 1 and first["complete"]
            await until(lambda: fake_ollama.held == 1)
            fake_ollama.release()
            rest = [json.loads(line) async for line in lines]
    assert [(e["event"], e.get("page")) for e in rest] == [("page", 2), ("page", 3),
                                                         ("done", None)]  # fmt: skip
    done = rest[-1]
    assert done["complete"] is True and "pages" not in done
    assert done["residency"]["loads"] == 1 and done["model"] == make_job()["profile"]["model"]
    assert done["request_id"] == response.headers["x-request-id"]


def test_errors_before_the_first_page_keep_their_status_when_streaming(
    sidecar: Sidecar, fake_ollama: FakeOllama
):
    def stream(data: bytes, job: dict[str, Any]) -> httpx.Response:
        return sidecar.client.post("/ocr", headers=NDJSON, **upload_kwargs(data, job))

    unknown = make_job(profile={"model": "scb10x/typhoon-ocr-9b"})
    assert_problem(stream(multipage_tiff(2), unknown), 424, "model_not_available")
    assert_problem(stream(b"not a document", make_job()), 415, "unsupported_media_type")
    assert_problem(stream(multipage_tiff(2), make_job(pages=[3])), 422, "validation_error")
    fake_ollama.fail(Fault.ERROR_500, times=1)  # page 1
    assert_problem(stream(multipage_tiff(2), make_job()), 502, "ollama_bad_response")


def test_a_failed_page_is_a_page_line_with_its_error(sidecar: Sidecar, fake_ollama: FakeOllama):
    fake_ollama.fail(Fault.ERROR_500, times=1, skip=1)  # page 2 of 3
    response = sidecar.client.post("/ocr", headers=NDJSON, **upload_kwargs(multipage_tiff(3)))
    events = [json.loads(line) for line in response.text.splitlines()]
    assert [e["event"] for e in events] == ["page", "page", "page", "done"]
    assert events[1]["error"]["code"] == "ollama_bad_response" and events[1]["text"] is None
    assert events[-1]["complete"] is False


# --- the job deadline --------------------------------------------------------------------------


def test_a_job_past_its_deadline_returns_the_pages_done(start_sidecar, fake_ollama: FakeOllama):
    sidecar = start_sidecar(ocr_job_timeout_s=1.5)
    fake_ollama.hold(after=1)  # page 2 never comes back on its own
    response = sidecar.upload(multipage_tiff(4), make_job())
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["complete"] is False
    assert body["pages"][0]["complete"] is True
    assert [(p["page"], p["error"]["code"]) for p in body["pages"][1:]] == [
        (2, "job_timeout"), (3, "job_timeout"), (4, "job_timeout")]  # fmt: skip
    assert fake_ollama.wait_for(lambda f: f.client_gone == 1)  # page 2's call was closed
    assert page_calls(fake_ollama) == 2
    assert sidecar.metric("sidecar_ocr_jobs_cancelled_total", {"reason": "deadline"}) == 1
    fake_ollama.release()


def test_a_job_past_its_deadline_before_any_page_is_504(start_sidecar, fake_ollama: FakeOllama):
    sidecar = start_sidecar(ocr_job_timeout_s=1.0)
    fake_ollama.hold()
    assert_problem(sidecar.upload(multipage_tiff(2), make_job()), 504, "job_timeout")
    assert fake_ollama.wait_for(lambda f: f.client_gone == 1)
    assert active_jobs(sidecar) == 0
    fake_ollama.release()


# --- residency over the job --------------------------------------------------------------------


def test_a_twenty_page_job_loads_the_model_once(sidecar: Sidecar, fake_ollama: FakeOllama):
    response = sidecar.upload(multipage_tiff(20), make_job())
    assert response.status_code == 200, response.text
    assert len(fake_ollama.load_events) == 1
    assert response.json()["residency"]["loads"] == 1
    assert sidecar.metric("sidecar_ocr_job_loads_sum") == 1
    keep_alives = [body["keep_alive"] for body in fake_ollama.bodies("/api/chat")]
    assert keep_alives[:-1] == ["60s"] * 19  # held for the job, never 0 between pages
    assert keep_alives[-1] == response.json()["residency"]["keep_alive"]


def test_priority_loaded_follows_the_last_ps_seen(sidecar: Sidecar, fake_ollama: FakeOllama):
    pipeline = sidecar.server.server.config.app.state.ctx.ocr
    assert pipeline.priority_loaded() is None  # no /api/ps seen yet
    assert sidecar.upload(make_image("PNG", (1800, 1200)), make_job()).status_code == 200
    assert pipeline.priority_loaded() is False
    fake_ollama_load(fake_ollama, LLM_MODEL)
    assert sidecar.client.get("/health").json()["ollama"]["reachable"] is True
    assert pipeline.priority_loaded() is True


def test_the_first_job_beside_a_loaded_llm_waits_then_sends_no_squeezing_keep_alive(
    start_sidecar, vram
):
    # issue 14's case: only the LLM (9000 MiB) is loaded, 15300 of 16311 MiB are used, the OCR
    # model has never been seen loaded: its /api/tags size decides, and it does not fit. The
    # fake keeps the VRAM books and writes the file the sidecar reads, so both see one GPU.
    models = [FakeModel(OCR_MODEL, size=3200 * MIB), FakeModel(LLM_MODEL, size=9000 * MIB)]
    with FakeOllama(models, vram_total_mib=16311, base_mib=6300, vram_file=vram.path) as fake:
        sidecar = start_sidecar(ollama_url=fake.url, ocr_yield_max_s=0.3)
        fake_ollama_load(fake, LLM_MODEL)
        assert fake.vram()["used_mib"] == 15300
        response = sidecar.upload(multipage_tiff(2), make_job(profile={"keep_alive": "5m"}))
        assert response.status_code == 200, response.text
        residency = response.json()["residency"]
        assert residency["yield_ms"] >= 300  # it waited for the LLM before loading
        assert residency["keep_alive"] == "0s" and residency["loads"] == 1
        calls = [r.body for r in fake.requests if r.path in ("/api/generate", "/api/chat")]
        # page 1 loads the model and holds it for the job, page 2 carries the after-job value
        assert [c["keep_alive"] for c in calls] == ["60s", "0s"]
        assert fake.events("overcommit") == []


async def test_a_job_waits_for_the_llm_and_goes_on_once_its_memory_is_free(
    start_sidecar, fake_ollama: FakeOllama, vram
):
    sidecar = start_sidecar(ocr_yield_max_s=30)
    fake_ollama_load(fake_ollama, LLM_MODEL)
    vram.set(total_mib=16311, used_mib=15300)
    async with async_client(sidecar) as client:
        job = asyncio.create_task(client.post("/ocr", **upload_kwargs(multipage_tiff(2))))
        # the job looks again and again (/api/ps) and sends nothing meanwhile
        await until(lambda: len(fake_ollama.bodies("/api/ps")) >= 2)
        assert page_calls(fake_ollama) == 0 and not job.done()
        await client.post(
            f"{fake_ollama.url}/api/generate", json={"model": LLM_MODEL, "keep_alive": 0}
        )
        vram.set(total_mib=16311, used_mib=400)  # the LLM has gone: its memory is free
        response = await job
    assert response.status_code == 200, response.text
    residency = response.json()["residency"]
    assert 0 < residency["yield_ms"] < 30_000 and residency["loads"] == 1
    assert sidecar.metric("sidecar_ocr_yield_seconds_count") == 1


async def test_a_job_that_ends_while_another_runs_leaves_the_model_held(
    start_sidecar, fake_ollama: FakeOllama
):
    sidecar = start_sidecar(max_concurrent_ocr=2)
    fake_ollama.hold()
    async with async_client(sidecar) as client:
        longer = asyncio.create_task(client.post("/ocr", **upload_kwargs(multipage_tiff(2))))
        await until(lambda: fake_ollama.held == 1)  # its page 1 is in "Ollama"
        shorter = asyncio.create_task(client.post("/ocr", **upload_kwargs(multipage_tiff(1))))
        # its only page, decided while the other ran; it waits at the page gate, then runs next
        await until(lambda: sidecar.metric("sidecar_ocr_keep_alive_seconds_count") == 2)
        fake_ollama.release()
        ended_first = (await shorter).json()
        assert (await longer).status_code == 200
    assert ended_first["residency"]["rule"] == "job_hold"
    assert ended_first["residency"]["keep_alive"] == "60s"  # not the after-job value
