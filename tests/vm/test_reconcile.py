"""Reconciliation with libvirt's domains at start and after reconnects (summoner.vm.reconcile),
against a fake libvirt whose "VMs" are local HTTP listeners, in the three
orders libvirt may deliver events in (tests/vm/fleetcase.py)."""

from __future__ import annotations

from dnslib import RCODE
from twisted.internet import defer, reactor

from summoner.answer import Answer, Query
from summoner.vm.app import OnDemand
from summoner.vm.config import OnDemandConfig
from summoner.vm.lifecycle import State
from tests.vm.fakes import host, manifest
from tests.vm.fleetcase import FleetCase, event_orders, sleep


class ReconcileTest(FleetCase):
    @defer.inlineCallbacks
    def test_restart_adopts_running_vms_without_booting(self):
        images = {"hello": manifest("hello")}
        od = self.make([host("hello", "127.0.0.90", "hello")], images)
        yield od.start()
        yield od.stage.resolve(Query.of("hello.example.org", "A"))
        # A second summoner over the same "libvirt": adopts, does not boot.
        od2 = OnDemand(OnDemandConfig(virt_type="qemu"), reactor,
                       backend=self.backend, images=images)
        od2.update_hosts([host("hello", "127.0.0.90", "hello")])
        yield od2.start()
        self.assertEqual(od2.fleet.services["hello.example.org"].state, State.READY)
        self.assertEqual(self.backend.creates, 1)
        self.assertIsInstance(od2.stage.resolve(Query.of("hello.example.org", "A")), Answer)
        od2.reaper.stop()

    @defer.inlineCallbacks
    def test_restart_after_a_configuration_change_destroys_instead_of_adopting(self):
        for label, address, changed_images, changed_host in (
                ("img", "127.0.0.88", {"hello": manifest("hello", build="build 2")}, {}),  # image rebuilt
                ("decl", "127.0.0.89", {"hello": manifest("hello")}, {"memory_mib": 128})):  # zone declaration
            od = self.make([host(label, address, "hello")], {"hello": manifest("hello")})
            yield od.start()
            yield od.stage.resolve(Query.of(f"{label}.example.org", "A"))
            domain = f"summoner-{label}.example.org"
            old_uuid = self.backend.domains[domain]["uuid"]
            # A restarted summoner whose image or declaration changed meanwhile.
            od2 = OnDemand(OnDemandConfig(virt_type="qemu"), reactor,
                           backend=self.backend, images=changed_images)
            od2.update_hosts([host(label, address, "hello", **changed_host)])
            yield od2.start()
            svc = od2.fleet.services[f"{label}.example.org"]
            self.assertEqual(svc.state, State.STOPPED, label)  # not adopted
            self.assertNotIn(domain, self.backend.domains, label)  # destroyed at start
            self.assertEqual((self.backend.creates, self.backend.destroys), (1, 1), label)
            answer = yield od2.stage.resolve(Query.of(f"{label}.example.org", "A"))
            self.assertEqual(answer.rcode, RCODE.NOERROR, label)
            self.assertEqual(self.backend.creates, 2, label)  # the query booted a new one
            self.assertEqual(svc.boot_count, 1, label)
            self.assertNotEqual(self.backend.domains[domain]["uuid"], old_uuid, label)
            self.assertEqual(self.backend.domains[domain]["meta"].config_hash, svc.spec.config_hash, label)
            od2.reaper.stop()
            yield od2.stop()
            yield self._cleanup()

    @defer.inlineCallbacks
    def test_reconcile_destroys_orphans_and_notices_vanished(self):
        images = {"hello": manifest("hello")}
        od = self.make([host("a", "127.0.0.93", "hello"), host("b", "127.0.0.94", "hello")], images)
        yield od.start()
        yield od.stage.resolve(Query.of("a.example.org", "A"))
        yield od.stage.resolve(Query.of("b.example.org", "A"))
        # While "disconnected": b vanished without an event.
        self.backend.lose("summoner-b.example.org")
        od2 = OnDemand(OnDemandConfig(virt_type="qemu"), reactor,
                       backend=self.backend, images=images)
        od2.update_hosts([host("b", "127.0.0.94", "hello")])  # a was removed from the zone
        yield od2.start()
        self.assertNotIn("summoner-a.example.org", self.backend.domains)
        stats = yield od.fleet.reconciler.reconcile()
        self.assertEqual(self.svc("b.example.org").state, State.STOPPED)
        # a was destroyed by the other summoner, b lost: both vanished, nothing left to destroy
        self.assertEqual(self.svc("a.example.org").state, State.STOPPED)
        self.assertEqual((stats.destroyed, stats.vanished), (0, 2))
        od2.reaper.stop()


    @defer.inlineCallbacks
    def test_another_summoner_s_domains_are_left_alone(self):
        images = {"hello": manifest("hello")}
        od = self.make([host("mine", "127.0.0.120", "hello")], images)
        yield od.start()
        yield od.stage.resolve(Query.of("mine.example.org", "A"))
        # A second summoner on the same libvirtd with its own prefix and zones
        # that do not have "mine": it must not take that VM for an orphan.
        other = OnDemand(OnDemandConfig(virt_type="qemu", domain_prefix="other-", state_dir=self.od.config.state_dir),
                         reactor, backend=self.backend, images=images)
        other.update_hosts([host("theirs", "127.0.0.121", "hello")])
        self.addCleanup(other.stop)
        yield other.start()
        self.assertIn("summoner-mine.example.org", self.backend.domains)
        self.assertEqual(self.backend.destroys, 0)
        yield other.stage.resolve(Query.of("theirs.example.org", "A"))
        self.assertIn("other-theirs.example.org", self.backend.domains)
        stats = yield od.fleet.reconciler.reconcile()
        self.assertEqual((stats.destroyed, self.svc("mine.example.org").state), (0, State.READY))
        self.assertIn("other-theirs.example.org", self.backend.domains)


    @defer.inlineCallbacks
    def test_stopping_summoner_during_an_adoption_keeps_the_vm(self):
        images = {"hello": manifest("hello")}
        od = self.make([host("kept", "127.0.0.122", "hello")], images)
        yield od.start()
        yield od.stage.resolve(Query.of("kept.example.org", "A"))
        self.backend.domains["summoner-kept.example.org"]["silent"] = True  # its probe will not succeed soon
        od2 = OnDemand(OnDemandConfig(virt_type="qemu", state_dir=self.od.config.state_dir), reactor,
                       backend=self.backend, images=images)
        od2.update_hosts([host("kept", "127.0.0.122", "hello")])
        od2.start()
        yield sleep(0.1)  # adopting: probing the running VM
        self.assertEqual(od2.fleet.services["kept.example.org"].state, State.BOOTING)
        yield od2.stop()  # summoner stops: VMs keep running for the next start
        yield sleep(0.1)
        self.assertIn("summoner-kept.example.org", self.backend.domains)
        self.assertEqual(self.backend.destroys, 0)


ReconcileTestEventsBefore, ReconcileTestEventsAfter = event_orders(ReconcileTest)
