"""A fake Ollama: a real HTTP/1.1 server on loopback speaking Ollama's wire format.

Implements Ollama's HTTP API as the sidecar uses it: `/api/chat` and `/api/generate` (streamed
NDJSON and not, load and unload calls, `num_predict` truncation with `done_reason: "length"`),
`/api/ps` with `size_vram` and `expires_at`, `/api/tags`, `/api/version`, `/api/show`, `GET /`;
keep_alive decoded by Go's rules with Go's error texts; sessions, expiry (injectable clock) and
reloads when runner options change; the error statuses and bodies of §5, checked in Ollama's order.

It records every request, and can be told to be down (connection refused), hold requests until
released (to trigger timeouts), or answer with a fault: 500, 503 busy, non-JSON, truncated JSON,
a wrong shape, a cut connection, an error line mid-stream, or a reply without `done: true`.

Simulated inference takes `latency_s` and at most `parallel` requests per model run at once
(Ollama's OLLAMA_NUM_PARALLEL); the rest wait for a slot, as in Ollama's scheduler.

Loading, eviction, keep_alive expiry and the VRAM books are `scheduler.Scheduler` (the same module
`bench/gpu_sim.py` drives): with `vram_total_mib` set, models have sizes on a GPU of that total,
a load takes `load_delay_s + size / load_rate_mib_s`, one load at a time from one FIFO queue, idle
runners are evicted in Ollama's order when a load does not fit, busy ones are waited for, and
`external_mib` (torch) is VRAM Ollama does not see once a runner is loaded. `vram_file` is kept
as the JSON snapshot `OCR_SIDECAR_VRAM_SOURCE=file:PATH` reads, rewritten whenever the books
change. A client that goes away while its request is queued, held or generating is noticed (the
socket is polled), counted in `client_gone`, and its request stops counting as in flight.
"LLM traffic" without HTTP: `llm_request(model, duration_s)`, `llm_busy(model)`, `llm_schedule`.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import json
import os
import re
import select
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from tests.fake_ollama.durations import GoDurationError, decode_keep_alive
from tests.fake_ollama.scheduler import Scheduler, Ticket
from tests.fake_ollama.state import (
    FakeModel,
    LoadedRunner,
    Registry,
    name_key,
    seconds_to_ns,
    utc_timestamp,
)

DEFAULT_VRAM_TOTAL_MIB = 16311  # an RTX 5060 Ti 16 GB, as NVML reports it
PRIORITY_KEEP_ALIVE_S = 300.0  # what the LLM's own clients send ("5m")
_POLL_S = 0.01  # how often a waiting request looks at its client's socket

VERSION = "0.33.0"
BUSY_TEXT = "server busy, please try again.  maximum pending requests exceeded"
_NOT_B64 = re.compile(r"[^A-Za-z0-9+/=]")
_FLOAT_OPTIONS = {"temperature", "top_p", "min_p", "typical_p", "repeat_penalty",
                  "presence_penalty", "frequency_penalty"}  # fmt: skip
_INT_OPTIONS = {"num_predict", "num_ctx", "num_batch", "num_gpu", "main_gpu", "num_thread",
                "num_keep", "top_k", "repeat_last_n", "seed"}  # fmt: skip
_BOOL_OPTIONS = {"use_mmap", "numa"}


class Fault(StrEnum):
    ERROR_500 = "error_500"  # 500 {"error": …} before any answer
    BUSY_503 = "busy_503"  # Ollama's scheduler queue is full
    GARBAGE = "garbage"  # 200 text/html, not JSON
    INVALID_JSON = "invalid_json"  # 200 application/json, cut-off JSON
    BAD_SHAPE = "bad_shape"  # 200 JSON that is not a chat/generate reply
    CUT = "cut"  # the connection closes halfway through the answer
    ERROR_MID_STREAM = "error_mid_stream"  # streamed: an {"error"} line, no done chunk
    REPEAT_ABORT = "repeat_abort"  # 200 with done:false, no done_reason, no metrics


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str
    headers: dict[str, str]
    raw: bytes
    body: Any  # parsed JSON, or None when the body is not JSON
    received_at: float  # the fake's clock


class _ClientGone(Exception):
    """The client closed its connection while its request waited or generated."""


@dataclass
class LlmCall:
    """One "LLM traffic" request played without HTTP (`FakeOllama.llm_request`)."""

    model: str
    duration_s: float
    arrived: float = 0.0
    attached_at: float | None = None  # the fake's clock: the LLM had its runner
    finished_at: float | None = None
    cold: bool = False  # it had to load the model
    done: threading.Event = field(default_factory=threading.Event)

    @property
    def queued_s(self) -> float:
        return 0.0 if self.attached_at is None else self.attached_at - self.arrived

    def wait(self, timeout: float | None = 30.0) -> bool:
        return self.done.wait(timeout)


class _ApiError(Exception):
    def __init__(self, status: int, text: str) -> None:
        super().__init__(text)
        self.status = status
        self.text = text


def _go_type(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return "null"


def _unmarshal_error(value: Any, struct: str, field: str, want: str) -> _ApiError:
    return _ApiError(
        400,
        f"json: cannot unmarshal {_go_type(value)} into Go struct field {struct}.{field} "
        f"of type {want}",
    )


def _decode_image(data: Any, struct: str) -> bytes:
    if not isinstance(data, str):
        raise _unmarshal_error(data, struct, "images", "api.ImageData")
    bad = _NOT_B64.search(data)
    if bad is not None:
        raise _ApiError(400, f"illegal base64 data at input byte {bad.start()}")
    try:
        return base64.b64decode(data, validate=True)
    except binascii.Error:
        raise _ApiError(400, f"illegal base64 data at input byte {len(data)}") from None


@dataclass
class _Job:
    """A decoded chat or generate request."""

    kind: str  # "chat" | "generate"
    model_name: str
    stream: bool
    options: dict[str, Any]
    keep_alive_s: float | None
    images: list[bytes]
    has_input: bool  # messages or prompt present (False: load/unload call)
    prompt_text: str


def _decode_job(kind: str, body: Any) -> _Job:
    struct = "ChatRequest" if kind == "chat" else "GenerateRequest"
    if body is None:
        body = {}
    if not isinstance(body, dict):
        raise _ApiError(
            400, f"json: cannot unmarshal {_go_type(body)} into Go value of type api.{struct}"
        )
    model = body.get("model", "")
    if not isinstance(model, str):
        raise _unmarshal_error(model, struct, "model", "string")
    stream = body.get("stream", True)  # Ollama streams unless told otherwise
    if stream is None:
        stream = True
    if not isinstance(stream, bool):
        raise _unmarshal_error(stream, struct, "stream", "bool")
    options = body.get("options") or {}
    if not isinstance(options, dict):
        raise _unmarshal_error(options, struct, "options", "map[string]interface {}")
    keep_alive_s = None
    if body.get("keep_alive") is not None:
        try:
            keep_alive_s = decode_keep_alive(body["keep_alive"])
        except GoDurationError as exc:
            raise _ApiError(400, str(exc)) from None
    images: list[bytes] = []
    texts: list[str] = []
    if kind == "chat":
        messages = body.get("messages") or []
        if not isinstance(messages, list):
            raise _unmarshal_error(messages, struct, "messages", "[]api.Message")
        for message in messages:
            if not isinstance(message, dict):
                raise _unmarshal_error(message, struct, "messages", "api.Message")
            content = message.get("content", "")
            if not isinstance(content, str) or not isinstance(message.get("role", ""), str):
                raise _unmarshal_error(content, struct, "messages.content", "string")
            raw_images = message.get("images") or []
            if not isinstance(raw_images, list):
                raise _unmarshal_error(raw_images, struct, "messages.images", "[]api.ImageData")
            images.extend(_decode_image(image, struct) for image in raw_images)
            if str(message.get("role", "")).lower() == "user":
                texts.append(content)
        has_input = bool(messages)
    else:
        prompt = body.get("prompt", "")
        if not isinstance(prompt, str):
            raise _unmarshal_error(prompt, struct, "prompt", "string")
        system = body.get("system", "")
        if not isinstance(system, str):
            raise _unmarshal_error(system, struct, "system", "string")
        raw_images = body.get("images") or []
        if not isinstance(raw_images, list):
            raise _unmarshal_error(raw_images, struct, "images", "[]api.ImageData")
        images.extend(_decode_image(image, struct) for image in raw_images)
        texts.append(prompt)
        has_input = bool(prompt) or bool(images)
    return _Job(kind, model, stream, options, keep_alive_s, images, has_input, " ".join(texts))


def _check_option_types(options: dict[str, Any]) -> None:
    """Ollama fails a wrong option type at schedule time, with a 500."""
    for name, value in options.items():
        numeric = isinstance(value, int | float) and not isinstance(value, bool)
        if name in _FLOAT_OPTIONS and not numeric:
            raise _ApiError(500, f'option "{name}" must be of type float32')
        if name in _INT_OPTIONS and not numeric:
            raise _ApiError(500, f'option "{name}" must be of type int')
        if name in _BOOL_OPTIONS and not isinstance(value, bool):
            raise _ApiError(500, f'option "{name}" must be of type bool')


class FakeOllama:
    """Start with `with FakeOllama([FakeModel("scb10x/typhoon-ocr1.5-3b")]) as fake: fake.url`."""

    def __init__(
        self,
        models: Iterable[FakeModel] | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        latency_s: float = 0.0,
        load_delay_s: float = 0.0,
        parallel: int = 1,
        clock: Callable[[], float] = time.time,
        version: str = VERSION,
        vram_total_mib: int | None = None,
        vram_file: str | Path | None = None,
        load_rate_mib_s: float | None = None,
        unload_s: float = 0.0,
        base_mib: int = 0,
        max_loaded: int | None = None,
        gpu_name: str = "RTX 5060 Ti (fake)",
    ) -> None:
        """`vram_total_mib` (or a `vram_file`, which implies 16311 MiB) turns the VRAM books on;
        without them every model fits and none is evicted for memory, as before."""
        self.host = host
        self.port = port
        self.latency_s = latency_s
        self.load_delay_s = load_delay_s
        self.parallel = parallel
        self.clock = clock
        self.version = version
        if vram_file is not None and vram_total_mib is None:
            vram_total_mib = DEFAULT_VRAM_TOTAL_MIB
        self.vram_file = Path(vram_file) if vram_file is not None else None
        self.gpu_name = gpu_name
        books = vram_total_mib is not None
        self.scheduler = Scheduler(
            total_mib=vram_total_mib,
            base_mib=base_mib,
            load_fixed_s=load_delay_s,
            load_rate_mib_s=load_rate_mib_s,
            unload_s=unload_s,
            max_loaded=(max_loaded or 3) if books else max_loaded,
            on_change=self._books_changed,
        )
        self.registry = Registry(clock=clock, scheduler=self.scheduler)
        for model in models or ():
            self.registry.install(model)
        self.scripts: dict[str, str] = {}  # sha256 of image bytes → text
        self._lock = threading.Condition()
        self._requests: list[RecordedRequest] = []
        self._faults: list[list[Any]] = []  # [fault, times left (None: forever), skip first]
        self._slots: dict[str, threading.BoundedSemaphore] = {}
        self._stopping = threading.Event()
        self._connections: set[socket.socket] = set()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.active_inference = 0  # generating now (inside a parallel slot)
        self.peak_inference = 0
        self.in_flight = 0  # inference requests received and not yet answered
        self.peak_in_flight = 0
        self.held = 0  # inference requests waiting at the hold gate now
        self.client_gone = 0  # requests whose client went away while queued, held or generating
        self._hold_active = False
        self._hold_pass = 0  # requests still let through before the hold bites
        self._release_tokens = 0
        self.llm_calls: list[LlmCall] = []
        self._ticker: threading.Thread | None = None
        self._last_written: tuple[int, int] | None = None
        self._write_vram_file()

    # --- lifecycle ---------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> FakeOllama:
        handler = type("BoundHandler", (_Handler,), {"fake": self})
        server = ThreadingHTTPServer((self.host, self.port), handler, bind_and_activate=False)
        server.daemon_threads = True
        server.block_on_close = False
        server.allow_reuse_address = True
        server.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.server_bind()
        server.server_activate()
        self.port = server.server_address[1]
        self._server = server
        self._stopping.clear()
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True,
            name=f"fake-ollama-{self.port}",
        )  # fmt: skip
        self._thread.start()
        self._ticker = threading.Thread(target=self._tick_loop, daemon=True,
                                        name=f"fake-ollama-clock-{self.port}")  # fmt: skip
        self._ticker.start()
        return self

    def _tick_loop(self) -> None:
        """Plays the scheduler's timed events (loads done, expiries) as the clock reaches them."""
        while not self._stopping.is_set():
            with self._lock:
                self.scheduler.advance(self.clock())
                self._lock.notify_all()
                upcoming = self.scheduler.next_time()
                wait = 0.05 if upcoming is None else min(max(upcoming - self.clock(), 0.001), 0.05)
                self._lock.wait(wait)

    def stop(self) -> None:
        """Stop listening and drop every open connection (held requests are abandoned)."""
        self._stopping.set()
        with self._lock:
            self._lock.notify_all()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        with self._lock:
            connections = list(self._connections)
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        if self._ticker is not None:
            self._ticker.join(timeout=5)
            self._ticker = None

    def go_down(self) -> None:
        """Ollama stops: the port refuses connections until `come_up()`."""
        self.stop()

    def come_up(self) -> None:
        """Ollama is back on the same port (loaded models are gone, as after a restart)."""
        with self._lock:
            self.scheduler.runners.clear()
            self.scheduler.unloading.clear()
            self.scheduler.pending.clear()
            self.scheduler._victim = None
            self.scheduler.external_seen = sum(self.scheduler.external.values())
            self._books_changed()
        self.start()

    def __enter__(self) -> FakeOllama:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- knobs -------------------------------------------------------------------------------

    def install(self, model: FakeModel) -> None:
        with self._lock:
            self.registry.install(model)

    def uninstall(self, name: str) -> None:
        with self._lock:
            self.registry.uninstall(name)

    def fail(self, fault: Fault, times: int | None = None, *, skip: int = 0) -> None:
        """Answer chat/generate requests with `fault`: after `skip` good ones, `times` of them
        (None: until cleared)."""
        with self._lock:
            self._faults.append([fault, times, skip])

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def hold(self, after: int = 0) -> None:
        """Hold every inference request after the first `after` from now (each waits, recorded
        and attached to its runner, until `release`)."""
        with self._lock:
            self._hold_active = True
            self._hold_pass = max(after, 0)
            self._release_tokens = 0
            self._lock.notify_all()

    def release(self, count: int | None = None) -> None:
        """Let `count` held requests through (also ones held later); None: all, and stop holding."""
        with self._lock:
            if count is None:
                self._hold_active = False
                self._release_tokens = 0
            else:
                self._release_tokens += max(count, 0)
            self._lock.notify_all()

    def script(self, image: bytes, text: str) -> None:
        """Answer `text` for this image (raw bytes, as decoded from the request)."""
        with self._lock:
            self.scripts[hashlib.sha256(image).hexdigest()] = text

    # --- observation -------------------------------------------------------------------------

    @property
    def requests(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self._requests)

    def bodies(self, path: str) -> list[Any]:
        return [request.body for request in self.requests if request.path == path]

    def clear_requests(self) -> None:
        with self._lock:
            self._requests.clear()

    def wait_for(self, predicate: Callable[[FakeOllama], bool], timeout: float = 10.0) -> bool:
        """Block until `predicate(self)` holds (re-checked on every request event)."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while not predicate(self):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._lock.wait(remaining)
            return True

    def loaded(self) -> dict[str, LoadedRunner]:
        with self._lock:
            self.registry.expire()
            return dict(self.registry.loaded)

    @property
    def load_events(self) -> list[tuple[str, float]]:
        """Every real load of a runner: (model as /api/ps names it, fake clock at its start)."""
        with self._lock:
            return [
                (self._display(event.model), event.at)
                for event in self.scheduler.events
                if event.kind == "load_start"
            ]

    def events(self, *kinds: str) -> list[tuple[str, str, float, str]]:
        """The scheduler's books: (kind, model, time, detail), optionally only some kinds
        (load_start, loaded, unload, released, evict, overcommit, external, cancel)."""
        with self._lock:
            return [
                (event.kind, self._display(event.model), event.at, event.detail)
                for event in self.scheduler.events
                if not kinds or event.kind in kinds
            ]

    def _display(self, key: str) -> str:
        model = self.registry.installed.get(key)
        return model.display_name if model is not None else key

    def vram(self) -> dict[str, int]:
        """The GPU as the books have it: total, used, free (MiB); what `vram_file` holds."""
        with self._lock:
            self.scheduler.advance(self.clock())
            total = self.scheduler.total_mib or 0
            used = min(self.scheduler.used_mib, total) if total else self.scheduler.used_mib
            return {"total_mib": total, "used_mib": used, "free_mib": max(total - used, 0)}

    def set_external(self, owner: str, mib: int) -> None:
        """VRAM another process (the sidecar's torch models) takes; Ollama does not see it once a
        runner is loaded (Ollama's server/sched.go)."""
        with self._lock:
            self.scheduler.set_external(self.clock(), owner, mib)
            self._lock.notify_all()

    def _books_changed(self) -> None:
        """Called by the scheduler (under the lock) whenever the books change."""
        self._write_vram_file()

    def _write_vram_file(self) -> None:
        if self.vram_file is None or self.scheduler.total_mib is None:
            return
        total = self.scheduler.total_mib
        used = min(self.scheduler.used_mib, total)
        if self._last_written == (total, used):
            return
        data = {"total_mib": total, "used_mib": used, "free_mib": total - used,
                "name": self.gpu_name}  # fmt: skip
        tmp = self.vram_file.with_name(f".{self.vram_file.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data), encoding="utf-8")
        tmp.replace(self.vram_file)  # atomic: a reader never sees half a file
        self._last_written = (total, used)

    # --- LLM traffic ---------------------------------------------------------------------------

    def llm_request(
        self, model: str, duration_s: float, *, keep_alive_s: float | None = PRIORITY_KEEP_ALIVE_S
    ) -> LlmCall:
        """A priority model's request, played without HTTP in a thread: it queues like any
        request, holds its runner busy for `duration_s` once attached, then finishes."""
        call = LlmCall(model, duration_s)
        with self._lock:
            self.llm_calls.append(call)
        threading.Thread(target=self._play_llm, args=(call, keep_alive_s), daemon=True,
                         name=f"llm-{model}").start()  # fmt: skip
        return call

    def _play_llm(self, call: LlmCall, keep_alive_s: float | None) -> None:
        key = name_key(call.model)
        with self._lock:
            call.arrived = self.clock()
            ticket = self.scheduler.submit(call.arrived, key, keep_alive_s)
            self._lock.notify_all()
        try:
            self._await_runner(ticket, lambda: False)
            with self._lock:
                call.attached_at = ticket.attached_at
                call.cold = ticket.cold
                self._lock.notify_all()
            self._stopping.wait(call.duration_s)
        except _ClientGone:
            return
        finally:
            with self._lock:
                call.finished_at = self.clock()
                self.scheduler.finish(call.finished_at, ticket)
                self._lock.notify_all()
            call.done.set()

    @contextlib.contextmanager
    def llm_busy(
        self, model: str, *, keep_alive_s: float | None = PRIORITY_KEEP_ALIVE_S
    ) -> Iterator[LlmCall]:
        """Hold a priority model busy (one in-flight request) for the `with` block; the block
        starts once the request has its runner (after a load, or waits for room)."""
        call = LlmCall(model, 0.0)
        key = name_key(model)
        with self._lock:
            self.llm_calls.append(call)
            call.arrived = self.clock()
            ticket = self.scheduler.submit(call.arrived, key, keep_alive_s)
            self._lock.notify_all()
        try:
            self._await_runner(ticket, lambda: False)
            call.attached_at, call.cold = ticket.attached_at, ticket.cold
            yield call
        finally:
            with self._lock:
                call.finished_at = self.clock()
                self.scheduler.finish(call.finished_at, ticket)
                self._lock.notify_all()
            call.done.set()

    def llm_schedule(
        self, model: str, *, every_s: float, duration_s: float, count: int | None = None
    ) -> threading.Event:
        """LLM traffic on a schedule: a request of `duration_s` every `every_s` seconds (real
        time), `count` times (None: until the fake stops or the returned event is set)."""
        stop = threading.Event()

        def play() -> None:
            sent = 0
            while (count is None or sent < count) and not stop.is_set():
                self.llm_request(model, duration_s)
                sent += 1
                if stop.wait(every_s) or self._stopping.is_set():
                    break

        threading.Thread(target=play, daemon=True, name=f"llm-schedule-{model}").start()
        return stop

    def _notify(self) -> None:
        with self._lock:
            self._lock.notify_all()

    # --- request handling (called from handler threads) ---------------------------------------

    def _record(self, request: RecordedRequest) -> None:
        with self._lock:
            self._requests.append(request)
            self._lock.notify_all()

    def _take_fault(self) -> Fault | None:
        with self._lock:
            if not self._faults:
                return None
            entry = self._faults[0]
            fault, times, skip = entry
            if skip > 0:
                entry[2] = skip - 1
                return None
            if times is not None:
                entry[1] = times - 1
                if entry[1] <= 0:
                    self._faults.pop(0)
            return fault

    def _slot(self, model: FakeModel) -> threading.BoundedSemaphore:
        with self._lock:
            return self._slots.setdefault(
                name_key(model.name), threading.BoundedSemaphore(self.parallel)
            )

    def _wait_gate(self, gone: Callable[[], bool]) -> None:
        with self._lock:
            if not self._hold_active:
                return
            if self._hold_pass > 0:
                self._hold_pass -= 1
                return
            self.held += 1
            self._lock.notify_all()
            try:
                while self._hold_active and self._release_tokens == 0:
                    if self._stopping.is_set():
                        return
                    self._lock.wait(_POLL_S * 2)
                    if gone():
                        raise _ClientGone
                if self._hold_active:
                    self._release_tokens -= 1
            finally:
                self.held -= 1
                self._lock.notify_all()

    def _await_runner(self, ticket: Ticket, gone: Callable[[], bool]) -> None:
        """Wait (the lock released) until `ticket` has its runner: a load, room, a busy victim."""
        with self._lock:
            while ticket.state == "pending":
                if self._stopping.is_set() or gone():
                    self.scheduler.cancel(self.clock(), ticket)
                    self._lock.notify_all()
                    raise _ClientGone
                upcoming = self.scheduler.next_time()
                wait = _POLL_S * 2
                if upcoming is not None:
                    wait = min(max(upcoming - self.clock(), 0.0005), wait)
                self._lock.wait(wait)
                self.scheduler.advance(self.clock())

    def _sleep(self, seconds: float, gone: Callable[[], bool]) -> None:
        """Generate for `seconds`, noticing a client that goes away meanwhile."""
        deadline = time.monotonic() + seconds
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or self._stopping.wait(min(left, _POLL_S * 2)):
                return
            if gone():
                raise _ClientGone

    def run_job(
        self, job: _Job, gone: Callable[[], bool] = lambda: False
    ) -> tuple[FakeModel, dict[str, Any], str | None]:
        """Validate and run a chat/generate request; returns (model, reply fields, text).
        Raises `_ClientGone` when `gone()` turns true while it waits or generates."""
        with self._lock:
            model = self._check_model(job)
            _check_option_types(job.options)
            key = name_key(model.name)
            if not job.has_input and job.keep_alive_s == 0:
                self.scheduler.unload_call(self.clock(), key)
                self._lock.notify_all()
                return model, {"done": True, "done_reason": "unload"}, None
            options = self.registry.runner_options(job.options)
            ticket = self.scheduler.submit(self.clock(), key, job.keep_alive_s, options)
            self._lock.notify_all()
        try:
            self._await_runner(ticket, gone)
            if not job.has_input:
                return model, {"done": True, "done_reason": "load"}, None
            return model, *self._infer(model, job, ticket, gone)
        finally:
            with self._lock:
                self.scheduler.finish(self.clock(), ticket)
                self._lock.notify_all()

    def _infer(
        self, model: FakeModel, job: _Job, ticket: Ticket, gone: Callable[[], bool]
    ) -> tuple[dict[str, Any], str]:
        with self._lock:
            self.in_flight += 1
            self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        try:
            self._wait_gate(gone)
            with self._slot(model):
                with self._lock:
                    self.active_inference += 1
                    self.peak_inference = max(self.peak_inference, self.active_inference)
                    self._lock.notify_all()
                try:
                    if self.latency_s > 0:
                        self._sleep(self.latency_s, gone)
                    text = self._script_text(model, job)
                finally:
                    with self._lock:
                        self.active_inference -= 1
                        self._lock.notify_all()
            return self._generate(text, job, ticket.queued_s if ticket.cold else None)
        except _ClientGone:
            with self._lock:
                self.client_gone += 1
            raise
        finally:
            with self._lock:
                self.in_flight -= 1
                self._lock.notify_all()

    def _check_model(self, job: _Job) -> FakeModel:
        if not job.model_name:
            if job.kind == "chat":
                raise _ApiError(400, "model is required")
            raise _ApiError(404, "model '' not found")
        if any(char.isspace() for char in job.model_name):
            raise _ApiError(400, "invalid model name")
        model = self.registry.find(job.model_name)
        if model is None:
            raise _ApiError(404, f"model '{job.model_name}' not found")
        if "completion" not in model.capabilities:
            raise _ApiError(400, f'"{job.model_name}" does not support {job.kind}')
        return model

    def _script_text(self, model: FakeModel, job: _Job) -> str:
        if job.images:
            digest = hashlib.sha256(job.images[-1]).hexdigest()
            with self._lock:
                scripted = self.scripts.get(digest)
            if scripted is not None:
                return scripted
            if model.text is not None:
                return model.text
            return f"Fake OCR text of image {digest[:12]} ({len(job.images[-1])} bytes)"
        return model.text if model.text is not None else f"Fake reply to: {job.prompt_text[:80]}"

    def _generate(self, text: str, job: _Job, load_s: float | None) -> tuple[dict[str, Any], str]:
        tokens = text.split(" ")
        limit = job.options.get("num_predict")
        done_reason = "stop"
        if isinstance(limit, int) and not isinstance(limit, bool) and 0 < limit < len(tokens):
            tokens = tokens[:limit]
            done_reason = "length"
        text = " ".join(tokens)
        latency_ns = seconds_to_ns(self.latency_s)
        load_ns = seconds_to_ns(load_s) if load_s is not None else 0
        reply = {
            "done": True,
            "done_reason": done_reason,
            "total_duration": latency_ns + load_ns + 1,
            "load_duration": load_ns + 1,
            "prompt_eval_count": len(job.prompt_text) // 4 + 256 * len(job.images) + 1,
            "prompt_eval_duration": latency_ns // 4 + 1,
            "eval_count": len(tokens),
            "eval_duration": latency_ns - latency_ns // 4 + 1,
        }
        return reply, text


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "fake-ollama"
    sys_version = ""
    fake: FakeOllama  # set on the bound subclass

    def setup(self) -> None:
        super().setup()
        # Headers and body go out in separate writes: without this, Nagle's algorithm meets the
        # client's delayed ACK and every answer stalls ~40 ms.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self.fake._lock:
            self.fake._connections.add(self.connection)
            self.fake._lock.notify_all()

    def finish(self) -> None:
        with contextlib.suppress(OSError):
            super().finish()
        with self.fake._lock:
            self.fake._connections.discard(self.connection)
            self.fake._lock.notify_all()

    def log_message(self, format: str, *args: Any) -> None:
        return  # quiet: tests read the recorded requests instead

    def handle_one_request(self) -> None:
        try:
            super().handle_one_request()
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            self.close_connection = True  # the client gave up (e.g. its read timeout)

    # --- plumbing ----------------------------------------------------------------------------

    def _client_gone(self) -> bool:
        """The client closed its end (the socket reads EOF), or the connection broke."""
        try:
            readable, _, _ = select.select([self.connection], [], [], 0)
            if not readable:
                return False
            return self.connection.recv(1, socket.MSG_PEEK) == b""
        except (OSError, ValueError):
            return True

    def _read_body(self) -> bytes:
        if self.headers.get("transfer-encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    self.rfile.readline()
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            return b"".join(chunks)
        length = int(self.headers.get("content-length") or 0)
        return self.rfile.read(length) if length else b""

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, payload: Any) -> None:
        body = json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()
        self._send(status, body, "application/json; charset=utf-8")

    def _error(self, status: int, text: str) -> None:
        self._json(status, {"error": text})

    def _cut(self, body: bytes, content_type: str) -> None:
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body[: max(1, len(body) // 2)])
        self.wfile.flush()
        self.close_connection = True
        self.connection.shutdown(socket.SHUT_RDWR)

    def _record(self, raw: bytes) -> Any:
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        self.fake._record(
            RecordedRequest(
                self.command, self.path, dict(self.headers.items()), raw, body, self.fake.clock()
            )
        )
        return body

    # --- routes ------------------------------------------------------------------------------

    def do_GET(self) -> None:
        raw = self._read_body()
        self._record(raw)
        fake = self.fake
        if self.path == "/":
            self._send(200, b"Ollama is running", "text/plain; charset=utf-8")
        elif self.path == "/api/version":
            self._json(200, {"version": fake.version})
        elif self.path == "/api/tags":
            with fake._lock:
                self._json(200, {"models": fake.registry.tags()})
        elif self.path == "/api/ps":
            with fake._lock:
                self._json(200, {"models": fake.registry.ps()})
        elif self.path in ("/api/chat", "/api/generate", "/api/show"):
            self._send(405, b"405 method not allowed", "text/plain")
        else:
            self._send(404, b"404 page not found", "text/plain")

    def do_HEAD(self) -> None:
        self.do_GET()

    def do_POST(self) -> None:
        raw = self._read_body()
        body = self._record(raw)
        if self.path == "/api/show":
            self._show(raw, body)
        elif self.path in ("/api/chat", "/api/generate"):
            self._inference(self.path.removeprefix("/api/"), raw)
        elif self.path in ("/", "/api/version", "/api/tags", "/api/ps"):
            self._send(405, b"405 method not allowed", "text/plain")
        else:
            self._send(404, b"404 page not found", "text/plain")

    def _show(self, raw: bytes, body: Any) -> None:
        name = ""
        if isinstance(body, dict):
            name = body.get("model") or body.get("name") or ""
        if not name:
            self._error(400, "model is required")
            return
        with self.fake._lock:
            model = self.fake.registry.find(name)
        if model is None:
            self._error(404, f"model '{name_key(name)}' not found")
            return
        self._json(
            200,
            {
                "details": model.details(),
                "model_info": {"general.architecture": model.family},
                "parameters": "",
                "template": "{{ .Prompt }}",
                "system": "",
                "capabilities": list(model.capabilities),
                "modified_at": utc_timestamp(self.fake.clock()),
            },
        )

    def _inference(self, kind: str, raw: bytes) -> None:
        fault = self.fake._take_fault()
        if fault is not None and self._answer_fault(fault, kind):
            return
        if not raw:
            self._error(400, "missing request body")
            return
        try:
            body = json.loads(raw)
        except ValueError as exc:
            self._error(400, f"invalid character: {exc.msg}" if raw.strip() else "unexpected EOF")
            return
        try:
            job = _decode_job(kind, body)
            _model, reply, text = self.fake.run_job(job, self._client_gone)
        except _ApiError as exc:
            self._error(exc.status, exc.text)
            return
        except _ClientGone:
            self.close_connection = True
            return
        if self.fake._stopping.is_set():
            self.close_connection = True
            return
        if fault is Fault.REPEAT_ABORT and text is not None:
            reply = {"done": False}
        self._reply(kind, job, reply, text or "", fault)

    def _answer_fault(self, fault: Fault, kind: str) -> bool:
        """Answer with a fault that replaces the whole request; False for in-answer faults."""
        if fault is Fault.ERROR_500:
            self._error(500, "llama runner process has terminated: exit status 2")
        elif fault is Fault.BUSY_503:
            self._error(503, BUSY_TEXT)
        elif fault is Fault.GARBAGE:
            self._send(200, b"<html><body>upstream proxy error</body></html>", "text/html")
        elif fault is Fault.INVALID_JSON:
            self._send(200, b'{"model":"m","message":{"role":"assis', "application/json")
        elif fault is Fault.BAD_SHAPE:
            self._json(200, {"status": "ok", "result": [1, 2, 3]})
        else:
            return False
        return True

    def _envelope(self, kind: str, job: _Job, content: str) -> dict[str, Any]:
        envelope: dict[str, Any] = {
            "model": job.model_name,
            "created_at": utc_timestamp(time.time()),
        }
        if kind == "chat":
            envelope["message"] = {"role": "assistant", "content": content}
        else:
            envelope["response"] = content
        return envelope

    def _reply(
        self, kind: str, job: _Job, reply: dict[str, Any], text: str, fault: Fault | None
    ) -> None:
        loading = reply.get("done_reason") in ("load", "unload")
        if not job.stream or loading:
            payload = {**self._envelope(kind, job, text), **reply}
            body = json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()
            if fault is Fault.CUT:
                self._cut(body, "application/json; charset=utf-8")
            elif fault is Fault.ERROR_MID_STREAM:
                self._error(500, "an error was encountered while running the model")
            else:
                self._send(200, body, "application/json; charset=utf-8")
            return
        self._stream(kind, job, reply, text, fault)

    def _stream(
        self, kind: str, job: _Job, reply: dict[str, Any], text: str, fault: Fault | None
    ) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/x-ndjson")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        tokens = text.split(" ")
        deltas = [token + (" " if i < len(tokens) - 1 else "") for i, token in enumerate(tokens)]
        for index, delta in enumerate(deltas):
            if index == 1 and fault is Fault.CUT:
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)
                return
            if index == 1 and fault is Fault.ERROR_MID_STREAM:
                self._chunk({"error": "an error was encountered while running the model"})
                self.wfile.write(b"0\r\n\r\n")
                return
            self._chunk({**self._envelope(kind, job, delta), "done": False})
        if reply.get("done"):
            self._chunk({**self._envelope(kind, job, ""), **reply})
        self.wfile.write(b"0\r\n\r\n")  # a repeat abort just ends, with no done:true line

    def _chunk(self, payload: dict[str, Any]) -> None:
        line = json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"
        self.wfile.write(f"{len(line):x}\r\n".encode() + line + b"\r\n")
        self.wfile.flush()
