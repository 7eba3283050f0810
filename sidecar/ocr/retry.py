"""Per-page retries of Ollama calls (docs/api.md "Partial results").

Only `OllamaUnavailable` is retried: Ollama's 503 "server busy" (its scheduler queue is full) and
connect errors (Ollama restarting). Both mean "not now", and nothing was generated. Timeouts, bad
answers and unknown models are not: repeating them costs GPU time or cannot help. The retries
stay inside the page's budget (`OLLAMA_TIMEOUT_S` from the page's start, and the job deadline
around it), with exponential backoff.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

from tenacity import (
    AsyncRetrying,
    retry_if_exception_type,
    stop_after_attempt,
    stop_before_delay,
    wait_exponential,
)

from sidecar.ollama import OllamaUnavailable

T = TypeVar("T")
MAX_ATTEMPTS = 5  # 0.25 + 0.5 + 1 + 2 s of backoff at most
FIRST_BACKOFF_S = 0.25
MAX_BACKOFF_S = 4.0


async def call_with_retries(
    call: Callable[[], Awaitable[T]],
    *,
    budget_s: float,
    on_retry: Callable[[], None] | None = None,
) -> T:
    """`await call()`, again after an `OllamaUnavailable` while attempts and `budget_s` last;
    the last failure is raised as it came."""

    def count(_state: object) -> None:
        if on_retry is not None:
            on_retry()

    retrying = AsyncRetrying(
        retry=retry_if_exception_type(OllamaUnavailable),
        stop=stop_after_attempt(MAX_ATTEMPTS) | stop_before_delay(max(budget_s, 0.0)),
        wait=wait_exponential(multiplier=FIRST_BACKOFF_S, max=MAX_BACKOFF_S),
        before_sleep=count,
        reraise=True,
    )
    async for attempt in retrying:
        with attempt:
            return await call()
    raise AssertionError("unreachable: tenacity re-raises the last failure")
