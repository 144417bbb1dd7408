"""LibvirtBackend against real guests under qemu:///system: the user-mode
traffic token that idle reaping relies on, and the libvirt + QEMU behaviour
the fleet tests' FakeBackend imitates (so the fake cannot drift from it).
Marked ``vm``: they need libvirtd (scripts/start-libvirt.sh) and built images."""

from __future__ import annotations

import socket
import urllib.request

import pytest
from twisted.internet import defer, reactor, task
from twisted.trial import unittest

from summoner.images import load_manifest
from summoner.vm.config import OnDemandConfig
from summoner.vm.domxml import NetworkSettings, domain_xml
from summoner.vm.libvirt_backend import LibvirtBackend
from summoner.vm.probe import Probe
from summoner.vm.spec import build_spec
from summoner.vm.traffic import traffic_seen
from tests.conftest import ROOT
from tests.vm.conftest import URI
from tests.vm.fakes import FakeBackend, host

pytestmark = [pytest.mark.vm, pytest.mark.slow]


def sleep(seconds: float) -> defer.Deferred:
    return task.deferLater(reactor, seconds, lambda: None)


def hello_spec(label: str, address: str, manifest_path=ROOT / "images" / "hello" / "image.toml"):
    manifest = load_manifest(manifest_path)
    return build_spec(host(label, address, manifest.name), manifest, OnDemandConfig())


def http_get(address: str, port: int) -> int:
    """A client that closes once it has read Content-Length bytes."""
    with urllib.request.urlopen(f"http://{address}:{port}/", timeout=5) as reply:
        reply.read()
        return reply.status


def http_get_to_eof(address: str, port: int) -> int:
    """A client that reads until the server closes (HTTP/1.0 style), then
    closes: slirp's own table then forgets the connection at once."""
    with socket.create_connection((address, port), timeout=5) as sock:
        sock.sendall(b"GET / HTTP/1.0\r\n\r\n")
        data = b""
        while chunk := sock.recv(4096):
            data += chunk
    return int(data.split()[1])


def wait_ready(spec) -> defer.Deferred:
    return Probe(reactor, spec.address, spec.port, "/", interval=0.02, request_timeout=0.5,
                 deadline=reactor.seconds() + 20).run()


@pytest.mark.usefixtures("clean_domains")
class UserModeTrafficTest(unittest.TestCase):
    """The reaper looks at the token every --reap-interval: with no traffic
    two looks must not differ, and a client's request between two looks, or
    a connection held open, must show."""

    timeout = 90

    @defer.inlineCallbacks
    def test_a_request_between_two_looks_shows_and_idleness_shows_too(self):
        spec = hello_spec("traffic", "127.0.0.25")
        backend = LibvirtBackend(URI, reactor)
        self.addCleanup(backend.stop)
        self.assertTrue((yield backend.start()))
        yield backend.create(spec.domain_name, domain_xml(spec, "qemu", NetworkSettings(), spec.machine),
                             autodestroy=True)
        yield wait_ready(spec)

        @defer.inlineCallbacks
        def look():
            tokens = yield backend.traffic({spec.domain_name: "user"})
            return tokens[spec.domain_name]

        # The boot's probe connections linger and change state for a while;
        # then, with nobody talking to the guest, the token holds still.
        before = yield look()
        for _ in range(60):
            yield sleep(0.5)
            now = yield look()
            if not traffic_seen("user", before, now):
                break
            before = now
        else:
            self.fail(f"the token kept changing without traffic for 30 s: {now}")
        yield sleep(0.5)
        idle = yield look()
        self.assertFalse(traffic_seen("user", now, idle), (now, idle))

        # One complete request between two looks (it lasts milliseconds; the
        # looks are half a second apart, as with --reap-interval 0.5), by
        # either kind of client; then nothing again.
        quiet = idle
        for get in (http_get, http_get_to_eof):
            self.assertEqual(get(spec.address, spec.port), 200)
            yield sleep(0.5)
            after = yield look()
            self.assertTrue(traffic_seen("user", quiet, after), (get.__name__, quiet, after))
            yield sleep(0.5)
            quiet = yield look()
            self.assertFalse(traffic_seen("user", after, quiet), (get.__name__, after, quiet))

        # A connection held open is use at every look.
        client = socket.create_connection((spec.address, spec.port), timeout=5)
        try:
            yield sleep(0.3)
            held = yield look()
            self.assertTrue(traffic_seen("user", quiet, held), (quiet, held))
            yield sleep(0.5)
            still = yield look()
            self.assertTrue(traffic_seen("user", held, still), (held, still))
        finally:
            client.close()


# What libvirt sends for each call on a real domain, in order: the events that
# usually reach the reactor before the call's result, and those that usually
# come after it (either can come on the other side; see tests/vm/fakes.py).
EXPECTED = {
    "create": (["resumed/unpaused"], ["started/booted"]),
    "suspend": (["suspended/paused"], []),
    "resume": (["resumed/unpaused"], []),
    "destroy": (["shutdown/host"], ["stopped/destroyed"]),
    "create paused": ([], ["started/booted", "suspended/paused"]),
    "resume standby": (["resumed/unpaused"], []),
    "shutdown": ([], []),
}
POWER_OFF = ["shutdown/guest", "stopped/shutdown"]  # after the ACPI button, seconds later


def connect(spec) -> socket.socket:
    """A connection with its request sent (the kernel completes the handshake
    with any listener, so this does not need the reactor)."""
    sock = socket.create_connection((spec.address, spec.port), timeout=5)
    sock.sendall(b"GET / HTTP/1.0\r\n\r\n")
    sock.setblocking(False)
    return sock


@defer.inlineCallbacks
def answered_within(sock: socket.socket, seconds: float):
    """Whether the status line of a 200 comes within ``seconds``, waiting
    without blocking the reactor (the fake's guests run on it)."""
    deadline = reactor.seconds() + seconds
    while reactor.seconds() < deadline:
        try:
            return sock.recv(64).startswith(b"HTTP/1.1 200")
        except BlockingIOError:
            yield sleep(0.02)
    return False


@defer.inlineCallbacks
def served(spec):
    sock = connect(spec)
    try:
        return (yield answered_within(sock, 5.0))
    finally:
        sock.close()


@defer.inlineCallbacks
def run_scenario(backend, spec, calls: dict, facts: dict):
    """Every call summoner makes, on one domain: the events of each, and what
    a client of the port forward sees in each state."""
    xml = domain_xml(spec, "qemu", NetworkSettings(), spec.machine)
    name = spec.domain_name
    trace: list[str] = []

    def on_event(domain, event, detail, uuid):
        if domain == name:
            trace.append(f"{event}/{detail}")
    backend.on_event = on_event

    @defer.inlineCallbacks
    def call(label, fn, settle=0.5):
        del trace[:]
        yield fn().addCallback(lambda result: (trace.append("<result>"), result)[1])
        yield sleep(settle)
        at = trace.index("<result>")
        calls[label] = (trace[:at], trace[at + 1:])

    yield call("create", lambda: backend.create(name, xml))
    yield wait_ready(spec)
    facts["served"] = yield served(spec)
    yield call("suspend", lambda: backend.suspend(name))
    paused = connect(spec)  # accepted by QEMU while the guest is paused
    facts["paused: answered within 0.5 s"] = yield answered_within(paused, 0.5)
    yield call("resume", lambda: backend.resume(name))
    facts["paused: answered after resume"] = yield answered_within(paused, 3.0)
    paused.close()
    yield call("destroy", lambda: backend.destroy(name), settle=0.3)
    try:
        connect(spec).close()
        facts["destroyed: connection refused"] = False
    except ConnectionRefusedError:
        facts["destroyed: connection refused"] = True

    yield call("create paused", lambda: backend.create(name, xml, paused=True))
    standby = connect(spec)  # a guest that has never run: no network yet
    facts["standby: answered within 0.5 s"] = yield answered_within(standby, 0.5)
    standby.close()
    yield call("resume standby", lambda: backend.resume(name))
    yield wait_ready(spec)
    yield call("shutdown", lambda: backend.shutdown(name), settle=0.0)
    for _ in range(100):  # the guest powers off: events arrive later
        if trace[-1:] == ["stopped/shutdown"]:
            break
        yield sleep(0.1)
    facts["power off"] = trace[trace.index("<result>") + 1:]


@pytest.mark.usefixtures("clean_domains")
class FakeMatchesLibvirtTest(unittest.TestCase):
    timeout = 120

    def check(self, who: str, calls: dict, facts: dict, order: str | None) -> None:
        """``order``: where the fake put the events (None: real libvirt,
        whose events may fall on either side of the result)."""
        for label, (usually_before, usually_after) in EXPECTED.items():
            before, after = calls[label]
            events = usually_before + usually_after
            expected = {None: None, "usual": (usually_before, usually_after), "before": (events, []),
                        "after": ([], events)}[order]
            if expected is None:
                self.assertEqual(before + after, events, (who, label, calls[label]))
            else:
                self.assertEqual((before, after), expected, (who, label))
        self.assertEqual(facts, {
            "served": True,
            "paused: answered within 0.5 s": False,       # accepted, and it hangs...
            "paused: answered after resume": True,        # ...until the guest runs again
            "destroyed: connection refused": True,
            "standby: answered within 0.5 s": False,      # no network in a guest that never ran
            "power off": POWER_OFF,
        }, who)

    @defer.inlineCallbacks
    def test_the_fake_behaves_like_libvirt_and_qemu(self):
        # hello with ACPI on, so that the power button has something to show
        spec = hello_spec("contract", "127.0.0.26", ROOT / "tests" / "images" / "hello-acpi" / "image.toml")
        real = LibvirtBackend(URI, reactor)
        self.addCleanup(real.stop)
        self.assertTrue((yield real.start()))
        calls: dict = {}
        facts: dict = {}
        yield run_scenario(real, spec, calls, facts)
        self.check("libvirt", calls, facts, None)
        for order in ("usual", "before", "after"):
            fake = FakeBackend(boot_delay=0.3)
            fake.event_order = order
            fake.acpi.add(spec.service)
            self.addCleanup(fake.teardown)
            calls, facts = {}, {}
            yield run_scenario(fake, spec, calls, facts)
            self.check(f"fake (events {order})", calls, facts, order)
