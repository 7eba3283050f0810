"""Helpers for faults mid-job: an OCR upload, and Ollama killed when page k is sent."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx

from tests.fake_ollama import FakeOllama
from tests.fixtures.documents import text_pdf
from tests.fixtures.jobs import make_job
from tests.reliability.processes import RunningSidecar

PAGES = 4


def ocr(sidecar: RunningSidecar, pages: int = PAGES) -> httpx.Response:
    job = json.dumps(make_job())
    files = {"file": ("doc.pdf", text_pdf(pages), "application/pdf"), "job": (None, job)}
    with sidecar.client(timeout=120) as client:
        return client.post("/ocr", files=files)


def page_calls(fake: FakeOllama) -> int:
    """Inference requests that carry a page image (load calls carry none)."""
    return sum(
        1 for r in fake.requests if r.path in ("/api/chat", "/api/generate") and has_image(r.body)
    )


def has_image(body: Any) -> bool:
    if not isinstance(body, dict):
        return False
    if body.get("images"):
        return True
    return any(isinstance(m, dict) and m.get("images") for m in body.get("messages") or [])


@contextmanager
def ollama_killed_at_page(fake: FakeOllama, page: int) -> Iterator[threading.Event]:
    """Ollama goes down as soon as page `page`'s request reaches it, and comes back on exit;
    the event is set once it was killed."""
    fake.clear_requests()
    killed = threading.Event()

    def kill() -> None:
        if fake.wait_for(lambda f: page_calls(f) >= page, timeout=60):
            fake.go_down()
            killed.set()

    killer = threading.Thread(target=kill)
    killer.start()
    try:
        yield killed
    finally:
        killer.join()
        if killed.is_set():
            fake.come_up()
