"""Ollama's scheduler and the GPU's VRAM books, as a pure, clock-injected state machine.

Both the HTTP fake (`tests.fake_ollama.server`) and the simulator (`bench/gpu_sim.py`) drive this
one module, so the two tell the same story. It follows Ollama's server/sched.go (our reading of
§8.9 "for the simulator and the fake"):

- **Fast path** (§8.1): a request for a loaded runner with the same runner options attaches at
  once (`refcount` + 1, expiry timer stopped, session replaced when the request carries
  keep_alive), even while another model waits for room, and even when that runner was chosen as
  an eviction victim (a keep_alive then resets its session from 0, §8.3).
- **One FIFO load queue** served one request at a time (§8.2): the head stays at the head until it
  has a runner. Others wait behind it, whatever model they are for.
- **Fit** (§8.2 step 3): with nothing loaded the model loads alone, with no preflight, and takes
  what the card physically has: a model larger than the free VRAM spills to the CPU
  (`vram_mib < size_mib`, so `/api/ps` shows `size_vram < size`). With runners loaded it loads
  beside them only if its size is at most `fit_share` (0.8) of the free VRAM *Ollama sees*;
  otherwise one victim is evicted per round and the test runs again.
- **What Ollama sees** (§8.4): free = total − base − Σ runner VRAM − the external VRAM (torch,
  other processes) as it was when the last runner loaded, or live when no runner is loaded. VRAM
  that torch takes after a runner loaded is unseen: a load can then pass the preflight and find
  less room on the card. The newcomer spills to the CPU and the books record an `overcommit`.
- **Eviction order** (§8.3): loaded runners sorted by configured session (forever last), then by
  name; the first idle one goes, else the first of the list and the queue waits for it to go idle
  (no preemption, no timeout). A victim's session is forced to 0.
- **keep_alive** (§2, §8.5): a fresh load takes the request's keep_alive or the default (5 min);
  the timer starts when the last in-flight request ends (`expires_at = end + session`); 0 unloads
  as soon as the runner is idle; `inf` never expires (but is still evictable, sorted last).
- **Loads and unloads take time** (§8.7): a load takes `load_fixed_s + size / load_rate_mib_s`
  (its VRAM is held from the start); an unloaded runner leaves `/api/ps` at once but its VRAM is
  released `unload_s` later, and the next load waits for that (`waitForVRAMRecovery`).
- `max_loaded` runners at most (`OLLAMA_MAX_LOADED_MODELS`, 3 with one GPU): at the cap one is
  evicted whatever the memory says.

Nothing here sleeps or reads a clock: every call takes `now`, and `next_time()` says when the next
timed event (a load done, VRAM released, a keep_alive expiry) falls, so a driver can sleep (the HTTP
fake) or jump (the simulator) to it. `total_mib=None` keeps no memory books at all: every model
fits and no runner is evicted for memory (the fake's behaviour before it kept books).
"""

from __future__ import annotations

import itertools
import math
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Literal

DEFAULT_SESSION_S = 300.0
FIT_SHARE = 0.8
MAX_LOADED = 3

RunnerState = Literal["loading", "loaded", "unloading"]
TicketState = Literal["pending", "attached", "done", "cancelled", "failed"]


@dataclass
class Runner:
    key: str
    size_mib: int
    vram_mib: int  # on the GPU (size_mib when wholly in VRAM)
    session_s: float
    options: tuple[tuple[str, object], ...]
    state: RunnerState = "loading"
    started_at: float = 0.0  # load start
    ready_at: float = 0.0  # load done (state becomes "loaded")
    release_at: float = 0.0  # when "unloading": VRAM free again
    refcount: int = 0
    idle_since: float | None = None  # None: not idle since its load
    shown_expiry: float | None = None  # what /api/ps shows while busy
    evicting: bool = False  # chosen as a victim: unloads when idle
    served: bool = False  # went idle after a request at least once
    seq: int = 0

    @property
    def idle(self) -> bool:
        return self.refcount == 0

    @property
    def expires_at(self) -> float | None:
        """When an idle runner's keep_alive runs out (None: busy, or forever)."""
        if self.refcount or self.idle_since is None or math.isinf(self.session_s):
            return None
        return self.idle_since + max(self.session_s, 0.0)

    def expiry_shown(self, now: float) -> float:
        """`expires_at` as /api/ps shows it (§8.8): idle, the real expiry; busy, the value from
        before it got busy, or now + session when it was never idle since its load."""
        span = FOREVER_SPAN_S if math.isinf(self.session_s) else self.session_s
        if self.refcount == 0 and self.idle_since is not None:
            return self.idle_since + span
        if self.shown_expiry is not None:
            return self.shown_expiry
        return now + span


# Go's time.Add saturates: "forever" shows up about 292 years ahead.
FOREVER_SPAN_S = 292 * 365.25 * 86400


@dataclass
class Ticket:
    """One chat/generate request (an empty one is a load call)."""

    id: int
    key: str
    keep_alive_s: float | None
    options: tuple[tuple[str, object], ...]
    arrived: float
    state: TicketState = "pending"
    attached_at: float | None = None
    finished_at: float | None = None
    # the model had to be loaded (or reloaded) before this request could attach
    cold: bool = False
    error: str | None = None
    runner: Runner | None = None

    @property
    def queued_s(self) -> float:
        """Time from arrival to attach (a load, and waits for room or for busy victims)."""
        return 0.0 if self.attached_at is None else self.attached_at - self.arrived


@dataclass(frozen=True)
class Event:
    """One line of the books: `kind` is load_start, loaded, unload, released, evict, overcommit,
    external, cancel."""

    at: float
    kind: str
    model: str
    detail: str = ""
    vram_mib: int = 0


@dataclass
class Scheduler:
    """Ollama's scheduler over one GPU. Not thread-safe: the fake calls it under its lock."""

    total_mib: int | None = None  # None: no memory books (everything fits)
    base_mib: int = 0  # driver/context memory that is always in use
    load_fixed_s: float = 0.0
    load_rate_mib_s: float | None = None  # None: the size adds no load time
    unload_s: float = 0.0
    fit_share: float = FIT_SHARE
    max_loaded: int | None = MAX_LOADED  # None: no cap
    default_session_s: float = DEFAULT_SESSION_S
    sizes: dict[str, int] = field(default_factory=dict)  # model key → MiB (estimate = size)
    on_change: Callable[[], None] | None = None  # called whenever the books change

    runners: dict[str, Runner] = field(default_factory=dict)  # loading or loaded, by model key
    unloading: list[Runner] = field(default_factory=list)  # VRAM not yet released
    pending: deque[Ticket] = field(default_factory=deque)
    external: dict[str, int] = field(default_factory=dict)  # owner → MiB (torch, others)
    external_seen: int = 0  # what Ollama believes the others use (§8.4)
    events: list[Event] = field(default_factory=list)
    load_count: int = 0
    reload_count: int = 0
    overcommits: int = 0
    now: float = 0.0
    _ids: itertools.count = field(default_factory=itertools.count)
    _seq: itertools.count = field(default_factory=itertools.count)
    _victim: Runner | None = None  # the runner the head of the queue waits for

    # --- set-up ----------------------------------------------------------------------------------

    def set_size(self, key: str, size_mib: int) -> None:
        self.sizes[key] = max(int(size_mib), 0)

    def load_seconds(self, size_mib: int) -> float:
        size_part = 0.0 if not self.load_rate_mib_s else size_mib / self.load_rate_mib_s
        return self.load_fixed_s + size_part

    # --- the GPU ---------------------------------------------------------------------------------

    @property
    def runners_mib(self) -> int:
        return sum(r.vram_mib for r in self.runners.values()) + sum(
            r.vram_mib for r in self.unloading
        )

    @property
    def used_mib(self) -> int:
        """Physically in use: base + every runner (loading, loaded, releasing) + external."""
        return self.base_mib + self.runners_mib + sum(self.external.values())

    @property
    def free_mib(self) -> int:
        if self.total_mib is None:
            return 0
        return self.total_mib - self.used_mib

    def seen_free_mib(self) -> float:
        """The free VRAM Ollama's preflight works with (§8.4)."""
        if self.total_mib is None:
            return math.inf
        return self.total_mib - self.base_mib - self.runners_mib - self.external_seen

    def set_external(self, now: float, owner: str, mib: int) -> None:
        """Another process (torch) now holds `mib` MiB; Ollama sees it only when no runner is
        loaded, or at the next load."""
        self.advance(now)
        before = self.external.get(owner, 0)
        if mib <= 0:
            self.external.pop(owner, None)
        else:
            self.external[owner] = int(mib)
        if mib != before:
            self._log(now, "external", owner, f"{before}→{max(mib, 0)} MiB", max(mib, 0))
            if self.total_mib is not None and mib > before and self.used_mib > self.total_mib:
                self.overcommits += 1
                self._log(now, "overcommit", owner, f"used {self.used_mib} > {self.total_mib}")
            if not self.runners:
                self.external_seen = sum(self.external.values())
            self._changed()
        self._process(now)

    # --- requests --------------------------------------------------------------------------------

    def submit(
        self,
        now: float,
        key: str,
        keep_alive_s: float | None,
        options: Iterable[tuple[str, object]] = (),
    ) -> Ticket:
        """A chat/generate request (or a load call) for model `key` arrives."""
        self.advance(now)
        ticket = Ticket(next(self._ids), key, keep_alive_s, tuple(sorted(options)), now)
        runner = self.runners.get(key)
        if runner is not None and runner.state == "loaded" and runner.options == ticket.options:
            self._attach(now, ticket, runner)
        else:
            self.pending.append(ticket)
            self._process(now)
        return ticket

    def finish(self, now: float, ticket: Ticket) -> None:
        """The request's HTTP context ended: answered, failed, or the client went away."""
        self.advance(now)
        if ticket.state == "pending":
            self.cancel(now, ticket)
            return
        if ticket.state != "attached" or ticket.runner is None:
            return
        ticket.state = "done"
        ticket.finished_at = now
        runner = ticket.runner
        runner.refcount -= 1
        if runner.refcount == 0:
            runner.idle_since = now
            runner.shown_expiry = None
            runner.served = True
            if runner.session_s <= 0 or runner.evicting:
                self._unload(now, runner, "evicted" if runner.evicting else "keep_alive 0")
        self._changed()
        self._process(now)

    def cancel(self, now: float, ticket: Ticket) -> None:
        """The client of a queued request went away: it is skipped (a load for it is aborted)."""
        if ticket.state != "pending":
            return
        ticket.state = "cancelled"
        ticket.finished_at = now
        self._log(now, "cancel", ticket.key)
        head = self.pending[0] if self.pending else None
        if head is ticket:
            runner = self.runners.get(ticket.key)
            if runner is not None and runner.state == "loading":
                # leaving during the load aborts it (§8.3): the runner goes, its VRAM is freed
                del self.runners[ticket.key]
                self._log(now, "unload", ticket.key, "load aborted", runner.vram_mib)
                self._changed()
        self._process(now)

    def unload_call(self, now: float, key: str) -> None:
        """`keep_alive: 0` with no input (`expireRunner`): an idle runner unloads now, a busy one
        when its requests end."""
        self.advance(now)
        runner = self.runners.get(key)
        if runner is not None and runner.state == "loaded":
            runner.session_s = 0.0
            if runner.idle:
                self._unload(now, runner, "unload call")
            self._changed()
        self._process(now)

    # --- time ------------------------------------------------------------------------------------

    def next_time(self) -> float | None:
        """When the next timed event falls (None: nothing will happen by itself)."""
        times = [r.ready_at for r in self.runners.values() if r.state == "loading"]
        times += [r.release_at for r in self.unloading]
        times += [
            t
            for r in self.runners.values()
            if r.state == "loaded" and (t := r.expires_at) is not None
        ]
        return min(times) if times else None

    def advance(self, now: float) -> None:
        """Play every timed event up to `now`, in order, each at its own time."""
        while True:
            at = self.next_time()
            if at is None or at > now:
                break
            self._tick(max(at, self.now))
        self.now = max(self.now, now)
        self._process(now)

    def _tick(self, at: float) -> None:
        self.now = at
        for runner in list(self.unloading):
            if runner.release_at <= at:
                self.unloading.remove(runner)
                self._log(at, "released", runner.key, "", runner.vram_mib)
                if not self.runners:
                    self.external_seen = sum(self.external.values())
                self._changed()
        for runner in list(self.runners.values()):
            if runner.state == "loading" and runner.ready_at <= at:
                runner.state = "loaded"
                runner.idle_since = at  # until its request attaches (just below)
                self.external_seen = sum(self.external.values())  # its figure at load time
                self._log(at, "loaded", runner.key, "", runner.vram_mib)
                self._changed()
            elif runner.state == "loaded":
                expiry = runner.expires_at
                if expiry is not None and expiry <= at:
                    self._unload(at, runner, "expired")
        self._process(at)

    # --- the queue -------------------------------------------------------------------------------

    def _process(self, now: float) -> None:
        while self.pending:
            head = self.pending[0]
            if head.state != "pending":
                self.pending.popleft()
                continue
            runner = self.runners.get(head.key)
            if runner is not None and runner.state == "loading":
                return  # its load is under way
            if runner is not None and runner.state == "loaded":
                if runner.options == head.options:
                    self.pending.popleft()
                    self._attach(now, head, runner)
                    continue
                if not runner.idle:
                    return  # a reload waits for the busy runner
                self.reload_count += 1
                self._unload(now, runner, "reload")
                continue
            if self._victim is not None:
                if self._victim in self.unloading or self._victim.key in self.runners:
                    return  # waiting for the victim to go idle and release its VRAM
                self._victim = None
            if self.unloading:
                return  # waitForVRAMRecovery: the next load starts once memory came back
            if not self._make_room(now, head):
                continue  # a victim was picked: wait for it, or test again once it is gone
            self._start_load(now, head)
            return

    def _make_room(self, now: float, head: Ticket) -> bool:
        """True when `head`'s model may start loading now; else a victim was picked."""
        loaded = [r for r in self.runners.values() if r.state == "loaded"]
        if not loaded:
            return True  # alone: no preflight (§8.2 step 3)
        at_cap = self.max_loaded is not None and len(self.runners) >= self.max_loaded
        size = self.sizes.get(head.key, 0)
        if not at_cap and size <= self.fit_share * self.seen_free_mib():
            return True
        victim = self._pick_victim(loaded)
        self._log(now, "evict", victim.key, f"for {head.key}", victim.vram_mib)
        victim.session_s = 0.0
        victim.evicting = True
        self._victim = victim
        if victim.idle:
            self._unload(now, victim, "evicted")
        self._changed()
        return False

    @staticmethod
    def _pick_victim(loaded: list[Runner]) -> Runner:
        """§8.3: by configured session (forever last), then name; first idle, else the first."""
        order = sorted(loaded, key=lambda r: (math.isinf(r.session_s), r.session_s, r.key))
        return next((r for r in order if r.idle), order[0])

    def _start_load(self, now: float, head: Ticket) -> None:
        size = self.sizes.get(head.key, 0)
        if self.total_mib is None:
            vram = size
        else:
            physical = max(self.total_mib - self.used_mib, 0)
            vram = min(size, physical)
            if vram < size and any(r.state == "loaded" for r in self.runners.values()):
                # the preflight passed on a stale figure: the card has less than Ollama thought
                self.overcommits += 1
                self._log(now, "overcommit", head.key, f"needs {size}, {physical} MiB free")
        session = self.default_session_s if head.keep_alive_s is None else head.keep_alive_s
        runner = Runner(
            head.key,
            size,
            vram,
            session,
            head.options,
            "loading",
            started_at=now,
            ready_at=now + self.load_seconds(size),
            seq=next(self._seq),
        )
        self.runners[head.key] = runner
        self.load_count += 1
        head.cold = True
        self._log(now, "load_start", head.key, f"{vram} of {size} MiB on the GPU", vram)
        self._changed()
        if runner.ready_at <= now:
            runner.state = "loaded"
            runner.idle_since = now
            self.external_seen = sum(self.external.values())
            self._log(now, "loaded", runner.key, "", runner.vram_mib)
            self._process(now)

    def _attach(self, now: float, ticket: Ticket, runner: Runner) -> None:
        if runner.refcount == 0:
            runner.shown_expiry = runner.expiry_shown(now) if runner.served else None
        runner.refcount += 1
        if ticket.keep_alive_s is not None:
            runner.session_s = ticket.keep_alive_s
            runner.evicting = False  # a keep_alive resets a victim's session from 0 (§8.3)
        runner.idle_since = None
        ticket.state = "attached"
        ticket.attached_at = now
        ticket.runner = runner
        self._changed()

    def _unload(self, now: float, runner: Runner, reason: str) -> None:
        if self.runners.get(runner.key) is runner:
            del self.runners[runner.key]
        runner.state = "unloading"
        runner.release_at = now + self.unload_s
        self.unloading.append(runner)
        self._log(now, "unload", runner.key, reason, runner.vram_mib)
        if self.unload_s <= 0:
            self.unloading.remove(runner)
            self._log(now, "released", runner.key, "", runner.vram_mib)
            if not self.runners:
                self.external_seen = sum(self.external.values())
        self._changed()

    # --- observation -----------------------------------------------------------------------------

    def loaded(self) -> list[Runner]:
        """What /api/ps lists: loaded runners (a loading one is not listed, §8.8)."""
        return [r for r in self.runners.values() if r.state == "loaded"]

    def is_loaded(self, key: str) -> bool:
        runner = self.runners.get(key)
        return runner is not None and runner.state == "loaded"

    def _log(self, at: float, kind: str, model: str, detail: str = "", vram: int = 0) -> None:
        self.events.append(Event(at, kind, model, detail, vram))

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change()

    def check(self) -> list[str]:
        """Book-keeping invariants; an empty list when the books balance."""
        problems = []
        if any(r.vram_mib < 0 or r.vram_mib > r.size_mib for r in self.runners.values()):
            problems.append("a runner holds negative VRAM or more than its size")
        if any(r.refcount < 0 for r in self.runners.values()):
            problems.append("a negative refcount")
        if self.total_mib is not None and self.used_mib > self.total_mib:
            problems.append(f"used {self.used_mib} MiB > total {self.total_mib} MiB")
        loads = sum(1 for e in self.events if e.kind == "load_start")
        ends = sum(1 for e in self.events if e.kind == "unload")
        if loads != ends + len(self.runners):
            problems.append(f"{loads} loads, {ends} unloads, {len(self.runners)} resident")
        return problems
