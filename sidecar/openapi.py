"""The sidecar's OpenAPI document, and the `/openapi.json` and `/docs` routes that serve it.

FastAPI sees the routes and their response models. It cannot see what a route reads by hand (the
two `/ocr` bodies), the NDJSON stream, the problem+json answers with their `code`s, the auth scheme
or the headers; `build_openapi` adds those. `python -m sidecar.openapi` writes `docs/openapi.json`.
"""

from __future__ import annotations

import copy
import json
import secrets
import sys
import tempfile
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse, JSONResponse
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from sidecar.auth import API_KEY_HEADER, PUBLIC_PATHS
from sidecar.error_codes import CODES
from sidecar.schemas import OcrJob, OcrRequest

OPENAPI_PATH = "/openapi.json"
DOCS_PATH = "/docs"
SCHEMA_FILE = Path(__file__).resolve().parents[1] / "docs" / "openapi.json"
REF = "#/components/schemas/{model}"
NDJSON = "application/x-ndjson"
PROBLEM_JSON = "application/problem+json"
EVENT_SCHEMAS = ("OcrPageEvent", "OcrDoneEvent", "OcrErrorEvent")  # one line of the NDJSON stream

# Every protected route can answer these, before the route runs.
AUTH_CODES = ("unauthorized", "forbidden_network")
# Any route can fail unexpectedly; the body then holds the request id only.
ALWAYS_CODES = ("internal_error",)
# Answers to a path or method the schema does not have, so no operation lists them.
ROUTING_CODES = ("not_found", "method_not_allowed")
RETRIEVAL_CODES = (
    "payload_too_large",
    "validation_error",
    "too_many_inputs",
    "input_too_long",
    "overloaded",
    "not_ready",
)
# path -> the codes its route itself produces, besides AUTH_CODES and ALWAYS_CODES.
ROUTE_CODES: dict[str, tuple[str, ...]] = {
    "/live": (),
    "/ready": ("not_ready",),
    "/health": (),
    "/metrics": (),
    "/ocr": (
        "payload_too_large",
        "path_forbidden",
        "document_not_found",
        "too_many_pages",
        "unsupported_media_type",
        "validation_error",
        "keep_alive_not_allowed",
        "invalid_document",
        "model_not_available",
        "overloaded",
        "ollama_bad_response",
        "ollama_unavailable",
        "not_ready",
        "ollama_timeout",
        "job_timeout",
    ),
    "/embed": RETRIEVAL_CODES,
    "/rerank": RETRIEVAL_CODES,
}
RETRY_AFTER_STATUSES = (429, 503)
SUMMARIES = {
    "/live": "Liveness: 200 while the process serves",
    "/ready": "Readiness: models loaded and Ollama reachable",
    "/health": "Status of the GPU, the models, Ollama and the queues",
    "/metrics": "Prometheus metrics",
    "/ocr": "OCR a document",
    "/embed": "Embed texts",
    "/rerank": "Rerank texts for a query",
}

DESCRIPTION = f"""\
OCR through Ollama, embeddings and reranking, beside an LLM that owns the GPU first.

**Auth.** Every route except `/live` and `/ready` needs the `{API_KEY_HEADER}` header in the
`api_key` modes; in the `network` modes the client's address must be inside `TRUSTED_NETWORKS`.

**Errors.** Every error is `application/problem+json` with a stable `code`; each operation lists
its codes per status. Any other path answers 404 `not_found`, a wrong method 405
`method_not_allowed`.

**Headers.** Every response carries `X-Request-ID` (echoed when the caller sends a well-formed one).
"""

HEADERS: dict[str, dict[str, Any]] = {
    "X-Request-ID": {
        "description": "The request's id: the caller's own when well-formed, else generated. "
        "It is in every log line of the request.",
        "schema": {"type": "string"},
    },
    "Retry-After": {
        "description": "Seconds to wait before trying again; absent when waiting will not help.",
        "schema": {"type": "integer", "minimum": 1},
    },
    "X-Compute-Device": {
        "description": "Where the model ran.",
        "schema": {"type": "string", "enum": ["cuda", "cpu"]},
    },
    "X-Compute-Device-Reason": {
        "description": "Why the model ran on the CPU (ASCII), e.g. `vram pressure 91% >= 85%`.",
        "schema": {"type": "string"},
    },
}

PROBLEM_SCHEMA: dict[str, Any] = {
    "title": "Problem",
    "description": "RFC 9457 problem details. `detail` is written for the caller and never holds "
    "a key, a stack trace or a filesystem path.",
    "type": "object",
    "required": ["type", "title", "status", "detail", "code", "request_id"],
    "properties": {
        "type": {"type": "string", "description": "A URI naming the code."},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "code": {"type": "string", "enum": list(CODES)},
        "request_id": {"type": "string"},
        "errors": {
            "description": "`validation_error`, `keep_alive_not_allowed`: each bad field.",
            "type": "array",
            "items": {
                "type": "object",
                "required": ["field", "message"],
                "properties": {"field": {"type": "string"}, "message": {"type": "string"}},
            },
        },
        "reasons": {
            "description": "`GET /ready`: each part that is not ready yet.",
            "type": "array",
            "items": {"type": "string"},
        },
    },
}

MULTIPART_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["file", "job"],
    "properties": {
        "file": {
            "type": "string",
            "contentMediaType": "application/octet-stream",
            "description": "The document: PDF, PNG, JPEG, TIFF or WebP (known by its bytes).",
        },
        "job": {"$ref": REF.format(model="OcrJob")},
    },
}

OCR_DESCRIPTION = """\
OCR a document, page by page, through the Ollama model the profile names.

Two request forms: JSON with `source.path` (a file under the sidecar's `UPLOAD_BASE`), or
`multipart/form-data` with the parts `file` (the document's bytes) and `job` (the same JSON without
`source`).

With `Accept: application/x-ndjson` the answer is 200 and one JSON object per line: an
`OcrPageEvent` per page as it completes, in page order, then one `OcrDoneEvent`; an error after the
first line ends the stream with an `OcrErrorEvent`. Errors found before the first page keep their
problem+json status.
"""


# --- pieces --------------------------------------------------------------------------------------


def operation_codes(path: str, public: bool) -> list[str]:
    """Every code one operation can answer with, in the order of the `CODES` table."""
    codes = set(ROUTE_CODES.get(path, ())) | set(ALWAYS_CODES)
    if not public:
        codes |= set(AUTH_CODES)
    return [code for code in CODES if code in codes]


def problem_responses(codes: Iterable[str]) -> dict[str, dict[str, Any]]:
    """One response per status, its `code` narrowed to the codes listed for that status."""
    by_status: dict[int, list[str]] = {}
    for code in codes:
        by_status.setdefault(CODES[code][0], []).append(code)
    responses: dict[str, dict[str, Any]] = {}
    for status, listed in sorted(by_status.items()):
        narrowed = {
            "allOf": [
                {"$ref": REF.format(model="Problem")},
                {"properties": {"status": {"const": status}, "code": {"enum": listed}}},
            ]
        }
        headers = {"X-Request-ID": {"$ref": "#/components/headers/X-Request-ID"}}
        if status in RETRY_AFTER_STATUSES:
            headers["Retry-After"] = {"$ref": "#/components/headers/Retry-After"}
        responses[str(status)] = {
            "description": "; ".join(f"`{code}`: {CODES[code][1]}" for code in listed),
            "headers": headers,
            "content": {PROBLEM_JSON: {"schema": narrowed}},
        }
    return responses


def request_models_schemas(models: Iterable[type[BaseModel]]) -> dict[str, Any]:
    """Component schemas of models that no route declares (the route reads the body itself)."""
    _, top = models_json_schema([(model, "validation") for model in models], ref_template=REF)
    return dict(top.get("$defs", {}))


def event_schemas(schemas: dict[str, Any]) -> dict[str, Any]:
    """The NDJSON stream's three line shapes, built from the response models they mirror."""

    def tagged(event: str) -> dict[str, Any]:
        return {
            "type": "object",
            "required": ["event"],
            "properties": {"event": {"const": event}},
        }

    done = copy.deepcopy(schemas["OcrResponse"])
    done["properties"].pop("pages", None)
    done["required"] = [name for name in done.get("required", []) if name != "pages"]
    done["properties"]["event"] = {"const": "done"}
    done["required"].insert(0, "event")
    done["title"] = "OcrDoneEvent"
    done["description"] = "The last line: the whole response without its pages."
    return {
        "OcrPageEvent": {
            "title": "OcrPageEvent",
            "description": "One page, as it completes (the fields of a page in `pages`).",
            "allOf": [{"$ref": REF.format(model="OcrPageResult")}, tagged("page")],
        },
        "OcrDoneEvent": done,
        "OcrErrorEvent": {
            "title": "OcrErrorEvent",
            "description": "An error after the first line; the stream ends with it.",
            "allOf": [{"$ref": REF.format(model="Problem")}, tagged("error")],
        },
    }


def merge_schemas(target: dict[str, Any], extra: dict[str, Any]) -> None:
    for name, schema in extra.items():
        if name in target and target[name] != schema:
            raise ValueError(f"two different schemas are both named {name!r}")
        target[name] = schema


# --- the document ---------------------------------------------------------------------------------


def describe_ocr(operation: dict[str, Any]) -> None:
    operation["description"] = OCR_DESCRIPTION
    operation["requestBody"] = {
        "required": True,
        "content": {
            "application/json": {"schema": {"$ref": REF.format(model="OcrRequest")}},
            "multipart/form-data": {
                "schema": MULTIPART_SCHEMA,
                "encoding": {"job": {"contentType": "application/json"}},
            },
        },
    }
    ok = operation["responses"]["200"]
    ok["description"] = "The OCR result; with `Accept: application/x-ndjson`, one event per line."
    events = [{"$ref": REF.format(model=name)} for name in EVENT_SCHEMAS]
    ok["content"][NDJSON] = {"schema": {"oneOf": events}}


def describe_fixed_routes(paths: dict[str, Any]) -> None:
    """The answers of the routes that return a bare Response (no model FastAPI could see)."""
    for operation in paths["/ready"].values():
        operation["responses"]["200"]["content"]["application/json"]["schema"] = {
            "type": "object",
            "required": ["status"],
            "properties": {"status": {"const": "ready"}},
        }
    metrics = paths["/metrics"]["get"]["responses"]["200"]
    metrics["content"] = {"text/plain": {"schema": {"type": "string"}}}
    metrics["description"] = "Prometheus text exposition format."
    for route in ("/embed", "/rerank"):
        paths[route]["post"]["responses"]["200"]["headers"] = {
            "X-Compute-Device": {"$ref": "#/components/headers/X-Compute-Device"},
            "X-Compute-Device-Reason": {"$ref": "#/components/headers/X-Compute-Device-Reason"},
        }


def stable_order(item: dict[str, Any]) -> dict[str, Any]:
    """A path item with its methods sorted and no generated inline titles. FastAPI walks a
    route's methods as a set, whose order (and so "Response Live Live Get" vs "…Head") changes
    with each process's hash seed; the committed file must not."""
    for operation in item.values():
        for response in operation.get("responses", {}).values():
            for media in response.get("content", {}).values():
                media.get("schema", {}).pop("title", None)
    return dict(sorted(item.items()))


def build_openapi(app: FastAPI) -> dict[str, Any]:
    """The app's whole OpenAPI 3.1 document (deterministic: the same app gives the same dict)."""
    with warnings.catch_warnings():
        # Routes answering GET and HEAD share one generated id; build_openapi renames them all.
        warnings.filterwarnings("ignore", message="Duplicate Operation ID")
        spec = get_openapi(
            title=app.title, version=app.version, description=DESCRIPTION, routes=app.routes
        )
    components = spec.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    for name in ("HTTPValidationError", "ValidationError"):  # replaced by Problem
        schemas.pop(name, None)
    merge_schemas(schemas, request_models_schemas([OcrRequest, OcrJob]))
    merge_schemas(schemas, {"Problem": PROBLEM_SCHEMA})
    merge_schemas(schemas, event_schemas(schemas))
    components["headers"] = HEADERS
    components["securitySchemes"] = {
        "ApiKey": {
            "type": "apiKey",
            "in": "header",
            "name": API_KEY_HEADER,
            "description": "One of the sidecar's keys (`api_key` modes only).",
        }
    }
    paths = spec["paths"] = {path: stable_order(item) for path, item in spec["paths"].items()}
    describe_fixed_routes(paths)
    describe_ocr(paths["/ocr"]["post"])
    for path, item in paths.items():
        public = path in PUBLIC_PATHS
        for method, operation in item.items():
            responses = operation["responses"]
            responses.pop("422", None)  # FastAPI's own shape; Problem replaces it below
            for response in responses.values():
                response.setdefault("headers", {})["X-Request-ID"] = {
                    "$ref": "#/components/headers/X-Request-ID"
                }
            responses.update(problem_responses(operation_codes(path, public)))
            operation["security"] = [] if public else [{"ApiKey": []}]
            operation["summary"] = SUMMARIES.get(path, operation.get("summary", ""))
            # FastAPI names both methods of a GET+HEAD route alike; ids must be unique.
            operation["operationId"] = f"{method}_{path.strip('/').replace('/', '_')}"
    spec["components"] = dict(sorted(components.items()))
    components["schemas"] = dict(sorted(schemas.items()))
    return spec


def schema_text(spec: dict[str, Any]) -> str:
    """The committed file's exact text: sorted keys would scramble the reading order, so not."""
    return json.dumps(spec, indent=2, ensure_ascii=False) + "\n"


# --- serving ------------------------------------------------------------------------------------


def install_openapi(app: FastAPI) -> None:
    """Serve `/openapi.json` and `/docs`. They are not public paths, so auth guards them."""
    cache: dict[str, Any] = {}

    def openapi() -> dict[str, Any]:
        if "spec" not in cache:
            cache["spec"] = build_openapi(app)
        return cache["spec"]  # type: ignore[no-any-return]

    app.openapi = openapi  # type: ignore[method-assign]

    async def openapi_json(request: Request) -> JSONResponse:
        return JSONResponse(openapi())

    async def swagger_ui(request: Request) -> HTMLResponse:
        return get_swagger_ui_html(openapi_url=OPENAPI_PATH, title=f"{app.title} API")

    app.add_api_route(OPENAPI_PATH, openapi_json, methods=["GET"], include_in_schema=False)
    app.add_api_route(DOCS_PATH, swagger_ui, methods=["GET"], include_in_schema=False)


def schema_of_default_app() -> dict[str, Any]:
    """The schema of an app built with throwaway settings (never served, nothing kept)."""
    from sidecar.app import create_app  # the full app pulls in torch: only when asked
    from sidecar.config import Settings

    with tempfile.TemporaryDirectory(prefix="openapi-") as upload_base:
        settings = Settings(
            api_key=secrets.token_urlsafe(32), upload_base=upload_base, vram_source="none"
        )
        return build_openapi(create_app(settings))


def main(argv: list[str] | None = None) -> int:
    """`python -m sidecar.openapi [PATH]`: write the schema (default docs/openapi.json)."""
    args = sys.argv[1:] if argv is None else argv
    target = Path(args[0]) if args else SCHEMA_FILE
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(schema_text(schema_of_default_app()), encoding="utf-8")
    print(f"wrote {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
