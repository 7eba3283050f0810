"""When and how long the sidecar client waits before trying again (pure, property-tested).

Retried: connection failures (the request never reached the sidecar) and 429/503 answers (the
sidecar refused it before doing any work). Never retried: other 4xx (the request itself is wrong)
and other 5xx or read timeouts (the work may have happened; repeating it would double GPU time).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

RETRYABLE_STATUSES = frozenset({429, 503})


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 4
    """Total attempts, the first one included."""
    initial_s: float = 0.5
    max_s: float = 10.0
    exp_base: float = 2.0
    jitter_s: float = 0.5
    """Up to this much random delay is added, so many clients do not retry in lockstep."""
    retry_after_cap_s: float = 60.0
    """A server's Retry-After is honoured up to this many seconds."""
    total_s: float = 180.0
    """No new attempt starts after this long."""

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError("attempts must be at least 1")
        if min(self.initial_s, self.max_s, self.jitter_s, self.retry_after_cap_s) < 0:
            raise ValueError("waits cannot be negative")
        if self.exp_base < 1:
            raise ValueError("exp_base must be at least 1")

    def wait_s(
        self, retry_number: int, retry_after_s: float | None, jitter_fraction: float
    ) -> float:
        """Seconds to wait before retry `retry_number` (1-based).

        `jitter_fraction` is a random number in [0, 1]; the server's Retry-After, when given,
        replaces the exponential backoff (capped).
        """
        if retry_after_s is not None:
            return min(max(retry_after_s, 0.0), self.retry_after_cap_s)
        fraction = min(max(jitter_fraction, 0.0), 1.0)
        try:
            exponential = self.initial_s * self.exp_base ** (retry_number - 1)
        except OverflowError:
            exponential = math.inf
        return min(self.max_s, exponential + self.jitter_s * fraction)


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date); None if unusable."""
    if value is None:
        return None
    text = value.strip()
    if text.isdigit():
        return float(text)
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())
