"""VRAM sources: `file:` (re-read on every call), `none`, and NVML through a pynvml stand-in.

There is no GPU here; the NVML tests put a small `pynvml` module with NVML's call signatures in
`sys.modules`, which checks our byte → MiB arithmetic, the GPU name, and the failure paths.
"""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import pytest

from sidecar.vram_monitor import (
    MIB,
    FileVramMonitor,
    NoVramMonitor,
    NvmlVramMonitor,
    monitor_from_source,
)


def write(path: Path, data: object) -> None:
    path.write_text(json.dumps(data), encoding="utf-8")


def test_file_source_is_reread_on_every_call(tmp_path: Path):
    path = tmp_path / "vram.json"
    write(path, {"total_mib": 16311, "used_mib": 4000, "name": "RTX 5060 Ti"})
    monitor = FileVramMonitor(path)
    first = monitor.snapshot()
    assert first is not None
    assert (first.total_mib, first.used_mib, first.free_mib) == (16311, 4000, 12311)
    assert (first.source, first.gpu_name) == ("file", "RTX 5060 Ti")
    write(path, {"total_mib": 16311, "used_mib": 15700, "free_mib": 500})
    second = monitor.snapshot()
    assert second is not None
    assert (second.used_mib, second.free_mib) == (15700, 500)
    assert round(second.used_pct) == 96


@pytest.mark.parametrize(
    "content",
    ["not json", "[]", '{"used_mib": 1}', '{"total_mib": 0, "used_mib": 0}',
     '{"total_mib": 100, "used_mib": -1}', '{"total_mib": "x", "used_mib": 1}'],
)  # fmt: skip
def test_unusable_file_means_unknown(tmp_path: Path, content: str):
    path = tmp_path / "vram.json"
    path.write_text(content, encoding="utf-8")
    assert FileVramMonitor(path).snapshot() is None


def test_missing_file_means_unknown_until_it_appears(tmp_path: Path):
    path = tmp_path / "later.json"
    monitor = FileVramMonitor(path)
    assert monitor.snapshot() is None
    write(path, {"total_mib": 8000, "used_mib": 1000})
    snapshot = monitor.snapshot()
    assert snapshot is not None and snapshot.free_mib == 7000


def test_none_source_knows_nothing():
    assert NoVramMonitor().snapshot() is None


def test_source_names_pick_the_monitor(tmp_path: Path):
    assert isinstance(monitor_from_source("none"), NoVramMonitor)
    assert isinstance(monitor_from_source("nvml"), NvmlVramMonitor)
    file_monitor = monitor_from_source(f"file:{tmp_path / 'v.json'}")
    assert isinstance(file_monitor, FileVramMonitor)
    assert file_monitor.path == tmp_path / "v.json"
    with pytest.raises(ValueError):
        monitor_from_source("cuda")


class _MemoryInfo:
    def __init__(self, total: int, used: int, free: int) -> None:
        self.total, self.used, self.free = total, used, free


def fake_pynvml(*, fail_init: bool = False, fail_query: bool = False) -> types.ModuleType:
    module = types.ModuleType("pynvml")
    module.calls = {"init": 0}  # type: ignore[attr-defined]

    class NVMLError(Exception):
        pass

    def nvml_init() -> None:
        module.calls["init"] += 1  # type: ignore[attr-defined]
        if fail_init:
            raise NVMLError("NVML Shared Library Not Found")

    def memory_info(handle: object) -> _MemoryInfo:
        if fail_query:
            raise NVMLError("GPU is lost")
        return _MemoryInfo(
            16 * 1024 * MIB, 10 * 1024 * MIB + 512 * 1024, 6 * 1024 * MIB - 512 * 1024
        )

    module.NVMLError = NVMLError  # type: ignore[attr-defined]
    module.nvmlInit = nvml_init  # type: ignore[attr-defined]
    module.nvmlDeviceGetHandleByIndex = lambda index: ("gpu", index)  # type: ignore[attr-defined]
    module.nvmlDeviceGetName = lambda handle: b"NVIDIA GeForce RTX 5060 Ti"  # type: ignore[attr-defined]
    module.nvmlDeviceGetMemoryInfo = memory_info  # type: ignore[attr-defined]
    return module


def test_nvml_reports_mib_and_the_gpu_name(monkeypatch: pytest.MonkeyPatch):
    module = fake_pynvml()
    monkeypatch.setitem(sys.modules, "pynvml", module)
    monitor = NvmlVramMonitor()
    snapshot = monitor.snapshot()
    assert snapshot is not None
    assert (snapshot.total_mib, snapshot.used_mib, snapshot.free_mib) == (16384, 10240, 6143)
    assert snapshot.gpu_name == "NVIDIA GeForce RTX 5060 Ti"
    assert snapshot.source == "nvml"
    monitor.snapshot()
    assert module.calls["init"] == 1  # type: ignore[attr-defined]  # initialised once


def test_nvml_without_a_driver_is_unknown_and_not_retried(monkeypatch: pytest.MonkeyPatch):
    module = fake_pynvml(fail_init=True)
    monkeypatch.setitem(sys.modules, "pynvml", module)
    monitor = NvmlVramMonitor()
    assert monitor.snapshot() is None
    assert monitor.snapshot() is None
    assert module.calls["init"] == 1  # type: ignore[attr-defined]


def test_nvml_query_failure_is_unknown(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml(fail_query=True))
    assert NvmlVramMonitor().snapshot() is None


def test_real_nvml_on_this_machine_gives_a_snapshot_or_unknown():
    """No mock: with a GPU this reads it, without one NVML fails and VRAM is unknown."""
    snapshot = NvmlVramMonitor().snapshot()
    if not Path("/dev/nvidiactl").exists():
        assert snapshot is None
    else:
        assert snapshot is not None
        assert (
            snapshot.total_mib > 0 and snapshot.used_mib + snapshot.free_mib <= snapshot.total_mib
        )
