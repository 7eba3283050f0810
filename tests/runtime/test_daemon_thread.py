"""`in_daemon_thread`: long work the process must not wait for at exit, awaited like to_thread."""

from __future__ import annotations

import asyncio
import threading

import pytest

from sidecar.lifecycle import in_daemon_thread


async def test_the_result_and_the_thread() -> None:
    seen: list[threading.Thread] = []

    def work(a: int, b: int) -> int:
        seen.append(threading.current_thread())
        return a + b

    assert await in_daemon_thread(work, 2, 3, name="adder") == 5
    (thread,) = seen
    assert thread.daemon and thread.name == "adder" and thread is not threading.main_thread()


async def test_an_exception_reaches_the_awaiting_task() -> None:
    def broken() -> None:
        raise FileNotFoundError("no model here")

    with pytest.raises(FileNotFoundError, match="no model here"):
        await in_daemon_thread(broken)


async def test_cancelling_the_wait_leaves_the_work_to_finish_unobserved() -> None:
    loop = asyncio.get_running_loop()
    errors: list[dict[str, object]] = []
    loop.set_exception_handler(lambda _loop, context: errors.append(context))
    gate = threading.Event()

    task = asyncio.create_task(in_daemon_thread(gate.wait, 30, name="slow-work"))
    await asyncio.sleep(0)  # let the task start its thread
    (worker,) = [t for t in threading.enumerate() if t.name == "slow-work"]
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    gate.set()
    await asyncio.to_thread(worker.join, 30)  # it has handed its late result to the loop
    await asyncio.sleep(0)  # the loop runs that hand-over now
    assert not worker.is_alive()
    assert errors == []  # dropped quietly: no InvalidStateError on the cancelled future
    loop.set_exception_handler(None)
