"""A stand-in for the sidecar's `POST /ocr`, `/embed` and `/rerank` on a real socket: records every
request it receives and answers either a scripted failure or a well-formed answer built from the
request (`OcrResponse`, or the NDJSON stream when asked with `Accept: application/x-ndjson`).

It validates bodies and answers with the real `sidecar.schemas`, so a request it accepts is one
the real sidecar's schema accepts too, and its answers are ones the real models parse.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.datastructures import UploadFile

from sidecar.schemas import (
    EmbedRequest,
    EmbedResponse,
    OcrJob,
    OcrRequest,
    OcrResponse,
    RerankRequest,
    RerankResponse,
)

NDJSON = "application/x-ndjson"


@dataclass
class Recorded:
    headers: dict[str, str]
    job: dict[str, Any]
    """The job as sent: the JSON body (path mode) or the multipart `job` part."""
    path: str | None = None
    upload: bytes | None = None
    upload_name: str | None = None
    route: str = "/ocr"


@dataclass
class Scripted:
    status: int
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    raw: bytes | None = None


def problem(
    status: int, code: str, detail: str = "scripted", request_id: str = ""
) -> dict[str, Any]:
    return {
        "type": f"https://ocr-sidecar.local/problems/{code}",
        "title": code,
        "status": status,
        "detail": detail,
        "code": code,
        "request_id": request_id,
    }


class RecordingSidecar:
    def __init__(self) -> None:
        self.app = FastAPI()
        self.app.add_api_route("/ocr", self._ocr, methods=["POST"])
        self.app.add_api_route("/embed", self._json_route("/embed", embed_answer), methods=["POST"])
        self.app.add_api_route(
            "/rerank", self._json_route("/rerank", rerank_answer), methods=["POST"]
        )
        self._lock = threading.Lock()
        self.requests: list[Recorded] = []
        self.script: list[Scripted] = []
        self.failing_pages: dict[int, int] = {}
        self.stream_error_after: int | None = None
        self.url = ""

    def reset(self, url: str) -> None:
        with self._lock:
            self.requests.clear()
            self.script.clear()
            self.failing_pages.clear()
            self.stream_error_after = None
            self.url = url

    def fail_pages(self, *pages: int, times: int = 1) -> None:
        """These pages come back with `text: null` and an `ollama_timeout` error, `times` jobs
        in a row (a partial result, as the real sidecar gives after an earlier page succeeded)."""
        with self._lock:
            self.failing_pages.update(dict.fromkeys(pages, times))

    def end_stream_with_error_after(self, pages: int) -> None:
        """The next NDJSON streams send `pages` page lines, then an `error` line."""
        with self._lock:
            self.stream_error_after = pages

    def fail_next(self, *answers: Scripted) -> None:
        """The next requests get these answers, in order; later ones succeed."""
        with self._lock:
            self.script.extend(answers)

    @property
    def count(self) -> int:
        with self._lock:
            return len(self.requests)

    async def _ocr(self, request: Request) -> Response:
        recorded = await self._record(request)
        scripted = self._log(recorded)
        request_id = request.headers.get("x-request-id", "")
        if scripted is not None:
            return _scripted_answer(scripted, request_id)
        with self._lock:
            answer = ocr_answer(recorded, request_id, self._failed_now(recorded))
            error_after = self.stream_error_after
        headers = {"X-Request-ID": request_id}
        if NDJSON in request.headers.get("accept", ""):
            lines = ndjson_lines(answer, error_after)
            return StreamingResponse(iter(lines), media_type=NDJSON, headers=headers)
        return JSONResponse(answer, headers=headers)

    def _json_route(
        self, route: str, answer_for: Callable[[Any], dict[str, Any]]
    ) -> Callable[[Request], Awaitable[Response]]:
        async def handle(request: Request) -> Response:
            body = await request.json()
            scripted = self._log(Recorded(_headers(request), body, route=route))
            if scripted is not None:
                return _scripted_answer(scripted, request.headers.get("x-request-id", ""))
            return JSONResponse(answer_for(body))

        return handle

    def _log(self, recorded: Recorded) -> Scripted | None:
        with self._lock:
            self.requests.append(recorded)
            return self.script.pop(0) if self.script else None

    def _failed_now(self, recorded: Recorded) -> set[int]:
        """Pages of this job scripted to fail (caller holds the lock); uses one of their turns."""
        failed = {page for page in recorded.job.get("pages") or [1] if self.failing_pages.get(page)}
        for page in failed:
            self.failing_pages[page] -= 1
        return failed

    async def _record(self, request: Request) -> Recorded:
        headers = _headers(request)
        if headers.get("content-type", "").startswith("multipart/form-data"):
            form = await request.form()
            upload = form["file"]
            assert isinstance(upload, UploadFile)
            job = json.loads(str(form["job"]))
            OcrJob.model_validate(job)
            return Recorded(headers, job, upload=await upload.read(), upload_name=upload.filename)
        body = await request.json()
        OcrRequest.model_validate(body)
        return Recorded(headers, body, path=body["source"]["path"])


def _headers(request: Request) -> dict[str, str]:
    return {key.lower(): value for key, value in request.headers.items()}


def _scripted_answer(scripted: Scripted, request_id: str) -> Response:
    headers = {"X-Request-ID": request_id, **scripted.headers}
    if scripted.raw is not None:
        return Response(scripted.raw, status_code=scripted.status, headers=headers)
    return JSONResponse(
        scripted.body,
        status_code=scripted.status,
        headers=headers,
        media_type="application/problem+json" if scripted.status >= 400 else None,
    )


def embed_answer(body: Any) -> dict[str, Any]:
    """A well-formed `/embed` answer: dense [length, 1.0] per input, in input order."""
    parsed = EmbedRequest.model_validate(body)
    answer = {
        "model": "fake-embedder",
        "device": "cpu",
        "dense": [[float(len(text)), 1.0] for text in parsed.inputs],
        "sparse": [{"1": 0.5} for _ in parsed.inputs] if parsed.return_sparse else None,
        "usage": {"tokens": sum(len(text.split()) for text in parsed.inputs)},
    }
    return EmbedResponse.model_validate(answer).model_dump(mode="json")


def rerank_answer(body: Any) -> dict[str, Any]:
    """A well-formed `/rerank` answer: score = query words the text holds, highest first."""
    parsed = RerankRequest.model_validate(body)
    words = set(parsed.query.split())
    scored = sorted(enumerate(parsed.texts), key=lambda item: -len(words & set(item[1].split())))
    results = [
        {
            "index": index,
            "score": float(len(words & set(text.split()))),
            **({"text": text} if parsed.return_text else {}),
        }
        for index, text in scored[: parsed.top_n]
    ]
    answer = {"model": "fake-reranker", "device": "cpu", "results": results}
    return RerankResponse.model_validate(answer).model_dump(mode="json")


def _page(number: int, failed: bool) -> dict[str, Any]:
    if failed:
        error = {"code": "ollama_timeout", "detail": f"page {number}: Ollama timed out"}
        return {"page": number, "text": None, "complete": False, "duration_ms": 9, "error": error}
    return {
        "page": number,
        "text": f"text of page {number}",
        "complete": True,
        "done_reason": "stop",
        "duration_ms": 5,
    }


def ocr_answer(
    recorded: Recorded, request_id: str, failed: set[int] | None = None
) -> dict[str, Any]:
    """What the real sidecar would answer for this job (one page per requested page); pages in
    `failed` come back as the partial-result entries of docs/api.md."""
    job = recorded.job
    profile = job["profile"]
    pages = job.get("pages") or [1]
    failed = failed or set()
    params = {
        "temperature": profile.get("temperature"),
        "top_p": profile.get("top_p"),
        "repeat_penalty": profile.get("repeat_penalty"),
        "num_predict": profile.get("max_tokens"),
    }
    answer = {
        "request_id": request_id,
        "model": profile["model"],
        "pages": [_page(page, page in failed) for page in pages],
        "complete": not failed,
        "residency": {"keep_alive": "0s", "rule": "vram_unknown", "reason": "vram unknown"},
        "params_sent": {key: value for key, value in params.items() if value is not None},
        "prompt": {"id": job["prompt"].get("id"), "version": job["prompt"].get("version")},
        "timings": {"queue_ms": 0, "render_ms": 1, "total_ms": 7},
    }
    return OcrResponse.model_validate(answer).model_dump(mode="json")


def ndjson_lines(answer: dict[str, Any], error_after: int | None) -> list[bytes]:
    """The streamed form of `answer`: page lines, then `done` (or `error` after `error_after`)."""
    pages = answer["pages"] if error_after is None else answer["pages"][:error_after]
    lines = [{"event": "page", **page} for page in pages]
    if error_after is None:
        lines.append({"event": "done", **{k: v for k, v in answer.items() if k != "pages"}})
    else:
        lines.append({"event": "error", **problem(504, "job_timeout", "deadline passed")})
    return [json.dumps(line).encode() + b"\n" for line in lines]
