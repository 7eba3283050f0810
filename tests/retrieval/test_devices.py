"""The mover: real torch modules placed by injected VRAM monitors, CUDA probe and clock.

There is no CUDA here, so the "GPU" torch device is the CPU (`gpu_device="cpu"`): the module still
really changes dtype (fp16 on the GPU side, fp32 on the CPU side), the cache-emptying call and the
metrics are observed, and the decision path is the production one.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
import torch

from sidecar.config import Settings
from sidecar.devices import DeviceManager, PlacementWatcher
from sidecar.observability import Metrics
from sidecar.retrieval.service import device_manager_from_settings
from sidecar.vram_monitor import VramSnapshot

TOTAL_MIB = 16000


@dataclass
class ScriptedVram:
    """A VRAM monitor the test drives."""

    used_mib: int | None = 1000
    source: str = "scripted"
    reads: int = 0

    def snapshot(self) -> VramSnapshot | None:
        self.reads += 1
        if self.used_mib is None:
            return None
        return VramSnapshot(TOTAL_MIB, self.used_mib, TOTAL_MIB - self.used_mib, "scripted", 0.0)


@dataclass
class FakeClock:
    now: float = 0.0

    def __call__(self) -> float:
        return self.now


@dataclass
class CacheSpy:
    calls: int = 0
    called: threading.Event = field(default_factory=threading.Event)

    def __call__(self) -> None:
        self.calls += 1
        self.called.set()


def tiny_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.GELU(), torch.nn.Linear(32, 4))


@dataclass
class ReportedOllama:
    """What the OCR side reports (an `OllamaView`): is a priority model (the LLM) loaded, and the
    OCR model's footprint in MiB. None = unknown."""

    loaded: bool | None = None
    ocr_mib: int | None = None

    def priority_loaded(self) -> bool | None:
        return self.loaded

    def ocr_footprint_mib(self) -> int | None:
        return self.ocr_mib


@pytest.fixture
def rig() -> Callable[..., tuple[DeviceManager, ScriptedVram, FakeClock, CacheSpy, Metrics]]:
    def build(
        *,
        cuda: bool = True,
        mode: str = "auto",
        settle_s: float = 30.0,
        llm_reserve_mib: int = 0,
        ollama_view: ReportedOllama | None = None,
    ) -> tuple[DeviceManager, ScriptedVram, FakeClock, CacheSpy, Metrics]:
        vram, clock, spy, metrics = ScriptedVram(), FakeClock(), CacheSpy(), Metrics()
        manager = DeviceManager(
            vram,
            metrics,
            mode=mode,  # type: ignore[arg-type]
            pressure_pct=85.0,
            headroom_mib=500,
            settle_s=settle_s,
            llm_reserve_mib=llm_reserve_mib,
            ollama_view=ollama_view,
            cuda_available=lambda: cuda,
            gpu_device="cpu",
            empty_cache=spy,
            clock=clock,
        )
        return manager, vram, clock, spy, metrics

    return build


def sample(metrics: Metrics, name: str, **labels: str) -> float:
    value = metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


def test_starts_on_gpu_in_fp16_when_vram_allows(rig: Callable[..., tuple]) -> None:
    manager, _vram, _clock, spy, metrics = rig()
    placed = manager.add("embed", tiny_model())
    assert placed.device == "cuda" and placed.reason == "vram ok"
    assert all(p.dtype == torch.float16 for p in placed.module.parameters())
    assert sample(metrics, "sidecar_model_on_gpu", model="embed") == 1.0
    assert spy.calls == 0


def test_starts_on_cpu_in_fp32_without_cuda(rig: Callable[..., tuple]) -> None:
    manager, vram, _clock, _spy, _metrics = rig(cuda=False)
    placed = manager.add("embed", tiny_model().half())
    assert placed.device == "cpu" and placed.reason == "cuda unavailable"
    assert all(p.dtype == torch.float32 for p in placed.module.parameters())
    assert vram.reads == 0  # no VRAM query needed to know there is no CUDA


def test_pressure_moves_to_cpu_then_back_only_after_settling(rig: Callable[..., tuple]) -> None:
    manager, vram, clock, spy, metrics = rig(settle_s=30.0)
    placed = manager.add("embed", tiny_model())
    vram.used_mib = 14_600  # 91%
    assert manager.reconcile(placed) == "cpu"
    assert placed.reason == "vram pressure 91% ≥ 85%"
    assert all(p.dtype == torch.float32 for p in placed.module.parameters())
    assert spy.calls == 1
    assert sample(metrics, "sidecar_model_moves_total", model="embed", to="cpu") == 1.0
    assert sample(metrics, "sidecar_model_on_gpu", model="embed") == 0.0

    vram.used_mib = 2000  # room again: the settling clock starts
    clock.now = 100.0
    assert manager.reconcile(placed) == "cpu" and placed.reason.startswith("settling")
    clock.now = 129.0
    assert manager.reconcile(placed) == "cpu"
    vram.used_mib = 14_000  # a dip resets the clock
    clock.now = 131.0
    assert manager.reconcile(placed) == "cpu"
    vram.used_mib = 2000
    clock.now = 140.0
    assert manager.reconcile(placed) == "cpu"
    clock.now = 169.0
    assert manager.reconcile(placed) == "cpu"
    clock.now = 170.0
    assert manager.reconcile(placed) == "cuda"
    assert all(p.dtype == torch.float16 for p in placed.module.parameters())
    # Loading happens on the CPU, so the first placement was a move up too.
    assert sample(metrics, "sidecar_model_moves_total", model="embed", to="cuda") == 2.0
    assert placed.moves == 3
    assert spy.calls == 1  # only leaving the GPU empties the cache


def test_outputs_survive_the_round_trip(rig: Callable[..., tuple]) -> None:
    manager, vram, _clock, _spy, _metrics = rig(settle_s=0.0)
    model = tiny_model()
    x = torch.randn(3, 16)
    with torch.inference_mode():
        reference = model(x)
    placed = manager.add("embed", model)
    with torch.inference_mode():
        on_gpu = placed.module(x.to(placed.torch_device, placed.dtype)).float()
    torch.testing.assert_close(on_gpu, reference, atol=5e-3, rtol=5e-3)
    vram.used_mib = 15_000
    manager.reconcile(placed)
    with torch.inference_mode():
        on_cpu = placed.module(x)
    assert on_cpu.dtype == torch.float32
    torch.testing.assert_close(on_cpu, reference, atol=5e-3, rtol=5e-3)


def test_vram_unknown_keeps_cpu_and_pinned_modes_ignore_vram(rig: Callable[..., tuple]) -> None:
    manager, vram, _clock, _spy, _metrics = rig()
    vram.used_mib = None
    assert manager.add("embed", tiny_model()).reason == "vram unknown"
    pinned, vram_pinned, *_ = rig(mode="cuda")
    vram_pinned.used_mib = 15_900
    placed = pinned.add("embed", tiny_model())
    assert pinned.reconcile(placed) == "cuda"
    cpu_only, *_ = rig(mode="cpu")
    assert cpu_only.add("embed", tiny_model()).device == "cpu"


def test_a_move_waits_for_the_running_batch(rig: Callable[..., tuple]) -> None:
    manager, vram, _clock, _spy, _metrics = rig()
    placed = manager.add("embed", tiny_model())
    in_batch, release, moved = threading.Event(), threading.Event(), threading.Event()
    dtypes_seen: list[torch.dtype] = []

    def batch(device: torch.device) -> None:
        in_batch.set()
        release.wait(10)
        dtypes_seen.append(next(placed.module.parameters()).dtype)

    worker = threading.Thread(target=manager.run, args=(placed, batch))
    worker.start()
    assert in_batch.wait(10)
    vram.used_mib = 15_500
    mover = threading.Thread(target=lambda: (manager.reconcile(placed), moved.set()))
    mover.start()
    assert not moved.wait(0.3)  # blocked behind the batch
    release.set()
    worker.join(10)
    assert moved.wait(10)
    mover.join(10)
    assert dtypes_seen == [torch.float16]  # the batch never saw its model move under it
    assert placed.device == "cpu"


def test_cuda_oom_evacuates_and_reruns_on_cpu(rig: Callable[..., tuple]) -> None:
    manager, _vram, _clock, spy, metrics = rig()
    placed = manager.add("embed", tiny_model())
    attempts: list[tuple[str, torch.dtype]] = []

    def batch(device: torch.device) -> str:
        attempts.append((placed.device, next(placed.module.parameters()).dtype))
        if placed.device == "cuda":
            raise torch.cuda.OutOfMemoryError("CUDA out of memory")
        return "done"

    result, device, reason = manager.run(placed, batch)
    assert (result, device, reason) == ("done", "cpu", "cuda out of memory")
    assert attempts == [("cuda", torch.float16), ("cpu", torch.float32)]
    assert spy.calls == 1
    assert sample(metrics, "sidecar_model_moves_total", model="embed", to="cpu") == 1.0


def test_oom_on_cpu_is_not_swallowed(rig: Callable[..., tuple]) -> None:
    manager, *_ = rig(cuda=False)
    placed = manager.add("embed", tiny_model())

    def batch(device: torch.device) -> None:
        raise torch.cuda.OutOfMemoryError("odd")

    with pytest.raises(torch.cuda.OutOfMemoryError):
        manager.run(placed, batch)


def test_watcher_evacuates_an_idle_model(rig: Callable[..., tuple]) -> None:
    manager, vram, _clock, spy, _metrics = rig()
    placed = manager.add("rerank", tiny_model())
    watcher = PlacementWatcher(manager, interval_s=0.01)
    watcher.start()
    try:
        vram.used_mib = 15_000
        assert spy.called.wait(10)
    finally:
        watcher.stop()
    assert placed.device == "cpu"


@pytest.mark.parametrize("reported", [None, False])
def test_a_move_up_keeps_the_llm_reserve_until_a_priority_model_is_loaded(
    rig: Callable[..., tuple], reported: bool | None
) -> None:
    priority = ReportedOllama(reported)
    manager, vram, clock, _spy, metrics = rig(llm_reserve_mib=9000, ollama_view=priority)
    vram.used_mib = 8000  # 8000 MiB free: the model fits, but not beside a 9000 MiB reserve
    placed = manager.add("embed", tiny_model())
    assert placed.device == "cpu"
    assert placed.reason == "llm reserve: 7499 MiB would be free < 9000 MiB kept for the LLM"
    assert all(p.dtype == torch.float32 for p in placed.module.parameters())
    assert manager.reconcile(placed) == "cpu"

    # The LLM loaded: its memory is in `used` now (8000 MiB used is it), the reserve is spent.
    priority.loaded = True
    assert manager.reconcile(placed) == "cpu" and placed.reason.startswith("settling")
    clock.now += 30.0
    assert manager.reconcile(placed) == "cuda"
    assert all(p.dtype == torch.float16 for p in placed.module.parameters())
    assert sample(metrics, "sidecar_model_on_gpu", model="embed") == 1.0


def test_the_reserve_never_pushes_a_model_off_the_gpu(rig: Callable[..., tuple]) -> None:
    """With the OCR model's footprint unknown the reserve gates moves up only: a model already on
    the GPU stays below the pressure mark even when the LLM is unloaded and less than the reserve
    is free."""
    manager, vram, _clock, spy, _metrics = rig(
        llm_reserve_mib=9000, ollama_view=ReportedOllama(False)
    )
    placed = manager.add("embed", tiny_model())
    assert placed.device == "cuda"
    vram.used_mib = 12_000  # 75%: under the 85% mark, 4000 MiB free < the reserve
    assert manager.reconcile(placed) == "cuda" and spy.calls == 0


def test_the_service_builds_its_manager_with_the_reserve_setting(
    make_settings: Callable[..., Settings],
) -> None:
    reported = ReportedOllama(True, ocr_mib=3000)
    settings = make_settings(llm_reserve_mib=7000)
    manager = device_manager_from_settings(settings, ScriptedVram(), Metrics(), reported)
    assert manager.llm_reserve_mib == 7000
    snapshot = ScriptedVram().snapshot()
    assert manager.llm_marks(snapshot) == (0, 0)
    reported.loaded = False  # read on every decision, not copied at construction
    assert manager.llm_marks(snapshot) == (8750 + 3000, 8750 + 3000)  # 7000 / 0.8 + OCR


# LLM_RESERVE_MIB 4000 takes 5000 MiB free to load beside a resident model (Ollama's 80% rule);
# with a 3000 MiB OCR model that is 8000 MiB kept while the LLM is not loaded.
LLM_MIB, OCR_MIB, KEPT_MIB = 4000, 3000, 8000


def test_no_llm_loaded_a_move_up_leaves_room_for_the_llm_beside_the_ocr_model(
    rig: Callable[..., tuple],
) -> None:
    reported = ReportedOllama(False, ocr_mib=OCR_MIB)
    manager, vram, clock, _spy, _metrics = rig(llm_reserve_mib=LLM_MIB, ollama_view=reported)
    vram.used_mib = 8000  # 8000 free: more than LLM_RESERVE_MIB, less than LLM room + OCR + model
    placed = manager.add("embed", tiny_model())
    assert placed.device == "cpu"
    assert placed.reason == f"llm reserve: 7499 MiB would be free < {KEPT_MIB} MiB kept for the LLM"

    vram.used_mib = 7000  # 9000 free: the move leaves 8499 MiB, room for both
    assert manager.reconcile(placed) == "cpu" and placed.reason.startswith("settling")
    clock.now += 30.0
    assert manager.reconcile(placed) == "cuda"
    assert all(p.dtype == torch.float16 for p in placed.module.parameters())


def test_no_llm_loaded_a_model_on_the_gpu_moves_down_below_the_keep_free_mark(
    rig: Callable[..., tuple],
) -> None:
    reported = ReportedOllama(None, ocr_mib=OCR_MIB)
    manager, vram, _clock, spy, metrics = rig(llm_reserve_mib=LLM_MIB, ollama_view=reported)
    placed = manager.add("embed", tiny_model())
    assert placed.device == "cuda"
    vram.used_mib = 16000 - KEPT_MIB  # exactly the mark free: it stays
    assert manager.reconcile(placed) == "cuda" and spy.calls == 0
    vram.used_mib += 1
    assert manager.reconcile(placed) == "cpu"
    assert (
        placed.reason == f"llm reserve: {KEPT_MIB - 1} MiB free < {KEPT_MIB} MiB kept for the LLM"
    )
    assert spy.calls == 1
    assert sample(metrics, "sidecar_model_moves_total", model="embed", to="cpu") == 1.0


def test_with_a_priority_model_loaded_neither_mark_applies(rig: Callable[..., tuple]) -> None:
    reported = ReportedOllama(True, ocr_mib=OCR_MIB)
    manager, vram, clock, spy, _metrics = rig(llm_reserve_mib=LLM_MIB, ollama_view=reported)
    vram.used_mib = 9000  # 7000 free: under both marks, but the LLM's memory is counted already
    placed = manager.add("embed", tiny_model())
    assert (placed.device, placed.reason) == ("cuda", "vram ok")
    vram.used_mib = 13_000  # 81%: under the pressure mark, 3000 free
    assert manager.reconcile(placed) == "cuda" and spy.calls == 0

    # The LLM unloads: the same VRAM is now below the keep-free mark, so the model moves down,
    # and it comes back up only once the LLM is loaded again.
    reported.loaded = False
    assert manager.reconcile(placed) == "cpu"
    vram.used_mib = 9000
    clock.now += 60.0
    assert manager.reconcile(placed) == "cpu" and placed.reason.startswith("llm reserve")
    reported.loaded = True
    manager.reconcile(placed)
    clock.now += 30.0
    assert manager.reconcile(placed) == "cuda"
