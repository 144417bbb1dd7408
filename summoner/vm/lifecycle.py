"""One on-demand service's lifecycle: its state, and the named transitions
between states, each written once.

States::

    stopped ──begin_boot──▶ booting ──became_ready──▶ ready ──begin_stop──▶ stopping ──stopped_as──▶ stopped
       ▲                      │  ▲                      │  ▲                                └──────▶ suspended
       └─(back-off)── failed ◀┘  └──── begin_resume ────┼──┼────────────────────────────────────────────┘
                                                        │  └── resumed_outside ── suspended (paused_outside)
                                         vanished ◀─────┘

Every query that finds a service not ready becomes a *waiter* (``wait``) on
the one boot or resume in progress: N queries, retransmissions included,
cause one boot and get N answers, released by the transition that ends it
(``became_ready`` → True, ``failed``/``refused``/``retire`` → False: SERVFAIL).

The work that moves a service along (booting, resuming, adopting) is one
Deferred at a time, ``task``; ``retire`` cancels it, so a service removed
from the zone stops its boot at whatever it awaits.  Nothing here talks to
libvirt: ``summoner.vm.boot``, ``stop``, ``events`` and ``reconcile`` do, and
call these transitions.

Tests: tests/vm/test_lifecycle.py
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field

from twisted.internet import defer

from summoner.vm import metrics
from summoner.vm.hosts import OnDemandHost
from summoner.vm.spec import VMSpec


class State(enum.Enum):
    STOPPED = "stopped"
    BOOTING = "booting"
    READY = "ready"
    SUSPENDED = "suspended"
    STOPPING = "stopping"
    FAILED = "failed"


# States in which a VM exists and holds host memory.
_HOLDING = (State.READY, State.SUSPENDED, State.STOPPING)

# Called after every state change with (service, previous state).
StateObserver = Callable[["Service", State], None]


class TransitionError(RuntimeError):
    """A transition from a state it does not start from: a bug."""


@dataclass(eq=False)
class Service:
    host: OnDemandHost
    spec: VMSpec
    clock: Callable[[], float]
    observer: StateObserver = lambda service, previous: None
    state: State = State.STOPPED
    boot_count: int = 0
    failures: int = 0
    retry_at: float = 0.0
    last_error: str | None = None
    started_at: float | None = None     # when it became ready (uptime)
    last_demand: float = 0.0            # last DNS query (hit)
    last_activity: float = 0.0          # last guest traffic seen
    reserved: bool = False              # booting and counted against capacity
    domain_uuid: str | None = None      # the running instance (transient domains get a new one per boot)
    standby: bool = False               # a paused, never-run domain of this spec is waiting
    retired: bool = False               # removed from the zone, or replaced by a changed host
    saves_pending: int = 0              # summoner's own saves whose "stopped (saved)" event is still to come
    task: defer.Deferred[None] | None = None  # the boot, resume or adoption in flight
    waiters: list[defer.Deferred[bool]] = field(default_factory=list)
    first_wait: float | None = None     # first query of the current wait (latency metric)

    @property
    def name(self) -> str:
        return self.host.name

    # -- demand ------------------------------------------------------------------

    def touch(self) -> None:
        """Demand seen (a DNS query)."""
        self.last_demand = self.clock()

    def hit(self) -> bool:
        """Demand seen through a cached answer; whether that answer still
        holds (the VM is ready)."""
        self.touch()
        return self.state is State.READY

    def saw_traffic(self) -> None:
        self.last_activity = self.clock()

    def last_used(self) -> float:
        return max(self.last_demand, self.last_activity, self.started_at or 0.0)

    def holds_resources(self) -> bool:
        return self.state in _HOLDING or (self.state is State.BOOTING and self.reserved)

    def is_up(self) -> bool:
        return self.state in _HOLDING and self.started_at is not None

    def in_backoff(self, now: float) -> bool:
        return self.state in (State.STOPPED, State.FAILED) and now < self.retry_at

    # -- waiters -----------------------------------------------------------------

    def wait(self) -> defer.Deferred[bool]:
        """A Deferred firing True when the service is ready, False when the
        boot or resume it waits on ends without (SERVFAIL)."""
        d: defer.Deferred[bool] = defer.Deferred()
        self.waiters.append(d)
        metrics.WAITERS.inc()
        if self.first_wait is None:
            self.first_wait = self.clock()
        return d

    def waited(self) -> float | None:
        """How long the first query of the current wait has waited (None:
        nobody waits)."""
        return None if self.first_wait is None else self.clock() - self.first_wait

    def _release(self, ok: bool) -> None:
        """Answer every waiter."""
        waiters, self.waiters = self.waiters, []
        self.first_wait = None
        metrics.WAITERS.dec(len(waiters))
        for d in waiters:
            d.callback(ok)

    # -- transitions -------------------------------------------------------------

    def _enter(self, state: State) -> None:
        previous, self.state = self.state, state
        self.observer(self, previous)

    def _require(self, transition: str, *states: State) -> None:
        if self.state not in states:
            raise TransitionError(f"{self.name}: {transition} from {self.state.value}")

    def begin_boot(self) -> None:
        self._require("begin_boot", State.STOPPED, State.FAILED)
        self.reserved = False
        self._enter(State.BOOTING)

    def begin_resume(self) -> None:
        """A suspended VM resumes; it still exists, so it keeps its capacity."""
        self._require("begin_resume", State.SUSPENDED)
        self.reserved = True
        self._enter(State.BOOTING)

    def begin_adoption(self, uuid: str) -> None:
        """A running VM of ours found by reconciliation, probed before use."""
        self._require("begin_adoption", State.STOPPED, State.FAILED)
        self.domain_uuid = uuid
        self.reserved = True
        self._enter(State.BOOTING)

    def reserve(self) -> None:
        """Capacity granted: the boot now counts against the limits."""
        self.reserved = True

    def became_ready(self, counted_boot: bool = True) -> None:
        """The probe succeeded (or the resume did); answers the waiters."""
        self._require("became_ready", State.BOOTING)
        now = self.clock()
        if counted_boot:
            self.failures = 0
            self.retry_at = 0.0
            self.last_error = None
        if self.started_at is None or counted_boot:
            self.started_at = now
        self.last_demand = max(self.last_demand, now)
        self.last_activity = now
        self.reserved = False
        self._enter(State.READY)
        self._release(True)

    def failed(self, why: str, retry_after: float) -> None:
        """The boot failed: the waiters get SERVFAIL, the next boot waits out
        ``retry_after`` seconds (the back-off)."""
        self.failures += 1
        self.retry_at = self.clock() + retry_after
        self.last_error = why
        self.reserved = False
        self._enter(State.FAILED)
        self._release(False)

    def refused(self, why: str) -> None:
        """No boot now, through no fault of the image (capacity, libvirt
        away): no back-off."""
        self.last_error = why
        self.reserved = False
        self._enter(State.STOPPED)
        self._release(False)

    def gave_up(self) -> None:
        """An adoption or resume whose VM is gone: stopped, and a boot may follow."""
        self.reserved = False
        self.started_at = None
        self._enter(State.STOPPED)

    def vanished(self) -> None:
        """The VM went away outside summoner (virsh destroy, a crash, lost
        while libvirt was unreachable); the next query boots it again."""
        self._require("vanished", State.READY, State.SUSPENDED)
        metrics.REAPS.labels("external").inc()
        self.started_at = None
        self._enter(State.STOPPED)

    def adopted_paused(self, uuid: str) -> None:
        self._require("adopted_paused", State.STOPPED, State.FAILED)
        self.domain_uuid = uuid
        self.started_at = self.started_at or self.clock()
        self._enter(State.SUSPENDED)

    def paused_outside(self) -> None:
        self._require("paused_outside", State.READY)
        self._enter(State.SUSPENDED)

    def resumed_outside(self) -> None:
        self._require("resumed_outside", State.SUSPENDED)
        self._enter(State.READY)

    def begin_stop(self, reason: str) -> State:
        """Stopping starts; returns the state it starts from."""
        self._require("begin_stop", State.READY, State.SUSPENDED)
        metrics.REAPS.labels(reason).inc()
        previous = self.state
        self._enter(State.STOPPING)
        return previous

    def stopped_as(self, final: State) -> None:
        """Stopping ended in ``final``: stopped, suspended, or still running
        (the stop failed)."""
        self._require("stopped_as", State.STOPPING)
        if final is State.STOPPED:
            self.started_at = None
        self._enter(final)
        if final is State.READY:
            self._release(True)  # still running: whoever queried meanwhile has it

    def _cancel_work(self) -> None:
        """The boot, resume or adoption in flight stops at what it awaits;
        whoever waited on it gets SERVFAIL."""
        task, self.task = self.task, None
        if task is not None:
            task.cancel()
        self._release(False)

    def retire(self) -> bool:
        """Removed from the zone or replaced: the work in flight is cancelled
        and the waiters get SERVFAIL.  True if a VM of it may exist."""
        self.retired = True
        had_vm = self.standby or self.state not in (State.STOPPED, State.FAILED)
        self._cancel_work()
        self.standby = False
        self.reserved = False
        self._enter(State.STOPPED)
        return had_vm

    def shut_out(self, why: str) -> None:
        """summoner stops: the work in flight is cancelled, the waiters get
        SERVFAIL; VMs keep running for the next start to adopt."""
        self._cancel_work()
        self.last_error = self.last_error or why
