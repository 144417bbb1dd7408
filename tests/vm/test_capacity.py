"""VM and memory limits, least-recently-used eviction (summoner.vm.capacity),
against a fake libvirt whose "VMs" are local HTTP listeners, in the three
orders libvirt may deliver events in (tests/vm/fleetcase.py)."""

from __future__ import annotations

from dnslib import RCODE
from prometheus_client import REGISTRY
from twisted.internet import defer

from summoner.answer import Query
from summoner.vm.lifecycle import State
from tests.vm.fakes import host, manifest
from tests.vm.fleetcase import FleetCase, event_orders, sleep


class CapacityTest(FleetCase):
    @defer.inlineCallbacks
    def test_capacity_reaps_least_recently_used(self):
        images = {"hello": manifest("hello")}
        hosts = [host(f"h{i}", f"127.0.0.{50 + i}", "hello") for i in range(3)]
        od = self.make(hosts, images, max_vms=2, evict_min_idle=0.0)
        yield od.start()
        yield od.stage.resolve(Query.of("h0.example.org", "A"))
        yield sleep(0.02)
        yield od.stage.resolve(Query.of("h1.example.org", "A"))
        yield sleep(0.02)
        od.stage.resolve(Query.of("h0.example.org", "A"))  # h0 is now the most recently used
        answer = yield od.stage.resolve(Query.of("h2.example.org", "A"))
        self.assertEqual(answer.rcode, RCODE.NOERROR)
        states = {n: s.state for n, s in od.fleet.services.items()}
        self.assertEqual(states["h1.example.org"], State.STOPPED)
        self.assertEqual(states["h0.example.org"], State.READY)
        self.assertEqual(states["h2.example.org"], State.READY)

    @defer.inlineCallbacks
    def test_capacity_refusal_when_nothing_idle(self):
        images = {"hello": manifest("hello")}
        hosts = [host(f"c{i}", f"127.0.0.{60 + i}", "hello") for i in range(2)]
        od = self.make(hosts, images, max_vms=1, evict_min_idle=60.0)
        yield od.start()
        yield od.stage.resolve(Query.of("c0.example.org", "A"))
        answer = yield od.stage.resolve(Query.of("c1.example.org", "A"))
        self.assertEqual(answer.rcode, RCODE.SERVFAIL)
        self.assertIn("no capacity", self.svc("c1.example.org").last_error)
        self.assertEqual(self.svc("c1.example.org").state, State.STOPPED)  # no back-off for capacity

    @defer.inlineCallbacks
    def test_memory_budget(self):
        images = {"big": manifest("big", memory=300)}
        hosts = [host(f"m{i}", f"127.0.0.{70 + i}", "big") for i in range(2)]
        od = self.make(hosts, images, memory_budget_mib=512, evict_min_idle=60.0)
        yield od.start()
        first = yield od.stage.resolve(Query.of("m0.example.org", "A"))
        self.assertEqual(first.rcode, RCODE.NOERROR)  # 300 of 512 MiB: fits
        self.assertEqual(self.svc("m0.example.org").state, State.READY)
        capacity = {"service": "m1.example.org", "result": "capacity"}
        refusals = REGISTRY.get_sample_value("summoner_vm_capacity_refusals_total") or 0.0
        refused_boots = REGISTRY.get_sample_value("summoner_vm_boots_total", capacity) or 0.0
        answer = yield od.stage.resolve(Query.of("m1.example.org", "A"))
        self.assertEqual(answer.rcode, RCODE.SERVFAIL)  # 600 > 512, and m0 is not idle long enough to evict
        self.assertEqual(REGISTRY.get_sample_value("summoner_vm_capacity_refusals_total"), refusals + 1)
        self.assertEqual(REGISTRY.get_sample_value("summoner_vm_boots_total", capacity), refused_boots + 1)
        m1 = self.svc("m1.example.org")
        self.assertEqual(m1.state, State.STOPPED)
        self.assertEqual(m1.last_error, "no capacity: needs 300 MiB; 1 of 16 VMs and 300 of 512 MiB in use, "
                                        "none idle for 60s")
        self.assertEqual(self.backend.creates, 1)  # no domain was started for m1


CapacityTestEventsBefore, CapacityTestEventsAfter = event_orders(CapacityTest)
