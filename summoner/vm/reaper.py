"""Idle reaping.

A ready VM is idle when it has had no DNS query (``Service.touch`` via the
answer's ``on_hit``) *and* no guest network traffic for its idle timeout.
Traffic matters because clients keep using a cached address long after their
last query (Jitsu counted DNS only, and reaped VMs that were in use).  Traffic
is read from libvirt interface counters (bridge mode) or, in user mode, from
QEMU's connection table and the host's TCP sockets at the forwarded address
(slirp forgets a finished connection at once; the host keeps it in TIME_WAIT),
in one batched call on the libvirt worker thread per tick
(``summoner.vm.traffic`` decides what counts as use).

The reaper reads through a narrow view: the ready services, the backend's
traffic tokens, and a stop function; it keeps its own last look per domain.

Tests: tests/vm/test_reaper.py
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet import defer, task
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from summoner.vm.backend import Backend, BackendError, TrafficToken
from summoner.vm.lifecycle import Service, State
from summoner.vm.traffic import traffic_seen

log = Logger(namespace="summoner.vm.reaper")


class Reaper:
    def __init__(self, reactor: IReactorTime, backend: Backend, ready: Callable[[], list[Service]],
                 stop: Callable[[Service, str], defer.Deferred[bool]], network_mode: str,
                 interval: float = 1.0) -> None:
        self.reactor = reactor
        self.backend = backend
        self.interval = interval
        self._ready = ready
        self._stop = stop
        self._mode = network_mode
        # (domain, instance UUID) → its last traffic token: a re-booted VM starts afresh
        self._looks: dict[tuple[str, str | None], TrafficToken] = {}
        self._loop = task.LoopingCall(self.tick)
        self._loop.clock = reactor
        self._busy = False

    def start(self) -> None:
        if not self._loop.running:
            self._loop.start(self.interval, now=False).addErrback(
                lambda f: log.failure("reaper loop died", f))

    def stop(self) -> None:
        if self._loop.running:
            self._loop.stop()

    def tick(self) -> defer.Deferred[list[str] | None] | None:
        if self._busy or not self.backend.connected:
            return None  # a slow tick must not pile up behind itself
        ready = self._ready()
        if not ready:
            self._looks.clear()
            return None
        self._busy = True
        d = defer.Deferred.fromCoroutine(self._tick(ready))

        def done(result: list[str] | None) -> list[str] | None:
            self._busy = False
            return result

        def failed(failure: Failure) -> None:
            # A failed tick is logged and the next one runs: a LoopingCall
            # whose call fails stops for good, and then no VM would be reaped.
            log.failure("reaper tick failed", failure)
        return d.addErrback(failed).addBoth(done)

    async def _tick(self, ready: list[Service]) -> list[str]:
        try:
            tokens = await self.backend.traffic({s.spec.domain_name: self._mode for s in ready})
        except BackendError as exc:
            log.debug("traffic counters unavailable: {err}", err=exc)
            tokens = {}
        instances = {(s.spec.domain_name, s.domain_uuid) for s in ready}
        self._looks = {key: token for key, token in self._looks.items() if key in instances}
        now = self.reactor.seconds()
        reaped = []
        for svc in ready:
            if svc.state is not State.READY:
                continue  # changed while we were reading counters
            instance = (svc.spec.domain_name, svc.domain_uuid)
            token = tokens.get(svc.spec.domain_name)
            if token is not None:
                if traffic_seen(self._mode, self._looks.get(instance), token):
                    svc.saw_traffic()
                self._looks[instance] = token
            if now - svc.last_used() >= svc.spec.idle_timeout:
                reaped.append(svc.name)
                self._stop(svc, "idle").addErrback(
                    lambda failure, name=svc.name: log.failure("{service}: idle stop failed", failure, service=name))
        return reaped
