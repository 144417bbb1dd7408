"""State machine, single flight, deadlines, capacity, reaping, events and the
stage, against a fake libvirt whose "VMs" are local HTTP listeners."""

from __future__ import annotations

import time

from dnslib import QTYPE, RCODE
from prometheus_client import REGISTRY
from twisted.internet import defer, reactor, task
from twisted.trial import unittest

from summoner.resolution import Answer, Query
from summoner.vm.app import OnDemand
from summoner.vm.backend import DomainEvent
from summoner.vm.config import OnDemandConfig
from summoner.vm.lifecycle import State
from tests.vm.fakes import FakeBackend, host, manifest


def sleep(seconds: float) -> defer.Deferred:
    return task.deferLater(reactor, seconds, lambda: None)


class FleetTest(unittest.TestCase):
    timeout = 30

    def make(self, hosts, images, boot_delay: float = 0.05, **config) -> OnDemand:
        config.setdefault("virt_type", "qemu")
        config.setdefault("reap_interval", 0.1)
        self.backend = FakeBackend(boot_delay)
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

    def svc(self, name: str):
        return self.od.fleet.services[name]

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
    def test_external_destroy_is_noticed_and_next_query_boots(self):
        od = self.make([host("hello", "127.0.0.46", "hello")], {"hello": manifest("hello")})
        yield od.start()
        yield od.stage.resolve(Query.of("hello.example.org", "A"))
        warm = od.stage.resolve(Query.of("hello.example.org", "A"))
        self.assertTrue(warm.on_hit())  # a cached replay of it holds while the VM runs
        self.backend.kill("summoner-hello.example.org")
        yield sleep(0.01)  # the events arrive
        self.assertEqual(self.svc("hello.example.org").state, State.STOPPED)
        self.assertFalse(warm.on_hit())  # ...and not once it is gone: the wire layer resolves afresh
        answer = yield od.stage.resolve(Query.of("hello.example.org", "A"))
        self.assertEqual(answer.rcode, RCODE.NOERROR)
        self.assertEqual(self.backend.creates, 2)

    @defer.inlineCallbacks
    def test_idle_reap_then_reboot(self):
        od = self.make([host("hello", "127.0.0.47", "hello", idle=0.3)], {"hello": manifest("hello")})
        yield od.start()
        answer = yield od.stage.resolve(Query.of("hello.example.org", "A"))
        # Queries (on_hit) keep it alive past the idle timeout.
        for _ in range(5):
            yield sleep(0.1)
            answer.on_hit()
        self.assertEqual(self.svc("hello.example.org").state, State.READY)
        yield sleep(0.6)
        self.assertEqual(self.svc("hello.example.org").state, State.STOPPED)
        self.assertEqual(self.backend.domains, {})
        yield od.stage.resolve(Query.of("hello.example.org", "A"))
        self.assertEqual(self.backend.creates, 2)

    @defer.inlineCallbacks
    def test_guest_traffic_keeps_it_alive(self):
        od = self.make([host("hello", "127.0.0.48", "hello", idle=0.3)], {"hello": manifest("hello")})
        yield od.start()
        yield od.stage.resolve(Query.of("hello.example.org", "A"))
        dom = "summoner-hello.example.org"
        for i in range(8):  # counters change every tick: traffic, no DNS
            self.backend.traffic_tokens[dom] = (f"TCP[TIME_WAIT] {i}",)
            yield sleep(0.1)
        self.assertEqual(self.svc("hello.example.org").state, State.READY)
        self.backend.traffic_tokens[dom] = ()
        yield sleep(0.7)
        self.assertEqual(self.svc("hello.example.org").state, State.STOPPED)

    @defer.inlineCallbacks
    def test_suspend_mode_resumes_fast(self):
        od = self.make([host("hello", "127.0.0.49", "hello", idle=0.2, stop="suspend")],
                       {"hello": manifest("hello")}, boot_delay=0.3)
        yield od.start()
        yield od.stage.resolve(Query.of("hello.example.org", "A"))
        yield sleep(0.5)
        self.assertEqual(self.svc("hello.example.org").state, State.SUSPENDED)
        started = time.monotonic()
        answer = yield od.stage.resolve(Query.of("hello.example.org", "A"))
        self.assertLess(time.monotonic() - started, 0.1)  # no boot delay
        self.assertEqual(answer.rcode, RCODE.NOERROR)
        self.assertEqual(self.backend.creates, 1)

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

    @defer.inlineCallbacks
    def test_query_while_stopping_boots_again(self):
        od = self.make([host("hello", "127.0.0.96", "hello")], {"hello": manifest("hello")})
        yield od.start()
        yield od.stage.resolve(Query.of("hello.example.org", "A"))
        stopping = od.stop_service("hello.example.org")
        self.assertEqual(self.svc("hello.example.org").state, State.STOPPING)
        d = od.stage.resolve(Query.of("hello.example.org", "A"))
        self.assertIsInstance(d, defer.Deferred)
        yield stopping
        answer = yield d
        self.assertEqual(answer.rcode, RCODE.NOERROR)
        self.assertEqual(self.backend.creates, 2)

    @defer.inlineCallbacks
    def test_unbuilt_image_fails_with_reason(self):
        od = self.make([host("hello", "127.0.0.97", "hello")], {"hello": manifest("hello", kernel="missing")})
        yield od.start()
        answer = yield od.stage.resolve(Query.of("hello.example.org", "A"))
        self.assertEqual(answer.rcode, RCODE.SERVFAIL)
        self.assertIn("not built", self.svc("hello.example.org").last_error)
        self.assertEqual(self.backend.creates, 0)

    @defer.inlineCallbacks
    def test_a_standby_pause_reported_late_does_not_abort_its_boot(self):
        od = self.make([host("hello", "127.0.0.97", "hello")], {"hello": manifest("hello")},
                       standby=True, boot_delay=0.2)
        yield od.start()
        yield sleep(0.05)
        svc = self.svc("hello.example.org")
        uuid = self.backend.domains["summoner-hello.example.org"]["uuid"]
        pending = od.stage.resolve(Query.of("hello.example.org", "A"))
        yield sleep(0.05)
        # the pause libvirt reports for the standby's creation, arriving after the resume
        od.fleet.events.on_event("summoner-hello.example.org", DomainEvent.SUSPENDED, "paused", uuid)
        answer = yield pending
        self.assertEqual(answer.rcode, RCODE.NOERROR)
        self.assertEqual(svc.state, State.READY)

    @defer.inlineCallbacks
    def test_standby_domain_is_used_by_the_cold_boot_and_prepared_again(self):
        od = self.make([host("hello", "127.0.0.98", "hello")], {"hello": manifest("hello")}, standby=True)
        yield od.start()
        yield sleep(0.05)
        svc = self.svc("hello.example.org")
        self.assertTrue(svc.standby)
        self.assertEqual(self.backend.domains["summoner-hello.example.org"]["state"], "paused")
        self.assertEqual(self.backend.creates, 1)
        answer = yield od.stage.resolve(Query.of("hello.example.org", "A"))
        self.assertEqual(answer.rcode, RCODE.NOERROR)
        self.assertEqual(self.backend.creates, 1)  # the query resumed the standby, no create
        self.assertEqual(svc.boot_count, 1)
        self.assertFalse(svc.standby)
        yield od.stop_service("hello.example.org")
        yield sleep(0.05)
        self.assertTrue(svc.standby)  # a new standby after the stop
        self.assertEqual(self.backend.creates, 2)
        # A restarted summoner takes the standby over instead of making another.
        od2 = OnDemand(OnDemandConfig(virt_type="qemu", standby=True), reactor,
                       backend=self.backend, images={"hello": manifest("hello")})
        od2.update_hosts([host("hello", "127.0.0.98", "hello")])
        yield od2.start()
        self.assertTrue(od2.fleet.services["hello.example.org"].standby)
        self.assertEqual(od2.fleet.services["hello.example.org"].state, State.STOPPED)
        self.assertEqual(self.backend.creates, 2)
        od2.reaper.stop()

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
    def test_shutdown_mode_destroys_after_grace(self):
        od = self.make([host("hello", "127.0.0.100", "hello", idle=0.2, stop="shutdown")],
                       {"hello": manifest("hello")})
        yield od.start()
        yield od.stage.resolve(Query.of("hello.example.org", "A"))
        yield sleep(0.5)
        self.assertEqual(self.svc("hello.example.org").state, State.STOPPING)  # ACPI ignored, in grace
        yield sleep(0.6)
        self.assertEqual(self.svc("hello.example.org").state, State.STOPPED)
        self.assertEqual(self.backend.destroys, 1)

    @defer.inlineCallbacks
    def test_shutdown_mode_guest_that_powers_off_needs_no_destroy(self):
        od = self.make([host("hello", "127.0.0.102", "hello", idle=0.2, stop="shutdown")],
                       {"hello": manifest("hello")})
        self.backend.acpi.add("hello.example.org")  # the guest honours the ACPI power button
        yield od.start()
        yield od.stage.resolve(Query.of("hello.example.org", "A"))
        yield sleep(0.65)  # reaped after ~0.3 s, powered off ~0.11 s later; the grace (0.5 s) not over
        self.assertEqual(self.svc("hello.example.org").state, State.STOPPED)
        self.assertEqual((self.backend.shutdowns, self.backend.destroys), (1, 0))
        self.assertIn(("summoner-hello.example.org", "stopped", "shutdown"), self.backend.events)
        yield sleep(0.5)  # past the grace: still no destroy
        self.assertEqual(self.backend.destroys, 0)

    @defer.inlineCallbacks
    def test_auto_virt_type_falls_back_to_tcg_when_the_kvm_check_fails(self):
        import shutil
        import tempfile
        from pathlib import Path

        import summoner.vm.kvmcheck as kvmcheck_module
        tmp = Path(tempfile.mkdtemp(prefix="summoner-verdict-"))
        self.addCleanup(shutil.rmtree, tmp, True)
        self.patch(kvmcheck_module, "VERDICT_PATH", tmp / "verdict")
        od = self.make([host("hello", "127.0.0.101", "hello")], {"hello": manifest("hello")}, virt_type="auto")
        self.backend.kvm_usable = lambda: defer.succeed((True, "ok"))
        self.backend.silent.add("kvm-boot-check")  # the test boot never answers: a broken KVM
        yield od.start()
        self.assertEqual(od.fleet.virt.virt_type, "qemu")
        self.assertTrue(kvmcheck_module.VERDICT_PATH.read_text().startswith("qemu "))
        self.assertNotIn("summoner-kvm-boot-check", self.backend.domains)
        answer = yield od.stage.resolve(Query.of("hello.example.org", "A"))
        self.assertEqual(answer.rcode, RCODE.NOERROR)
        self.assertIn('type="qemu"', self.backend.domains["summoner-hello.example.org"]["xml"])
        # The verdict is reused: a second start does not test-boot again.
        creates = self.backend.creates
        od2 = OnDemand(OnDemandConfig(virt_type="auto"), reactor,
                       backend=self.backend, images={"hello": manifest("hello")})
        od2.update_hosts([host("hello", "127.0.0.101", "hello")])
        yield od2.start()
        self.assertEqual(od2.fleet.virt.virt_type, "qemu")
        self.assertEqual(self.backend.creates, creates)
        od2.reaper.stop()


class FleetTestEventsBeforeResults(FleetTest):
    """Every test again, with every libvirt event delivered before the
    result of the call that caused it (libvirt's event thread winning the
    race with the reply; see tests/vm/fakes.py)."""

    def make(self, *args, **kwargs) -> OnDemand:
        od = super().make(*args, **kwargs)
        self.backend.event_order = "before"
        return od


class FleetTestEventsAfterResults(FleetTest):
    """Every test again, with every event delivered after the result."""

    def make(self, *args, **kwargs) -> OnDemand:
        od = super().make(*args, **kwargs)
        self.backend.event_order = "after"
        return od
