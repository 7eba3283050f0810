"""MicroBatcher on its own: budgets, scatter, overload, failures, cancellation, shutdown."""

from __future__ import annotations

import asyncio
import threading

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sidecar.errors import Overloaded
from sidecar.observability import Metrics
from sidecar.retrieval.batcher import (
    BatcherClosed,
    BatchOutput,
    Completed,
    MicroBatcher,
    split_by_budget,
)
from tests.retrieval.conftest import wait_for_queue


@given(st.lists(st.integers(1, 5000), min_size=0, max_size=200), st.integers(1, 20000))
def test_split_by_budget_covers_everything_within_budget(lengths: list[int], budget: int) -> None:
    lengths = sorted(lengths, reverse=True)
    spans = split_by_budget(lengths, budget)
    assert [i for span in spans for i in span] == list(range(len(lengths)))
    for span in spans:
        cost = len(span) * max(lengths[i] for i in span)
        assert cost <= budget or len(span) == 1
    # Greedy: a batch could not have taken the next item as well.
    for span in spans[:-1]:
        assert (len(span) + 1) * lengths[span.start] > budget


class GatedRunner:
    """Doubles numbers; blocks each batch until the test opens the gate."""

    def __init__(self, fail_on: int | None = None) -> None:
        self.gate = threading.Event()
        self.batches: list[list[int]] = []
        self.fail_on = fail_on

    def __call__(self, payloads: list[int]) -> BatchOutput[int]:
        self.gate.wait(30)
        self.batches.append(list(payloads))
        if self.fail_on is not None and self.fail_on in payloads:
            raise ValueError("boom")
        return BatchOutput([p * 2 for p in payloads], "cpu", "test")


def make(
    runner: GatedRunner, kind: str = "embed", metrics: Metrics | None = None, **kwargs: int
) -> MicroBatcher[int, int]:
    options = {"max_batch_tokens": 1000, "max_queued_items": 100}
    options.update(kwargs)
    batcher: MicroBatcher[int, int] = MicroBatcher(
        kind, runner, metrics=metrics or Metrics(), **options
    )
    batcher.start()
    return batcher


def as_is(done: Completed[int]) -> Completed[int]:
    """A request's `finish` that keeps the outputs as they are."""
    return done


async def wait_for(batcher: MicroBatcher[int, int], predicate: object) -> None:
    assert await asyncio.to_thread(wait_for_queue, batcher, predicate)  # type: ignore[arg-type]


async def test_requests_are_merged_and_scattered_in_order() -> None:
    runner = GatedRunner()
    batcher = make(runner, max_batch_tokens=30 * 50)  # the whole second round fits one batch
    try:
        first = asyncio.create_task(batcher.submit([1], [10], as_is))
        await wait_for(batcher, lambda b: b.running == 1)
        others = [
            asyncio.create_task(batcher.submit([n, n + 100, n + 200], [n, 5, 50], as_is))
            for n in range(2, 12)
        ]
        await wait_for(batcher, lambda b: b.depth == 30)
        runner.gate.set()
        assert (await first).outputs == [2]
        for n, task in zip(range(2, 12), others, strict=True):
            done = await task
            assert done.outputs == [2 * n, 2 * (n + 100), 2 * (n + 200)]
            assert (done.device, done.reason) == ("cpu", "test")
        assert len(runner.batches) == 2  # the lone first request, then one merged round
        # Longest first inside the merged batch: the ten 50-token items lead, in arrival order.
        assert runner.batches[1][:10] == list(range(202, 212))
    finally:
        batcher.close()


async def test_token_budget_splits_a_round() -> None:
    runner = GatedRunner()
    runner.gate.set()
    batcher = make(runner, max_batch_tokens=100)
    try:
        done = await batcher.submit(list(range(10)), [50] * 10, as_is)
        assert done.outputs == [2 * n for n in range(10)]
        assert sorted(len(b) for b in runner.batches) == [2, 2, 2, 2, 2]
    finally:
        batcher.close()


async def test_full_queue_raises_overloaded() -> None:
    runner = GatedRunner()
    metrics = Metrics()
    batcher = make(runner, "rerank", metrics, max_queued_items=4)
    try:
        running = asyncio.create_task(batcher.submit([1], [1], as_is))
        await wait_for(batcher, lambda b: b.running == 1)
        queued = asyncio.create_task(batcher.submit([1, 2, 3, 4], [1] * 4, as_is))
        await wait_for(batcher, lambda b: b.depth == 4)
        with pytest.raises(Overloaded) as refused:
            await batcher.submit([5], [1], as_is)
        assert refused.value.retry_after_s >= 1
        assert (
            metrics.registry.get_sample_value(
                "sidecar_retrieval_rejected_total", {"kind": "rerank"}
            )
            == 1.0
        )
        runner.gate.set()
        await running
        assert (await queued).outputs == [2, 4, 6, 8]
        assert (await batcher.submit([5], [1], as_is)).outputs == [10]  # room again
    finally:
        batcher.close()


async def test_a_failing_batch_fails_its_requests_only() -> None:
    runner = GatedRunner(fail_on=13)
    batcher = make(runner, max_batch_tokens=10)
    try:
        blocker = asyncio.create_task(batcher.submit([1], [1], as_is))
        await wait_for(batcher, lambda b: b.running == 1)
        bad = asyncio.create_task(batcher.submit([13], [10], as_is))  # a batch of its own (budget)
        good = asyncio.create_task(batcher.submit([7], [10], as_is))
        await wait_for(batcher, lambda b: b.depth == 2)
        runner.gate.set()
        await blocker
        with pytest.raises(ValueError, match="boom"):
            await bad
        assert (await good).outputs == [14]
    finally:
        batcher.close()


async def test_cancelled_request_is_skipped() -> None:
    runner = GatedRunner()
    batcher = make(runner)
    try:
        blocker = asyncio.create_task(batcher.submit([1], [1], as_is))
        await wait_for(batcher, lambda b: b.running == 1)
        leaving = asyncio.create_task(batcher.submit([99], [1], as_is))
        staying = asyncio.create_task(batcher.submit([3], [1], as_is))
        await wait_for(batcher, lambda b: b.depth == 2)
        leaving.cancel()
        with pytest.raises(asyncio.CancelledError):
            await leaving
        runner.gate.set()
        await blocker
        assert (await staying).outputs == [6]
        assert all(99 not in batch for batch in runner.batches)
    finally:
        batcher.close()


async def test_close_fails_queued_requests() -> None:
    runner = GatedRunner()
    batcher = make(runner)
    running = asyncio.create_task(batcher.submit([1], [1], as_is))
    await wait_for(batcher, lambda b: b.running == 1)
    queued = asyncio.create_task(batcher.submit([2], [1], as_is))
    await wait_for(batcher, lambda b: b.depth == 1)
    closing = asyncio.create_task(asyncio.to_thread(batcher.close))
    with pytest.raises(BatcherClosed):
        await queued
    runner.gate.set()
    await closing
    assert (await running).outputs == [2]  # the batch already running still completes
    with pytest.raises(BatcherClosed):
        await batcher.submit([3], [1], as_is)


async def test_one_batch_answers_requests_from_several_event_loops() -> None:
    """Finished requests are handed back per event loop: callers on another loop (another
    thread) sharing a batch with this loop's callers get their own outputs."""
    runner = GatedRunner()
    batcher = make(runner)
    try:
        blocker = asyncio.create_task(batcher.submit([1], [1], as_is))
        await wait_for(batcher, lambda b: b.running == 1)
        here = [asyncio.create_task(batcher.submit([n], [1], as_is)) for n in (2, 3)]

        async def elsewhere() -> list[list[int]]:
            answers = [batcher.submit([n], [1], as_is) for n in (4, 5)]
            return [done.outputs for done in await asyncio.gather(*answers)]

        other_loop = asyncio.create_task(asyncio.to_thread(asyncio.run, elsewhere()))
        await wait_for(batcher, lambda b: b.depth == 4)
        runner.gate.set()
        await blocker
        assert [(await task).outputs for task in here] == [[4], [6]]
        assert await asyncio.wait_for(other_loop, 30) == [[8], [10]]
        assert sorted(runner.batches[1]) == [2, 3, 4, 5]  # all four shared one batch
    finally:
        batcher.close()


async def test_items_being_prepared_hold_their_places_and_the_refusal_comes_first() -> None:
    runner = GatedRunner()
    metrics = Metrics()
    batcher = make(runner, "embed", metrics, max_queued_items=4)
    try:
        with batcher.admission(3):
            assert (batcher.preparing, batcher.depth) == (3, 0)
            assert batcher.is_overloaded(2) and not batcher.is_overloaded(1)
            with pytest.raises(Overloaded) as refused, batcher.admission(2):
                pytest.fail("admitted past a full queue")
            assert refused.value.status == 429 and refused.value.code == "overloaded"
            assert refused.value.headers["Retry-After"] == str(refused.value.retry_after_s)
            with pytest.raises(Overloaded):  # submitting counts the prepared places too
                await batcher.submit([9, 9], [1, 1], as_is)
        assert batcher.preparing == 0  # released on the way out, even after a refusal
        rejected = metrics.registry.get_sample_value(
            "sidecar_retrieval_rejected_total", {"kind": "embed"}
        )
        assert rejected == 2.0
        runner.gate.set()
        assert (await batcher.submit([1, 2, 3, 4], [1] * 4, as_is)).outputs == [2, 4, 6, 8]
    finally:
        batcher.close()
    with pytest.raises(BatcherClosed), batcher.admission(1):
        pytest.fail("admitted after close")


async def test_finish_runs_in_the_worker_and_a_failing_one_fails_only_its_request() -> None:
    runner = GatedRunner()
    batcher = make(runner)
    threads: list[str] = []

    def described(done: Completed[int]) -> str:
        threads.append(threading.current_thread().name)
        return f"{done.outputs} on {done.device}"

    def broken(done: Completed[int]) -> str:
        raise ValueError("cannot build this reply")

    try:
        blocker = asyncio.create_task(batcher.submit([1], [1], described))
        await wait_for(batcher, lambda b: b.running == 1)
        bad = asyncio.create_task(batcher.submit([2], [1], broken))
        good = asyncio.create_task(batcher.submit([3, 4], [1, 1], described))
        await wait_for(batcher, lambda b: b.depth == 3)
        runner.gate.set()
        assert await blocker == "[2] on cpu"
        with pytest.raises(ValueError, match="cannot build"):
            await bad
        assert await good == "[6, 8] on cpu"
        assert threads == ["batcher-embed", "batcher-embed"]
        assert len(runner.batches) == 2  # the failing finish did not cost its batch mates
    finally:
        batcher.close()
