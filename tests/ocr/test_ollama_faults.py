"""Every Ollama failure over real HTTP: the documented code, and a sidecar that stays healthy."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.fake_ollama import FakeOllama, Fault
from tests.fixtures.documents import make_image, text_pdf
from tests.ocr.conftest import Sidecar, eventually, make_job
from tests.ocr.test_ocr_api import assert_problem, fake_ollama_load

PNG = make_image("PNG", (1800, 1200))  # needs no scaling: the tests spend no time on pixels

BAD_RESPONSES = [
    Fault.ERROR_500,
    Fault.GARBAGE,
    Fault.INVALID_JSON,
    Fault.BAD_SHAPE,
    Fault.CUT,
]
# The page's call either loads the model (the first page of a job, model not loaded) or finds it
# loaded: a fault must read the same either way.
LOADED = pytest.mark.parametrize(
    "loaded", [False, True], ids=["page that loads the model", "page of a loaded model"]
)


def model_state(fake: FakeOllama, loaded: bool) -> None:
    if loaded:
        fake_ollama_load(fake, "scb10x/typhoon-ocr1.5-3b")


def assert_healthy(sidecar: Sidecar) -> None:
    assert sidecar.client.get("/live").status_code == 200
    response = sidecar.upload(PNG, make_job())
    assert response.status_code == 200, response.text
    assert response.json()["pages"][0]["complete"] is True


@pytest.mark.parametrize("fault", BAD_RESPONSES)
@LOADED
def test_bad_answers_are_502(sidecar: Sidecar, fake_ollama: FakeOllama, fault: Fault, loaded: bool):
    model_state(fake_ollama, loaded)
    fake_ollama.fail(fault, times=1)
    body = assert_problem(sidecar.upload(PNG, make_job()), 502, "ollama_bad_response")
    assert "Traceback" not in body["detail"]
    labels = {"code": "ollama_bad_response"}
    assert sidecar.metric("sidecar_ollama_errors_total", labels) == 1
    assert_healthy(sidecar)


def test_ollama_500_text_is_passed_on(sidecar: Sidecar, fake_ollama: FakeOllama):
    fake_ollama.fail(Fault.ERROR_500, times=1)
    body = assert_problem(sidecar.upload(PNG, make_job()), 502, "ollama_bad_response")
    assert "HTTP 500" in body["detail"] and "llama runner process has terminated" in body["detail"]


@LOADED
def test_busy_ollama_is_retried_then_succeeds(
    sidecar: Sidecar, fake_ollama: FakeOllama, loaded: bool
):
    model_state(fake_ollama, loaded)
    fake_ollama.fail(Fault.BUSY_503, times=2)
    response = sidecar.upload(PNG, make_job())
    assert response.status_code == 200, response.text
    assert response.json()["complete"] is True
    assert response.json()["residency"]["loads"] == (0 if loaded else 1)
    assert sidecar.metric("sidecar_ollama_retries_total") == 2
    assert len(fake_ollama.bodies("/api/chat")) == 3  # two busy answers, then the real one


def test_ollama_restarting_mid_job_is_retried_then_succeeds(
    sidecar: Sidecar, fake_ollama: FakeOllama
):
    fake_ollama.go_down()  # connections refused, as while Ollama restarts
    with ThreadPoolExecutor(max_workers=1) as pool:
        job = pool.submit(sidecar.upload, PNG, make_job())
        assert eventually(lambda: sidecar.metric("sidecar_ollama_retries_total") >= 1)
        fake_ollama.come_up()
        response = job.result(timeout=30)
    assert response.status_code == 200, response.text
    assert response.json()["pages"][0]["complete"] is True


def test_ollama_busy_past_the_page_budget_is_503_with_retry_after(
    start_sidecar, fake_ollama: FakeOllama
):
    sidecar = start_sidecar(ollama_timeout_s=0.5)  # the page budget the retries stay inside
    fake_ollama.fail(Fault.BUSY_503)
    response = sidecar.upload(PNG, make_job())
    assert_problem(response, 503, "ollama_unavailable")
    assert int(response.headers["retry-after"]) > 0
    assert 1 <= sidecar.metric("sidecar_ollama_retries_total") <= 2  # 0.25 s, then 0.5 s > budget
    fake_ollama.clear_faults()
    assert_healthy(sidecar)


def test_unreachable_ollama_is_503_and_not_ready(sidecar: Sidecar, fake_ollama: FakeOllama):
    assert sidecar.client.get("/ready").status_code == 200
    fake_ollama.go_down()
    response = sidecar.upload(PNG, make_job())
    body = assert_problem(response, 503, "ollama_unavailable")
    assert int(response.headers["retry-after"]) > 0
    assert fake_ollama.url not in body["detail"]
    ready = sidecar.client.get("/ready")
    assert_problem(ready, 503, "not_ready")
    assert f"ollama unreachable at {fake_ollama.url}" in ready.json()["detail"]
    health = sidecar.client.get("/health").json()
    assert health["ollama"]["reachable"] is False
    assert sidecar.client.get("/live").status_code == 200
    fake_ollama.come_up()
    assert sidecar.client.get("/ready").status_code == 200
    assert_healthy(sidecar)


def test_slow_ollama_is_504(start_sidecar, fake_ollama: FakeOllama):
    sidecar = start_sidecar(ollama_timeout_s=0.3)
    fake_ollama.hold()  # the page call waits
    try:
        assert_problem(sidecar.upload(PNG, make_job()), 504, "ollama_timeout")
    finally:
        fake_ollama.release()
    assert sidecar.metric("sidecar_ollama_errors_total", {"code": "ollama_timeout"}) == 1
    assert_healthy(sidecar)


def test_unknown_model_is_424(sidecar: Sidecar, fake_ollama: FakeOllama):
    response = sidecar.upload(PNG, make_job(profile={"model": "scb10x/typhoon-ocr-9b"}))
    body = assert_problem(response, 424, "model_not_available")
    assert "scb10x/typhoon-ocr-9b" in body["detail"]
    assert_healthy(sidecar)


def test_model_removed_between_jobs_is_424(sidecar: Sidecar, fake_ollama: FakeOllama):
    assert_healthy(sidecar)
    fake_ollama.uninstall("scb10x/typhoon-ocr1.5-3b")
    assert_problem(sidecar.upload(text_pdf(2), make_job()), 424, "model_not_available")


def test_no_connection_leaks_after_faults(start_sidecar, fake_ollama: FakeOllama):
    # Pool of max_concurrent_ocr + 4 = 5 connections; a leaked one per failure would exhaust it
    # and the last request would then fail on the pool timeout (= OLLAMA_TIMEOUT_S) with 504.
    sidecar = start_sidecar(max_concurrent_ocr=1, ollama_timeout_s=0.3)
    pool_size = 5
    for _ in range(2):
        for fault in BAD_RESPONSES:
            fake_ollama.fail(fault, times=1)
            assert sidecar.upload(PNG, make_job()).status_code == 502
        fake_ollama.fail(Fault.BUSY_503)  # busy past the retries' budget
        assert sidecar.upload(PNG, make_job()).status_code == 503
        fake_ollama.clear_faults()
        fake_ollama.hold()
        try:
            for _ in range(pool_size + 1):
                assert sidecar.upload(PNG, make_job()).status_code == 504
        finally:
            fake_ollama.release()
    assert_healthy(sidecar)
    assert fake_ollama.wait_for(lambda fake: len(fake._connections) <= pool_size)
