"""The on-demand part as the server sees it: ``OnDemand``.

The server (``summoner.app``) calls, in order::

    ondemand = OnDemand(config, reactor)
    zones, hosts = ondemand.split(zones)      # before handing zones to the static stage
    ondemand.update_hosts(hosts)
    chain = Chain([static_stage, ondemand.stage, arrowhead, ...])
    ondemand.start()                          # connect to libvirt, adopt running VMs
    ...
    on zone reload:  zones, hosts = ondemand.split(zones); ondemand.update_hosts(hosts)
    on shutdown:     yield ondemand.stop()    # VMs keep running; the next start adopts them

Operators' actions (the admin endpoint, ``summoner services``) go through
``status``, ``find``, ``summon`` and ``stop_service``.

Tests: tests/vm/test_app.py
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from typing import Any

from twisted.internet import defer, threads
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import Resource

from summoner.answer import name_key
from summoner.images import ImageManifest, discover_in
from summoner.vm.backend import Backend
from summoner.vm.config import OnDemandConfig
from summoner.vm.fleet import Fleet
from summoner.vm.hosts import OnDemandHost, split_on_demand
from summoner.vm.lifecycle import State
from summoner.vm.reaper import Reaper
from summoner.vm.spec import missing_artifacts
from summoner.vm.stage import OnDemandStage
from summoner.zonefile import Zone

log = Logger(namespace="summoner.vm")


class OnDemand:
    def __init__(self, config: OnDemandConfig, reactor: IReactorTime, backend: Backend | None = None,
                 images: dict[str, ImageManifest] | None = None) -> None:
        self.config = config
        self.reactor = reactor
        if backend is None:
            from summoner.vm.libvirt_backend import LibvirtBackend
            backend = LibvirtBackend(config.libvirt_uri, reactor)
        self.backend = backend
        self.fleet = Fleet(config, reactor, self.backend)
        self.backend.on_event = self.fleet.events.on_event
        self.backend.on_connected = self._connected
        self.stage = OnDemandStage(self.fleet)
        self.reaper = Reaper(reactor, self.backend, self.fleet.ready_services, self.fleet.stop_service,
                             config.network, config.reap_interval)
        self.images: dict[str, ImageManifest] = images if images is not None else {}
        self._fixed_images = images is not None
        self._started = False
        self._stopping = False
        # Called with published_hosts() whenever the hosts change (Arrowhead
        # publishes them).
        self.on_hosts_changed: list[Callable[[list[OnDemandHost]], None]] = []

    # -- zones -------------------------------------------------------------------

    def load_images(self) -> dict[str, ImageManifest]:
        if not self._fixed_images:
            self.images = discover_in(self.config.images)
        return self.images

    def split(self, zones: Iterable[Zone]) -> tuple[list[Zone], list[OnDemandHost]]:
        """``split_on_demand`` with this server's images and network mode
        (images are re-read, so a zone reload also picks up rebuilt images)."""
        return split_on_demand(zones, self.load_images(), self.config.network, self.config.virt_type)

    def update_hosts(self, hosts: list[OnDemandHost]) -> None:
        self.fleet.set_hosts(hosts, self.images)
        self.stage.refresh()
        for callback in self.on_hosts_changed:
            callback(self.published_hosts())
        if self._started and self.backend.connected:
            self.fleet.reconcile()

    def published_hosts(self) -> list[OnDemandHost]:
        """The hosts with their effective service port (zone or image)."""
        return [dataclasses.replace(s.host, port=s.spec.port) for s in self.fleet.services.values()]

    # -- lifecycle ---------------------------------------------------------------

    def start(self) -> defer.Deferred[None]:
        return defer.Deferred.fromCoroutine(self._start())

    def check_host(self) -> defer.Deferred[None]:
        """``summoner doctor``'s quick checks, logged as warnings (start-up
        goes on: DNS matters more, and TCG works without KVM)."""
        from summoner.vm import doctor
        plan = doctor.Plan(self.config, zones=None, specs=[s.spec for s in self.fleet.services.values()])

        def report(findings: list[doctor.Finding]) -> None:
            bad = [f for f in findings if f.level is not doctor.Level.OK]
            for finding in bad:
                log.warn("host check: {line}", line=finding.line())
            if not bad:
                log.info("host checks: all {n} ok", n=len(findings))

        def failed(failure: Failure) -> None:
            log.failure("host checks failed", failure)
        return threads.deferToThread(doctor.host_checks, plan).addCallbacks(report, failed)

    async def _start(self) -> None:
        self.check_host()
        # Boots wait until running VMs are adopted (a boot would otherwise
        # collide with a VM that is already there) and the virt type is known.
        virt = self.fleet.virt
        hold = virt.hold()
        try:
            if await self.backend.start():
                await self.fleet.reconciler.reconcile()
                await virt.decide([s.spec for s in self.fleet.services.values() if not missing_artifacts(s.spec)])
            else:
                virt.not_checkable()
        finally:
            hold.callback(None)
        if self._stopping:
            return  # stopped while starting: nothing may run on
        self._started = True
        self.reaper.start()
        self.fleet.prepare_all_standby()

    def _connected(self) -> None:
        if self._started:
            self.fleet.reconcile()

    def stop(self) -> defer.Deferred[None]:
        """Stop watching; leave VMs running for the next start to adopt."""
        self._stopping = True
        self.reaper.stop()
        self.fleet.shut_out("summoner stopping")
        return self.backend.stop()

    # -- operator actions (admin endpoint) ----------------------------------------

    def status(self) -> list[dict[str, Any]]:
        return [dataclasses.asdict(row) for row in self.fleet.status()]

    def find(self, name: str) -> str | None:
        key = name_key(name)
        if key in self.fleet.services:
            return key
        matches = [n for n in self.fleet.services if n.split(".", 1)[0] == key]
        return matches[0] if len(matches) == 1 else None

    def summon(self, name: str) -> defer.Deferred[dict[str, Any]]:
        svc = self.fleet.services[name]
        result = self.fleet.ensure_ready(svc)
        if isinstance(result, bool):
            svc.touch()
            return defer.succeed(self._result(name, result))
        return result.addCallback(lambda ok: self._result(name, ok))

    def stop_service(self, name: str, mode: str | None = None) -> defer.Deferred[dict[str, Any]]:
        svc = self.fleet.services[name]
        if svc.state not in (State.READY, State.SUSPENDED):
            return defer.succeed(self._result(name, False, f"not running ({svc.state.value})"))
        return self.fleet.stop_service(svc, "admin", mode).addCallback(lambda ok: self._result(name, ok))

    def _result(self, name: str, ok: bool, error: str | None = None) -> dict[str, Any]:
        svc = self.fleet.services.get(name)
        row = next((r for r in self.status() if r["name"] == name), {})
        return {"ok": ok, "name": name, "state": row.get("state"),
                "error": error or (svc.last_error if svc and not ok else None), "service": row}

    def admin_resources(self) -> dict[bytes, Resource]:
        """``/services``: what this part adds to the top's admin endpoint."""
        from summoner.vm.admin import admin_resources
        return admin_resources(self)
