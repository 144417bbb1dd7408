"""The KVM or TCG decision (summoner.vm.virt),
against a fake libvirt whose "VMs" are local HTTP listeners, in the three
orders libvirt may deliver events in (tests/vm/fleetcase.py)."""

from __future__ import annotations

from dnslib import RCODE
from twisted.internet import defer, reactor

from summoner.answer import Query
from summoner.vm.app import OnDemand
from summoner.vm.config import OnDemandConfig
from tests.vm.fakes import host, manifest
from tests.vm.fleetcase import FleetCase, event_orders


class VirtTest(FleetCase):
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

    @defer.inlineCallbacks
    def test_a_guest_of_another_architecture_runs_under_tcg_beside_kvm_guests(self):
        images = {"hello": manifest("hello"), "hello-aarch64": manifest("hello-aarch64", arch="aarch64")}
        od = self.make([host("hello", "127.0.0.102", "hello"), host("arm", "127.0.0.103", "hello-aarch64")],
                       images, virt_type="kvm")
        yield od.start()
        yield od.stage.resolve(Query.of("hello.example.org", "A"))
        yield od.stage.resolve(Query.of("arm.example.org", "A"))
        self.assertIn('type="kvm"', self.backend.domains["summoner-hello.example.org"]["xml"])
        arm = self.backend.domains["summoner-arm.example.org"]["xml"]
        self.assertIn('type="qemu"', arm)
        self.assertIn('arch="aarch64"', arm)


VirtTestEventsBefore, VirtTestEventsAfter = event_orders(VirtTest)
