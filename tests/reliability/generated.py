"""Draw a fixed number of examples from a hypothesis strategy, reproducibly (seeded).

For attacks sent in bulk to a live server: the examples are drawn first, then sent, so the count
is exact and one slow request does not trip hypothesis' deadline.
"""

from __future__ import annotations

from typing import TypeVar

from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st

T = TypeVar("T")


def generated_examples(strategy: st.SearchStrategy[T], count: int, seed_value: int) -> list[T]:
    drawn: list[T] = []

    @seed(seed_value)
    @settings(
        max_examples=count,
        database=None,
        deadline=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(strategy)
    def collect(example: T) -> None:
        drawn.append(example)

    collect()
    return drawn
