"""One entry point for the server: ``build(config, reactor, invalidate_cache)``.

The server calls, in order::

    ondemand = build(config, reactor, responder.invalidate)
    zones, hosts = ondemand.split(zones)      # before handing zones to the static stage
    ondemand.update_hosts(hosts)
    chain = Chain([static_stage, ondemand.stage, arrowhead, ...])
    yield ondemand.start()                    # connect to libvirt, adopt running VMs
    admin.listen_admin(..., ondemand.admin_resources())   # the top mounts {b"services": ...}
    ...
    on zone reload:  zones, hosts = ondemand.split(zones); ondemand.update_hosts(hosts)
    on shutdown:     yield ondemand.stop()    # VMs keep running; the next start adopts them
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger
from twisted.web.resource import Resource

from summoner.vm.config import OnDemandConfig
from summoner.vm.hosts import OnDemandHost, split_on_demand
from summoner.vm.libvirt_backend import BackendError, LibvirtBackend
from summoner.vm.reaper import Reaper
from summoner.vm.service import Fleet, State
from summoner.vm.stage import OnDemandStage

log = Logger(namespace="summoner.vm")


def discover(images_dirs: Iterable[Any]) -> dict[str, Any]:
    """Images by name from every directory (the first directory wins a name)."""
    from summoner.images import discover_images
    found: dict[str, Any] = {}
    for directory in images_dirs:
        for name, manifest in discover_images(directory).items():
            found.setdefault(name, manifest)
    return found


class OnDemand:
    def __init__(self, config: OnDemandConfig, reactor: Any, invalidate_cache: Callable[[], None],
                 backend: LibvirtBackend | None = None,
                 images: dict[str, Any] | None = None) -> None:
        self.config = config
        self.reactor = reactor
        self.backend = backend or LibvirtBackend(config.libvirt_uri, reactor)
        self.fleet = Fleet(config, reactor, self.backend, invalidate_cache)
        self.backend.on_event = self.fleet.on_event
        self.backend.on_connected = self._connected
        self.stage = OnDemandStage(self.fleet)
        self.reaper = Reaper(self.fleet, reactor, config.reap_interval)
        self.images: dict[str, Any] = images if images is not None else {}
        self._fixed_images = images is not None
        self._started = False
        # Called with published_hosts() whenever the hosts change (Arrowhead
        # publishes them).
        self.on_hosts_changed: list[Callable[[list[OnDemandHost]], None]] = []

    # -- zones -------------------------------------------------------------------

    def load_images(self) -> dict[str, Any]:
        if not self._fixed_images:
            self.images = discover(self.config.images)
        return self.images

    def split(self, zones: Iterable[Any]) -> tuple[list[Any], list[OnDemandHost]]:
        """``split_on_demand`` with this server's images and network mode
        (images are re-read, so a zone reload also picks up rebuilt images)."""
        return split_on_demand(zones, self.load_images(), self.config.network)

    def update_hosts(self, hosts: list[OnDemandHost]) -> None:
        self.fleet.set_hosts(hosts, self.images)
        self.stage.refresh()
        for callback in self.on_hosts_changed:
            callback(self.published_hosts())
        if self._started and self.backend.connected:
            self.fleet.reconcile().addCallback(lambda _: self.fleet.prepare_all_standby())

    def published_hosts(self) -> list[OnDemandHost]:
        """The hosts with their effective service port (zone or image)."""
        import dataclasses
        return [dataclasses.replace(s.host, port=s.spec.port) for s in self.fleet.services.values()]

    # -- lifecycle ---------------------------------------------------------------

    def start(self) -> defer.Deferred:
        return defer.Deferred.fromCoroutine(self._start())

    def check_host(self) -> defer.Deferred:
        """``summoner doctor``'s quick checks, logged as warnings (start-up
        goes on: DNS matters more, and TCG works without KVM)."""
        from twisted.internet import threads

        from summoner import doctor
        plan = doctor.Plan(self.config, zones=None, specs=[s.spec for s in self.fleet.services.values()])

        def report(findings: list[doctor.Finding]) -> None:
            bad = [f for f in findings if f.level is not doctor.Level.OK]
            for finding in bad:
                log.warn("host check: {line}", line=finding.line())
            if not bad:
                log.info("host checks: all {n} ok", n=len(findings))

        def failed(failure: Any) -> None:
            log.failure("host checks failed", failure)
        return threads.deferToThread(doctor.host_checks, plan).addCallbacks(report, failed)

    async def _start(self) -> None:
        self.check_host()
        # Boots wait until running VMs are adopted (a boot would otherwise
        # collide with a VM that is already there) and the virt type is known.
        ready: defer.Deferred = defer.Deferred()
        self.fleet.virt_decided = ready
        try:
            connected = await self.backend.start()
            if connected:
                await self.fleet.reconcile()
                await self._resolve_virt_type()
            elif self.config.virt_type == "auto":
                self.fleet.virt_type = "qemu"
                log.warn("virt type auto: libvirt unreachable at start, cannot check KVM; using TCG")
        finally:
            ready.callback(None)
        self._started = True
        self.reaper.start()
        self.fleet.prepare_all_standby()

    async def _resolve_virt_type(self) -> None:
        if self.config.virt_type != "auto":
            self.fleet.virt_type = self.config.virt_type
            return
        try:
            ok, why = await self.backend.kvm_usable()
        except BackendError as exc:  # libvirtd went away mid-start: decide, don't abort start-up
            ok, why = False, f"libvirt: {exc}"
        if not ok:
            self.fleet.virt_type = "qemu"
            log.warn("virt type auto: KVM unavailable ({why}); using TCG (virt type qemu)", why=why)
            return
        from summoner.vm.spec import missing_artifacts
        specs = [s.spec for s in self.fleet.services.values() if not missing_artifacts(s.spec)]
        if not specs:
            # Nothing to test-boot yet: the first boot runs the check.
            self.fleet.kvm_check_pending = True
            log.info("virt type auto: no built image yet; the first boot checks KVM")
            return
        await self.fleet.decide_kvm(min(specs, key=lambda s: s.memory_mib))

    def _connected(self) -> None:
        if self._started:
            self.fleet.reconcile().addCallback(lambda _: self.fleet.prepare_all_standby())

    def stop(self) -> defer.Deferred:
        """Stop watching; leave VMs running for the next start to adopt."""
        self.reaper.stop()
        for svc in self.fleet.services.values():
            if svc.probe is not None:
                svc.probe.cancel("summoner stopping")
            self.fleet._finish(svc, False, "summoner stopping")
        return defer.DeferredList([self.backend.stop()])

    # -- operator actions (admin endpoint) ----------------------------------------

    def status(self) -> list[dict[str, Any]]:
        return self.fleet.status()

    def find(self, name: str) -> str | None:
        key = name.rstrip(".").lower()
        if key in self.fleet.services:
            return key
        matches = [n for n in self.fleet.services if n.split(".", 1)[0] == key]
        return matches[0] if len(matches) == 1 else None

    def summon(self, name: str) -> defer.Deferred:
        svc = self.fleet.services[name]
        result = self.fleet.ensure_ready(svc)
        if isinstance(result, bool):
            svc.touch()
            return defer.succeed(self._result(name, result))
        return result.addCallback(lambda ok: self._result(name, ok))

    def stop_service(self, name: str, mode: str | None = None) -> defer.Deferred:
        svc = self.fleet.services[name]
        if svc.state not in (State.READY, State.SUSPENDED):
            return defer.succeed(self._result(name, False, f"not running ({svc.state.value})"))
        return self.fleet.stop_service(svc, "admin", mode).addCallback(lambda ok: self._result(name, ok))

    def _result(self, name: str, ok: bool, error: str | None = None) -> dict[str, Any]:
        svc = self.fleet.services.get(name)
        row = next((r for r in self.fleet.status() if r["name"] == name), {})
        return {"ok": ok, "name": name, "state": row.get("state"),
                "error": error or (svc.last_error if svc and not ok else None), "service": row}

    def admin_resources(self) -> dict[bytes, Resource]:
        """``/services``: what this part adds to the top's admin endpoint."""
        from summoner.vm.admin import admin_resources
        return admin_resources(self)


def build(config: OnDemandConfig, reactor: Any, invalidate_cache: Callable[[], None]) -> OnDemand:
    return OnDemand(config, reactor, invalidate_cache)
