"""The scheduler model both the fake Ollama and the simulator run (Ollama's server/sched.go)."""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.fake_ollama.scheduler import Scheduler

LLM, OCR = "typhoon2.5:latest", "scb10x/typhoon-ocr1.5-3b:latest"


def gpu(**kwargs) -> Scheduler:
    sched = Scheduler(total_mib=16311, base_mib=300, **kwargs)
    sched.set_size(LLM, 9000)
    sched.set_size(OCR, 3300)
    return sched


def test_load_time_is_proportional_to_size_and_vram_is_held_from_the_start():
    sched = gpu(load_fixed_s=1.0, load_rate_mib_s=1000.0)
    ticket = sched.submit(0.0, LLM, 300)
    assert ticket.state == "pending" and sched.used_mib == 9300 and sched.loaded() == []
    assert sched.next_time() == 10.0  # 1 s + 9000 MiB at 1000 MiB/s
    sched.advance(10.0)
    assert ticket.state == "attached" and ticket.cold and ticket.queued_s == 10.0
    assert [r.key for r in sched.loaded()] == [LLM]


def test_one_fifo_load_queue_for_every_model():
    sched = gpu(load_fixed_s=2.0)
    first = sched.submit(0.0, LLM, 300)
    second = sched.submit(0.5, OCR, 60)
    sched.advance(1.9)
    assert first.state == second.state == "pending"
    sched.advance(2.0)
    assert first.state == "attached" and second.state == "pending"  # its load starts now
    sched.advance(4.0)
    assert second.state == "attached" and second.queued_s == 3.5


def test_shortest_configured_keep_alive_is_evicted_first_not_the_least_recent():
    """§8.3's example: idle OCR model on 30m, idle LLM on 5m: the LLM goes first."""
    sched = Scheduler(total_mib=16000)
    for key, size in ((LLM, 7000), (OCR, 3000), ("big:latest", 9000)):
        sched.set_size(key, size)
    sched.finish(0.0, sched.submit(0.0, LLM, 300))
    sched.finish(1.0, sched.submit(1.0, OCR, 1800))
    big = sched.submit(2.0, "big:latest", 300)
    assert [e.model for e in sched.events if e.kind == "evict"] == [LLM]
    assert big.state == "attached" and {r.key for r in sched.loaded()} == {OCR, "big:latest"}


def test_a_busy_victim_is_waited_for_without_timeout():
    sched = gpu()
    sched.set_size("big:latest", 12000)
    ocr = sched.submit(0.0, OCR, 60)
    sched.finish(0.0, sched.submit(0.0, LLM, 300))
    busy = sched.submit(1.0, "big:latest", 300)  # the OCR model sorts first, but is busy
    # the idle LLM goes; still no room: the busy OCR model is the only victim left
    assert [e.model for e in sched.events if e.kind == "evict"] == [LLM, OCR]
    assert busy.state == "pending"
    sched.advance(500.0)
    assert busy.state == "pending" and sched.is_loaded(OCR)
    sched.finish(600.0, ocr)  # its page ends: it unloads at once (session forced to 0)
    assert busy.state == "attached" and busy.attached_at == 600.0
    assert not sched.is_loaded(OCR)


def test_keep_alive_runs_from_the_end_of_the_last_request():
    sched = gpu()
    ticket = sched.submit(0.0, OCR, 60)
    sched.advance(100.0)
    assert sched.is_loaded(OCR)  # busy: no timer
    sched.finish(100.0, ticket)
    sched.advance(159.9)
    assert sched.is_loaded(OCR)
    sched.advance(160.0)
    assert not sched.is_loaded(OCR)
    assert [e.detail for e in sched.events if e.kind == "unload"] == ["expired"]


def test_zero_unloads_when_idle_and_forever_never_expires_but_is_evictable():
    sched = gpu()
    sched.finish(1.0, sched.submit(0.0, OCR, 0))
    assert not sched.is_loaded(OCR)
    sched.finish(2.0, sched.submit(2.0, OCR, math.inf))
    sched.advance(1e9)
    assert sched.is_loaded(OCR)
    sched.set_size("huge:latest", 15000)
    sched.submit(1e9, "huge:latest", 300)
    assert not sched.is_loaded(OCR)


def test_a_model_alone_and_too_big_spills_to_the_cpu():
    sched = gpu()
    sched.set_size("huge:latest", 20000)
    sched.submit(0.0, "huge:latest", 300)
    (runner,) = sched.loaded()
    assert runner.vram_mib == 16311 - 300 < runner.size_mib
    assert sched.overcommits == 0  # alone, llama-server placed what fitted: no over-commit


def test_torch_taken_after_a_runner_loaded_is_unseen_and_the_card_is_over_committed():
    """§8.4: the preflight works with the free VRAM from the last load; torch came later."""
    sched = gpu()
    sched.submit(0.0, LLM, 300)  # 9000 + 300 base: 7011 free, as Ollama saw it at load time
    sched.set_external(1.0, "torch", 4000)  # the sidecar's models move up: 3011 really free
    assert sched.seen_free_mib() == 7011 and sched.free_mib == 3011
    sched.submit(2.0, OCR, 60)  # 3300 ≤ 0.8 × 7011: Ollama loads it beside the LLM
    ocr = next(r for r in sched.loaded() if r.key == OCR)
    assert sched.overcommits == 1 and ocr.vram_mib == 3011 < ocr.size_mib  # spilled
    assert sched.seen_free_mib() == 0  # the load refreshed Ollama's figure: it sees torch now


def test_a_victims_session_reset_by_a_new_request_makes_the_load_wait_out_its_timer():
    """§8.3 (derived): the victim keeps taking requests; a keep_alive resets its session."""
    sched = gpu()
    sched.set_size("big:latest", 9000)
    llm = sched.submit(0.0, LLM, 300)
    sched.set_external(0.0, "torch", 3000)
    big = sched.submit(1.0, "big:latest", 300)  # waits for the busy LLM
    again = sched.submit(2.0, LLM, 300)  # fast path, session back to 300 s
    sched.finish(3.0, llm)
    sched.finish(4.0, again)
    assert big.state == "pending"
    sched.advance(303.9)
    assert big.state == "pending"
    sched.advance(304.0)
    assert big.state == "attached"


def test_unload_releases_vram_later_and_the_next_load_waits_for_it():
    sched = gpu(unload_s=1.0)
    sched.set_size("big:latest", 12000)
    sched.finish(0.0, sched.submit(0.0, LLM, 300))
    big = sched.submit(5.0, "big:latest", 300)
    assert not sched.is_loaded(LLM) and sched.used_mib == 9300  # gone from /api/ps, not the VRAM
    assert big.state == "pending"
    sched.advance(6.0)
    assert big.state == "attached" and big.attached_at == 6.0


def test_at_most_three_runners():
    sched = Scheduler(total_mib=100_000)
    for name in "abcd":
        sched.set_size(f"{name}:latest", 100)
        sched.finish(0.0, sched.submit(0.0, f"{name}:latest", 300))
    assert len(sched.loaded()) == 3


def test_a_cancelled_head_aborts_its_load():
    sched = gpu(load_fixed_s=5.0)
    ticket = sched.submit(0.0, LLM, 300)
    sched.cancel(1.0, ticket)
    assert sched.runners == {} and sched.used_mib == 300 and sched.check() == []


def test_without_books_everything_fits():
    sched = Scheduler(total_mib=None, max_loaded=None)
    for index in range(6):
        sched.set_size(f"m{index}:latest", 50_000)
        sched.submit(0.0, f"m{index}:latest", 300)
    assert len(sched.loaded()) == 6 and not [e for e in sched.events if e.kind == "evict"]


operations = st.lists(
    st.tuples(
        st.sampled_from(["submit", "finish", "advance", "external", "unload"]),
        st.sampled_from([LLM, OCR, "big:latest"]),
        st.sampled_from([None, 0.0, 30.0, 300.0, math.inf]),
        st.floats(0, 30),
        st.integers(0, 4000),
    ),
    max_size=60,
)


@settings(max_examples=200)
@given(operations)
def test_the_books_always_balance(ops):
    sched = gpu(load_fixed_s=1.0, load_rate_mib_s=3000.0, unload_s=0.5)
    sched.set_size("big:latest", 12000)
    now = 0.0
    open_tickets = []
    for op, key, keep_alive, step, mib in ops:
        now += step
        if op == "submit":
            open_tickets.append(sched.submit(now, key, keep_alive))
        elif op == "finish" and open_tickets:
            ticket = open_tickets.pop(0)
            sched.advance(now)
            sched.finish(now, ticket)
        elif op == "advance":
            sched.advance(now)
        elif op == "external":
            sched.set_external(now, "torch", mib if sched.free_mib >= mib else 0)
        elif op == "unload":
            sched.unload_call(now, key)
        assert sched.free_mib >= 0
        assert sched.check() == []
        assert all(r.refcount >= 0 for r in sched.runners.values())
    for ticket in open_tickets:
        sched.finish(now, ticket)
    sched.advance(now + 1e6)
    assert sched.check() == []
