"""AdmissionControl without HTTP: slots, FIFO order, the bounded queue, cancel, exclusivity."""

from __future__ import annotations

import asyncio

import pytest

from sidecar.errors import Overloaded
from sidecar.observability import Metrics
from sidecar.ocr.admission import AdmissionControl


async def hold_slot(control: AdmissionControl, started: list[int], ident: int,
                    leave: asyncio.Event) -> float:  # fmt: skip
    async with control.slot() as admission:
        started.append(ident)
        await leave.wait()
        return admission.queue_seconds


async def settle() -> None:
    """Let every runnable task reach its next await (no wall-clock wait)."""
    for _ in range(5):
        await asyncio.sleep(0)


async def test_slots_then_fifo_queue_then_429():
    control = AdmissionControl(2, 2, Metrics())
    leave = asyncio.Event()
    started: list[int] = []
    tasks = [asyncio.create_task(hold_slot(control, started, i, leave)) for i in range(4)]
    await settle()
    assert started == [0, 1]
    assert control.stats() == {"active": 2, "waiting": 2, "max_concurrent": 2, "limit": 2,
                               "queue_size": 2}  # fmt: skip
    assert control.is_overloaded()
    with pytest.raises(Overloaded) as refused:
        async with control.slot():
            pass
    assert refused.value.code == "overloaded" and refused.value.status == 429
    assert int(refused.value.headers["Retry-After"]) >= 1
    leave.set()
    waits = await asyncio.gather(*tasks)
    assert started == [0, 1, 2, 3]  # arrival order
    assert not control.is_overloaded()
    assert waits[0] == 0.0 and waits[3] > 0
    assert control.stats()["active"] == 0 and control.stats()["waiting"] == 0


async def test_a_cancelled_waiter_gives_its_place_up():
    control = AdmissionControl(1, 4, Metrics())
    leave = asyncio.Event()
    started: list[int] = []
    first = asyncio.create_task(hold_slot(control, started, 0, leave))
    second = asyncio.create_task(hold_slot(control, started, 1, leave))
    third = asyncio.create_task(hold_slot(control, started, 2, leave))
    await settle()
    second.cancel()
    await settle()
    assert control.waiting == 1
    leave.set()
    await asyncio.gather(first, third)
    assert started == [0, 2]
    assert control.active == 0


async def test_exclusive_mode_runs_one_job_at_a_time():
    critical = {"now": True}
    control = AdmissionControl(3, 8, Metrics(), exclusive_when=lambda: critical["now"])
    leave = asyncio.Event()
    started: list[int] = []
    tasks = [asyncio.create_task(hold_slot(control, started, i, leave)) for i in range(3)]
    await settle()
    assert started == [0] and control.limit() == 1 and control.waiting == 2
    critical["now"] = False
    leave.set()
    await asyncio.gather(*tasks)
    assert started == [0, 1, 2]


async def test_zero_queue_refuses_as_soon_as_slots_are_full():
    metrics = Metrics()
    control = AdmissionControl(1, 0, metrics)
    leave = asyncio.Event()
    task = asyncio.create_task(hold_slot(control, [], 0, leave))
    await settle()
    with pytest.raises(Overloaded):
        async with control.slot():
            pass
    assert metrics.registry.get_sample_value("sidecar_ocr_rejected_total") == 1
    leave.set()
    await task


def test_limits_must_make_sense():
    with pytest.raises(ValueError):
        AdmissionControl(0, 1, Metrics())
