"""The libvirt backend (summoner.vm.libvirt_backend) against libvirt's in-process
test driver: the Backend protocol, typed errors, lifecycle events, traffic."""

from __future__ import annotations

from twisted.internet import defer, reactor, task
from twisted.trial import unittest

from summoner.vm.backend import Backend, DomainExistsError, DomainState, NoDomainError, NotConnectedError
from summoner.vm.config import OnDemandConfig
from summoner.vm.domxml import NetworkSettings, domain_xml
from summoner.vm.libvirt_backend import LibvirtBackend
from summoner.vm.spec import build_spec
from tests.vm.fakes import FakeBackend, host, manifest


def spec(label="hello", address="127.0.0.10", **kw):
    return build_spec(host(label, address, "hello", **kw), manifest("hello"), OnDemandConfig())


def sleep(seconds: float) -> defer.Deferred:
    return task.deferLater(reactor, seconds, lambda: None)


# -- backend on test:///default ------------------------------------------------------


def test_both_backends_implement_the_protocol():
    assert isinstance(LibvirtBackend("test:///default", reactor), Backend)
    assert isinstance(FakeBackend(), Backend)


class BackendTest(unittest.TestCase):
    timeout = 20

    def setUp(self):
        self.events = []
        self.backend = LibvirtBackend("test:///default", reactor,
                                      on_event=lambda *e: self.events.append(e))
        self.addCleanup(self.backend.stop)

    @defer.inlineCallbacks
    def test_lifecycle_metadata_and_events(self):
        ok = yield self.backend.start()
        self.assertTrue(ok)
        s = spec()
        uuid = yield self.backend.create(s.domain_name, domain_xml(s, "test", NetworkSettings()))
        ours = yield self.backend.list_ours()
        self.assertEqual([(d.name, d.state, d.uuid) for d in ours], [(s.domain_name, "running", uuid)])
        self.assertEqual(ours[0].metadata.config_hash, s.config_hash)  # the predefined 'test' domain is not ours
        yield self.backend.suspend(s.domain_name)
        self.assertEqual((yield self.backend.state(s.domain_name)), "paused")
        yield self.backend.resume(s.domain_name)
        self.assertTrue((yield self.backend.destroy(s.domain_name)))
        self.assertFalse((yield self.backend.destroy(s.domain_name)))  # already gone: not an error
        self.assertEqual((yield self.backend.state(s.domain_name)), "gone")
        yield sleep(0.2)
        kinds = [(e[1], e[3]) for e in self.events if e[0] == s.domain_name]
        for event in ("started", "suspended", "resumed", "stopped"):
            self.assertIn((event, uuid), kinds)
        self.assertEqual((yield self.backend.list_ours()), [])

    @defer.inlineCallbacks
    def test_bridge_mode_traffic_counters(self):
        """The test driver carries no traffic: its interface counters follow
        the clock (rx bytes = microseconds / 10, rx packets / 100, tx bytes /
        20, tx packets / 110), so whether a token changes with traffic cannot
        be seen here (the real guest in test_libvirt_real.py shows that).
        What can: the token is the tap's rx bytes, rx packets, tx bytes and tx
        packets, in that order, as libvirt reports them, so a read of the
        counters just before and just after brackets every value."""
        import xml.etree.ElementTree as ET

        import libvirt
        yield self.backend.start()
        s = build_spec(host("web", "192.0.2.7", "hello"), manifest("hello"), OnDemandConfig(network="bridge"))
        yield self.backend.create(s.domain_name, domain_xml(s, "test", NetworkSettings("bridge", "br7", "192.0.2.1")))
        direct = libvirt.open("test:///default")  # the test driver's state is shared within a process
        self.addCleanup(direct.close)
        dom = direct.lookupByName(s.domain_name)
        devs = [t.get("dev") for t in ET.fromstring(dom.XMLDesc(0)).iterfind("devices/interface/target")]
        self.assertEqual(len(devs), 1)  # summoner's bridge-mode domain has one NIC
        before = dom.interfaceStats(devs[0])
        tokens = yield self.backend.traffic({s.domain_name: "bridge", "gone": "bridge"})
        after = dom.interfaceStats(devs[0])
        self.assertEqual(list(tokens), [s.domain_name])  # vanished domains are left out
        token = tokens[s.domain_name]
        self.assertEqual(len(token), 4)
        # interfaceStats: rx_bytes, rx_packets, rx_errs, rx_drop, tx_bytes, tx_packets, tx_errs, tx_drop
        for value, field in zip(token, (0, 1, 4, 5), strict=True):
            self.assertTrue(before[field] <= value <= after[field], (field, before, token, after))
        yield self.backend.destroy(s.domain_name)

    @defer.inlineCallbacks
    def test_errors_are_typed_by_libvirt_s_codes(self):
        yield self.backend.start()
        s = spec(label="typed", address="127.0.0.11")
        xml = domain_xml(s, "test", NetworkSettings())
        uuid = yield self.backend.create(s.domain_name, xml)
        with self.assertRaises(DomainExistsError) as caught:
            yield self.backend.create(s.domain_name, xml)
        self.assertIn(uuid, str(caught.exception))  # names the domain in the way
        yield self.backend.destroy(s.domain_name)
        for call in (self.backend.suspend, self.backend.resume):
            with self.assertRaises(NoDomainError):
                yield call(s.domain_name)
        self.assertIs((yield self.backend.state(s.domain_name)), DomainState.GONE)

    @defer.inlineCallbacks
    def test_an_unreachable_libvirt_is_down_since_start(self):
        away = LibvirtBackend("qemu+unix:///system?socket=/nonexistent/libvirt-sock", reactor,
                              reconnect_min=3600, reconnect_max=3600)
        self.addCleanup(away.stop)
        before = reactor.seconds()
        connected = yield away.start()
        self.assertFalse(connected)
        self.assertIsNotNone(away.down_since)
        self.assertGreaterEqual(away.down_since, before)

    @defer.inlineCallbacks
    def test_not_connected_fails_fast_and_kvm_check_answers(self):
        for call in (self.backend.list_ours, lambda: self.backend.traffic({"test": "bridge"}),
                     lambda: self.backend.state("test"), lambda: self.backend.destroy("test")):
            with self.assertRaises(NotConnectedError):
                yield call()
        yield self.backend.start()
        self.assertIsNone(self.backend.down_since)
        # The test driver offers no domain capabilities at all, so no kvm.
        ok, why = yield self.backend.kvm_usable()
        self.assertFalse(ok)
        self.assertTrue(why.startswith(("/dev/kvm is missing or not accessible", "libvirt offers no kvm domains:")),
                        why)
        traffic = yield self.backend.traffic({"test": "bridge"})  # the driver's predefined domain
        self.assertEqual(list(traffic), ["test"])
        self.assertEqual(len(traffic["test"]), 4)
        self.assertTrue(all(v > 0 for v in traffic["test"]), traffic)
