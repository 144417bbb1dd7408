"""libvirt's lifecycle events, turned into the services' transitions.

Events name a domain and its instance (UUID): an event of an earlier
instance of the same domain (destroyed before a re-boot) is ignored.  During
a boot the boot owns its domain's events (``Booter.domain_event``); outside
it, a domain that stops or crashes is a VM that ``vanished`` outside
summoner, and a pause or resume behind summoner's back is followed.

Tests: tests/vm/test_events.py
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.logger import Logger

from summoner.vm.backend import Backend, DomainEvent, DomainState
from summoner.vm.boot import Booter
from summoner.vm.lifecycle import Service, State
from summoner.vm.stop import Stopper
from summoner.vm.virt import VirtDecision

log = Logger(namespace="summoner.vm.events")


class EventRouter:
    def __init__(self, service_of: Callable[[str], Service | None], backend: Backend, booter: Booter,
                 stopper: Stopper, virt: VirtDecision, vanished: Callable[[Service], None]) -> None:
        self._service_of = service_of
        self._backend = backend
        self._booter = booter
        self._stopper = stopper
        self._virt = virt
        self._vanished = vanished   # after the transition: a standby may be prepared

    def on_event(self, domain: str, event: DomainEvent, detail: str, uuid: str = "") -> None:
        svc = self._service_of(domain)
        if svc is None:
            if domain == self._virt.check.domain_name:
                self._virt.on_check_event(event, detail)
            return
        if event is DomainEvent.STOPPED and detail == "saved" and svc.saves_pending:
            # summoner's own save (stop mode snapshot, a golden snapshot): the
            # restored domain keeps the UUID, so only this count tells it apart
            svc.saves_pending -= 1
            return
        if self._booter.domain_event(svc, event, detail, uuid):
            return
        if uuid and svc.domain_uuid and uuid != svc.domain_uuid:
            return  # an earlier instance of this domain
        if event.ends_domain:
            self._ended(svc, event, detail)
        elif event is DomainEvent.SUSPENDED and svc.state is State.READY:
            log.warn("{service}: VM paused outside summoner ({detail})", service=svc.name, detail=detail)
            svc.paused_outside()
        elif event is DomainEvent.RESUMED and svc.state is State.SUSPENDED:
            svc.resumed_outside()

    def _ended(self, svc: Service, event: DomainEvent, detail: str) -> None:
        svc.standby = False  # if it was the standby domain (virsh destroy?), it is gone
        self._stopper.domain_ended(svc)
        if svc.state not in (State.READY, State.SUSPENDED):
            return

        # A restored snapshot keeps its UUID, so a late event of the instance
        # it replaced looks like this one's: only a domain that is gone now
        # has vanished.  The query runs behind summoner's own libvirt calls.
        def checked(state: DomainState) -> None:
            if state.ended and svc.state in (State.READY, State.SUSPENDED) and not svc.retired:
                log.warn("{service}: VM {event} outside summoner ({detail}); next query boots it again",
                         service=svc.name, event=str(event), detail=detail)
                svc.vanished()
                self._vanished(svc)
        self._backend.state(svc.spec.domain_name).addCallbacks(checked, lambda failure: None)
