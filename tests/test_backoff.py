"""The one exponential back-off (summoner.backoff)."""

from __future__ import annotations

from summoner.backoff import Backoff, delay_after


def test_backoff_doubles_to_its_cap_and_resets() -> None:
    backoff = Backoff(1.0, 5.0)
    assert [backoff.failed() for _ in range(5)] == [1.0, 2.0, 4.0, 5.0, 5.0]
    backoff.succeeded()
    assert backoff.upcoming == 1.0 and backoff.failed() == 1.0
    jittered = Backoff(10.0, 100.0, jitter=0.2)
    assert all(8.0 <= jittered.failed() / 2 ** i <= 12.0 for i in range(3))
    assert delay_after(3, 5.0, 300.0) == 20.0


def test_delay_after_doubles_from_the_first_failure_and_stops_at_the_cap():
    assert [delay_after(n, 5.0, 300.0) for n in (1, 2, 3, 7, 8, 20)] == [5.0, 10.0, 20.0, 300.0, 300.0, 300.0]
