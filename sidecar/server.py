"""uvicorn with a graceful drain: the first SIGTERM (or Ctrl+C) stops new jobs, waits for the
running ones up to `SHUTDOWN_GRACE_S`, then closes the sockets; the process exits 0.

uvicorn alone would close its listening sockets at the first signal and give running requests
`timeout_graceful_shutdown` seconds; then /ready could never say 503, because nobody could reach it.
Here the server keeps serving while it drains: /ready answers 503 at once, job routes answer 503
`not_ready` (`sidecar.lifecycle`), and uvicorn's own shutdown starts only when the drain is over.
A second signal shuts down at once, as uvicorn does.
"""

from __future__ import annotations

import logging
import time
from types import FrameType

import uvicorn

from sidecar.lifecycle import Drain

logger = logging.getLogger("sidecar.server")

# After the drain, what is left (idle keep-alive connections) gets this long to close.
AFTER_DRAIN_S = 1.0


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, drain: Drain, grace_s: float) -> None:
        super().__init__(config)
        self.drain = drain
        self.grace_s = grace_s
        self._deadline: float | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self.drain.draining:
            super().handle_exit(sig, frame)  # asked twice: uvicorn's immediate shutdown
            return
        # A signal handler: set flags only; the event loop's next tick does the rest.
        self.drain.begin()
        self._deadline = time.monotonic() + self.grace_s

    async def on_tick(self, counter: int) -> bool:
        if await super().on_tick(counter):
            return True
        if self._deadline is None:
            return False
        if self.drain.active == 0:
            logger.info("drained: no job running, shutting down")
            return True
        if time.monotonic() >= self._deadline:
            logger.warning(
                "shutdown grace period over with jobs still running; they are cancelled",
                extra={"active_jobs": self.drain.active, "grace_s": self.grace_s},
            )
            return True
        return False
