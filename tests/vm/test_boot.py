"""Boots: single flight, the deadline and its back-off, the probe's status, unbuilt images, the
boot-slot limit, libvirt away (summoner.vm.boot),
against a fake libvirt whose "VMs" are local HTTP listeners, in the three
orders libvirt may deliver events in (tests/vm/fleetcase.py)."""

from __future__ import annotations

import time

from dnslib import RCODE
from twisted.internet import defer, reactor

from summoner.answer import Answer, Query
from summoner.vm.domxml import NetworkSettings, domain_xml
from summoner.vm.lifecycle import State
from tests.vm.fakes import host, manifest
from tests.vm.fleetcase import FleetCase, event_orders, sleep


class BootTest(FleetCase):
    @defer.inlineCallbacks
    def test_cold_query_waits_for_probe_then_warm_is_synchronous(self):
        od = self.make([host("hello", "127.0.0.41", "hello")], {"hello": manifest("hello")}, boot_delay=0.3)
        yield od.start()
        started = time.monotonic()
        result = od.stage.resolve(Query.of("hello.example.org", "A"))
        self.assertIsInstance(result, defer.Deferred)
        answer = yield result
        self.assertGreaterEqual(time.monotonic() - started, 0.3)  # only after the listener came up
        self.assertEqual(answer.rcode, RCODE.NOERROR)
        self.assertEqual([str(rr.rdata) for rr in answer.answer], ["127.0.0.41"])
        self.assertEqual(answer.answer[0].ttl, 10)  # --answer-ttl default, not the zone's 300
        warm = od.stage.resolve(Query.of("HELLO.example.org", "A"))
        self.assertIsInstance(warm, Answer)
        self.assertTrue(warm.cacheable)
        self.assertIsNotNone(warm.on_hit)
        self.assertEqual(self.backend.creates, 1)
        self.assertEqual(self.svc("hello.example.org").boot_count, 1)

    @defer.inlineCallbacks
    def test_fifty_concurrent_queries_one_boot(self):
        od = self.make([host("hello", "127.0.0.43", "hello")], {"hello": manifest("hello")}, boot_delay=0.2)
        yield od.start()
        results = [od.stage.resolve(Query.of("hello.example.org", "A")) for _ in range(50)]
        answers = yield defer.gatherResults(results)
        self.assertEqual(len(answers), 50)
        self.assertTrue(all(a.rcode == RCODE.NOERROR and a.answer for a in answers))
        self.assertEqual(self.backend.creates, 1)

    @defer.inlineCallbacks
    def test_deadline_servfails_all_waiters_destroys_and_backs_off(self):
        od = self.make([host("silent", "127.0.0.44", "silent")], {"silent": manifest("silent", boot_timeout=0.4)},
                       retry_backoff=0.5)
        self.backend.silent.add("silent.example.org")
        yield od.start()
        started = time.monotonic()
        answers = yield defer.gatherResults([od.stage.resolve(Query.of("silent.example.org", "A"))
                                             for _ in range(3)])
        elapsed = time.monotonic() - started
        self.assertTrue(all(a.rcode == RCODE.SERVFAIL and not a.cacheable for a in answers))
        self.assertLess(elapsed, 0.4 + 0.3)
        svc = self.svc("silent.example.org")
        self.assertEqual(svc.state, State.FAILED)
        self.assertIn("last probe error", svc.last_error)
        yield sleep(0.05)
        self.assertEqual(self.backend.domains, {})  # destroyed
        # In back-off: immediate SERVFAIL, no boot.
        quick = od.stage.resolve(Query.of("silent.example.org", "A"))
        self.assertEqual(quick.rcode, RCODE.SERVFAIL)
        self.assertEqual(self.backend.creates, 1)
        # After the back-off a query boots again (and the next back-off doubles).
        yield sleep(0.55)
        yield od.stage.resolve(Query.of("silent.example.org", "A"))
        self.assertEqual(self.backend.creates, 2)
        self.assertEqual(svc.failures, 2)
        self.assertLess(abs(svc.retry_at - reactor.seconds() - 1.0), 0.2)

    @defer.inlineCallbacks
    def test_probe_expects_status(self):
        od = self.make([host("hello", "127.0.0.45", "hello")], {"hello": manifest("hello", boot_timeout=1.5)})
        self.backend.status["hello.example.org"] = 503
        yield od.start()
        answer = yield od.stage.resolve(Query.of("hello.example.org", "A"))
        self.assertEqual(answer.rcode, RCODE.SERVFAIL)
        self.assertIn("HTTP 503", self.svc("hello.example.org").last_error)

    @defer.inlineCallbacks
    def test_unbuilt_image_fails_with_reason(self):
        od = self.make([host("hello", "127.0.0.97", "hello")], {"hello": manifest("hello", kernel="missing")})
        yield od.start()
        answer = yield od.stage.resolve(Query.of("hello.example.org", "A"))
        self.assertEqual(answer.rcode, RCODE.SERVFAIL)
        self.assertIn("not built", self.svc("hello.example.org").last_error)
        self.assertEqual(self.backend.creates, 0)

    @defer.inlineCallbacks
    def test_concurrent_boot_limit(self):
        images = {"hello": manifest("hello")}
        hosts = [host(f"b{i}", f"127.0.0.{80 + i}", "hello") for i in range(3)]
        od = self.make(hosts, images, max_concurrent_boots=1, boot_delay=0.1)
        yield od.start()
        ds = [od.stage.resolve(Query.of(f"b{i}.example.org", "A")) for i in range(3)]
        yield sleep(0.05)
        booting_with_vm = [s for s in od.fleet.services.values() if s.reserved]
        self.assertEqual(len(booting_with_vm), 1)
        answers = yield defer.gatherResults(ds)
        self.assertTrue(all(a.rcode == RCODE.NOERROR for a in answers))

    @defer.inlineCallbacks
    def test_boot_waits_for_libvirt_to_come_back(self):
        od = self.make([host("hello", "127.0.0.99", "hello")], {"hello": manifest("hello")})
        yield od.start()
        self.backend.connected = False
        d = od.stage.resolve(Query.of("hello.example.org", "A"))
        yield sleep(0.2)
        self.assertFalse(d.called)
        self.backend.reconnect()
        answer = yield d
        self.assertEqual(answer.rcode, RCODE.NOERROR)

    @defer.inlineCallbacks
    def test_libvirt_down_for_longer_than_a_boot_refuses_at_once(self):
        od = self.make([host("hello", "127.0.0.98", "hello")], {"hello": manifest("hello", boot_timeout=5.0)})
        yield od.start()
        self.backend.connected = False
        self.backend.down_since = reactor.seconds() - 6.0  # not a restart: down for more than 5 s
        started = time.monotonic()
        answer = yield od.stage.resolve(Query.of("hello.example.org", "A"))
        self.assertLess(time.monotonic() - started, 1.0)
        self.assertEqual(answer.rcode, RCODE.SERVFAIL)
        svc = self.svc("hello.example.org")
        self.assertIn("libvirt unreachable", svc.last_error)
        self.assertIn("start libvirtd", svc.last_error)
        self.assertEqual(self.backend.creates, 0)

    @defer.inlineCallbacks
    def test_a_leftover_domain_of_the_same_name_is_replaced(self):
        """A domain a failed destroy left behind: libvirt refuses the create
        (DomainExistsError); the boot destroys the leftover and creates again."""
        od = self.make([host("hello", "127.0.0.103", "hello")], {"hello": manifest("hello")})
        yield od.start()
        spec = self.svc("hello.example.org").spec
        yield self.backend.create(spec.domain_name, domain_xml(spec, "qemu", NetworkSettings()), paused=True)
        leftover = self.backend.domains[spec.domain_name]["uuid"]
        answer = yield od.stage.resolve(Query.of("hello.example.org", "A"))
        self.assertEqual(answer.rcode, RCODE.NOERROR)
        self.assertEqual(self.backend.destroys, 1)
        self.assertNotEqual(self.backend.domains[spec.domain_name]["uuid"], leftover)

    @defer.inlineCallbacks
    def test_a_host_removed_while_booting_cancels_the_boot_and_destroys_its_domain(self):
        od = self.make([host("gone", "127.0.0.104", "hello"), host("stays", "127.0.0.105", "hello")],
                       {"hello": manifest("hello", boot_timeout=5.0)}, boot_delay=0.5)
        yield od.start()
        svc = self.svc("gone.example.org")
        pending = od.stage.resolve(Query.of("gone.example.org", "A"))
        yield sleep(0.1)  # the domain exists, the guest is still booting
        self.assertIn("summoner-gone.example.org", self.backend.domains)
        od.update_hosts([host("stays", "127.0.0.105", "hello")])
        self.assertTrue(pending.called)  # answered at once, not at the 5 s deadline
        answer = yield pending
        self.assertEqual(answer.rcode, RCODE.SERVFAIL)
        yield sleep(0.6)  # past the guest's boot: no late "ready" for a removed service
        self.assertNotIn("summoner-gone.example.org", self.backend.domains)
        self.assertEqual((svc.state, svc.boot_count, svc.task), (State.STOPPED, 1, None))
        self.assertNotIn("gone.example.org", od.fleet.services)


BootTestEventsBefore, BootTestEventsAfter = event_orders(BootTest)
