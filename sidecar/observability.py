"""JSON logs, X-Request-ID, and the Prometheus metrics of the whole sidecar.

Each app gets its own `CollectorRegistry` (several apps in one test process must not collide).
The counters and histograms live in `Metrics`; figures that are read rather than counted (VRAM,
loaded models, Ollama up) come from `sidecar.scrape`, which reads them at scrape time.

Log lines go to stdout, one JSON object each; warnings and library loggers are routed through the
same handler and library progress bars are switched off, so stdout stays parseable line by line.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import time
import traceback
import uuid
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from sidecar.errors import problem_response

REQUEST_ID_HEADER = "x-request-id"
_VALID_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
access_logger = logging.getLogger("sidecar.access")
# One series per counter: the `_created` twins only double what /metrics shows.
disable_created_metrics()
# Loggers that speak for every request they make (httpx logs each Ollama probe at INFO).
_CHATTY_LOGGERS = ("httpx", "httpcore")
# Progress bars write to the terminal on their own; logs are the only output.
PROGRESS_BAR_OFF = {"HF_HUB_DISABLE_PROGRESS_BARS": "1", "TQDM_DISABLE": "1"}


class Metrics:
    """Every metric the sidecar exports, registered on one registry."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "sidecar_requests_total",
            "HTTP requests by route and status",
            ["method", "route", "status"],
            registry=r,
        )
        self.request_seconds = Histogram(
            "sidecar_request_duration_seconds",
            "HTTP request latency by route",
            ["method", "route"],
            registry=r,
        )
        self.in_flight = Gauge(
            "sidecar_requests_in_flight", "HTTP requests being served", registry=r
        )
        self.auth_failures = Counter(
            "sidecar_auth_failures_total", "Rejected requests by reason", ["reason"], registry=r
        )
        self.key_reloads = Counter(
            "sidecar_api_key_reloads_total",
            "API key file reloads by outcome",
            ["outcome"],
            registry=r,
        )
        # OCR
        self.ocr_queue_depth = Gauge(
            "sidecar_ocr_queue_depth", "OCR jobs waiting for a slot", registry=r
        )
        self.ocr_active = Gauge("sidecar_ocr_active_jobs", "OCR jobs talking to Ollama", registry=r)
        self.ocr_queue_seconds = Histogram(
            "sidecar_ocr_queue_wait_seconds", "Time an OCR job waited for admission", registry=r
        )
        self.ocr_rejected = Counter(
            "sidecar_ocr_rejected_total", "OCR jobs refused (queue full)", registry=r
        )
        self.ocr_pages = Counter(
            "sidecar_ocr_pages_total", "OCR pages by completeness", ["complete"], registry=r
        )
        self.ocr_render_seconds = Histogram(
            "sidecar_ocr_render_seconds", "Document decode and page render time", registry=r
        )
        self.ocr_keep_alive_seconds = Histogram(
            "sidecar_ocr_keep_alive_seconds",
            "keep_alive the residency policy chose",
            buckets=(0, 30, 60, 120, 300, 600, 1800, 3600),
            registry=r,
        )
        self.ocr_residency = Counter(
            "sidecar_ocr_residency_decisions_total",
            "Residency decisions by rule",
            ["rule"],
            registry=r,
        )
        self.ollama_errors = Counter(
            "sidecar_ollama_errors_total", "Ollama failures by code", ["code"], registry=r
        )
        self.ollama_retries = Counter(
            "sidecar_ollama_retries_total", "Ollama calls retried (busy or unreachable)", registry=r
        )
        self.ocr_job_loads = Histogram(
            "sidecar_ocr_job_loads",
            "OCR model loads per job",
            buckets=(0, 1, 2, 3, 5, 10),
            registry=r,
        )
        self.ocr_yield_seconds = Histogram(
            "sidecar_ocr_yield_seconds",
            "Waits for the priority LLM before an OCR page (_count: yields)",
            buckets=(0.5, 1, 2, 5, 10, 30, 60, 120),
            registry=r,
        )
        self.ocr_cancelled = Counter(
            "sidecar_ocr_jobs_cancelled_total",
            "OCR jobs stopped before their last page, by reason (client_gone, deadline)",
            ["reason"],
            registry=r,
        )
        # Retrieval
        self.model_device = Gauge(
            "sidecar_model_on_gpu",
            "1 when the model sits on the GPU, 0 on the CPU",
            ["model"],
            registry=r,
        )
        self.device_moves = Counter(
            "sidecar_model_moves_total", "Model moves between devices", ["model", "to"], registry=r
        )
        self.retrieval_queue_depth = Gauge(
            "sidecar_retrieval_queue_depth", "Texts waiting for a micro-batch", ["kind"], registry=r
        )
        self.retrieval_batch_size = Histogram(
            "sidecar_retrieval_batch_items",
            "Items per micro-batch",
            ["kind"],
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
            registry=r,
        )
        self.retrieval_rejected = Counter(
            "sidecar_retrieval_rejected_total",
            "Retrieval requests refused (queue full)",
            ["kind"],
            registry=r,
        )


class JsonFormatter(logging.Formatter):
    """One JSON object per line; `extra=` fields are kept."""

    # uvicorn adds `color_message` (the message with ANSI colours) to its records: not for JSON.
    _RESERVED = frozenset(logging.makeLogRecord({}).__dict__) | {
        "message",
        "asctime",
        "color_message",
    }

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in self._RESERVED and not key.startswith("_"):
                entry[key] = value
        if record.exc_info and record.exc_info[0] is not None:
            # The whole traceback, in the log only (never in a response): a 500 must be diagnosable.
            entry["exc_type"] = record.exc_info[0].__name__
            entry["traceback"] = "".join(traceback.format_exception(*record.exc_info)).rstrip()
        return json.dumps(entry, default=str, ensure_ascii=False)


def configure_logging(level: str, fmt: str) -> None:
    """Every log line to stdout in `fmt`; warnings and library logs included, progress bars off."""
    for name, value in PROGRESS_BAR_OFF.items():
        os.environ.setdefault(name, value)
    handler = logging.StreamHandler(sys.stdout)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.getLogger("uvicorn.access").disabled = True
    for chatty in _CHATTY_LOGGERS:
        logging.getLogger(chatty).setLevel(max(logging.WARNING, root.level))
    logging.captureWarnings(True)  # `warnings.warn` becomes a `py.warnings` log record


def route_library_loggers() -> None:
    """transformers and huggingface_hub install stderr handlers of their own when imported; send
    their records through the root handler instead, so every log line has the same format.

    Importing them takes seconds, so this is not part of `configure_logging` (it would delay
    binding the port): the app runs it in a thread before any model starts loading."""
    import huggingface_hub.utils.logging  # noqa: F401 - importing it installs its handler
    import transformers.utils.logging as transformers_logging

    transformers_logging.disable_default_handler()
    transformers_logging.enable_propagation()
    transformers_logging.disable_progress_bar()
    logging.getLogger("huggingface_hub").handlers.clear()


def _route_label(scope: Scope) -> str:
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else "unmatched"


def incoming_request_id(scope: Scope) -> str:
    for name, value in scope.get("headers", ()):
        if name == b"x-request-id":
            candidate = value.decode("latin-1")
            if _VALID_REQUEST_ID.match(candidate):
                return candidate
            break
    return uuid.uuid4().hex


class RequestContextMiddleware:
    """Request id, access log line, request metrics, and the last-resort 500 (no traceback in
    the body; the log line has it)."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = incoming_request_id(scope)
        scope.setdefault("state", {})["request_id"] = request_id
        started = time.perf_counter()
        status_holder = {"status": 500, "sent": False}

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                status_holder["status"] = message["status"]
                status_holder["sent"] = True
                headers = list(message.get("headers", []))
                headers.append((b"x-request-id", request_id.encode("latin-1")))
                message["headers"] = headers
            await send(message)

        self.metrics.in_flight.inc()
        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            # Logged here with the request id and the traceback; then, as Starlette's
            # ServerErrorMiddleware does, answered (if nothing was sent yet) and re-raised.
            access_logger.exception("unhandled error", extra={"request_id": request_id})
            if not status_holder["sent"]:
                response = problem_response(
                    Request(scope),
                    "internal_error",
                    "The sidecar hit an unexpected error; quote the request_id when reporting it.",
                )
                await response(scope, receive, send_with_id)
            raise
        finally:
            self.metrics.in_flight.dec()
            elapsed = time.perf_counter() - started
            route = _route_label(scope)
            method = scope.get("method", "")
            status = status_holder["status"]
            self.metrics.requests.labels(method, route, str(status)).inc()
            self.metrics.request_seconds.labels(method, route).observe(elapsed)
            client = scope.get("client")
            access_logger.info(
                "request",
                extra={
                    "request_id": request_id,
                    "method": method,
                    "route": route,
                    "path": scope.get("path"),
                    "status": status,
                    "ms": round(elapsed * 1000, 1),
                    "client": client[0] if client else None,
                },
            )
