"""Stop mode ``snapshot`` (summoner.vm.snapshots, and its use by
summoner.vm.stop and summoner.vm.boot): the guest's state saved to disk, no
VM left, the next query restores it as it was; against the fake libvirt in
its three event orders.  The real guest's state (a task POSTed before the
save) is checked in tests/vm/test_e2e.py."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from dnslib import RCODE
from prometheus_client import REGISTRY
from twisted.internet import defer, reactor

from summoner.answer import Query
from summoner.vm.app import OnDemand
from summoner.vm.config import OnDemandConfig
from summoner.vm.lifecycle import State
from summoner.vm.snapshots import SnapshotStore
from summoner.vm.spec import build_spec
from tests.vm.fakes import host, manifest
from tests.vm.fleetcase import FleetCase, event_orders, sleep

HELLO = "hello.example.org"
DOMAIN = "summoner-hello.example.org"


def restores() -> float:
    return REGISTRY.get_sample_value("summoner_vm_query_to_ready_seconds_count", {"kind": "restore"}) or 0.0


class SnapshotTest(FleetCase):
    def boot_one(self, **config):
        od = self.make([host("hello", "127.0.0.110", "hello", stop="snapshot")], {"hello": manifest("hello")},
                       **config)
        return od

    def state_dir(self) -> Path:
        return self.od.config.state_dir

    def files(self) -> list[Path]:
        """What the state directory holds (removed files go to .trash, unlinked off the reactor)."""
        directory = self.state_dir()
        return [p for p in directory.iterdir() if not p.name.startswith(".")] if directory.exists() else []

    @defer.inlineCallbacks
    def test_the_guest_comes_back_as_it_was_and_nothing_runs_meanwhile(self):
        od = self.boot_one()
        yield od.start()
        yield od.stage.resolve(Query.of(HELLO, "A"))
        self.backend.domains[DOMAIN]["memory"]["tasks"] = ["summon"]  # what the guest holds
        result = yield od.stop_service(HELLO)  # the service's own stop mode: snapshot
        self.assertTrue(result["ok"])
        self.assertEqual(self.svc(HELLO).state, State.STOPPED)
        self.assertNotIn(DOMAIN, self.backend.domains)  # no QEMU, no memory held
        [saved] = list(self.state_dir().glob("*.save"))
        self.assertTrue(saved.name.startswith(HELLO) and self.svc(HELLO).spec.config_hash in saved.name)
        self.assertEqual(od.status()[0]["snapshot_bytes"], saved.stat().st_size)
        before = restores()
        answer = yield od.stage.resolve(Query.of(HELLO, "A"))
        self.assertEqual(answer.rcode, RCODE.NOERROR)
        self.assertEqual((self.backend.creates, self.backend.restores), (1, 1))
        self.assertEqual(self.backend.domains[DOMAIN]["memory"], {"tasks": ["summon"]})
        self.assertEqual(restores(), before + 1)
        self.assertEqual(self.files(), [])  # consumed: the guest moved on from it
        self.assertIsNone(od.status()[0]["snapshot_bytes"])

    @defer.inlineCallbacks
    def test_the_reaper_snapshots_an_idle_vm(self):
        od = self.make([host("hello", "127.0.0.111", "hello", stop="snapshot", idle=0.2)],
                       {"hello": manifest("hello")})
        yield od.start()
        yield od.stage.resolve(Query.of(HELLO, "A"))
        # the fake counts the save in the worker thread, before its result reaches the reactor
        yield self.wait_for(lambda: self.svc(HELLO).state is State.STOPPED)
        self.assertEqual(self.backend.saves, 1)
        self.assertEqual(len(list(self.state_dir().glob("*.save"))), 1)

    @defer.inlineCallbacks
    def test_a_snapshot_that_cannot_be_restored_is_removed_and_the_query_still_answered(self):
        od = self.boot_one()
        yield od.start()
        yield od.stage.resolve(Query.of(HELLO, "A"))
        yield od.stop_service(HELLO)
        [saved] = list(self.state_dir().glob("*.save"))
        saved.write_bytes(saved.read_bytes()[:10])  # truncated
        answer = yield od.stage.resolve(Query.of(HELLO, "A"))
        self.assertEqual(answer.rcode, RCODE.NOERROR)
        self.assertEqual((self.backend.restores, self.backend.creates), (0, 2))  # a cold boot instead
        self.assertFalse(saved.exists())
        self.assertEqual(self.backend.domains[DOMAIN]["memory"], {})

    @defer.inlineCallbacks
    def test_a_restarted_summoner_restores_the_snapshot(self):
        od = self.boot_one()
        yield od.start()
        yield od.stage.resolve(Query.of(HELLO, "A"))
        self.backend.domains[DOMAIN]["memory"]["n"] = 7
        yield od.stop_service(HELLO)
        yield od.stop()
        od2 = OnDemand(OnDemandConfig(virt_type="qemu", state_dir=self.state_dir()), reactor,
                       backend=self.backend, images={"hello": manifest("hello")})
        od2.update_hosts([host("hello", "127.0.0.110", "hello", stop="snapshot")])
        self.addCleanup(od2.stop)
        yield od2.start()
        answer = yield od2.stage.resolve(Query.of(HELLO, "A"))
        self.assertEqual(answer.rcode, RCODE.NOERROR)
        self.assertEqual((self.backend.restores, self.backend.domains[DOMAIN]["memory"]), (1, {"n": 7}))

    @defer.inlineCallbacks
    def test_a_changed_or_removed_host_loses_its_snapshot(self):
        od = self.boot_one()
        yield od.start()
        yield od.stage.resolve(Query.of(HELLO, "A"))
        yield od.stop_service(HELLO)
        self.assertEqual(len(list(self.state_dir().glob("*.save"))), 1)
        od.update_hosts([host("hello", "127.0.0.110", "hello", stop="snapshot", memory_mib=96)])  # a new VM
        self.assertEqual(self.files(), [])
        yield od.stage.resolve(Query.of(HELLO, "A"))
        yield od.stop_service(HELLO)
        self.assertEqual(len(list(self.state_dir().glob("*.save"))), 1)
        od.update_hosts([])
        self.assertEqual(self.files(), [])

    @defer.inlineCallbacks
    def test_beyond_the_budget_the_vm_is_destroyed_instead(self):
        od = self.make([host("hello", "127.0.0.112", "hello", stop="snapshot")],
                       {"hello": manifest("hello", memory=64)}, snapshot_budget_mib=32)
        yield od.start()
        yield od.stage.resolve(Query.of(HELLO, "A"))
        result = yield od.stop_service(HELLO)
        self.assertTrue(result["ok"])
        self.assertEqual((self.backend.saves, self.backend.destroys), (0, 1))
        self.assertNotIn(DOMAIN, self.backend.domains)
        self.assertEqual(self.files(), [])

    @defer.inlineCallbacks
    def test_admin_stop_with_mode_snapshot_on_a_destroy_service(self):
        od = self.make([host("hello", "127.0.0.113", "hello")], {"hello": manifest("hello")})
        yield od.start()
        yield od.stage.resolve(Query.of(HELLO, "A"))
        yield od.stop_service(HELLO, "snapshot")
        self.assertEqual(self.backend.saves, 1)
        yield od.stage.resolve(Query.of(HELLO, "A"))
        self.assertEqual(self.backend.restores, 1)

    def golden_image(self):
        m = manifest("hello")
        return dataclasses.replace(m, boot=dataclasses.replace(m.boot, snapshot_boot=True))

    @defer.inlineCallbacks
    def test_golden_the_first_boot_is_saved_pristine_and_later_cold_starts_restore_it(self):
        od = self.make([host("hello", "127.0.0.114", "hello")], {"hello": self.golden_image()})
        yield od.start()
        answer = yield od.stage.resolve(Query.of(HELLO, "A"))
        self.assertEqual(answer.rcode, RCODE.NOERROR)
        # booted, saved right after its probe (before any client), restored to answer
        self.assertEqual((self.backend.creates, self.backend.saves, self.backend.restores), (1, 1, 1))
        [golden] = list(self.state_dir().glob("*.golden"))
        self.backend.domains[DOMAIN]["memory"]["client"] = "data"  # what clients do afterwards
        yield od.stop_service(HELLO)  # destroy: the image's stop mode
        for round_ in (2, 3):
            answer = yield od.stage.resolve(Query.of(HELLO, "A"))
            self.assertEqual(answer.rcode, RCODE.NOERROR)
            self.assertEqual((self.backend.creates, self.backend.restores), (1, round_))  # no boot
            self.assertEqual(self.backend.domains[DOMAIN]["memory"], {})  # pristine each time
            yield od.stop_service(HELLO)
        self.assertTrue(golden.exists())  # kept
        od.update_hosts([host("hello", "127.0.0.114", "hello", memory_mib=96)])  # a new configuration
        self.assertFalse(golden.exists())

    @defer.inlineCallbacks
    def test_golden_off_by_flag(self):
        od = self.make([host("hello", "127.0.0.115", "hello")], {"hello": self.golden_image()},
                       snapshot_boot=False)
        yield od.start()
        yield od.stage.resolve(Query.of(HELLO, "A"))
        self.assertEqual((self.backend.saves, self.backend.restores), (0, 0))

    @defer.inlineCallbacks
    def test_a_golden_snapshot_that_cannot_be_restored_is_removed_and_booted_afresh(self):
        od = self.make([host("hello", "127.0.0.116", "hello")], {"hello": self.golden_image()})
        yield od.start()
        yield od.stage.resolve(Query.of(HELLO, "A"))
        yield od.stop_service(HELLO)
        [golden] = list(self.state_dir().glob("*.golden"))
        golden.write_bytes(b"not a save image")
        answer = yield od.stage.resolve(Query.of(HELLO, "A"))
        self.assertEqual(answer.rcode, RCODE.NOERROR)
        self.assertEqual(self.backend.creates, 2)  # booted afresh, and a new golden snapshot taken
        self.assertEqual(self.backend.saves, 2)
        self.assertIn("golden", golden.name)
        self.assertTrue(golden.exists())

    @defer.inlineCallbacks
    def test_a_guest_libvirt_cannot_save_still_answers_and_is_not_tried_again(self):
        od = self.make([host("hello", "127.0.0.117", "hello")], {"hello": self.golden_image()})
        self.backend.save_error = "Requested operation is not valid: cannot migrate domain with transient disk"
        yield od.start()
        answer = yield od.stage.resolve(Query.of(HELLO, "A"))
        self.assertEqual(answer.rcode, RCODE.NOERROR)  # the guest answers as it is
        self.assertEqual(self.svc(HELLO).state, State.READY)
        yield od.stop_service(HELLO)
        answer = yield od.stage.resolve(Query.of(HELLO, "A"))
        self.assertEqual(answer.rcode, RCODE.NOERROR)
        self.assertEqual((self.backend.creates, self.backend.save_attempts), (2, 1))  # not retried per boot
        self.assertEqual(self.files(), [])

    @defer.inlineCallbacks
    def test_stop_mode_snapshot_that_libvirt_refuses_destroys_the_idle_vm(self):
        od = self.boot_one()
        self.backend.save_error = "operation failed: cannot save"
        yield od.start()
        yield od.stage.resolve(Query.of(HELLO, "A"))
        result = yield od.stop_service(HELLO)
        self.assertTrue(result["ok"])
        self.assertEqual(self.svc(HELLO).state, State.STOPPED)  # stopped all the same, its state lost
        self.assertEqual((self.backend.save_attempts, self.backend.destroys), (1, 1))
        self.assertEqual(self.files(), [])

    @defer.inlineCallbacks
    def wait_for(self, condition, timeout: float = 5.0):
        waited = 0.0
        while not condition():
            self.assertLess(waited, timeout, "condition not met in time")
            yield sleep(0.05)
            waited += 0.05


SnapshotTestEventsBefore, SnapshotTestEventsAfter = event_orders(SnapshotTest)


def test_a_save_counts_only_once_committed_and_partial_saves_are_swept(tmp_path):
    store = SnapshotStore(tmp_path / "state", budget_mib=100)
    spec = build_spec(host("hello", "127.0.0.1", "hello"), manifest("hello", memory=64), OnDemandConfig())
    partial = store.prepare(spec)
    partial.write_bytes(b"x" * 1000)  # libvirt writing, or a crash mid-save
    assert store.find(spec) is None
    assert store.used_bytes() == 64 * 2**20  # a save in flight counts at its guest's memory size
    assert store.has_room(spec) is not None  # a second 64 MiB save would overshoot 100 MiB
    snapshot = store.commit(spec)
    assert snapshot.path == store.path_for(spec) and snapshot.size == 1000 and not partial.exists()
    assert store.has_room(spec) is None  # 64 MiB more fits in 100
    other = build_spec(host("other", "127.0.0.2", "hello"), manifest("hello", memory=64), OnDemandConfig())
    store.prepare(other).write_bytes(b"y")
    store.commit(other)
    assert store.used_bytes() == 1001
    store.prepare(spec).write_bytes(b"z")  # an interrupted save beside the good one
    store.keep_only([other])
    assert sorted(p.name for p in (tmp_path / "state").iterdir()) == [store.path_for(other).name]
    assert store.used_bytes() == 1  # the swept save's reservation went with it


def test_the_budget_counts_the_guest_memory_a_save_may_take(tmp_path):
    store = SnapshotStore(tmp_path, budget_mib=100)
    spec = build_spec(host("hello", "127.0.0.1", "hello"), manifest("hello", memory=64), OnDemandConfig())
    (tmp_path / f"x{'.save'}").write_bytes(b"\0" * (40 * 2**20))
    assert store.has_room(spec) == ("snapshot budget: needs up to 64 MiB, 40 of 100 MiB in use "
                                    "(--snapshot-budget-mib)")


def test_a_removed_snapshot_is_gone_at_once_and_its_bytes_freed_later(tmp_path):
    later: list[Path] = []
    store = SnapshotStore(tmp_path, budget_mib=100, unlink_later=later.append)
    spec = build_spec(host("hello", "127.0.0.1", "hello"), manifest("hello"), OnDemandConfig())
    store.prepare(spec).write_bytes(b"x" * 4096)
    store.commit(spec)
    store.discard(spec, "test")
    assert store.find(spec) is None and store.used_bytes() == 0  # no lookup can restore it any more
    [moved] = later  # the unlink itself is left to a thread
    assert moved.parent == tmp_path / ".trash" and moved.read_bytes() == b"x" * 4096
