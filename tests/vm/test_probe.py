"""summoner.vm.probe: the readiness probe.

Two halves.  The timing (interval, deadline, per-attempt timeout, the cap on
waiting attempts, cancel) runs on ``MemoryReactorClock``: connections are
recorded, never made, and the test plays the server's part on a
``StringTransport`` while it advances the clock.  The networking (a real
status line, a refused connection, a server that accepts and never answers)
runs against servers this file starts on 127.0.0.1 ephemeral
ports, each test well under 2 s.
"""

from __future__ import annotations

import pytest
from prometheus_client import REGISTRY
from twisted.internet import defer, protocol, reactor, task
from twisted.internet.error import ConnectionDone, ConnectionRefusedError
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.trial import unittest
from twisted.web import resource, server

from summoner.vm import probe as probe_module
from summoner.vm.probe import Probe, ProbeCancelledError, ProbeError, ProbeTimeoutError

# -- timing, on a fake reactor and clock ------------------------------------------


class Attempts:
    """The connections a Probe made on a MemoryReactorClock, and the server's
    side of each."""

    def __init__(self, fake: MemoryReactorClock) -> None:
        self.fake = fake

    def __len__(self) -> int:
        return len(self.fake.tcpClients)

    def factory(self, n: int) -> protocol.ClientFactory:
        return self.fake.tcpClients[n][2]

    def connect(self, n: int) -> tuple[protocol.Protocol, StringTransport]:
        proto = self.factory(n).buildProtocol(None)
        transport = StringTransport()
        proto.makeConnection(transport)
        return proto, transport

    def answer(self, n: int, status_line: bytes) -> StringTransport:
        proto, transport = self.connect(n)
        proto.dataReceived(status_line)
        return transport

    def refuse(self, n: int) -> None:
        self.factory(n).clientConnectionFailed(self.fake.connectors[n], Failure(ConnectionRefusedError()))


def start(**kw: object) -> tuple[MemoryReactorClock, Attempts, Probe, defer.Deferred]:
    fake = MemoryReactorClock()
    fake.advance(1000.0)  # the deadline is absolute; start away from zero
    args: dict = {"interval": 0.25, "request_timeout": 0.5, "deadline": fake.seconds() + 1.0}
    args.update(kw)
    probe = Probe(fake, "127.0.0.10", 8080, "/health", **args)
    d = probe.run()
    return fake, Attempts(fake), probe, d


def failure_of(d: defer.Deferred) -> Failure:
    failures: list[Failure] = []
    d.addErrback(failures.append)
    assert failures, "the probe has not failed"
    return failures[0]


def result_of(d: defer.Deferred) -> object:
    results: list[object] = []
    d.addCallback(results.append)
    assert results, "the probe has not succeeded"
    return results[0]


def test_the_first_attempt_starts_at_once_and_sends_a_get():
    _fake, attempts, _probe, _d = start()
    assert len(attempts) == 1
    host, port, _factory, timeout, _bind = attempts.fake.tcpClients[0]
    assert (host, port, timeout) == ("127.0.0.10", 8080, 0.5)
    _proto, transport = attempts.connect(0)
    assert transport.value().startswith(b"GET /health HTTP/1.0\r\nHost: 127.0.0.10\r\n")


def test_the_expected_status_succeeds_with_the_attempt_count():
    fake, attempts, probe, d = start()
    attempts.answer(0, b"HTTP/1.0 503 Service Unavailable\r\n")
    fake.advance(0.25)
    attempts.answer(1, b"HTTP/1.1 503 Service Unavailable\r\n")
    fake.advance(0.25)
    transport = attempts.answer(2, b"HTTP/1.0 200 OK\r\n\r\nbody")
    assert result_of(d) == 3 == probe.attempts
    assert transport.disconnecting or transport.disconnected
    assert fake.getDelayedCalls() == []  # no interval timer, no attempt timeout left behind


def probe_counts() -> tuple[float, float]:
    return tuple(REGISTRY.get_sample_value("summoner_vm_probe_attempts_total", {"result": r}) or 0.0
                 for r in ("ok", "fail"))


def test_every_attempt_that_ends_is_counted_once_by_result():
    before = probe_counts()
    fake, attempts, _probe, d = start(request_timeout=5.0, deadline=1010.0)
    attempts.refuse(0)
    fake.advance(0.25)
    attempts.answer(1, b"HTTP/1.0 503 Service Unavailable\r\n")
    fake.advance(0.25)
    fake.advance(0.25)  # attempt 3 waits ...
    attempts.answer(2, b"HTTP/1.0 200 OK\r\n")  # ... and is dropped by this success: not counted
    assert result_of(d) == 4
    ok, fail = probe_counts()
    assert (ok - before[0], fail - before[1]) == (1, 2)


def test_a_success_drops_the_attempts_still_waiting():
    fake, attempts, _probe, d = start(request_timeout=5.0, deadline=1010.0)
    fake.advance(0.25)
    fake.advance(0.25)
    assert len(attempts) == 3
    attempts.answer(1, b"HTTP/1.0 200 OK\r\n")
    assert result_of(d) == 3
    assert [c._disconnected for c in fake.connectors] == [True, False, True]  # 1 closed itself
    assert fake.getDelayedCalls() == []


def test_attempts_are_paced_by_the_interval_until_the_deadline():
    fake, attempts, probe, d = start()
    for _ in range(3):
        fake.advance(0.25)
    assert len(attempts) == 4  # at 0, 0.25, 0.5, 0.75; never a busy loop
    assert not d.called
    fake.advance(0.25)
    error = failure_of(d).value
    assert isinstance(error, ProbeTimeoutError)
    assert error.attempts == 4 == probe.attempts
    assert str(error) == "probe of http://127.0.0.10:8080/health did not succeed in time (4 attempts)"
    assert len(attempts) == 4
    assert fake.getDelayedCalls() == []


def test_the_timeout_carries_the_last_real_error():
    fake, attempts, _probe, d = start()
    attempts.refuse(0)
    fake.advance(0.25)
    attempts.answer(1, b"HTTP/1.0 503 Service Unavailable\r\n")
    fake.advance(0.25)
    fake.advance(0.25)  # attempts 2 and 3 hang; 3 is cut short by the deadline
    fake.advance(0.25)
    error = failure_of(d).value
    assert isinstance(error, ProbeTimeoutError)
    # attempt 2 timed out after its full 500 ms: that is the last real error
    assert error.last_error == "no status line within 500 ms"


def test_an_attempt_cut_short_by_the_deadline_keeps_the_error_before_it():
    fake, attempts, _probe, d = start(deadline=1000.6)
    attempts.answer(0, b"HTTP/1.0 503 Service Unavailable\r\n")
    fake.advance(0.25)
    attempts.answer(1, b"HTTP/1.0 503 Service Unavailable\r\n")
    fake.advance(0.25)  # attempt 2 gets the 0.1 s left, and hangs
    assert attempts.fake.tcpClients[2][3] == pytest.approx(0.1)
    fake.advance(0.1)
    assert failure_of(d).value.last_error == "HTTP 503, expected 200"


def test_a_refused_connection_is_retried():
    fake, attempts, probe, d = start()
    attempts.refuse(0)
    assert probe.last_error == "connect failed: Connection was refused by other side."
    fake.advance(0.25)
    attempts.answer(1, b"HTTP/1.0 200 OK\r\n")
    assert result_of(d) == 2


def test_a_connection_closed_before_a_status_line_is_retried():
    fake, attempts, probe, d = start()
    proto, _transport = attempts.connect(0)
    proto.connectionLost(Failure(ConnectionDone()))
    assert probe.last_error == "connection closed before a status line"
    fake.advance(0.25)
    attempts.answer(1, b"HTTP/1.0 200 OK\r\n")
    assert result_of(d) == 2


def test_a_reply_that_is_not_http_is_an_error():
    _fake, attempts, probe, d = start()
    attempts.answer(0, b"SSH-2.0-OpenSSH_9.2\r\n")
    assert probe.last_error == "not an HTTP status line: b'SSH-2.0-OpenSSH_9.2'"
    assert not d.called


def test_an_attempt_that_never_answers_times_out_on_its_own():
    fake, attempts, probe, d = start(interval=1.0, request_timeout=0.25, deadline=1010.0)
    attempts.connect(0)  # accepted, never answered
    fake.advance(0.25)
    assert probe.last_error == "no status line within 250 ms"
    assert fake.connectors[0]._disconnected
    assert len(attempts) == 1 and not d.called
    fake.advance(0.75)
    assert len(attempts) == 2


def test_waiting_attempts_are_capped(monkeypatch):
    monkeypatch.setattr(probe_module, "MAX_PENDING_ATTEMPTS", 2)
    fake, attempts, _probe, d = start(interval=0.25, request_timeout=5.0, deadline=1010.0)
    for _ in range(4):
        fake.advance(0.25)
    assert len(attempts) == 2  # both still waiting: no third
    attempts.refuse(0)
    fake.advance(0.25)
    assert len(attempts) == 3
    assert not d.called


def test_cancel_fails_the_probe_and_stops_everything():
    fake, attempts, probe, d = start(request_timeout=5.0, deadline=1010.0)
    fake.advance(0.25)
    probe.cancel("domain crashed")
    error = failure_of(d).value
    assert isinstance(error, ProbeCancelledError) and str(error) == "domain crashed"
    assert all(c._disconnected for c in fake.connectors)
    assert fake.getDelayedCalls() == []
    fake.advance(10)
    assert len(attempts) == 2
    probe.cancel("again")  # a no-op once over


def test_cancel_after_success_is_a_no_op():
    _fake, attempts, probe, d = start()
    attempts.answer(0, b"HTTP/1.0 200 OK\r\n")
    probe.cancel("too late")
    assert result_of(d) == 1


def test_a_past_deadline_fails_without_an_attempt():
    fake = MemoryReactorClock()
    fake.advance(5)
    d = Probe(fake, "127.0.0.10", 8080, deadline=4.0).run()
    error = failure_of(d).value
    assert isinstance(error, ProbeTimeoutError) and error.attempts == 0 and error.last_error is None
    assert fake.tcpClients == []


def test_a_separate_clock_runs_the_timers():
    """Connections through one object, time from another."""
    network, clock = MemoryReactorClock(), MemoryReactorClock()
    d = Probe(network, "127.0.0.10", 8080, interval=0.25, deadline=1.0, clock=clock).run()
    assert len(network.tcpClients) == 1
    assert network.getDelayedCalls() == []
    clock.advance(0.25)
    assert len(network.tcpClients) == 2
    clock.advance(0.75)
    assert isinstance(failure_of(d).value, ProbeTimeoutError)


def test_an_explicit_status_other_than_200():
    _fake, attempts, _probe, d = start(expect_status=204)
    attempts.answer(0, b"HTTP/1.0 204 No Content\r\n")
    assert result_of(d) == 1


# -- real connections on loopback -------------------------------------------------


class _Status(resource.Resource):
    isLeaf = True  # noqa: N815 (Twisted's name)

    def __init__(self, codes: list[int]) -> None:
        super().__init__()
        self.codes = codes  # one per request; the last one repeats
        self.requests = 0

    def render_GET(self, request):  # noqa: N802
        code = self.codes[min(self.requests, len(self.codes) - 1)]
        self.requests += 1
        request.setResponseCode(code)
        return b"x"


class _Silent(protocol.Protocol):
    """Accepts and never answers, like QEMU's forward before the guest NIC is up."""

    def connectionMade(self):  # noqa: N802
        self.factory.open += 1

    def connectionLost(self, reason):  # noqa: N802
        self.factory.open -= 1
        self.factory.closed += 1


class LoopbackProbeTest(unittest.TestCase):
    timeout = 5

    def listen(self, factory: protocol.Factory) -> int:
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        return port.getHost().port

    def http(self, *codes: int) -> tuple[int, _Status]:
        status = _Status(list(codes))
        site = server.Site(status)
        site.noisy = False
        return self.listen(site), status

    def silent(self) -> tuple[int, protocol.Factory]:
        factory = protocol.Factory.forProtocol(_Silent)
        factory.noisy = False
        factory.open = factory.closed = 0
        return self.listen(factory), factory

    def probe(self, port: int, seconds: float, **kw: object) -> Probe:
        kw.setdefault("interval", 0.02)
        return Probe(reactor, "127.0.0.1", port, "/", deadline=reactor.seconds() + seconds, **kw)

    @defer.inlineCallbacks
    def test_the_expected_status_succeeds(self):
        port, status = self.http(200)
        attempts = yield self.probe(port, 1.0).run()
        self.assertEqual((attempts, status.requests), (1, 1))

    @defer.inlineCallbacks
    def test_a_wrong_status_is_retried_until_the_right_one(self):
        port, status = self.http(503, 503, 200)
        probe = self.probe(port, 1.0, interval=0.05)
        attempts = yield probe.run()
        self.assertEqual(status.requests, 3)
        self.assertGreaterEqual(attempts, 3)
        self.assertEqual(probe.last_error, "HTTP 503, expected 200")

    @defer.inlineCallbacks
    def test_a_wrong_status_until_the_deadline(self):
        port, _status = self.http(500)
        probe = self.probe(port, 0.3, interval=0.05)
        with self.assertRaises(ProbeTimeoutError) as info:
            yield probe.run()
        self.assertEqual(info.exception.last_error, "HTTP 500, expected 200")
        self.assertEqual(info.exception.attempts, probe.attempts)
        self.assertTrue(2 < probe.attempts < 10, probe.attempts)  # paced by the interval

    @defer.inlineCallbacks
    def test_a_refused_connection_until_the_deadline(self):
        # a port nobody listens on: listen, note the port, stop
        closed = reactor.listenTCP(0, protocol.Factory(), interface="127.0.0.1")
        free = closed.getHost().port
        yield closed.stopListening()
        with self.assertRaises(ProbeTimeoutError) as info:
            yield self.probe(free, 0.2, interval=0.05).run()
        self.assertTrue(info.exception.last_error.startswith("connect failed: Connection was refused"),
                        info.exception.last_error)

    @defer.inlineCallbacks
    def test_a_server_that_never_answers_times_each_attempt_out(self):
        port, factory = self.silent()
        probe = self.probe(port, 0.5, interval=0.05, request_timeout=0.1)
        with self.assertRaises(ProbeTimeoutError) as info:
            yield probe.run()
        self.assertEqual(info.exception.last_error, "no status line within 100 ms")
        self.assertGreater(probe.attempts, 3)
        yield deferLater(0.05)
        self.assertEqual(factory.open, 0)  # every attempt's connection was dropped
        self.assertEqual(factory.closed, probe.attempts)

    @defer.inlineCallbacks
    def test_a_hanging_attempt_does_not_hold_up_a_later_one(self):
        """Early connections hang; later ones are served: the probe notices
        readiness at the next interval, not after request_timeout."""
        ready_at = reactor.seconds() + 0.15

        class Guest(protocol.Protocol):
            def connectionMade(self):  # noqa: N802
                self.early = reactor.seconds() < ready_at

            def dataReceived(self, data):  # noqa: N802
                if not self.early:
                    self.transport.write(b"HTTP/1.0 200 OK\r\n\r\n")
                    self.transport.loseConnection()

        port = self.listen(protocol.Factory.forProtocol(Guest))
        started = reactor.seconds()
        yield self.probe(port, 3.0, request_timeout=2.0).run()
        self.assertLess(reactor.seconds() - started, 0.6)

    @defer.inlineCallbacks
    def test_cancel_drops_the_waiting_connections(self):
        port, factory = self.silent()
        probe = self.probe(port, 3.0, interval=0.05, request_timeout=2.0)
        d = probe.run()
        yield deferLater(0.2)
        self.assertGreater(factory.open, 0)
        probe.cancel("stopping")
        with self.assertRaises(ProbeCancelledError):
            yield d
        yield deferLater(0.05)
        self.assertEqual(factory.open, 0)
        attempts = probe.attempts
        yield deferLater(0.1)
        self.assertEqual(probe.attempts, attempts)  # no attempt after cancel

    @defer.inlineCallbacks
    def test_real_connections_with_time_from_a_task_clock(self):
        """The reactor connects; a task.Clock alone decides when attempts
        start and time out."""
        port, factory = self.silent()
        clock = task.Clock()
        probe = Probe(reactor, "127.0.0.1", port, "/", interval=0.25, request_timeout=0.5, deadline=1.0,
                      clock=clock)
        d = probe.run()
        yield deferLater(0.1)
        self.assertEqual((probe.attempts, factory.open), (1, 1))  # connected, and no clock tick yet
        clock.advance(0.25)
        yield deferLater(0.1)
        self.assertEqual((probe.attempts, factory.open), (2, 2))
        clock.advance(0.25)  # attempt 1's 500 ms are over: its connection is dropped
        yield deferLater(0.1)
        self.assertEqual(probe.last_error, "no status line within 500 ms")
        self.assertEqual((probe.attempts, factory.closed), (3, 1))
        clock.pump([0.25, 0.25])
        with self.assertRaises(ProbeTimeoutError) as info:
            yield d
        self.assertEqual(info.exception.attempts, 4)
        yield deferLater(0.05)
        self.assertEqual(factory.open, 0)


def deferLater(seconds: float) -> defer.Deferred:  # noqa: N802 (task.deferLater's name)
    return task.deferLater(reactor, seconds, lambda: None)


def test_probe_error_is_the_base_of_both_failures():
    assert issubclass(ProbeTimeoutError, ProbeError) and issubclass(ProbeCancelledError, ProbeError)
