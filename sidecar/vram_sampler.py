"""One background thread reads VRAM about once a second; everyone else reads its latest sample.

NVML calls and the `file:` source's read and JSON parse are I/O. Admission, the OCR pipeline,
placement, /health and /metrics all ask for VRAM, some of them once per waiting request, so they
read the sample this thread keeps instead of querying the GPU on the event loop. `SampledVram`
is itself a `VramMonitor`: callers keep calling `snapshot()`, which now never does I/O.
"""

from __future__ import annotations

import logging
import threading

from sidecar.vram_monitor import VramMonitor, VramSnapshot

logger = logging.getLogger("sidecar.vram")

DEFAULT_SAMPLE_INTERVAL_S = 1.0
STOP_WAIT_S = 5.0


class SampledVram:
    """The latest `snapshot()` of `monitor`, refreshed every `interval_s` by a daemon thread.

    Before the first sample (and whenever the monitor says so) the snapshot is None: VRAM unknown,
    which every policy treats as "no room". The first sample is taken by the thread too, so a slow
    driver start (NVML init) never delays binding the port and answering /live.
    """

    def __init__(self, monitor: VramMonitor, interval_s: float = DEFAULT_SAMPLE_INTERVAL_S) -> None:
        self.monitor = monitor
        self.source = monitor.source
        self.interval_s = interval_s
        self._latest: VramSnapshot | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def snapshot(self) -> VramSnapshot | None:
        return self._latest  # one attribute read: no I/O, no lock (the reference swap is atomic)

    def sample(self) -> VramSnapshot | None:
        """Read the monitor now (blocking I/O: call it from a thread, not the event loop)."""
        try:
            self._latest = self.monitor.snapshot()
        except Exception:  # a broken monitor must not kill the sampler; unknown until it recovers
            logger.exception("VRAM sample failed")
            self._latest = None
        return self._latest

    def start(self) -> None:
        """Start sampling in the background (at once, then every `interval_s`) until `stop()`."""
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="vram-sampler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop sampling; returns once the thread has finished its current read (or after
        `STOP_WAIT_S`: a driver call that hangs must not hang the shutdown; the thread is a
        daemon and goes with the process)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=STOP_WAIT_S)

    def _run(self) -> None:
        self.sample()
        while not self._stop.wait(self.interval_s):
            self.sample()
