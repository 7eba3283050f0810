"""GPU/CPU placement of the torch models (embedder, reranker): a pure policy and a mover.

`decide_placement` is the policy (pure, property-tested): GPU when CUDA is available and free VRAM
covers the model plus headroom without crossing `VRAM_PRESSURE_PCT`; CPU when CUDA is absent, VRAM
is unknown, or usage is at/above the pressure threshold. A model on the CPU goes back to the GPU
only after the fit has held for a settling period, so a VRAM figure hovering around the threshold
does not make it flap.

`DeviceManager` applies the policy. Every model has a lock that the batch worker holds while a
batch runs, so a move (`.to(device, dtype)`) only ever happens between batches; moves of all
models are serialised by one manager lock, so each decision sees the VRAM the previous move left.
fp16 on the GPU, fp32 on the CPU, `torch.cuda.empty_cache()` after leaving the GPU. The CUDA
probe, the GPU's torch device, the cache-emptying call and the clock are injectable so the mover is
tested with real torch modules on a machine without CUDA; production uses the defaults.

While no priority model is loaded (`OllamaView.priority_loaded()` not True) placement keeps room
for it: `reserve_mib` and `keep_free_mib` from `placement_reserve_mib`/`placement_keep_free_mib`
over the GPU's total, `LLM_RESERVE_MIB` and the OCR model's footprint, the same inputs
`bench/gpu_sim.py` measured. Once it is loaded its memory is already in the VRAM figure: both 0.

torch is imported where it is used, never at import time: this module is imported by the model
loading thread, so the server answers /live before torch has been read from disk.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Protocol, TypeVar

from sidecar.observability import Metrics
from sidecar.placement_policy import (
    Device,
    DeviceMode,
    PlacementDecision,
    PlacementInputs,
    decide_placement,
    fit_started_at,
    placement_keep_free_mib,
    placement_reserve_mib,
)
from sidecar.units import MIB
from sidecar.vram_monitor import VramMonitor, VramSnapshot

if TYPE_CHECKING:
    import torch

logger = logging.getLogger("sidecar.devices")

T = TypeVar("T")

# Activations of one micro-batch on top of the weights (16k tokens through a 24-layer encoder in
# fp16 stay well under this).
DEFAULT_HEADROOM_MIB = 1024
# Free VRAM must hold this long before a model leaves the CPU again.
DEFAULT_SETTLE_S = 30.0
# How often the watcher re-reads VRAM when no batch is running.
DEFAULT_CHECK_INTERVAL_S = 1.0


class OllamaView(Protocol):
    """What the OCR side last saw of Ollama (read-only; `OcrPipeline` is one)."""

    def priority_loaded(self) -> bool | None:
        """Whether a priority model (the LLM) is loaded; None when unknown."""
        ...

    def ocr_footprint_mib(self) -> int | None:
        """The OCR model's footprint should it load (MiB); None when unknown."""
        ...


class UnknownOllama:
    """The view when no OCR side is wired: nothing known, so the reserve applies."""

    def priority_loaded(self) -> bool | None:
        return None

    def ocr_footprint_mib(self) -> int | None:
        return None


def module_mib(module: torch.nn.Module, bytes_per_param: int = 2) -> int:
    """Weights of `module` in MiB at `bytes_per_param` (fp16 on the GPU)."""
    params = sum(p.numel() for p in module.parameters())
    buffers = sum(b.numel() for b in module.buffers())
    return max(1, (params + buffers) * bytes_per_param // MIB)


class PlacedModel:
    """One torch module under placement. Hold `use()` while running a batch on it."""

    def __init__(self, name: str, module: torch.nn.Module, model_mib: int) -> None:
        import torch

        self.name = name
        self.module = module
        self.model_mib = model_mib
        self.device: Device = "cpu"
        self.reason = "not placed yet"
        self.torch_device = torch.device("cpu")
        self.dtype = torch.float32
        self.fit_since: float | None = None
        self.moves = 0
        self.lock = threading.RLock()

    @contextmanager
    def use(self) -> Iterator[PlacedModel]:
        """Hold the model where it is for the duration of one batch."""
        with self.lock:
            yield self

    def describe(self) -> dict[str, object]:
        return {
            "device": self.device,
            "reason": self.reason,
            "dtype": str(self.dtype).removeprefix("torch."),
            "moves": self.moves,
            "model_mib": self.model_mib,
        }


class DeviceManager:
    """Places models by `decide_placement` and moves them between batches."""

    def __init__(
        self,
        vram: VramMonitor,
        metrics: Metrics,
        *,
        mode: DeviceMode = "auto",
        pressure_pct: float = 85.0,
        headroom_mib: int = DEFAULT_HEADROOM_MIB,
        settle_s: float = DEFAULT_SETTLE_S,
        llm_reserve_mib: int = 0,
        ollama_view: OllamaView | None = None,
        cuda_available: Callable[[], bool] | None = None,
        gpu_device: str = "cuda",
        gpu_dtype: str = "float16",
        empty_cache: Callable[[], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        import torch

        self.vram = vram
        self.metrics = metrics
        self.mode = mode
        self.pressure_pct = pressure_pct
        self.headroom_mib = headroom_mib
        self.settle_s = settle_s
        self.llm_reserve_mib = llm_reserve_mib
        self.ollama_view: OllamaView = ollama_view or UnknownOllama()
        self.cuda_available = cuda_available or torch.cuda.is_available
        self.gpu_device = torch.device(gpu_device)
        self.gpu_dtype: torch.dtype = getattr(torch, gpu_dtype)
        self.empty_cache = empty_cache or torch.cuda.empty_cache
        self.clock = clock
        self.models: list[PlacedModel] = []
        self._move_lock = threading.Lock()

    def add(self, name: str, module: torch.nn.Module) -> PlacedModel:
        """Register `module` and give it its first placement (no settling wait at startup)."""
        module.eval()
        placed = PlacedModel(name, module, module_mib(module, self._bytes_per_param()))
        self.models.append(placed)
        self.reconcile(placed, initial=True)
        return placed

    def _bytes_per_param(self) -> int:
        return self.gpu_dtype.itemsize

    def decide(self, placed: PlacedModel, *, initial: bool = False) -> PlacementDecision:
        """The policy's answer for `placed` now; updates how long the GPU has fitted."""
        now = self.clock()
        cuda = self.cuda_available()
        # Only the auto mode with CUDA present needs VRAM figures.
        vram = self.vram.snapshot() if self.mode == "auto" and cuda else None
        reserve_mib, keep_free_mib = self.llm_marks(vram)
        inputs = PlacementInputs(
            mode=self.mode,
            cuda_available=cuda,
            vram=vram,
            model_mib=placed.model_mib,
            headroom_mib=self.headroom_mib,
            pressure_pct=self.pressure_pct,
            current=placed.device,
            fit_held_s=0.0 if placed.fit_since is None else now - placed.fit_since,
            settle_s=0.0 if initial else self.settle_s,
            reserve_mib=reserve_mib,
            keep_free_mib=keep_free_mib,
        )
        decision = decide_placement(inputs)
        placed.fit_since = fit_started_at(decision, placed.fit_since, now)
        return decision

    def llm_marks(self, vram: VramSnapshot | None) -> tuple[int, int]:
        """`(reserve_mib, keep_free_mib)` now, as `bench/gpu_sim.py` passes them: both 0 while a
        priority model is loaded (its memory is already in `used`), else room kept for it."""
        if self.ollama_view.priority_loaded() is True:
            return 0, 0
        total = None if vram is None else vram.total_mib
        args = (total, self.llm_reserve_mib, self.ollama_view.ocr_footprint_mib())
        return placement_reserve_mib(*args), placement_keep_free_mib(*args)

    def reconcile(self, placed: PlacedModel, *, initial: bool = False) -> Device:
        """Decide and, if needed, move. Waits for the running batch (the model lock) first."""
        with placed.lock, self._move_lock:
            decision = self.decide(placed, initial=initial)
            if decision.device != placed.device or initial:
                self._move(placed, decision.device)
            placed.reason = decision.reason
            return placed.device

    def evacuate(self, placed: PlacedModel, reason: str) -> None:
        """Force `placed` onto the CPU now (CUDA ran out of memory mid-batch)."""
        with placed.lock, self._move_lock:
            if placed.device != "cpu":
                self._move(placed, "cpu")
            placed.fit_since = None
            placed.reason = reason

    def run(self, placed: PlacedModel, work: Callable[[torch.device], T]) -> tuple[T, Device, str]:
        """Run one batch where `placed` sits; on CUDA OOM move it to the CPU and run it there."""
        import torch

        with placed.use():
            device = placed.device
            try:
                return work(placed.torch_device), device, placed.reason
            except torch.cuda.OutOfMemoryError:
                if device != "cuda":
                    raise
                logger.warning("cuda out of memory; moving to cpu", extra={"model": placed.name})
            self.evacuate(placed, "cuda out of memory")
            return work(placed.torch_device), placed.device, placed.reason

    def reconcile_all(self) -> None:
        for placed in list(self.models):
            self.reconcile(placed)

    def _move(self, placed: PlacedModel, target: Device) -> None:
        import torch

        leaving_gpu = placed.device == "cuda" and target == "cpu"
        torch_device = self.gpu_device if target == "cuda" else torch.device("cpu")
        dtype = self.gpu_dtype if target == "cuda" else torch.float32
        started = time.perf_counter()
        placed.module.to(device=torch_device, dtype=dtype)
        if leaving_gpu:
            self.empty_cache()
        moved = placed.device != target
        placed.device, placed.torch_device, placed.dtype = target, torch_device, dtype
        self.metrics.model_device.labels(placed.name).set(1 if target == "cuda" else 0)
        if moved:
            placed.moves += 1
            self.metrics.device_moves.labels(placed.name, target).inc()
            logger.info(
                "model moved",
                extra={
                    "model": placed.name,
                    "to": target,
                    "ms": round((time.perf_counter() - started) * 1000, 1),
                },
            )


class PlacementWatcher:
    """Re-checks placement every `interval_s` so idle models leave the GPU under pressure too."""

    def __init__(
        self, manager: DeviceManager, interval_s: float = DEFAULT_CHECK_INTERVAL_S
    ) -> None:
        self.manager = manager
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="placement-watcher", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.manager.reconcile_all()
            except Exception:  # a failed move must not kill the watcher; the next tick retries
                logger.exception("placement check failed")
