"""Taking a VM down by its stop mode: ``destroy`` (hard stop), ``shutdown``
(the ACPI power button, destroyed after the image's grace period if the
guest does not power off), ``suspend`` (paused in memory; the next query
resumes it in milliseconds) or ``snapshot`` (its whole state saved to disk
and its QEMU process ended: no memory held; the next query restores it, as
it was, see ``summoner.vm.snapshots``).

Queries that arrive while a VM stops wait; when the stop ends the service is
brought back for them (``restart``).

Tests: tests/vm/test_stop.py
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from summoner.deferreds import first_of
from summoner.vm.backend import Backend, BackendError, DomainState
from summoner.vm.lifecycle import Service, State
from summoner.vm.snapshots import NoSnapshotError, SnapshotStore, save_guest

log = Logger(namespace="summoner.vm.stop")

_AFTER_FAILED_STOP = {DomainState.RUNNING: State.READY, DomainState.PAUSED: State.SUSPENDED}


class Stopper:
    def __init__(self, reactor: IReactorTime, backend: Backend, snapshots: SnapshotStore,
                 restart: Callable[[Service], None], stopped: Callable[[Service], None]) -> None:
        self.reactor = reactor
        self.backend = backend
        self.snapshots = snapshots
        self._restart = restart          # queries came while stopping: bring it back
        self._stopped = stopped          # the VM is gone (a standby may be prepared)
        self._in_flight: dict[Service, defer.Deferred[bool]] = {}
        self._powered_off: dict[Service, defer.Deferred[bool]] = {}

    def stop(self, svc: Service, reason: str, mode: str | None = None) -> defer.Deferred[bool]:
        """Stop a ready or suspended VM by ``mode`` (default: the image's stop
        mode).  Fires True if it stopped something."""
        if svc.state not in (State.READY, State.SUSPENDED):
            return defer.succeed(False)
        d = defer.Deferred.fromCoroutine(self._stop(svc, reason, mode or svc.spec.stop_mode))
        if not d.called:
            self._in_flight[svc] = d

            def done(result: bool) -> bool:
                self._in_flight.pop(svc, None)
                return result
            d.addCallback(done)
        return d

    def stopping(self) -> list[defer.Deferred[bool]]:
        """The stops in flight."""
        return list(self._in_flight.values())

    def domain_ended(self, svc: Service) -> None:
        """The domain stopped: a shutdown waiting for the guest ends now."""
        waiting = self._powered_off.pop(svc, None)
        if waiting is not None and not waiting.called:
            waiting.callback(True)

    async def _stop(self, svc: Service, reason: str, mode: str) -> bool:
        uuid = svc.domain_uuid
        idle = self.reactor.seconds() - svc.last_used()
        previous = svc.begin_stop(reason)
        try:
            final = await self._take_down(svc, mode, previous, uuid)
        except BackendError as exc:
            log.warn("{service}: {mode} failed: {err}", service=svc.name, mode=mode, err=exc)
            final = await self._state_after_failure(svc)
        if svc.retired:
            return False
        log.info("{service}: {how} ({reason}, idle {idle:.1f}s)", service=svc.name,
                 how={State.SUSPENDED: "suspended", State.STOPPED: f"stopped by {mode}"}.get(final, "still running"),
                 reason=reason, idle=idle)
        svc.stopped_as(final)
        if final is State.STOPPED:
            self.reactor.callLater(0, self._stopped, svc)
        if svc.waiters and final is not State.READY:
            self._restart(svc)
        return final is not previous

    def _this_instance(self, svc: Service, uuid: str | None) -> str | None:
        # By name while the service is current; once a zone reload retired
        # it, another domain may carry the same name: then by UUID only.
        return uuid if svc.retired else None

    async def _take_down(self, svc: Service, mode: str, previous: State, uuid: str | None) -> State:
        domain = svc.spec.domain_name
        if mode == "snapshot":
            if await self._snapshot(svc):
                return State.STOPPED
        elif mode == "suspend" and previous is State.READY:
            await self.backend.suspend(domain)
            return State.SUSPENDED
        if mode == "shutdown" and previous is State.READY:
            powered_off: defer.Deferred[bool] = defer.Deferred()
            self._powered_off[svc] = powered_off
            try:
                if await self.backend.shutdown(domain):
                    if await first_of(self.reactor, powered_off, svc.spec.shutdown_grace):
                        return State.STOPPED
                    log.info("{service}: no shutdown within {grace:g}s; destroying",
                             service=svc.name, grace=svc.spec.shutdown_grace)
            finally:
                self._powered_off.pop(svc, None)
        await self.backend.destroy(domain, self._this_instance(svc, uuid))
        return State.STOPPED

    async def _snapshot(self, svc: Service) -> bool:
        """Save the guest's state (its QEMU process then ends); False if it
        cannot be kept (the caller destroys the VM instead: its state is
        lost, but an idle VM that cannot be saved must still be stopped)."""
        started = self.reactor.seconds()
        try:
            snapshot = await save_guest(self.snapshots, self.backend, svc)
        except NoSnapshotError as exc:
            log.warn("{service}: no snapshot: {why}; destroying it instead", service=svc.name, why=str(exc))
            return False
        if svc.retired:  # removed from the zone while saving
            self.snapshots.discard(svc.spec, "its service was removed")
            return True
        log.info("{service}: saved to {path} ({mib:.1f} MiB in {ms:.0f} ms)", service=svc.name,
                 path=str(snapshot.path), mib=snapshot.size / 2**20, ms=(self.reactor.seconds() - started) * 1000)
        return True

    async def _state_after_failure(self, svc: Service) -> State:
        try:
            state = await self.backend.state(svc.spec.domain_name)
        except BackendError:
            return State.STOPPED
        return _AFTER_FAILED_STOP.get(state, State.STOPPED)
