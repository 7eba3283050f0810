"""Every error the foundation produces is problem+json with its documented code."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from sidecar.app import create_app
from sidecar.config import Settings
from sidecar.errors import CODES, ApiError
from sidecar.observability import JsonFormatter
from sidecar.retrieval.service import RetrievalService
from tests.server import serve


class ExplodingRetrieval(RetrievalService):
    """A retrieval service whose health check hits an unexpected bug."""

    def health(self) -> dict[str, Any]:
        raise RuntimeError("/very/secret/internal/path exploded")


def assert_problem(response: httpx.Response, status: int, code: str) -> dict:
    assert response.status_code == status
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body["code"] == code and body["status"] == status
    assert body["title"] == CODES[code][1]
    assert body["type"].endswith("/" + code)
    assert body["request_id"] == response.headers["x-request-id"]
    assert "Traceback" not in response.text
    return body


def test_framework_errors_are_problems(
    make_settings: Callable[..., Settings], api_key: str
) -> None:
    with serve(create_app(make_settings())) as server, httpx.Client(base_url=server.url) as c:
        assert_problem(c.get("/normalize", headers={"X-API-Key": api_key}), 404, "not_found")
        assert_problem(c.post("/normalize", headers={"X-API-Key": api_key}), 404, "not_found")
        assert_problem(c.delete("/live"), 405, "method_not_allowed")
        # Without a key nothing but /live and /ready is even routed, the schema included.
        assert_problem(c.get("/redoc", headers={"X-API-Key": api_key}), 404, "not_found")
        for path in ("/openapi.json", "/docs", "/redoc"):
            assert_problem(c.get(path), 401, "unauthorized")
        assert_problem(c.get("/health"), 401, "unauthorized")
        assert_problem(c.get("/ready"), 503, "not_ready")  # skeleton parts report not ready


def test_unhandled_error_is_a_500_without_internals(
    make_settings: Callable[..., Settings], api_key: str
) -> None:
    settings = make_settings()
    retrieval = ExplodingRetrieval(settings, None, None)  # type: ignore[arg-type]
    with serve(create_app(settings, retrieval=retrieval)) as server:
        response = httpx.get(
            f"{server.url}/health", headers={"X-API-Key": api_key, "X-Request-ID": "trace-me-42"}
        )
    body = assert_problem(response, 500, "internal_error")
    assert body["request_id"] == "trace-me-42"
    assert "secret" not in response.text and "exploded" not in response.text


def test_request_id_is_echoed_or_generated(make_settings: Callable[..., Settings]) -> None:
    with serve(create_app(make_settings())) as server, httpx.Client(base_url=server.url) as c:
        assert (
            c.get("/live", headers={"X-Request-ID": "abc-123"}).headers["x-request-id"] == "abc-123"
        )
        generated = c.get("/live").headers["x-request-id"]
        assert len(generated) == 32
        # A header that could inject into logs is replaced, not echoed.
        injected = c.get("/live", headers={"X-Request-ID": "x" * 200}).headers["x-request-id"]
        assert injected != "x" * 200 and len(injected) == 32
        spaced = c.get("/live", headers={"X-Request-ID": "a b"}).headers["x-request-id"]
        assert spaced != "a b"


def test_undocumented_codes_cannot_be_raised() -> None:
    with pytest.raises(ValueError, match="undocumented"):
        ApiError("teapot", "no")


def test_one_json_log_line_per_request(
    make_settings: Callable[..., Settings], caplog: pytest.LogCaptureFixture
) -> None:
    with (
        caplog.at_level(logging.INFO, logger="sidecar.access"),
        serve(create_app(make_settings())) as server,
    ):
        httpx.get(f"{server.url}/live", headers={"X-Request-ID": "log-me"})
    records = [r for r in caplog.records if getattr(r, "request_id", None) == "log-me"]
    assert len(records) == 1
    line = json.loads(JsonFormatter().format(records[0]))
    assert line["route"] == "/live" and line["status"] == 200 and line["client"] == "127.0.0.1"
    assert isinstance(line["ms"], float)


def test_api_docs_document_exactly_the_codes_the_sidecar_uses() -> None:
    api = (Path(__file__).resolve().parents[2] / "docs" / "api.md").read_text(encoding="utf-8")
    table = api.split("| status | code |", 1)[1].split("\n\n", 1)[0]
    documented = {
        code: int(row.split("|")[1])
        for row in table.splitlines()[2:]
        for code in re.findall(r"`([a-z_]+)`", row.split("|")[2])
    }
    assert documented == {code: status for code, (status, _title) in CODES.items()}
