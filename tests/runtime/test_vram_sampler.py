"""The VRAM sampler: one thread reads the monitor, `snapshot()` only returns the latest sample."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from sidecar.vram_monitor import FileVramMonitor, VramSnapshot
from sidecar.vram_sampler import SampledVram
from tests.reliability.eventually import eventually


class CountingMonitor:
    """A real file monitor that also says when it was read (the test waits on that, not a clock)."""

    def __init__(self, path: Path) -> None:
        self.inner = FileVramMonitor(path)
        self.source = self.inner.source
        self.reads = 0
        self.read_done = threading.Condition()
        self.fail = False

    def snapshot(self) -> VramSnapshot | None:
        if self.fail:
            raise RuntimeError("driver gone")
        result = self.inner.snapshot()
        with self.read_done:
            self.reads += 1
            self.read_done.notify_all()
        return result

    def wait_reads(self, count: int) -> bool:
        with self.read_done:
            return self.read_done.wait_for(lambda: self.reads >= count, timeout=10)


def write(path: Path, used_mib: int, total_mib: int = 16000) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"total_mib": total_mib, "used_mib": used_mib}), encoding="utf-8")
    tmp.replace(path)


def test_the_thread_samples_at_once_and_snapshot_reads_nothing(tmp_path: Path) -> None:
    path = tmp_path / "vram.json"
    write(path, 4000)
    monitor = CountingMonitor(path)
    sampler = SampledVram(monitor, interval_s=3600)  # no second sample during this test
    assert sampler.snapshot() is None  # nothing sampled yet: unknown
    sampler.start()
    try:
        # The thread's first read, right after start (the sample lands just after the read).
        assert eventually(lambda: sampler.snapshot() is not None, True, 10)
        first = sampler.snapshot()
        assert first is not None and first.used_mib == 4000
        assert sampler.source == f"file:{path}"
        write(path, 9000)
        for _ in range(100):
            assert sampler.snapshot() is first  # the sample, not a read
        assert monitor.reads == 1
    finally:
        sampler.stop()


@pytest.fixture
def sampling(tmp_path: Path) -> Iterator[tuple[Path, CountingMonitor, SampledVram]]:
    """A sampler reading a real file every 10 ms; the test waits on reads, never on a clock."""
    path = tmp_path / "vram.json"
    write(path, 2000)
    monitor = CountingMonitor(path)
    sampler = SampledVram(monitor, interval_s=0.01)
    sampler.start()
    yield path, monitor, sampler
    sampler.stop()


def test_the_thread_picks_up_changes(
    sampling: tuple[Path, CountingMonitor, SampledVram],
) -> None:
    path, monitor, sampler = sampling
    write(path, 12_000)
    # Two more reads: at least one of them started after the write.
    assert monitor.wait_reads(monitor.reads + 2)
    snapshot = sampler.snapshot()
    assert snapshot is not None and snapshot.used_mib == 12_000
    path.unlink()  # the file monitor's "unknown"
    assert monitor.wait_reads(monitor.reads + 2)
    assert sampler.snapshot() is None


def test_a_failing_monitor_means_unknown_and_the_thread_survives(
    sampling: tuple[Path, CountingMonitor, SampledVram],
) -> None:
    _, monitor, sampler = sampling
    monitor.fail = True
    assert sampler.sample() is None and sampler.snapshot() is None
    monitor.fail = False
    assert monitor.wait_reads(monitor.reads + 2)  # the thread is still sampling
    snapshot = sampler.snapshot()
    assert snapshot is not None and snapshot.used_mib == 2000
    sampler.stop()
    stopped_at = monitor.reads
    assert sampler.sample() is not None  # sample() still works by hand after stop
    assert monitor.reads == stopped_at + 1
