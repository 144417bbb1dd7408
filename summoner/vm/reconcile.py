"""Reconciliation: libvirt's running domains matched with the services, at
start and after every reconnect to libvirtd.

A domain of ours (summoner metadata) whose service is current is adopted: a
running one after one successful probe, a paused one as suspended, a paused
standby as the service's standby.  One whose service is gone or changed
(config hash) is destroyed.  A service whose VM is not among the domains
vanished (stopped while libvirt was unreachable).  Only domains named with
this summoner's ``--domain-prefix`` are looked at: another summoner on the
same libvirtd, with its own prefix, keeps its VMs.

Tests: tests/vm/test_reconcile.py
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from twisted.internet import defer
from twisted.logger import Logger

from summoner.vm import metrics
from summoner.vm.backend import Backend, BackendError, DomainInfo, DomainState, destroy_quietly
from summoner.vm.boot import Booter
from summoner.vm.lifecycle import Service, State
from summoner.vm.snapshots import SnapshotStore

log = Logger(namespace="summoner.vm.reconcile")


@dataclass
class Reconciliation:
    adopted: int = 0
    destroyed: int = 0
    vanished: int = 0
    seen: set[str] = field(default_factory=set)
    orphans: list[DomainInfo] = field(default_factory=list)
    adoptions: list[defer.Deferred[None]] = field(default_factory=list)


class Reconciler:
    def __init__(self, backend: Backend, services: Callable[[], Iterable[Service]],
                 service_of: Callable[[str], Service | None], booter: Booter, domain_prefix: str,
                 snapshots: SnapshotStore) -> None:
        self._backend = backend
        self._snapshots = snapshots
        self._prefix = domain_prefix
        self._services = services
        self._service_of = service_of
        self._booter = booter
        self._running: defer.Deferred[Reconciliation | None] | None = None

    def reconcile(self) -> defer.Deferred[Reconciliation | None]:
        """One reconciliation at a time: a call while one runs joins it."""
        if self._running is not None:
            return self._running
        d = defer.Deferred.fromCoroutine(self._reconcile())
        if not d.called:
            self._running = d

            def done(result: Reconciliation | None) -> Reconciliation | None:
                self._running = None
                return result
            d.addBoth(done)
        return d

    async def _reconcile(self) -> Reconciliation | None:
        try:
            domains = await self._backend.list_ours()
        except BackendError as exc:
            log.warn("cannot list domains to reconcile: {err}", err=exc)
            return None
        # Destroys wait until the snapshot is fully applied: awaiting one here
        # (a second or more each) would let VMs change state behind the snapshot.
        r = Reconciliation()
        for info in domains:
            if info.name.startswith(self._prefix):  # other summoners' domains are theirs
                self._match(info, r)
        self._sweep(r)
        for info in r.orphans:
            await destroy_quietly(self._backend, info.name, info.uuid)  # that very domain, not a successor
        if r.adoptions:
            await defer.DeferredList(r.adoptions)
        if r.adopted or r.destroyed or r.vanished:
            log.info("reconciled with libvirt: {adopted} adopted, {destroyed} destroyed, {vanished} vanished",
                     adopted=r.adopted, destroyed=r.destroyed, vanished=r.vanished)
        return r

    def _match(self, info: DomainInfo, r: Reconciliation) -> None:
        svc = self._service_of(info.name)
        meta = info.metadata
        if svc is None or meta is None or meta.service != svc.name or meta.config_hash != svc.spec.config_hash:
            if info.state in (DomainState.SHUTOFF, DomainState.CRASHED):
                return
            why = "removed" if svc is None else "changed"
            log.info("domain {domain} ({service}) is ours but its service is {why}; destroying",
                     domain=info.name, service=meta.service if meta else "?", why=why)
            metrics.REAPS.labels(why).inc()
            r.destroyed += 1
            r.orphans.append(info)
            return
        r.seen.add(svc.name)
        self._adopt(svc, info, meta.standby, r)

    def _adopt(self, svc: Service, info: DomainInfo, standby: bool, r: Reconciliation) -> None:
        paused = info.state is DomainState.PAUSED
        running = info.state is DomainState.RUNNING
        if svc.state is State.STOPPED and paused and standby:
            svc.standby = True
            svc.domain_uuid = info.uuid
        elif svc.state in (State.STOPPED, State.FAILED) and (paused or running):
            r.adopted += 1
            # The running guest is newer than any saved state of it (a restore
            # that finished while summoner was away): that file must not come back.
            self._snapshots.discard(svc.spec, "its VM is running")
            if paused:
                svc.adopted_paused(info.uuid)
            else:
                r.adoptions.append(self._booter.adopt(svc, info.uuid))
        elif svc.state is State.READY and paused:
            svc.paused_outside()
        elif svc.state is State.SUSPENDED and running:
            svc.resumed_outside()

    def _sweep(self, r: Reconciliation) -> None:
        for svc in self._services():
            if svc.name in r.seen:
                continue
            svc.standby = False
            if svc.state in (State.READY, State.SUSPENDED):
                log.warn("{service}: its VM is gone (stopped while libvirt was unreachable?)", service=svc.name)
                r.vanished += 1
                svc.vanished()
