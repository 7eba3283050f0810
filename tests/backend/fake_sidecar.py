"""A stand-in for the sidecar's `POST /ocr` on a real socket: records every request it receives
and answers either a scripted failure or a well-formed `OcrResponse` built from the job.

It validates bodies with the real `sidecar.schemas`, so a request it accepts is one the real
sidecar's schema accepts too.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.datastructures import UploadFile

from sidecar.schemas import OcrJob, OcrRequest


@dataclass
class Recorded:
    headers: dict[str, str]
    job: dict[str, Any]
    """The job as sent: the JSON body (path mode) or the multipart `job` part."""
    path: str | None = None
    upload: bytes | None = None
    upload_name: str | None = None


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
        self._lock = threading.Lock()
        self.requests: list[Recorded] = []
        self.script: list[Scripted] = []
        self.url = ""

    def reset(self, url: str) -> None:
        with self._lock:
            self.requests.clear()
            self.script.clear()
            self.url = url

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
        with self._lock:
            self.requests.append(recorded)
            scripted = self.script.pop(0) if self.script else None
        request_id = request.headers.get("x-request-id", "")
        if scripted is not None:
            headers = {"X-Request-ID": request_id, **scripted.headers}
            if scripted.raw is not None:
                return Response(scripted.raw, status_code=scripted.status, headers=headers)
            return JSONResponse(
                scripted.body,
                status_code=scripted.status,
                headers=headers,
                media_type="application/problem+json" if scripted.status >= 400 else None,
            )
        return JSONResponse(ocr_answer(recorded, request_id), headers={"X-Request-ID": request_id})

    async def _record(self, request: Request) -> Recorded:
        headers = {key.lower(): value for key, value in request.headers.items()}
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


def ocr_answer(recorded: Recorded, request_id: str) -> dict[str, Any]:
    """What the real sidecar would answer for this job (one page per requested page)."""
    job = recorded.job
    profile = job["profile"]
    pages = job.get("pages") or [1]
    params = {
        "temperature": profile.get("temperature"),
        "top_p": profile.get("top_p"),
        "repeat_penalty": profile.get("repeat_penalty"),
        "num_predict": profile.get("max_tokens"),
    }
    return {
        "request_id": request_id,
        "model": profile["model"],
        "pages": [
            {
                "page": page,
                "text": f"text of page {page}",
                "complete": True,
                "done_reason": "stop",
                "duration_ms": 5,
            }
            for page in pages
        ],
        "residency": {"keep_alive": "0s", "reason": "vram unknown"},
        "params_sent": {key: value for key, value in params.items() if value is not None},
        "prompt": {"id": job["prompt"].get("id"), "version": job["prompt"].get("version")},
        "timings": {"queue_ms": 0, "render_ms": 1, "total_ms": 7},
    }
