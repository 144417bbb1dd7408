"""``summoner serve --workers N``: N processes answer on one DNS port.

The process started as ``summoner serve`` is the *primary*: it holds
everything (zones, the on-demand stage and its one VM state machine,
Arrowhead, the metrics and admin endpoints) and answers DNS like a single
process does.  It starts N-1 *workers* (``summoner.worker``), each bound to
the same UDP and TCP ports with ``SO_REUSEPORT`` (the kernel spreads clients
over the sockets by their address and port), answering on its own what the
static zone data decides.

A worker knows nothing of VMs or Arrowhead.  The primary sends it, over the
worker's stdin, the zone set with the on-demand declarations already taken
out and which names its later stages claim (``ZoneUpdate``); every query a
worker's compiled path cannot settle (a claimed name, a query of an unusual
shape, a malformed packet) goes back to the primary as raw bytes
(``Relay``), and the primary's answer goes out from the worker's socket.
So summoning, the Arrowhead cache and the answer cache of those names stay
in one place.

Each worker reports what it counted (queries, latency, truncations,
rejections, rate limiting) once a second as increments (``Counts``), which the
primary adds to its own metrics: one ``/metrics`` view, at most a second behind.
A worker that exits is started again; a worker whose primary goes away exits.

Messages are pickled dataclasses in 32-bit length-prefixed frames
(``Int32StringReceiver``) over the child's stdin and stdout: both ends are
this program, so nothing from the network is ever unpickled.

Tests: tests/test_workers.py
"""

from __future__ import annotations

import os
import pickle
import sys
from dataclasses import dataclass, field

from prometheus_client import Counter, Gauge
from twisted.internet import defer, protocol
from twisted.internet.endpoints import ProcessEndpoint
from twisted.internet.interfaces import IReactorCore, IReactorProcess, IReactorTime
from twisted.logger import Logger
from twisted.protocols.basic import Int32StringReceiver
from twisted.python.failure import Failure

from summoner import metrics
from summoner.ratelimit import LIMITED, RateLimit
from summoner.wire import Responder
from summoner.zonefile import ZoneSet

log = Logger(namespace="summoner.workers")

# Zone sets of a few hundred thousand records pickle to tens of megabytes.
MAX_FRAME = 256 * 1024 * 1024
RESTART_DELAYS = (1.0, 2.0, 5.0, 10.0, 30.0)
REPORT_INTERVAL = 1.0
STOP_GRACE = 5.0
# Relayed queries a worker waits on at once (a boot can hold each for its whole
# timeout); beyond it more go unanswered, and their clients retry.
MAX_RELAYED = 10_000
# Counters a worker adds to on its own; the primary adds its increments to the same ones.
WORKER_COUNTERS: tuple[Counter, ...] = (metrics.REJECTED, metrics.TRUNCATED, metrics.CACHE_MISSES, LIMITED)

WORKERS = Gauge("summoner_dns_workers", "Worker processes answering DNS beside the primary "
                "(serve --workers N: N-1 when all are up).")


# -- messages ------------------------------------------------------------------

@dataclass(frozen=True)
class Listen:
    """Primary → worker, first: where and how to answer."""

    host: str
    port: int
    tcp_idle_timeout: float
    rate_limit: RateLimit | None
    log_format: str
    log_level: str


@dataclass(frozen=True)
class ZoneUpdate:
    """Primary → worker: the zone set to answer from (on-demand declarations
    taken out), the names a later stage claims, and whether a later stage may
    claim any name the zones have no data for (Arrowhead)."""

    zones: ZoneSet
    claimed: frozenset[str]
    claim_all: bool


@dataclass(frozen=True)
class Relay:
    """Worker → primary: a query the worker cannot settle."""

    id: int
    protocol: str
    data: bytes


@dataclass(frozen=True)
class Relayed:
    """Primary → worker: the answer to a ``Relay`` (None: no answer at all)."""

    id: int
    data: bytes | None


@dataclass(frozen=True)
class Ready:
    """Worker → primary: listening."""

    pid: int


@dataclass(frozen=True)
class Counts:
    """Worker → primary: what the worker counted since its last report."""

    queries: metrics.QueryCounts
    counters: dict[tuple[str, tuple[tuple[str, str], ...]], float] = field(default_factory=dict)


class Link(Int32StringReceiver):
    """One end of a primary–worker pipe: frames in and out as messages."""

    MAX_LENGTH = MAX_FRAME

    def send(self, message: object) -> None:
        self.sendString(pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL))

    def stringReceived(self, data: bytes) -> None:  # noqa: N802 (Twisted's name)
        self.received(pickle.loads(data))  # our own child or parent, never the network

    def received(self, message: object) -> None:
        raise NotImplementedError

    def lengthLimitExceeded(self, length: int) -> None:  # noqa: N802
        log.error("a frame of {length} bytes between primary and worker exceeds {limit}; closing the link",
                  length=length, limit=MAX_FRAME)
        self.transport.loseConnection()


# -- counters ------------------------------------------------------------------

def _family_names() -> dict[str, Counter]:
    return {family.name: counter for counter in WORKER_COUNTERS for family in counter.describe()}


def counter_values() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """The worker counters' current values by (family, labels)."""
    values = {}
    for counter in WORKER_COUNTERS:
        for family in counter.collect():
            for sample in family.samples:
                if sample.name.endswith("_total"):
                    values[(family.name, tuple(sorted(sample.labels.items())))] = sample.value
    return values


def add_counts(counts: Counts) -> None:
    """A worker's increments, added to this process's metrics."""
    metrics.QUERY_STATS.add(counts.queries)
    counters = _family_names()
    for (name, labels), increment in counts.counters.items():
        counter = counters.get(name)
        if counter is None or increment <= 0:
            continue
        (counter.labels(**dict(labels)) if labels else counter).inc(increment)


# -- the primary's side --------------------------------------------------------

class WorkerLink(Link):
    """The primary's end of one worker's pipe."""

    def __init__(self, pool: WorkerPool, number: int) -> None:
        self.pool = pool
        self.number = number
        self.pid: int | None = None
        self.open = False

    def connectionMade(self) -> None:  # noqa: N802
        self.pid = self.transport.pid
        self.open = True
        # zones first: a worker listens once it has them, so it never answers from an empty zone set
        if self.pool.zones is not None:
            self.send(self.pool.zones)
        self.send(self.pool.listen)

    def received(self, message: object) -> None:
        if isinstance(message, Relay):
            self._answer(message)
        elif isinstance(message, Counts):
            add_counts(message)
        elif isinstance(message, Ready):
            self.pool.ready(self)
        else:
            log.warn("worker {n} sent an unknown message {kind}", n=self.number, kind=type(message).__name__)

    def _answer(self, relay: Relay) -> None:
        response = self.pool.responder.respond(relay.data, relay.protocol)
        if isinstance(response, defer.Deferred):
            response.addCallback(self._deliver, relay.id)
        else:
            self._deliver(response, relay.id)

    def _deliver(self, response: bytes | None, relay_id: int) -> None:
        if self.open:
            self.send(Relayed(relay_id, response))

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:  # noqa: N802
        self.open = False
        self.pool.lost(self, reason)


class WorkerPool:
    """Starts, feeds and restarts the workers of ``serve --workers N``."""

    def __init__(self, reactor: IReactorProcess | IReactorTime | IReactorCore, responder: Responder,
                 count: int, listen: Listen) -> None:
        """``count``: worker processes (the primary answers too); ``listen``:
        the port the primary already holds (a real port, not 0)."""
        self.reactor = reactor
        self.responder = responder
        self.count = count
        self.listen = listen
        self.zones: ZoneUpdate | None = None
        self.links: dict[int, WorkerLink] = {}
        self.answering: set[int] = set()
        self._failures: dict[int, int] = {}
        self._stopping = False
        self._ended: dict[int, defer.Deferred[None]] = {}

    def start(self) -> None:
        for number in range(1, self.count + 1):
            self._spawn(number)

    def update(self, zones: ZoneUpdate) -> None:
        """What every worker answers from, now and after a restart."""
        self.zones = zones
        for link in self.links.values():
            link.send(zones)

    def _spawn(self, number: int) -> None:
        if self._stopping:
            return
        endpoint = ProcessEndpoint(self.reactor, sys.executable, [sys.executable, "-m", "summoner.worker"],
                                   env=dict(os.environ), childFDs={0: "w", 1: "r", 2: 2})
        factory = protocol.Factory.forProtocol(lambda: WorkerLink(self, number))
        endpoint.connect(factory).addCallbacks(self._spawned, self._not_spawned, errbackArgs=(number,))

    def _spawned(self, link: WorkerLink) -> None:
        self.links[link.number] = link
        self._ended[link.number] = defer.Deferred()

    def _not_spawned(self, failure: Failure, number: int) -> None:
        log.error("cannot start DNS worker {n}: {error}; retrying", n=number, error=failure.getErrorMessage())
        self._restart_later(number)

    def ready(self, link: WorkerLink) -> None:
        self.answering.add(link.number)
        self._failures.pop(link.number, None)
        WORKERS.set(len(self.answering))
        log.info("DNS worker {n} (pid {pid}) answering on port {port}", n=link.number, pid=link.pid,
                 port=self.listen.port)

    def lost(self, link: WorkerLink, reason: Failure) -> None:
        self.links.pop(link.number, None)
        self.answering.discard(link.number)
        WORKERS.set(len(self.answering))
        ended = self._ended.pop(link.number, None)
        if ended is not None:
            ended.callback(None)
        if self._stopping:
            return
        log.warn("DNS worker {n} (pid {pid}) ended ({reason}); its clients are answered by the other "
                 "processes on the port until it is back", n=link.number, pid=link.pid,
                 reason=reason.getErrorMessage())
        self._restart_later(link.number)

    def _restart_later(self, number: int) -> None:
        failures = self._failures.get(number, 0)
        self._failures[number] = failures + 1
        delay = RESTART_DELAYS[min(failures, len(RESTART_DELAYS) - 1)]
        self.reactor.callLater(delay, self._spawn, number)

    def stop(self) -> defer.Deferred:
        """Close every pipe; a worker exits when its stdin closes (one that
        has not after STOP_GRACE seconds is killed: shutdown must not hang)."""
        self._stopping = True
        ended = list(self._ended.values())
        links = list(self.links.values())
        for link in links:
            link.transport.loseConnection()
        if not ended:
            return defer.succeed(None)
        killer = self.reactor.callLater(STOP_GRACE, self._kill, links)
        return defer.DeferredList(ended).addBoth(lambda result: killer.cancel() if killer.active() else None)

    def _kill(self, links: list[WorkerLink]) -> None:
        for link in links:
            if link.open:
                log.warn("DNS worker {n} (pid {pid}) did not exit; killing it", n=link.number, pid=link.pid)
                link.transport.signalProcess("KILL")
