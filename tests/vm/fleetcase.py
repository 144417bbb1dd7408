"""The base of the on-demand tests that run against ``FakeBackend``: one
``OnDemand`` with its fake libvirt per test, torn down after it, and every
test class run three times, once per order in which libvirt may deliver a
call's events against its result (see tests/vm/fakes.py)."""

from __future__ import annotations

from pathlib import Path

from twisted.internet import defer, reactor, task
from twisted.trial import unittest

from summoner.images import ImageManifest
from summoner.vm.app import OnDemand
from summoner.vm.config import OnDemandConfig
from summoner.vm.hosts import OnDemandHost
from summoner.vm.lifecycle import Service
from tests.vm.fakes import FakeBackend


def sleep(seconds: float) -> defer.Deferred:
    return task.deferLater(reactor, seconds, lambda: None)


class FleetCase(unittest.TestCase):
    timeout = 30
    event_order = "usual"

    def make(self, hosts: list[OnDemandHost], images: dict[str, ImageManifest], boot_delay: float = 0.05,
             **config: object) -> OnDemand:
        config.setdefault("virt_type", "qemu")
        config.setdefault("reap_interval", 0.1)
        config.setdefault("state_dir", Path(self.mktemp()))
        self.backend = FakeBackend(boot_delay)
        self.backend.event_order = self.event_order
        od = OnDemand(OnDemandConfig(**config), reactor, backend=self.backend, images=images)
        od.update_hosts(hosts)
        self.od = od
        self.addCleanup(self._cleanup)
        return od

    @defer.inlineCallbacks
    def _cleanup(self):
        yield self.od.stop()
        self.backend.teardown()
        yield sleep(0.02)

    def svc(self, name: str) -> Service:
        return self.od.fleet.services[name]


def event_orders(case: type[FleetCase]) -> tuple[type[FleetCase], type[FleetCase]]:
    """``case`` again with every event before, and after, the call's result:
    the two extremes libvirt's event thread and reply can produce."""
    before = type(case.__name__ + "EventsBefore", (case,), {"event_order": "before", "__module__": case.__module__})
    after = type(case.__name__ + "EventsAfter", (case,), {"event_order": "after", "__module__": case.__module__})
    return before, after
