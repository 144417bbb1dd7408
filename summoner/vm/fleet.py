"""All on-demand services, and the one entry of the query path:
``ensure_ready``.

The fleet holds the services by name and by domain, applies (re)loaded
hosts (a removed or changed host retires its service and destroys its VM)
and wires the collaborators, each with one job::

    Fleet ──▶ Booter (boot, restore, resume, adopt) ──▶ VirtDecision, Capacity, Standby
      │  ├──▶ Stopper (destroy, shutdown, suspend, snapshot) ──▶ SnapshotStore
      │  ├──▶ EventRouter (libvirt events → transitions)
      │  └──▶ Reconciler (libvirt's domains → adopt, destroy, vanished)
      └── every service's state: summoner.vm.lifecycle.Service

Everything here runs on the reactor thread; libvirt work goes through the
backend's worker thread.

Tests: tests/vm/test_fleet.py
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from twisted.internet import defer
from twisted.internet.interfaces import IReactorThreads, IReactorTime
from twisted.logger import Logger

from summoner.images import ImageManifest
from summoner.vm import metrics
from summoner.vm.backend import Backend
from summoner.vm.boot import Booter
from summoner.vm.capacity import Capacity, Limits
from summoner.vm.config import OnDemandConfig
from summoner.vm.domxml import NetworkSettings
from summoner.vm.events import EventRouter
from summoner.vm.hosts import OnDemandHost
from summoner.vm.lifecycle import Service, State
from summoner.vm.reconcile import Reconciler
from summoner.vm.snapshots import Snapshot, SnapshotStore
from summoner.vm.spec import VMSpec, build_spec
from summoner.vm.standby import Standby
from summoner.vm.stop import Stopper
from summoner.vm.virt import VirtDecision

log = Logger(namespace="summoner.vm.fleet")


@dataclass(frozen=True)
class ServiceStatus:
    """One row of ``summoner services`` and the admin endpoint's /services."""

    name: str
    image: str
    arch: str                    # the guest's architecture
    state: str
    address: str
    port: int
    domain: str
    uptime: float | None
    idle: float | None
    boot_count: int
    waiters: int
    last_error: str | None
    retry_in: float | None
    memory_mib: int
    idle_timeout: float
    stop_mode: str
    standby: bool
    snapshot_bytes: int | None   # its saved state on disk (stop mode snapshot), if any


class Fleet:
    def __init__(self, config: OnDemandConfig, reactor: IReactorTime, backend: Backend) -> None:
        self.config = config
        self.reactor = reactor
        self.backend = backend
        self.services: dict[str, Service] = {}
        self.by_domain: dict[str, Service] = {}
        net = NetworkSettings(config.network, config.bridge, config.bridge_gateway, config.bridge_netmask,
                              config.bridge_ipv6_prefix, config.bridge_ipv6_gateway)
        self.virt = VirtDecision(config.virt_type, reactor, backend, config.domain_prefix)
        threads = IReactorThreads(reactor)
        self.snapshots = SnapshotStore(config.state_dir, config.snapshot_budget_mib,
                                       unlink_later=lambda path: threads.callInThread(path.unlink, True))
        self.standby = Standby(config.standby, backend, self.virt, net,
                               has_snapshot=self._restores)
        self.stopper = Stopper(reactor, backend, self.snapshots, restart=self._bring_back,
                               stopped=self._later_standby)
        self.capacity = Capacity(Limits(config.max_vms, config.memory_budget_mib, config.evict_min_idle), reactor,
                                 self.services.values, self.stopper.stop, self.stopper.stopping)
        self.booter = Booter(config, reactor, backend, self.virt, self.capacity, self.standby, self.snapshots, net)
        self.events = EventRouter(self.by_domain.get, backend, self.booter, self.stopper, self.virt,
                                  self._later_standby)
        self.reconciler = Reconciler(backend, self.services.values, self.by_domain.get, self.booter,
                                     config.domain_prefix, self.snapshots)

    # -- hosts ---------------------------------------------------------------------

    def set_hosts(self, hosts: list[OnDemandHost], images: Mapping[str, ImageManifest]) -> None:
        """Apply a (re)loaded set of hosts: add new ones, stop the VMs of removed
        ones, and of changed ones whose VM would differ (config hash)."""
        wanted = {h.name: h for h in hosts}
        for name in list(self.services):
            if name not in wanted:
                self._retire(self.services[name], "removed")
        for name, host in wanted.items():
            spec = build_spec(host, images[host.image], self.config)
            svc = self.services.get(name)
            if svc is not None and svc.spec.config_hash != spec.config_hash:
                self._retire(svc, "changed")
                svc = None
            if svc is None:
                svc = Service(host, spec, self.reactor.seconds, observer=self._state_changed)
                self.services[name] = svc
                self.by_domain[spec.domain_name] = svc
            else:
                svc.host, svc.spec = host, spec  # same VM; answers or timeouts may differ
        self.snapshots.keep_only(s.spec for s in self.services.values())
        self._update_gauge()

    def _retire(self, svc: Service, reason: str) -> None:
        del self.services[svc.name]
        self.by_domain.pop(svc.spec.domain_name, None)
        had_standby, up = svc.standby, svc.state not in (State.STOPPED, State.FAILED)
        if svc.retire():
            if up and not had_standby:
                metrics.REAPS.labels(reason).inc()
            log.info("{service}: {reason} in the zone; destroying its VM", service=svc.name, reason=reason)
            self.backend.destroy(svc.spec.domain_name).addErrback(
                lambda f: log.warn("{service}: destroy failed: {err}", service=svc.name, err=f.getErrorMessage()))

    def _restores(self, spec: VMSpec) -> bool:
        """Whether a cold start of ``spec`` restores a snapshot (it needs no standby)."""
        return any(found is not None for found in self.snapshots.for_cold_start(spec))

    def _state_changed(self, svc: Service, previous: State) -> None:
        if not svc.retired:
            self._update_gauge()

    def _update_gauge(self) -> None:
        counts = dict.fromkeys(metrics.STATES, 0)
        for s in self.services.values():
            counts[s.state.value] += 1
        for state, n in counts.items():
            metrics.VMS.labels(state).set(n)

    # -- the query path --------------------------------------------------------------

    def ensure_ready(self, svc: Service) -> bool | defer.Deferred[bool]:
        """True if ready now; otherwise a Deferred firing True/False when the
        boot or resume this query waits on ends (False: answer SERVFAIL)."""
        state = svc.state
        if state is State.READY:
            return True
        if svc.in_backoff(self.reactor.seconds()):
            metrics.BOOTS.labels(svc.name, "backoff").inc()
            return False
        waiting = svc.wait()
        if state in (State.STOPPED, State.FAILED):
            self.booter.boot(svc)
        elif state is State.SUSPENDED:
            self.booter.resume(svc)
        # BOOTING: join it.  STOPPING: the stop brings it back when done.
        return waiting

    def _bring_back(self, svc: Service) -> None:
        """Queries arrived while the VM stopped."""
        if svc.state is State.SUSPENDED:
            self.booter.resume(svc)
        elif svc.state in (State.STOPPED, State.FAILED):
            self.booter.boot(svc)

    def stop_service(self, svc: Service, reason: str, mode: str | None = None) -> defer.Deferred[bool]:
        return self.stopper.stop(svc, reason, mode)

    def ready_services(self) -> list[Service]:
        return [s for s in self.services.values() if s.state is State.READY]

    # -- standby and reconciliation ----------------------------------------------------

    def _later_standby(self, svc: Service) -> None:
        self.reactor.callLater(0, self.standby.prepare, svc)

    def prepare_all_standby(self) -> None:
        self.standby.prepare_all(list(self.services.values()))

    def reconcile(self) -> defer.Deferred[None]:
        """Reconcile with libvirt, then prepare standby domains."""
        return self.reconciler.reconcile().addCallback(lambda _: self.prepare_all_standby())

    def shut_out(self, why: str) -> None:
        """summoner stops: nothing in flight goes on, nobody waits."""
        for svc in self.services.values():
            svc.shut_out(why)

    # -- status ----------------------------------------------------------------------

    def status(self) -> list[ServiceStatus]:
        now = self.reactor.seconds()
        return [_status_of(svc, now, self.snapshots.find(svc.spec))
                for svc in sorted(self.services.values(), key=lambda s: s.name)]


def _status_of(svc: Service, now: float, snapshot: Snapshot | None) -> ServiceStatus:
    up = svc.is_up()
    return ServiceStatus(
        name=svc.name, image=svc.spec.image, arch=svc.spec.arch, state=svc.state.value, address=svc.spec.address,
        port=svc.spec.port, domain=svc.spec.domain_name,
        uptime=round(now - svc.started_at, 3) if up and svc.started_at else None,
        idle=round(now - svc.last_used(), 3) if up else None,
        boot_count=svc.boot_count, waiters=len(svc.waiters), last_error=svc.last_error,
        retry_in=round(svc.retry_at - now, 3) if svc.retry_at > now else None,
        memory_mib=svc.spec.memory_mib, idle_timeout=svc.spec.idle_timeout, stop_mode=svc.spec.stop_mode,
        standby=svc.standby, snapshot_bytes=snapshot.size if snapshot is not None else None)
