"""A worker process of ``summoner serve --workers N`` (``summoner.workers``
says the design): answers static zone data on the shared port, relays the
rest to the primary over its stdin/stdout, reports its counts.

Run by the primary as ``python -m summoner.worker``; not a command of its own.

Tests: tests/test_workers.py
"""

from __future__ import annotations

import os
import signal
import time

from twisted.internet import defer, protocol, task
from twisted.internet.interfaces import IReactorCore
from twisted.logger import Logger
from twisted.python.failure import Failure

from summoner.answer import Answer, Apex, Query
from summoner.logs import start_logging
from summoner.metrics import QUERY_STATS
from summoner.ratelimit import RateLimiter
from summoner.resolution import Chain
from summoner.server import listen_dns
from summoner.static import StaticStage
from summoner.wire import Responder
from summoner.workers import (
    MAX_RELAYED,
    REPORT_INTERVAL,
    Counts,
    Link,
    Listen,
    Ready,
    Relay,
    Relayed,
    ZoneUpdate,
    counter_values,
)

log = Logger(namespace="summoner.worker")


class PrimaryNames:
    """The stage that stands for the primary's later stages (on-demand,
    Arrowhead): it claims what they claim, and the worker relays those
    queries rather than resolving them."""

    name = "primary"

    def __init__(self) -> None:
        self.claimed: frozenset[str] = frozenset()
        self.claim_all = False

    def claims(self, key: str, zone: Apex | None = None) -> bool:
        return self.claim_all or key in self.claimed

    def resolve(self, query: Query, earlier: Answer | None = None) -> None:
        return None  # never asked: the worker's responder relays instead of resolving


class PrimaryLink(Link):
    """The worker's end of the pipe: what the primary sends, and relaying."""

    def __init__(self, reactor: IReactorCore) -> None:
        self.reactor = reactor
        self.static = StaticStage()
        self.primary = PrimaryNames()
        self.responder = Responder(Chain([self.static, self.primary]), relay=self.relay)
        self.waiting: dict[int, defer.Deferred] = {}
        self.next_id = 0
        self.ports: tuple = ()
        self.reported = counter_values()
        self.reporting = task.LoopingCall(self.report)
        self.reporting.clock = reactor

    def received(self, message: object) -> None:
        if isinstance(message, Relayed):
            waiting = self.waiting.pop(message.id, None)
            if waiting is not None:
                waiting.callback(message.data)
        elif isinstance(message, ZoneUpdate):
            self.static.update(message.zones)
            self.primary.claimed, self.primary.claim_all = message.claimed, message.claim_all
            self.responder.clear_cache()
        elif isinstance(message, Listen):
            self.start(message)

    def start(self, listen: Listen) -> None:
        start_logging(listen.log_format, listen.log_level)
        limiter = RateLimiter(listen.rate_limit, time.monotonic) if listen.rate_limit else None
        try:
            self.ports = listen_dns(self.reactor, self.responder, listen.host, listen.port,
                                    listen.tcp_idle_timeout, limiter, share_port=True)
        except Exception as exc:
            log.error("DNS worker {pid} cannot listen: {exc}", pid=os.getpid(), exc=exc)
            self.transport.loseConnection()
            return
        self.reporting.start(REPORT_INTERVAL, now=False)
        self.send(Ready(os.getpid()))

    def relay(self, data: bytes, protocol: str) -> defer.Deferred | None:
        if len(self.waiting) >= MAX_RELAYED:
            self.responder.reject("relay", f"{MAX_RELAYED} queries already wait on the primary")
            return None
        self.next_id += 1
        answer: defer.Deferred = defer.Deferred()
        self.waiting[self.next_id] = answer
        self.send(Relay(self.next_id, protocol, data))
        return answer

    def report(self) -> None:
        values = counter_values()
        increments = {key: value - self.reported.get(key, 0.0) for key, value in values.items()}
        self.reported = values
        self.send(Counts(QUERY_STATS.drain(), {k: v for k, v in increments.items() if v > 0}))

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:  # noqa: N802
        # The primary is gone (or closed the pipe to stop this worker): so is this worker.
        if self.reporting.running:
            self.reporting.stop()
        for waiting in self.waiting.values():
            waiting.callback(None)  # unanswered: the client retries
        self.waiting.clear()
        if self.reactor.running:
            self.reactor.stop()


def main() -> None:
    from twisted.internet import reactor, stdio

    # A SIGHUP meant for summoner (reload the zones) may reach the whole
    # process group; the primary reloads and sends the zones here.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    stdio.StandardIO(PrimaryLink(reactor))
    reactor.run()


if __name__ == "__main__":
    main()
