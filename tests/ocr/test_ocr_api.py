"""POST /ocr over real HTTP: the sidecar app on loopback, a fake Ollama on loopback."""

from __future__ import annotations

import base64
import io
import json
import os
from pathlib import Path

import pytest
from PIL import Image

from tests.fake_ollama import FakeOllama
from tests.fixtures.documents import (
    encrypted_pdf,
    make_image,
    make_pdf,
    multipage_tiff,
    text_pdf,
)
from tests.ocr.conftest import OCR_MODEL, Sidecar, make_job


def chat_bodies(fake: FakeOllama) -> list[dict]:
    return fake.bodies("/api/chat")


def ollama_calls(fake: FakeOllama) -> list[dict]:
    """Every generation-side call in order (a separate load call would be an /api/generate)."""
    return [r.body for r in fake.requests if r.path in ("/api/generate", "/api/chat")]


def page_calls(fake: FakeOllama) -> list[dict]:
    return [body for body in chat_bodies(fake) if body.get("messages")]


def sent_image(body: dict) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(body["messages"][-1]["images"][0])))


def assert_problem(response, status: int, code: str) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body = response.json()
    assert body["code"] == code
    assert body["status"] == status
    assert body["request_id"] == response.headers["x-request-id"]
    return body


# --- each document type ----------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "TIFF", "WEBP"])
def test_image_upload_is_read_as_one_page(sidecar: Sidecar, fake_ollama: FakeOllama, fmt: str):
    response = sidecar.upload(make_image(fmt, (640, 480)), make_job())
    assert response.status_code == 200, response.text
    body = response.json()
    assert [page["page"] for page in body["pages"]] == [1]
    assert body["pages"][0]["complete"] is True
    assert body["pages"][0]["text"].startswith("Fake OCR text of image")
    image = sent_image(page_calls(fake_ollama)[0])
    assert max(image.size) == 1800  # v1.5 rule: longest side scaled to exactly 1800 px
    assert image.size == (1800, 1350)


def test_png_needing_no_scaling_is_sent_byte_for_byte(sidecar: Sidecar, fake_ollama: FakeOllama):
    png = make_image("PNG", (1800, 1200))
    assert sidecar.upload(png, make_job()).status_code == 200
    sent = page_calls(fake_ollama)[0]["messages"][-1]["images"][0]
    assert base64.b64decode(sent) == png


def test_small_images_are_not_upscaled(sidecar: Sidecar, fake_ollama: FakeOllama):
    assert sidecar.upload(make_image("WEBP", (200, 100)), make_job()).status_code == 200
    assert sent_image(page_calls(fake_ollama)[0]).size == (200, 100)


def test_pdf_by_path_renders_every_page_at_1800px(
    sidecar: Sidecar, fake_ollama: FakeOllama, upload_base: Path
):
    (upload_base / "tenant-a").mkdir()
    (upload_base / "tenant-a" / "invoice.pdf").write_bytes(text_pdf(3))
    response = sidecar.by_path("tenant-a/invoice.pdf", make_job())
    assert response.status_code == 200, response.text
    body = response.json()
    assert [page["page"] for page in body["pages"]] == [1, 2, 3]
    calls = page_calls(fake_ollama)
    assert len(calls) == 3
    sizes = {sent_image(call).size for call in calls}
    assert sizes == {(1391, 1800)}  # letter, 612x792 pt, scaled by 1800/792
    assert sent_image(calls[0]).format == "PNG"
    # each page's own image went out: three different texts back
    assert len({page["text"] for page in body["pages"]}) == 3


def test_pdf_upload_selected_pages_in_request_order(sidecar: Sidecar, fake_ollama: FakeOllama):
    response = sidecar.upload(text_pdf(4), make_job(pages=[3, 1]))
    assert response.status_code == 200, response.text
    assert [page["page"] for page in response.json()["pages"]] == [3, 1]
    assert len(page_calls(fake_ollama)) == 2


def test_multipage_tiff_is_a_multipage_document(sidecar: Sidecar, fake_ollama: FakeOllama):
    response = sidecar.upload(multipage_tiff(3), make_job())
    assert response.status_code == 200, response.text
    assert [page["page"] for page in response.json()["pages"]] == [1, 2, 3]


def test_anchor_text_is_the_pdf_text_layer(sidecar: Sidecar, fake_ollama: FakeOllama):
    job = make_job(
        prompt={"user_template": "Read it.\nRAW_TEXT_START\n{{anchor_text}}\nRAW_TEXT_END"}
    )
    pdf = make_pdf([["Invoice [17]", "Total 1,200.00"]])
    assert sidecar.upload(pdf, job).status_code == 200
    content = page_calls(fake_ollama)[0]["messages"][-1]["content"]
    assert content.startswith("Read it.\nRAW_TEXT_START\nPage dimensions: 612.0x792.0\n")
    assert "]Invoice \\[17\\]\n" in content
    assert "]Total 1,200.00\n" in content
    assert content.endswith("RAW_TEXT_END")


def test_anchor_text_of_an_image_is_synthetic(sidecar: Sidecar, fake_ollama: FakeOllama):
    job = make_job(prompt={"user_template": "{{anchor_text}}"})
    assert sidecar.upload(make_image("JPEG", (200, 100)), job).status_code == 200
    content = page_calls(fake_ollama)[0]["messages"][-1]["content"]
    assert content == "Page dimensions: 200.0x100.0\n[Image 0x0 to 200x100]\n"


# --- what Ollama received --------------------------------------------------------------------


def test_every_call_carries_the_same_system_prompt_and_options(
    sidecar: Sidecar, fake_ollama: FakeOllama
):
    response = sidecar.upload(text_pdf(2), make_job())
    assert response.status_code == 200, response.text
    assert fake_ollama.bodies("/api/generate") == []  # no separate load call: page 1 loads
    pages = chat_bodies(fake_ollama)
    assert len(pages) == 2
    expected_options = {
        "temperature": 0.1,
        "top_p": 0.6,
        "repeat_penalty": 1.1,
        "num_predict": 16384,
        "num_ctx": 16384,
    }
    for call in pages:
        assert call["model"] == OCR_MODEL
        assert call["options"] == expected_options
        assert call["stream"] is False
    # page 1 loads the model and holds it for the job; the last page carries the after-job value
    residency = response.json()["residency"]
    assert pages[0]["keep_alive"] == "60s"
    assert pages[1]["keep_alive"] == residency["keep_alive"] == "299s"
    assert residency["loads"] == 1 and residency["yield_ms"] == 0
    system_prompt = "You transcribe documents for the DMS. Fields: invoice_no, tax_id, total."
    for call in pages:
        system, user = call["messages"]
        assert system == {"role": "system", "content": system_prompt}
        assert user["role"] == "user"
        assert user["content"] == "Extract all text from the image."
        assert len(user["images"]) == 1
    assert response.json()["params_sent"] == expected_options
    assert response.json()["prompt"] == {"id": 7, "version": 3}


def test_tags_are_appended_when_the_prompt_has_no_placeholder(
    sidecar: Sidecar, fake_ollama: FakeOllama
):
    job = make_job(prompt={"system_prompt": "Transcribe faithfully.", "dms_tags": ["a", "b"]})
    assert sidecar.upload(make_image("PNG"), job).status_code == 200
    system = page_calls(fake_ollama)[0]["messages"][0]
    assert system["content"] == "Transcribe faithfully.\nDMS tags: a, b"


def test_null_parameters_are_omitted_so_the_modelfile_applies(
    sidecar: Sidecar, fake_ollama: FakeOllama
):
    job = make_job(
        profile={
            "temperature": None,
            "top_p": None,
            "repeat_penalty": None,
            "max_tokens": None,
            "options": {},
        }
    )
    job["profile"]["top_p"] = None  # explicit null, not just absent
    response = sidecar.upload(make_image("PNG"), job)
    assert response.status_code == 200, response.text
    assert len(ollama_calls(fake_ollama)) == 1  # the page, which loads the model
    for call in ollama_calls(fake_ollama):
        assert call["options"] == {}
    assert response.json()["params_sent"] == {}


def test_options_override_wins_and_null_unsets(sidecar: Sidecar, fake_ollama: FakeOllama):
    job = make_job()
    job["options_override"] = {"temperature": 0.0, "top_p": None, "seed": 42}
    response = sidecar.upload(make_image("PNG"), job)
    assert response.status_code == 200, response.text
    options = page_calls(fake_ollama)[0]["options"]
    assert options == {
        "temperature": 0.0,
        "repeat_penalty": 1.1,
        "num_predict": 16384,
        "num_ctx": 16384,
        "seed": 42,
    }


def test_no_template_sends_the_image_alone(sidecar: Sidecar, fake_ollama: FakeOllama):
    job = make_job(prompt={"user_template": None, "system_prompt": "", "dms_tags": []})
    assert sidecar.upload(make_image("PNG"), job).status_code == 200
    messages = page_calls(fake_ollama)[0]["messages"]
    assert len(messages) == 1  # no system message at all: the Modelfile SYSTEM applies
    assert messages[0]["content"] == "" and len(messages[0]["images"]) == 1


# --- keep_alive per VRAM scenario (file: source) ---------------------------------------------


def keep_alives(fake: FakeOllama) -> set[str]:
    return {body["keep_alive"] for body in ollama_calls(fake)}


@pytest.mark.parametrize(
    ("used_pct", "expected", "rule"),
    [(25, "299s", "priority_order"), (90, "150s", "pressure"), (96, "0s", "critical")],
)
def test_keep_alive_follows_vram(
    sidecar: Sidecar, fake_ollama: FakeOllama, vram, used_pct: int, expected: str, rule: str
):
    # the LLM is loaded and wholly in VRAM, so only the thresholds decide; the OCR model is
    # loaded too, so the job loads nothing and never waits
    fake_ollama_load(fake_ollama, "typhoon2.5-qwen3-4b")
    fake_ollama_load(fake_ollama, OCR_MODEL)
    vram.used_pct(used_pct)
    response = sidecar.upload(make_image("PNG"), make_job())
    assert response.status_code == 200, response.text
    residency = response.json()["residency"]
    assert residency["keep_alive"] == expected
    assert keep_alives(fake_ollama) == {expected}
    assert sidecar.metric("sidecar_ocr_residency_decisions_total", {"rule": rule}) == 1


def fake_ollama_load(fake: FakeOllama, model: str) -> None:
    """Load a model in the fake the way a client of Ollama would (an empty chat)."""
    import httpx

    reply = httpx.post(f"{fake.url}/api/chat", json={"model": model, "keep_alive": -1})
    assert reply.json()["done_reason"] == "load"
    fake.clear_requests()


def test_unknown_vram_means_the_model_does_not_stay(
    sidecar: Sidecar, fake_ollama: FakeOllama, vram
):
    vram.remove()
    response = sidecar.upload(make_image("PNG"), make_job())
    assert response.status_code == 200, response.text
    assert response.json()["residency"]["keep_alive"] == "0s"
    assert response.json()["residency"]["vram"] is None
    assert keep_alives(fake_ollama) == {"0s"}


def test_llm_reserve_is_kept_when_the_llm_is_not_loaded(start_sidecar, fake_ollama, vram):
    sidecar = start_sidecar(ocr_yield_max_s=0.2)
    vram.set(total_mib=16000, used_mib=8000)  # 8000 MiB free < 9000 reserved for the LLM
    response = sidecar.upload(make_image("PNG"), make_job())
    residency = response.json()["residency"]
    assert residency["keep_alive"] == "0s" and residency["rule"] == "llm_reserve"
    assert "llm reserve" in residency["reason"]
    # No LLM is loaded, so nothing needs the memory now: the job runs at once, and the reserve
    # is kept by the 0s after the job (the OCR model leaves as soon as it is done).
    assert residency["yield_ms"] == 0 and residency["loads"] == 1
    fake_ollama_load(fake_ollama, "typhoon2.5-qwen3-4b")  # once it is loaded, OCR may stay
    response = sidecar.upload(make_image("PNG"), make_job())
    assert response.json()["residency"]["keep_alive"] == "299s"
    assert response.json()["residency"]["yield_ms"] == 0


def test_squeezed_priority_model_sends_the_ocr_model_away(start_sidecar, fake_ollama, vram):
    from tests.fake_ollama import FakeModel

    sidecar = start_sidecar(ocr_yield_max_s=0.2)
    fake_ollama.install(FakeModel("typhoon2.5-qwen3-4b", size=9 * 1024**3, size_vram=7 * 1024**3))
    fake_ollama_load(fake_ollama, "typhoon2.5-qwen3-4b")
    vram.used_pct(50)
    response = sidecar.upload(make_image("PNG"), make_job())
    residency = response.json()["residency"]
    assert residency["keep_alive"] == "0s" and residency["rule"] == "priority_squeezed"
    assert residency["reason"].startswith("priority model typhoon2.5-qwen3-4b:latest squeezed")
    assert residency["yield_ms"] >= 200
    assert "typhoon-ocr1.5-3b:latest" not in fake_ollama.loaded()  # the fake unloaded it


def test_profile_ceiling_caps_keep_alive(sidecar: Sidecar, fake_ollama: FakeOllama, vram):
    fake_ollama_load(fake_ollama, "typhoon2.5-qwen3-4b")
    vram.used_pct(10)
    response = sidecar.upload(make_image("PNG"), make_job(profile={"keep_alive": "90s"}))
    assert response.json()["residency"]["keep_alive"] == "90s"
    response = sidecar.upload(make_image("PNG"), make_job(profile={"keep_alive": None}))
    # Ollama's default, 5 min, kept a second below the LLM's own 5m (PRIORITY_KEEP_ALIVE)
    assert response.json()["residency"]["keep_alive"] == "299s"


# --- incomplete pages ------------------------------------------------------------------------


def test_num_predict_cut_is_flagged_incomplete(sidecar: Sidecar, fake_ollama: FakeOllama):
    response = sidecar.upload(make_image("PNG"), make_job(profile={"max_tokens": 3}))
    page = response.json()["pages"][0]
    assert page["complete"] is False
    assert page["done_reason"] == "length"
    assert page["text"] == "Fake OCR text"  # the text so far is kept
    assert sidecar.metric("sidecar_ocr_pages_total", {"complete": "false"}) == 1


def test_reply_without_done_is_flagged_incomplete(sidecar: Sidecar, fake_ollama: FakeOllama):
    from tests.fake_ollama import Fault

    fake_ollama.fail(Fault.REPEAT_ABORT)
    response = sidecar.upload(make_image("PNG"), make_job())
    assert response.status_code == 200
    page = response.json()["pages"][0]
    assert page["complete"] is False and page["done_reason"] is None
    assert page["text"].startswith("Fake OCR text")


# --- request errors --------------------------------------------------------------------------


def test_path_outside_the_base_is_forbidden(sidecar: Sidecar, upload_base: Path):
    (upload_base.parent / "outside.pdf").write_bytes(text_pdf(1))
    body = assert_problem(sidecar.by_path("../outside.pdf", make_job()), 403, "path_forbidden")
    assert str(upload_base) not in body["detail"]
    assert_problem(sidecar.by_path("/etc/passwd", make_job()), 403, "path_forbidden")


def test_symlink_escape_is_forbidden(sidecar: Sidecar, upload_base: Path):
    (upload_base.parent / "secret.png").write_bytes(make_image("PNG"))
    os.symlink(upload_base.parent / "secret.png", upload_base / "link.png")
    assert_problem(sidecar.by_path("link.png", make_job()), 403, "path_forbidden")


def test_missing_document_is_404(sidecar: Sidecar):
    assert_problem(sidecar.by_path("nope/missing.pdf", make_job()), 404, "document_not_found")


def test_unknown_content_is_415_in_both_modes(sidecar: Sidecar, upload_base: Path):
    (upload_base / "notes.pdf").write_bytes(b"just some text, named .pdf")
    assert_problem(sidecar.by_path("notes.pdf", make_job()), 415, "unsupported_media_type")
    gif = b"GIF89a" + b"\x00" * 32
    assert_problem(sidecar.upload(gif, make_job()), 415, "unsupported_media_type")


def test_other_request_media_types_are_415(sidecar: Sidecar):
    response = sidecar.client.post("/ocr", content=b"x", headers={"content-type": "text/plain"})
    assert_problem(response, 415, "unsupported_media_type")


def test_encrypted_pdf_is_422_with_a_clear_message(sidecar: Sidecar, fake_ollama: FakeOllama):
    body = assert_problem(sidecar.upload(encrypted_pdf(), make_job()), 422, "invalid_document")
    assert "password" in body["detail"]
    assert ollama_calls(fake_ollama) == []  # nothing reached Ollama


def test_corrupt_pdf_is_422(sidecar: Sidecar):
    body = assert_problem(sidecar.upload(b"%PDF-1.7\n" + b"\x00" * 200, make_job()), 422,
                          "invalid_document")  # fmt: skip
    assert "damaged" in body["detail"]


def test_truncated_image_is_422(sidecar: Sidecar):
    png = make_image("PNG", (800, 600))
    assert_problem(sidecar.upload(png[: len(png) // 2], make_job()), 422, "invalid_document")


def test_file_over_the_limit_is_413_in_both_modes(start_sidecar, upload_base: Path):
    sidecar = start_sidecar(max_file_mb=1)
    big = make_pdf([["x"]]) + b"%" + os.urandom(1024 * 1024)
    (upload_base / "big.pdf").write_bytes(big)
    assert_problem(sidecar.by_path("big.pdf", make_job()), 413, "payload_too_large")
    assert_problem(sidecar.upload(big, make_job()), 413, "payload_too_large")


def test_too_many_pages_is_413(start_sidecar):
    sidecar = start_sidecar(max_pages=2)
    assert_problem(sidecar.upload(text_pdf(3), make_job()), 413, "too_many_pages")
    assert_problem(sidecar.upload(text_pdf(3), make_job(pages=[1, 2, 3])), 413, "too_many_pages")
    assert sidecar.upload(text_pdf(3), make_job(pages=[2, 3])).status_code == 200


def test_page_beyond_the_document_is_422_naming_pages(sidecar: Sidecar):
    body = assert_problem(sidecar.upload(text_pdf(2), make_job(pages=[3])), 422, "validation_error")
    assert body["detail"].startswith("pages:")
    body = assert_problem(sidecar.upload(make_image("PNG"), make_job(pages=[1, 1])), 422,
                          "validation_error")  # fmt: skip
    assert "twice" in body["detail"]


@pytest.mark.parametrize(
    ("profile", "field"),
    [
        ({"temperature": 2.5}, "profile.temperature"),
        ({"top_p": 0}, "profile.top_p"),
        ({"repeat_penalty": 0}, "profile.repeat_penalty"),
        ({"max_tokens": 0}, "profile.max_tokens"),
        ({"max_tokens": 131073}, "profile.max_tokens"),
        ({"keep_alive": "1d"}, "profile.keep_alive"),
        ({"keep_alive": "300"}, "profile.keep_alive"),
        ({"model": " "}, "profile.model"),
        ({"options": {"temperature": "hot"}}, "profile.options.temperature"),
        ({"options": {"max_tokens": 10}}, "profile.options.max_tokens"),
        ({"options": {"num_predict": 10}}, "profile.options.num_predict"),
    ],
)
def test_out_of_range_values_are_422_naming_the_field(
    sidecar: Sidecar, fake_ollama: FakeOllama, profile: dict, field: str
):
    for response in (
        sidecar.upload(make_image("PNG"), make_job(profile=profile)),
        sidecar.by_path("irrelevant.png", make_job(profile=profile)),
    ):
        body = assert_problem(response, 422, "validation_error")
        assert field in body["detail"], body["detail"]
    assert ollama_calls(fake_ollama) == []


def test_override_out_of_range_is_422_naming_the_field(sidecar: Sidecar):
    job = make_job()
    job["options_override"] = {"top_p": 1.5}
    body = assert_problem(sidecar.upload(make_image("PNG"), job), 422, "validation_error")
    assert body["detail"].startswith("options_override.top_p:")


@pytest.mark.parametrize("where", ["profile.options", "options_override"])
def test_keep_alive_in_options_is_refused(sidecar: Sidecar, fake_ollama: FakeOllama, where: str):
    job = make_job()
    if where == "profile.options":
        job["profile"]["options"]["keep_alive"] = "1h"
    else:
        job["options_override"] = {"keep_alive": -1}
    for response in (sidecar.upload(make_image("PNG"), job), sidecar.by_path("x.png", job)):
        body = assert_problem(response, 422, "keep_alive_not_allowed")
        assert "keep_alive" in body["detail"]
    assert ollama_calls(fake_ollama) == []


def test_malformed_multipart_requests_are_422(sidecar: Sidecar):
    only_file = sidecar.client.post("/ocr", files={"file": ("a.png", make_image("PNG"))})
    assert "'job' is missing" in assert_problem(only_file, 422, "validation_error")["detail"]
    extra = sidecar.client.post(
        "/ocr",
        files={"file": ("a", b"x"), "job": (None, "{}"), "other": (None, "y")},
    )
    assert "unexpected part" in assert_problem(extra, 422, "validation_error")["detail"]
    bad_json = sidecar.client.post("/ocr", files={"file": ("a", b"x"), "job": (None, "{not json")})
    assert_problem(bad_json, 422, "validation_error")


def test_invalid_json_body_is_422(sidecar: Sidecar):
    response = sidecar.client.post(
        "/ocr", content=b'{"source": ', headers={"content-type": "application/json"}
    )
    assert_problem(response, 422, "validation_error")


def test_ocr_needs_the_api_key(sidecar: Sidecar):
    import httpx

    response = httpx.post(f"{sidecar.url}/ocr", json={"source": {"path": "a.pdf"}, **make_job()})
    assert_problem(response, 401, "unauthorized")


def test_response_reports_timings_and_queue_time_metric(sidecar: Sidecar):
    response = sidecar.upload(text_pdf(1), make_job())
    timings = response.json()["timings"]
    assert set(timings) == {"queue_ms", "render_ms", "total_ms"}
    assert timings["queue_ms"] >= 0 and timings["total_ms"] >= timings["render_ms"]
    assert sidecar.metric("sidecar_ocr_queue_wait_seconds_count") == 1
    metrics = sidecar.client.get("/metrics").text
    assert "sidecar_ocr_keep_alive_seconds_count 1.0" in metrics
    assert 'sidecar_ocr_residency_decisions_total{rule="priority_order"} 1.0' in metrics
    assert json.loads(response.text)["request_id"] == response.headers["x-request-id"]


def test_the_page_call_loads_the_model_without_a_separate_load_call(
    sidecar: Sidecar, fake_ollama: FakeOllama
):
    first = sidecar.upload(make_image("PNG"), make_job())
    assert first.status_code == 200
    # /api/tags only while the model is not loaded (its footprint), and no /api/generate
    assert [r.path for r in fake_ollama.requests] == ["/api/ps", "/api/tags", "/api/chat"]
    assert [model for model, _ in fake_ollama.load_events] == ["scb10x/typhoon-ocr1.5-3b:latest"]
    assert first.json()["residency"]["loads"] == 1
    fake_ollama.clear_requests()
    second = sidecar.upload(make_image("PNG"), make_job())  # still loaded
    assert second.status_code == 200
    assert [r.path for r in fake_ollama.requests] == ["/api/ps", "/api/chat"]
    assert second.json()["residency"]["loads"] == 0
    assert chat_bodies(fake_ollama)[0]["messages"]
