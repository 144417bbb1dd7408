"""The fleet: hosts added, removed and changed by zone reloads, the stage's answers, the operator's
actions (summoner.vm.fleet, summoner.vm.stage, summoner.vm.app),
against a fake libvirt whose "VMs" are local HTTP listeners, in the three
orders libvirt may deliver events in (tests/vm/fleetcase.py)."""

from __future__ import annotations

from dnslib import QTYPE, RCODE
from twisted.internet import defer

from summoner.answer import Query
from tests.vm.fakes import host, manifest
from tests.vm.fleetcase import FleetCase, event_orders, sleep


class FleetTest(FleetCase):
    @defer.inlineCallbacks
    def test_other_types_and_names(self):
        od = self.make([host("hello", "127.0.0.42", "hello")], {"hello": manifest("hello")})
        yield od.start()
        self.assertIsNone(od.stage.resolve(Query.of("www.example.org", "A")))
        nodata = od.stage.resolve(Query.of("hello.example.org", "AAAA"))
        self.assertEqual(nodata.rcode, RCODE.NOERROR)
        self.assertEqual(nodata.answer, [])
        self.assertEqual(nodata.authority[0].rtype, QTYPE.SOA)
        self.assertEqual(nodata.authority[0].ttl, 60)
        self.assertEqual(od.stage.resolve(Query.of("hello.example.org", "MX")).answer, [])
        self.assertEqual(self.backend.creates, 0)  # none of these summon

    @defer.inlineCallbacks
    def test_removed_and_changed_hosts_stop_their_vms(self):
        images = {"hello": manifest("hello")}
        od = self.make([host("a", "127.0.0.91", "hello"), host("b", "127.0.0.92", "hello")], images)
        yield od.start()
        yield od.stage.resolve(Query.of("a.example.org", "A"))
        yield od.stage.resolve(Query.of("b.example.org", "A"))
        od.update_hosts([host("b", "127.0.0.92", "hello", memory_mib=128)])
        yield sleep(0.05)
        self.assertEqual(self.backend.domains, {})
        self.assertIsNone(od.stage.resolve(Query.of("a.example.org", "A")))
        answer = yield od.stage.resolve(Query.of("b.example.org", "A"))
        self.assertEqual(answer.rcode, RCODE.NOERROR)
        self.assertIn("unit=MiB>128<", self.backend.domains["summoner-b.example.org"]["xml"].replace('"', ""))

    @defer.inlineCallbacks
    def test_admin_summon_and_stop(self):
        od = self.make([host("hello", "127.0.0.95", "hello")], {"hello": manifest("hello")})
        yield od.start()
        self.assertEqual(od.find("hello"), "hello.example.org")
        self.assertIsNone(od.find("nope"))
        result = yield od.summon("hello.example.org")
        self.assertTrue(result["ok"])
        self.assertEqual(result["state"], "ready")
        result = yield od.stop_service("hello.example.org")
        self.assertTrue(result["ok"])
        self.assertEqual(result["state"], "stopped")
        rows = od.status()
        self.assertEqual(rows[0]["boot_count"], 1)


FleetTestEventsBefore, FleetTestEventsAfter = event_orders(FleetTest)
