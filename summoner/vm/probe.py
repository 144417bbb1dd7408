"""HTTP readiness probe.

A minimal ``GET path HTTP/1.0`` over a raw TCP connection (HTTP only: QEMU's
user-mode port forward accepts a connection before the guest listens, so a
bare TCP connect proves nothing): the status line is all we need, and it
is much cheaper than an HTTP client stack while a boot is competing for
the same two cores.  Attempts start every ``interval`` (timer driven, never
a busy loop, overlapping while older ones wait) until one returns the
expected status or the overall deadline passes; the last error is kept for
the failure log line.

In QEMU user networking the host side of the port forward accepts a
connection before the guest is listening and then drops it, so "connection
closed before a status line" is the usual not-yet-ready error there.

Connections go through ``reactor`` (``IReactorTCP``); every timer (the
interval, the deadline, each attempt's timeout) goes through
``clock`` (``IReactorTime``, the reactor unless given), so tests can drive
time with ``task.Clock``.

Tests: tests/vm/test_probe.py
"""

from __future__ import annotations

from typing import cast

from twisted.internet import defer, protocol
from twisted.internet.interfaces import IAddress, IConnector, IDelayedCall, IReactorTCP, IReactorTime
from twisted.python.failure import Failure

from summoner.vm import metrics


class ProbeError(Exception):
    pass


class ProbeTimeoutError(ProbeError):
    """The deadline passed; ``last_error`` says what the last attempt saw."""

    def __init__(self, message: str, attempts: int, last_error: str | None) -> None:
        super().__init__(message)
        self.attempts = attempts
        self.last_error = last_error


class ProbeCancelledError(ProbeError):
    pass


class _StatusLine(protocol.Protocol):
    def __init__(self, request: bytes, done: defer.Deferred[int]) -> None:
        self.request = request
        self.done = done
        self.buffer = b""

    def connectionMade(self) -> None:  # noqa: N802 (Twisted's name)
        self.transport.write(self.request)

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        self.buffer += data
        if b"\n" not in self.buffer and len(self.buffer) < 1024:
            return
        line = self.buffer.split(b"\n", 1)[0].strip()
        parts = line.split()
        self.transport.abortConnection()
        if self.done.called:
            return
        if len(parts) >= 2 and parts[0].startswith(b"HTTP/") and parts[1].isdigit():
            self.done.callback(int(parts[1]))
        else:
            self.done.errback(ProbeError(f"not an HTTP status line: {line[:80]!r}"))

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:  # noqa: N802
        if not self.done.called:
            self.done.errback(ProbeError("connection closed before a status line"))


class _Factory(protocol.ClientFactory):
    noisy = False  # one log line per attempt would flood the log during boots

    def __init__(self, request: bytes, done: defer.Deferred[int]) -> None:
        self.request = request
        self.done = done

    def buildProtocol(self, addr: IAddress) -> protocol.Protocol:  # noqa: N802
        return _StatusLine(self.request, self.done)

    def clientConnectionFailed(self, connector: IConnector, reason: Failure) -> None:  # noqa: N802
        if not self.done.called:
            self.done.errback(ProbeError(f"connect failed: {reason.getErrorMessage()}"))


def probe_once(reactor: IReactorTCP, address: str, port: int, path: str, timeout: float,
               *, clock: IReactorTime | None = None) -> defer.Deferred[int]:
    """One attempt; fires with the HTTP status code or fails with
    ProbeError.  ``clock``: the timers' clock (default ``reactor``)."""
    timers = clock if clock is not None else cast(IReactorTime, reactor)
    # Cancelling an attempt (another one already succeeded) drops its connection.
    done: defer.Deferred[int] = defer.Deferred(lambda _: connector.disconnect())
    request = f"GET {path} HTTP/1.0\r\nHost: {address}\r\nUser-Agent: summoner-probe\r\n\r\n".encode()
    connector = reactor.connectTCP(address, port, _Factory(request, done), timeout=timeout)

    def expire() -> None:
        if not done.called:
            done.errback(ProbeError(f"no status line within {timeout * 1000:.0f} ms"))
        connector.disconnect()

    timer = timers.callLater(timeout, expire)

    def finish(result: object) -> object:
        if timer.active():
            timer.cancel()
        return result
    return done.addBoth(finish)


# Attempts that may be waiting at once (see Probe).
MAX_PENDING_ATTEMPTS = 32


class Probe:
    """Attempts every ``interval`` until one succeeds, the deadline passes, or
    cancel().

    Attempts overlap: a new one starts every interval even while older ones
    are still waiting.  With QEMU user networking an attempt made before the
    guest's NIC is up is accepted on the host side and then hangs until its
    own timeout, so one-at-a-time probing would notice a ready guest up to a
    whole ``request_timeout`` late (measured here: ~500 ms of a ~550 ms boot).

    ``reactor`` makes the connections; ``clock`` (default: ``reactor``) runs
    the timers and tells the time ``deadline`` is given in.
    """

    def __init__(self, reactor: IReactorTCP, address: str, port: int, path: str = "/", *,
                 expect_status: int = 200, interval: float = 0.02, request_timeout: float = 0.5,
                 deadline: float, clock: IReactorTime | None = None) -> None:
        self.reactor = reactor
        self.clock: IReactorTime = clock if clock is not None else cast(IReactorTime, reactor)
        self.address = address
        self.port = port
        self.path = path
        self.expect_status = expect_status
        self.interval = interval
        self.request_timeout = request_timeout
        self.deadline = deadline  # absolute, in clock.seconds()
        self.attempts = 0
        self._pending: set[defer.Deferred[int]] = set()
        self.last_error: str | None = None
        self._done: defer.Deferred[int] = defer.Deferred()
        self._timer: IDelayedCall | None = None

    def run(self) -> defer.Deferred[int]:
        """Fires with the number of attempts on success; fails with
        ProbeTimeoutError past the deadline or ProbeCancelledError."""
        self._tick()
        return self._done

    def cancel(self, reason: str) -> None:
        if self._done.called:
            return
        self._settle()
        self._done.errback(ProbeCancelledError(reason))

    def _settle(self) -> None:
        """No more attempts, and none left waiting."""
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        for attempt in list(self._pending):
            attempt.cancel()

    def _tick(self) -> None:
        self._timer = None
        if self._done.called:
            return
        remaining = self.deadline - self.clock.seconds()
        if remaining <= 0:
            self._settle()
            self._done.errback(ProbeTimeoutError(
                f"probe of http://{self.address}:{self.port}{self.path} did not succeed in time "
                f"({self.attempts} attempts)", self.attempts, self.last_error))
            return
        if len(self._pending) < MAX_PENDING_ATTEMPTS:
            self._attempt(min(self.request_timeout, remaining))
        if not self._done.called:
            self._timer = self.clock.callLater(max(0.0, min(self.interval, remaining)), self._tick)

    def _attempt(self, timeout: float) -> None:
        self.attempts += 1
        d = probe_once(self.reactor, self.address, self.port, self.path, timeout, clock=self.clock)
        self._pending.add(d)
        d.addBoth(self._left, d)
        d.addCallbacks(self._answered, self._failed, errbackArgs=(timeout < self.request_timeout,))

    def _left(self, result: object, attempt: defer.Deferred[int]) -> object:
        self._pending.discard(attempt)
        return result

    def _answered(self, status: int) -> None:
        if status == self.expect_status:
            metrics.PROBE_ATTEMPTS.labels("ok").inc()
            if not self._done.called:
                self._settle()
                self._done.callback(self.attempts)
            return
        metrics.PROBE_ATTEMPTS.labels("fail").inc()
        self.last_error = f"HTTP {status}, expected {self.expect_status}"

    def _failed(self, failure: Failure, cut_short: bool) -> None:
        if failure.check(defer.CancelledError):
            return  # dropped by _settle: the probe is over, this says nothing
        metrics.PROBE_ATTEMPTS.labels("fail").inc()
        # An attempt the deadline cut short says only "no time left"; the
        # error before it (an HTTP 503, a refused connection) is the real why.
        if not (cut_short and self.last_error):
            self.last_error = failure.getErrorMessage()
