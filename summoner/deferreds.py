"""Small Deferred combinators summoner shares, and a way to run one job on
a reactor of its own (commands and scripts that are not the server).

Tests: tests/test_deferreds.py
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import TypeVar

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure

T = TypeVar("T")


def when_fired(d: defer.Deferred[T]) -> defer.Deferred[None]:
    """Fires with None when ``d`` fires, whatever its result, leaving ``d``'s
    result to its other callbacks; cancelling it does not cancel ``d``."""
    out: defer.Deferred[None] = defer.Deferred()

    def fired(result: T) -> T:
        if not out.called:
            out.callback(None)
        return result
    d.addBoth(fired)
    return out


def first_of(reactor: IReactorTime, d: defer.Deferred[T], timeout: float) -> defer.Deferred[bool]:
    """Fires True when ``d`` fires, False after ``timeout`` seconds (``d`` is
    left alone either way); cancelling it cancels only the timer."""
    out: defer.Deferred[bool] = defer.Deferred(lambda _: timer.cancel() if timer.active() else None)
    timer = reactor.callLater(max(0.0, timeout), lambda: out.called or out.callback(False))

    def fired(result: T) -> T:
        if timer.active():
            timer.cancel()
        if not out.called:
            out.callback(True)
        return result
    d.addBoth(fired)
    return out


def run_alone(job: Callable[[], defer.Deferred[T] | Coroutine[defer.Deferred[object], object, T]]) -> T:
    """Start the global reactor, run ``job`` on it, stop the reactor, and
    return what the job gave (or raise what it raised).  For one-shot
    commands (``summoner doctor``) and benchmark scripts; the reactor cannot
    be started again in the same process."""
    from twisted.internet import reactor
    outcome: list[T | Failure] = []

    def finished(result: T | Failure) -> None:
        outcome.append(result)
        reactor.stop()
    reactor.callWhenRunning(lambda: defer.ensureDeferred(job()).addBoth(finished))
    reactor.run()
    result = outcome[0]
    if isinstance(result, Failure):
        result.raiseException()
    return result
