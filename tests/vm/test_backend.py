"""The libvirt backend against libvirt's in-process test driver, the domain
XML, and the HTTP probe."""

from __future__ import annotations

import shutil
import subprocess

import pytest
from twisted.internet import defer, reactor, task
from twisted.trial import unittest
from twisted.web import resource, server

from summoner.vm.backend import NotConnectedError
from summoner.vm.config import OnDemandConfig
from summoner.vm.domxml import NetworkSettings, domain_xml, parse_metadata
from summoner.vm.libvirt_backend import LibvirtBackend
from summoner.vm.logtail import tail_file
from summoner.vm.probe import Probe, ProbeTimeoutError
from summoner.vm.spec import build_spec
from summoner.vm.traffic import parse_proc_net_tcp, parse_usernet
from tests.vm.fakes import host, manifest


def spec(label="hello", address="127.0.0.10", **kw):
    return build_spec(host(label, address, "hello", **kw), manifest("hello"), OnDemandConfig())


def sleep(seconds: float) -> defer.Deferred:
    return task.deferLater(reactor, seconds, lambda: None)


# -- domain XML -------------------------------------------------------------------


def test_user_mode_xml_forwards_the_zone_address():
    xml = domain_xml(spec(), "qemu", NetworkSettings("user"))
    assert "type=\"qemu\"" in xml
    assert "hostfwd=tcp:127.0.0.10:18080-:18080" in xml
    assert "restrict=on" in xml
    assert "ip=10.0.2.15::10.0.2.2:255.255.255.0::eth0:off" in xml
    assert '<memballoon model="none"' in xml
    meta = parse_metadata(xml)
    assert (meta.service, meta.image, meta.address, meta.port) == ("hello.example.org", "hello", "127.0.0.10", 18080)
    assert meta.config_hash == spec().config_hash


def test_bridge_mode_xml_puts_the_address_on_the_cmdline():
    s = build_spec(host("web", "192.0.2.7", "hello"), manifest("hello"), OnDemandConfig(network="bridge"))
    xml = domain_xml(s, "kvm", NetworkSettings("bridge", "br7", "192.0.2.1", "255.255.255.0"))
    assert "<source bridge=\"br7\"" in xml
    assert "ip=192.0.2.7::192.0.2.1:255.255.255.0::eth0:off" in xml
    assert "hostfwd" not in xml and "type=\"kvm\"" in xml


def test_disk_boot_xml():
    import dataclasses

    from summoner.images import BootSpec
    m = manifest("osv")
    m = dataclasses.replace(m, boot=BootSpec(kind="disk", disk=m.boot.kernel, format="qcow2"))
    s = build_spec(host("osv", "127.0.0.30", "osv"), m, OnDemandConfig())
    xml = domain_xml(s, "qemu", NetworkSettings())
    assert "<kernel>" not in xml and 'type="qcow2"' in xml and "fakes.py" in xml and "<transient" in xml


@pytest.mark.skipif(not shutil.which("virt-xml-validate"), reason="virt-xml-validate not installed")
def test_xml_validates_against_libvirt_schema(tmp_path):
    for virt, net in (("qemu", NetworkSettings()), ("kvm", NetworkSettings("bridge", "br0", "10.0.0.1"))):
        path = tmp_path / f"{virt}.xml"
        path.write_text(domain_xml(spec(), virt, net))
        result = subprocess.run(["virt-xml-validate", str(path), "domain"], capture_output=True, text=True)
        assert result.returncode == 0, result.stderr + result.stdout


def test_overrides_change_the_config_hash():
    assert spec().config_hash != spec(memory_mib=128).config_hash
    assert spec().config_hash == spec(idle=5).config_hash  # reaping settings do not need a new VM


# Captured from a real hello guest (qemu:///system, QEMU 7.2, user networking,
# forward 127.0.0.184:8080): `info usernet` and the host's /proc/net/tcp (the
# lines of that address, plus the table's first two), idle 15 s after boot,
# with one client connection open, and 0.3 s after that connection finished
# (request sent, response read to EOF, closed).
USERNET_IDLE = """Hub -1 (sn0):
  Protocol[State]    FD  Source Address  Port   Dest. Address  Port RecvQ SendQ
  TCP[TIME_WAIT]     15     127.0.0.184  8080       10.0.2.15  8080     0     0
  TCP[HOST_FORWARD]  11     127.0.0.184  8080       10.0.2.15  8080     0     0
"""
USERNET_OPEN = """Hub -1 (sn0):
  Protocol[State]    FD  Source Address  Port   Dest. Address  Port RecvQ SendQ
  TCP[ESTABLISHED]   19     127.0.0.184  8080       10.0.2.15  8080     0     0
  TCP[TIME_WAIT]     15     127.0.0.184  8080       10.0.2.15  8080     0     0
  TCP[HOST_FORWARD]  11     127.0.0.184  8080       10.0.2.15  8080     0     0
"""
USERNET_CLOSED = """Hub -1 (sn0):
  Protocol[State]    FD  Source Address  Port   Dest. Address  Port RecvQ SendQ
  TCP[HOST_FORWARD]  11     127.0.0.184  8080       10.0.2.15  8080     0     0
"""
_HEAD = ("  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"
         "   0: B800007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000 64055        0 236870 1 "
         "0000000067697d9d 100 0 0 10 0\n"
         "   1: 00000000:07E8 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1594 1 "
         "000000005e885da1 100 0 0 10 0\n")
PROC_IDLE = _HEAD + ("  20: B800007F:1F90 0100007F:D89A 06 00000000:00000000 03:00001193 00000000     0        0 0 3 "
                     "00000000f365d9be\n")
PROC_OPEN = _HEAD + (
    "  13: 0100007F:98EA B800007F:1F90 01 00000000:00000000 00:00000000 00000000     0        0 236383 2 "
    "00000000c2c93729 20 0 0 10 -1\n"
    "  18: B800007F:1F90 0100007F:98EA 01 00000000:00000000 00:00000000 00000000 64055        0 236384 1 "
    "00000000198abaab 20 0 0 10 -1\n"
    "  22: B800007F:1F90 0100007F:D89A 06 00000000:00000000 03:00001174 00000000     0        0 0 3 "
    "00000000f365d9be\n")
PROC_CLOSED = _HEAD + (
    "  17: B800007F:1F90 0100007F:98EA 06 00000000:00000000 03:00001751 00000000     0        0 0 3 "
    "000000003380a5ae\n"
    "  21: B800007F:1F90 0100007F:D89A 06 00000000:00000000 03:00001155 00000000     0        0 0 3 "
    "00000000f365d9be\n")
FORWARD = ("127.0.0.184", 8080)


def test_parse_usernet_on_real_output():
    assert parse_usernet(USERNET_OPEN) == ("TCP[ESTABLISHED] 19 127.0.0.184 8080 10.0.2.15 8080 0 0",
                                           "TCP[TIME_WAIT] 15 127.0.0.184 8080 10.0.2.15 8080 0 0")
    assert parse_usernet(USERNET_IDLE) == ("TCP[TIME_WAIT] 15 127.0.0.184 8080 10.0.2.15 8080 0 0",)
    # slirp drops a finished connection at once: its table cannot show one
    # that came and went between two looks (the host's table can, below)
    assert parse_usernet(USERNET_CLOSED) == ()


def test_parse_proc_net_tcp_on_real_output():
    assert parse_proc_net_tcp(PROC_OPEN, {FORWARD}) == {FORWARD: (
        "TCP[ESTABLISHED] host 127.0.0.184:8080 127.0.0.1:39146",   # QEMU's end
        "TCP[ESTABLISHED] host 127.0.0.1:39146 127.0.0.184:8080",   # the client's end
        "TCP[TIME_WAIT] host 127.0.0.184:8080 127.0.0.1:55450",     # an older one
    )}  # QEMU's listener and the other address's listener are left out
    assert parse_proc_net_tcp(PROC_CLOSED, {FORWARD}) == {FORWARD: (
        "TCP[TIME_WAIT] host 127.0.0.184:8080 127.0.0.1:39146", "TCP[TIME_WAIT] host 127.0.0.184:8080 127.0.0.1:55450")}
    assert parse_proc_net_tcp(PROC_OPEN, {("127.0.0.185", 8080), ("127.0.0.184", 8081)}) == {}


def test_user_mode_tokens_of_real_captures_show_use_and_idleness():
    """What the reaper concludes from consecutive looks at the captures above."""
    from summoner.vm.traffic import traffic_seen

    def token(usernet, proc):
        return tuple(sorted(parse_usernet(usernet) + parse_proc_net_tcp(proc, {FORWARD}).get(FORWARD, ())))
    idle, open_, closed = token(USERNET_IDLE, PROC_IDLE), token(USERNET_OPEN, PROC_OPEN), \
        token(USERNET_CLOSED, PROC_CLOSED)
    assert not traffic_seen("user", idle, idle)
    assert traffic_seen("user", idle, open_)       # a connection is open
    assert traffic_seen("user", open_, open_)      # still open: still in use
    assert traffic_seen("user", idle, closed)      # one came and went between the looks
    assert not traffic_seen("user", closed, closed)


def test_tail_skips_old_runs_and_argv(tmp_path):
    log = tmp_path / "x.log"
    log.write_text("2026 starting up libvirt version: 9\nold failure\n"
                   "2026 starting up libvirt version: 9\nLC_ALL=C \\\n-kernel /k \\\n-m 64\nnew failure\n")
    assert tail_file(str(log), skip_argv=True) == "2026 starting up libvirt version: 9\nnew failure"


# -- backend on test:///default ------------------------------------------------------


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
    def test_not_connected_fails_fast_and_kvm_check_answers(self):
        for call in (self.backend.list_ours, lambda: self.backend.traffic({"test": "bridge"}),
                     lambda: self.backend.state("test"), lambda: self.backend.destroy("test")):
            with self.assertRaises(NotConnectedError):
                yield call()
        yield self.backend.start()
        # The test driver offers no domain capabilities at all, so no kvm.
        ok, why = yield self.backend.kvm_usable()
        self.assertFalse(ok)
        self.assertTrue(why.startswith(("/dev/kvm is missing or not accessible", "libvirt offers no kvm domains:")),
                        why)
        traffic = yield self.backend.traffic({"test": "bridge"})  # the driver's predefined domain
        self.assertEqual(list(traffic), ["test"])
        self.assertEqual(len(traffic["test"]), 4)
        self.assertTrue(all(v > 0 for v in traffic["test"]), traffic)


# -- probe ----------------------------------------------------------------------------


class _Status(resource.Resource):
    isLeaf = True  # noqa: N815

    def __init__(self, code):
        super().__init__()
        self.code = code

    def render_GET(self, request):  # noqa: N802
        request.setResponseCode(self.code)
        return b"x"


class ProbeTest(unittest.TestCase):
    timeout = 10

    def listen(self, code, address="127.0.0.33"):
        site = server.Site(_Status(code))
        site.noisy = False
        port = reactor.listenTCP(0, site, interface=address)
        self.addCleanup(port.stopListening)
        return port.getHost().port

    @defer.inlineCallbacks
    def test_success(self):
        port = self.listen(200)
        attempts = yield Probe(reactor, "127.0.0.33", port, "/", deadline=reactor.seconds() + 2).run()
        self.assertEqual(attempts, 1)

    @defer.inlineCallbacks
    def test_wrong_status_until_deadline(self):
        port = self.listen(500)
        probe = Probe(reactor, "127.0.0.33", port, "/", interval=0.05, deadline=reactor.seconds() + 0.3)
        with self.assertRaises(ProbeTimeoutError):
            yield probe.run()
        self.assertIn("HTTP 500", probe.last_error)
        self.assertGreater(probe.attempts, 2)
        self.assertLess(probe.attempts, 10)  # paced by the interval, not a busy loop

    @defer.inlineCallbacks
    def test_connection_refused(self):
        probe = Probe(reactor, "127.0.0.34", 9, "/", interval=0.05, deadline=reactor.seconds() + 0.2)
        with self.assertRaises(ProbeTimeoutError) as info:
            yield probe.run()
        self.assertIn("connect failed", info.exception.last_error)


    @defer.inlineCallbacks
    def test_an_attempt_that_hangs_does_not_hold_up_readiness(self):
        """Like QEMU's port forward before the guest NIC is up: connections made
        early are accepted and never answered; later ones are served."""
        from twisted.internet import protocol as tprotocol

        ready_at = reactor.seconds() + 0.2

        class Guest(tprotocol.Protocol):
            def dataReceived(self, data):  # noqa: N802
                if reactor.seconds() >= ready_at and not getattr(self, "early", False):
                    self.transport.write(b"HTTP/1.0 200 OK\r\n\r\n")
                    self.transport.loseConnection()

            def connectionMade(self):  # noqa: N802
                self.early = reactor.seconds() < ready_at  # this one hangs forever

        factory = tprotocol.Factory.forProtocol(Guest)
        port = reactor.listenTCP(0, factory, interface="127.0.0.35")
        self.addCleanup(port.stopListening)
        probe = Probe(reactor, "127.0.0.35", port.getHost().port, "/", interval=0.02, request_timeout=2.0,
                      deadline=reactor.seconds() + 5)
        started = reactor.seconds()
        yield probe.run()
        # one-at-a-time probing would wait out the first attempt's 2 s timeout
        self.assertLess(reactor.seconds() - started, 1.0)

def test_traffic_seen():
    from summoner.vm.traffic import traffic_seen
    est = "TCP[ESTABLISHED] 18 127.0.0.10 8080 10.0.2.15 8080 0 0"
    tw = "TCP[TIME_WAIT] 18 127.0.0.10 8080 10.0.2.15 8080 0 0"
    tw2 = "TCP[TIME_WAIT] 19 127.0.0.10 8080 10.0.2.15 8080 0 0"
    assert not traffic_seen("user", None, (est,))
    assert traffic_seen("user", (), (est,))
    assert traffic_seen("user", (est,), (est,))          # open connection: in use
    assert not traffic_seen("user", (tw,), (tw,))        # lingering closed one: not use
    assert not traffic_seen("user", (tw,), ())
    assert traffic_seen("user", (tw,), (tw, tw2))        # a new one came and went
    assert traffic_seen("bridge", (1, 2, 3, 4), (1, 2, 3, 5))
    assert not traffic_seen("bridge", (1, 2, 3, 4), (1, 2, 3, 4))
