"""Small Deferred combinators the VM part shares.

Tests: tests/vm/test_deferreds.py
"""

from __future__ import annotations

from typing import TypeVar

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime

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
