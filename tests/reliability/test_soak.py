"""Soak, short form: 300 OCR jobs at concurrency 32 mixed with /embed and /rerank on the small
model, against a real sidecar process. Only 2xx/429/503, RSS growth under 10% after warm-up, no
descriptor or connection left behind. (`/live` latency is recorded by the bench, not asserted.)
"""

from __future__ import annotations

from tests.reliability.processes import RunningSidecar
from tests.reliability.soak import soak

OCR_JOBS = 300
CONCURRENCY = 32


def test_soak_short(model_sidecar: RunningSidecar) -> None:
    sidecar = model_sidecar
    result = soak(sidecar, OCR_JOBS, CONCURRENCY)
    summary = result.summary()
    print(summary)  # shown with -s; the bench keeps the figures
    assert result.unexpected == {}, summary
    assert result.statuses[200] > 0 and set(result.by_route) == {"ocr", "embed", "rerank"}
    assert result.rss_growth < 0.10, summary
    assert result.idle_before is not None and result.idle_after is not None
    assert result.idle_after.fds <= result.idle_before.fds, summary
    assert result.idle_after.tcp <= result.idle_before.tcp, summary
    assert result.live_failures == 0, summary
    assert sidecar.process.alive()
