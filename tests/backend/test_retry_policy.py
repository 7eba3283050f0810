"""The client's retry policy and Retry-After parsing (pure functions, property-tested)."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from backend_client.errors import ERROR_TYPES, SidecarUnavailable
from backend_client.retry import RetryPolicy, parse_retry_after
from sidecar.errors import CODES


@given(
    policy=st.builds(
        RetryPolicy,
        initial_s=st.floats(0, 5),
        max_s=st.floats(0, 60),
        exp_base=st.floats(1, 4),
        jitter_s=st.floats(0, 2),
        retry_after_cap_s=st.floats(0, 120),
    ),
    retry=st.integers(1, 50),
    jitter=st.floats(0, 1),
)
def test_backoff_is_bounded_and_grows(policy: RetryPolicy, retry: int, jitter: float) -> None:
    wait = policy.wait_s(retry, None, jitter)
    assert 0 <= wait <= policy.max_s
    assert policy.wait_s(retry + 1, None, jitter) >= wait  # never shorter for a later retry
    assert policy.wait_s(retry, None, 1.0) >= policy.wait_s(retry, None, 0.0)


@given(
    retry_after=st.floats(-10, 10_000, allow_nan=False),
    cap=st.floats(0, 600),
    retry=st.integers(1, 20),
    jitter=st.floats(0, 1),
)
def test_retry_after_replaces_backoff_within_the_cap(
    retry_after: float, cap: float, retry: int, jitter: float
) -> None:
    wait = RetryPolicy(retry_after_cap_s=cap).wait_s(retry, retry_after, jitter)
    assert wait == min(max(retry_after, 0.0), cap)


@given(st.integers(0, 10**6))
def test_retry_after_seconds_parse(seconds: int) -> None:
    assert parse_retry_after(str(seconds)) == seconds


def test_retry_after_http_date_and_garbage() -> None:
    now = datetime(2026, 1, 20, 12, 0, 0, tzinfo=UTC)
    later = format_datetime(now + timedelta(seconds=42), usegmt=True)
    assert parse_retry_after(later, now) == 42
    earlier = format_datetime(now - timedelta(seconds=42), usegmt=True)
    assert parse_retry_after(earlier, now) == 0
    for garbage in ("soon", "", "-5", "1.5", None):
        assert parse_retry_after(garbage, now) is None


def test_policy_rejects_nonsense() -> None:
    with pytest.raises(ValueError):
        RetryPolicy(attempts=0)
    with pytest.raises(ValueError):
        RetryPolicy(initial_s=-1)
    assert math.isclose(RetryPolicy(initial_s=1, exp_base=2, jitter_s=0).wait_s(2000, None, 0), 10)


def test_every_documented_code_has_its_own_exception_class() -> None:
    # A code added to sidecar.error_codes without a class here fails this test.
    assert set(ERROR_TYPES) == set(CODES)
    assert len(set(ERROR_TYPES.values())) == len(CODES)
    for code, error_type in ERROR_TYPES.items():
        assert code == error_type.CODE
        # the family matches the status: 5xx upstream/unavailable, 4xx the caller's side
        status = CODES[code][0]
        assert issubclass(error_type, SidecarUnavailable) == (status == 503), code
