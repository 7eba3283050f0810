"""How much GPU memory is in use: NVML, nothing, or a JSON file (for drills and tests).

`snapshot()` returns a `VramSnapshot`, or None when VRAM is unknown (no GPU, NVML missing, bad
file). Callers treat unknown as "assume no room": the residency policy then unloads the OCR model
and the placement policy keeps torch models on the CPU.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from sidecar.units import MIB

logger = logging.getLogger("sidecar.vram")


@dataclass(frozen=True, slots=True)
class VramSnapshot:
    total_mib: int
    used_mib: int
    free_mib: int
    source: str
    taken_at: float
    gpu_name: str | None = None

    @property
    def used_pct(self) -> float:
        return 100.0 * self.used_mib / self.total_mib if self.total_mib > 0 else 100.0


class VramMonitor(Protocol):
    source: str

    def snapshot(self) -> VramSnapshot | None: ...


class NoVramMonitor:
    """No GPU to watch (`OCR_SIDECAR_VRAM_SOURCE=none`)."""

    source = "none"

    def snapshot(self) -> VramSnapshot | None:
        return None


class FileVramMonitor:
    """Reads `{"total_mib": …, "used_mib": …, "free_mib"?: …, "name"?: …}` on every call."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.source = f"file:{path}"

    def snapshot(self) -> VramSnapshot | None:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            total = int(data["total_mib"])
            used = int(data["used_mib"])
            free = int(data.get("free_mib", total - used))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            logger.warning("vram file unreadable: %s", type(exc).__name__)
            return None
        if total <= 0 or used < 0 or free < 0:
            return None
        return VramSnapshot(total, used, free, "file", time.time(), data.get("name"))


class NvmlVramMonitor:
    """NVML through `pynvml` (package nvidia-ml-py); GPU `index`, initialised on first use."""

    source = "nvml"

    def __init__(self, index: int = 0) -> None:
        self.index = index
        self._handle: object | None = None
        self._name: str | None = None
        self._failed = False
        self._lock = threading.Lock()

    def _ensure_handle(self) -> object | None:
        with self._lock:
            if self._handle is not None or self._failed:
                return self._handle
            try:
                import pynvml

                pynvml.nvmlInit()
                self._handle = pynvml.nvmlDeviceGetHandleByIndex(self.index)
                name = pynvml.nvmlDeviceGetName(self._handle)
                self._name = name.decode() if isinstance(name, bytes) else str(name)
            except Exception as exc:  # NVMLError, ImportError: no usable GPU here
                logger.info("NVML unavailable (%s); VRAM is unknown", type(exc).__name__)
                self._failed = True
            return self._handle

    def snapshot(self) -> VramSnapshot | None:
        handle = self._ensure_handle()
        if handle is None:
            return None
        try:
            import pynvml

            info = pynvml.nvmlDeviceGetMemoryInfo(handle)
        except Exception as exc:
            logger.warning("NVML memory query failed: %s", type(exc).__name__)
            return None
        return VramSnapshot(
            total_mib=int(info.total // MIB),
            used_mib=int(info.used // MIB),
            free_mib=int(info.free // MIB),
            source="nvml",
            taken_at=time.time(),
            gpu_name=self._name,
        )


def monitor_from_source(source: str) -> VramMonitor:
    """Build the monitor `OCR_SIDECAR_VRAM_SOURCE` names: `nvml`, `none` or `file:PATH`."""
    if source == "none":
        return NoVramMonitor()
    if source == "nvml":
        return NvmlVramMonitor()
    if source.startswith("file:"):
        return FileVramMonitor(Path(source.removeprefix("file:")))
    raise ValueError(f"unknown VRAM source {source!r}")
