"""Is the sidecar ready for work, and if not, why and will it clear by itself?

`readiness(ctx)` is the one place that answers it; /ready and /health only show the answer.
Each reason says what an operator can do about it, and whether it may clear without one: an
Ollama that is down may come back (so /ready sends `Retry-After`), a model that failed to load
will not (so it does not: retrying the same instance is pointless).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sidecar.context import AppContext

SHUTTING_DOWN = "shutting down"


@dataclass(frozen=True, slots=True)
class Problem:
    reason: str
    clears: bool  # may go away by itself (a load in progress, Ollama restarting)


@dataclass(frozen=True, slots=True)
class Readiness:
    problems: tuple[Problem, ...]

    @property
    def ready(self) -> bool:
        return not self.problems

    @property
    def reasons(self) -> list[str]:
        return [problem.reason for problem in self.problems]

    @property
    def may_clear(self) -> bool:
        """Worth retrying later: every problem can go away by itself."""
        return all(problem.clears for problem in self.problems)


async def readiness(ctx: AppContext) -> Readiness:
    if ctx.drain.draining:
        return Readiness((Problem(SHUTTING_DOWN, clears=False),))
    ollama = [Problem(reason, clears=True) for reason in await ctx.ocr.ready_problems()]
    ctx.status.ollama_up = not ollama
    return Readiness((*ollama, *ctx.retrieval.ready_problems()))
