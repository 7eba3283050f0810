"""Graceful shutdown: stop taking jobs, let the running ones finish, then let the server exit.

On SIGTERM the sidecar drains (`Drain.begin()`): /ready answers 503 at once so the load balancer
stops sending work, new jobs (`/ocr`, `/embed`, `/rerank`) get 503 `not_ready`, and the jobs
already running finish.
`sidecar.server.DrainingServer` watches it and, once no job is left or `SHUTDOWN_GRACE_S` has
passed, closes the sockets; the process then exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from sidecar.errors import problem_response
from sidecar.limits import answer_unread

T = TypeVar("T")
JOB_PATHS = frozenset({"/ocr", "/embed", "/rerank"})
SHUTTING_DOWN_DETAIL = "The sidecar is shutting down; send the job to another instance."


class Drain:
    """How many jobs are running, and whether new ones are still welcome (event-loop state;
    `begin()` is safe from a signal handler: it only sets a flag)."""

    def __init__(self) -> None:
        self.draining = False
        self.active = 0

    def begin(self) -> None:
        self.draining = True

    def job_started(self) -> None:
        self.active += 1

    def job_finished(self) -> None:
        self.active -= 1


class DrainMiddleware:
    """Counts the running jobs and refuses new ones once the drain has begun."""

    def __init__(self, app: ASGIApp, drain: Drain) -> None:
        self.app = app
        self.drain = drain

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("path") not in JOB_PATHS:
            await self.app(scope, receive, send)
            return
        if self.drain.draining:
            response = problem_response(
                Request(scope), "not_ready", SHUTTING_DOWN_DETAIL, headers={"Connection": "close"}
            )
            await answer_unread(response, scope, receive, send)
            return
        self.drain.job_started()
        try:
            await self.app(scope, receive, send)
        finally:
            self.drain.job_finished()


async def in_daemon_thread(fn: Callable[..., T], *args: Any, name: str = "worker") -> T:
    """`await` `fn(*args)` run in a daemon thread of its own.

    For long work that must not hold up the exit (loading a model takes minutes on a slow disk):
    `asyncio.to_thread` uses the loop's default executor, whose threads the interpreter joins at
    exit, so a SIGTERM during a load would wait for the load. A daemon thread is just dropped."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(error: BaseException | None, result: Any) -> None:
        if future.done():  # the awaiting task was cancelled meanwhile
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)

    def run() -> None:
        error: BaseException | None = None
        result: Any = None
        try:
            result = fn(*args)
        except BaseException as exc:  # handed to the awaiting task, which decides
            error = exc
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
            loop.call_soon_threadsafe(settle, error, result)

    threading.Thread(target=run, name=name, daemon=True).start()
    return await future
