"""Standby domains (``--standby``): a paused, never-run domain kept ready for
each stopped service, so a cold query skips libvirt's domain start-up (the
libvirt boot phase) and only waits for the guest's own boot.

Tests: tests/vm/test_standby.py
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from summoner.deferreds import when_fired
from summoner.vm.backend import Backend, BackendError, destroy_quietly
from summoner.vm.domxml import NetworkSettings, domain_xml
from summoner.vm.lifecycle import Service, State
from summoner.vm.spec import VMSpec, missing_artifacts
from summoner.vm.virt import VirtDecision

log = Logger(namespace="summoner.vm.standby")


class Standby:
    def __init__(self, enabled: bool, backend: Backend, virt: VirtDecision, net: NetworkSettings,
                 has_snapshot: Callable[[VMSpec], bool]) -> None:
        self.enabled = enabled
        self._has_snapshot = has_snapshot  # such a service comes back from its snapshot instead
        self._backend = backend
        self._virt = virt
        self._net = net
        self._preparing: dict[Service, defer.Deferred[None]] = {}

    def prepare(self, svc: Service) -> None:
        """Create the paused standby domain of a stopped service, if wanted."""
        if (not self.enabled or svc.standby or svc in self._preparing or svc.retired
                or svc.state is not State.STOPPED or not self._backend.connected
                or not self._virt.decided or missing_artifacts(svc.spec) or self._has_snapshot(svc.spec)):
            return
        spec = svc.spec
        xml = domain_xml(spec, self._virt.type_for(spec), self._net, spec.machine, standby=True)

        def created(uuid: str) -> None:
            if svc.retired:  # removed or replaced meanwhile: that very domain goes
                self._backend.destroy(spec.domain_name, uuid).addErrback(lambda f: None)
            elif svc.state in (State.STOPPED, State.BOOTING):  # a booting one waits for it and uses it
                svc.standby = True
                svc.domain_uuid = uuid

        def failed(failure: Failure) -> None:
            log.warn("{service}: cannot prepare a standby domain: {err}", service=svc.name,
                     err=failure.getErrorMessage())

        def done(_: object) -> None:
            del self._preparing[svc]
        d = self._backend.create(spec.domain_name, xml, paused=True)
        self._preparing[svc] = d.addCallbacks(created, failed).addBoth(done)

    def prepare_all(self, services: Iterable[Service]) -> None:
        for svc in services:
            self.prepare(svc)

    async def settled(self, svc: Service) -> None:
        """Returns once no standby creation of ``svc`` is in flight."""
        preparing = self._preparing.get(svc)
        if preparing is not None:
            await when_fired(preparing)

    async def take(self, svc: Service) -> bool:
        """Start the guest of the waiting paused domain; False if there is
        none or it is unusable (it is then destroyed and the caller creates a
        domain as usual)."""
        if not svc.standby:
            return False
        svc.standby = False
        try:
            await self._backend.resume(svc.spec.domain_name)
            return True
        except BackendError as exc:
            log.warn("{service}: standby domain unusable ({err}); creating one", service=svc.name, err=exc)
            await destroy_quietly(self._backend, svc.spec.domain_name)
            return False
