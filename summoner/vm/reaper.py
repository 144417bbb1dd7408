"""Idle reaping.

A ready VM is idle when it has had no DNS query (``Service.touch`` via the
answer's ``on_hit``) *and* no guest network traffic for its idle timeout.
Traffic matters because clients keep using a cached address long after their
last query (Jitsu counted DNS only, and reaped VMs that were in use).  Traffic
is read from libvirt interface counters (bridge mode) or, in user mode, from
QEMU's connection table and the host's TCP sockets at the forwarded address
(slirp forgets a finished connection at once; the host keeps it in TIME_WAIT),
in one batched call on the libvirt worker thread per tick.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer, task
from twisted.logger import Logger

from summoner.vm.libvirt_backend import BackendError
from summoner.vm.service import Fleet, State

log = Logger(namespace="summoner.vm.reaper")


class Reaper:
    def __init__(self, fleet: Fleet, reactor: Any, interval: float = 1.0) -> None:
        self.fleet = fleet
        self.reactor = reactor
        self.interval = interval
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

    def tick(self) -> defer.Deferred | None:
        if self._busy or not self.fleet.backend.connected:
            return None  # a slow tick must not pile up behind itself
        ready = [s for s in self.fleet.services.values() if s.state is State.READY]
        if not ready:
            return None
        self._busy = True
        d = defer.Deferred.fromCoroutine(self._tick(ready))

        def done(result: Any) -> Any:
            self._busy = False
            return result
        # A failed tick is logged and the next one runs: a LoopingCall whose
        # call fails stops for good, and then no VM would ever be reaped.
        d.addErrback(lambda failure: log.failure("reaper tick failed", failure))
        return d.addBoth(done)

    async def _tick(self, ready: list) -> list[str]:
        mode = self.fleet.config.network
        try:
            tokens = await self.fleet.backend.traffic({s.spec.domain_name: mode for s in ready})
        except BackendError as exc:
            log.debug("traffic counters unavailable: {err}", err=exc)
            tokens = {}
        now = self.reactor.seconds()
        reaped = []
        for svc in ready:
            if svc.state is not State.READY:
                continue  # changed while we were reading counters
            token = tokens.get(svc.spec.domain_name)
            if token is not None:
                if traffic_seen(mode, svc.traffic_token, token):
                    svc.last_activity = now
                svc.traffic_token = token
            idle = now - svc.last_used()
            if idle >= svc.spec.idle_timeout:
                reaped.append(svc.name)
                self.fleet.stop_service(svc, "idle").addErrback(
                    lambda failure, name=svc.name: log.failure("{service}: idle stop failed", failure, service=name))
        return reaped


# slirp keeps closed connections in its table for a while; they are not use.
_CLOSING = ("TCP[TIME_WAIT]", "TCP[CLOSED]", "TCP[CLOSING]", "TCP[LAST_ACK]", "TCP[FIN_WAIT_2]")


def traffic_seen(mode: str, before: Any, now: Any) -> bool:
    """Whether two activity tokens (see ``LibvirtBackend.traffic``) show use.

    bridge: the interface counters moved.  user: a connection is open (an
    idle but open connection is a client still using the service), or one
    appeared since the last look (it may have come and gone in between).
    """
    if before is None:
        return False  # first look: nothing to compare with
    if mode != "user":
        return now != before
    rows = set(now)
    return any(not row.startswith(_CLOSING) for row in rows) or bool(rows - set(before))
