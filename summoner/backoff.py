"""Exponential back-off, the one used for every retry in summoner
(libvirt reconnects, Arrowhead registrations, failed boots).

Tests: tests/test_backoff.py
"""

from __future__ import annotations

import random


def delay_after(failures: int, first: float, maximum: float) -> float:
    """Delay before the next try after ``failures`` consecutive failures (≥ 1)."""
    return min(first * 2 ** max(failures - 1, 0), maximum)


class Backoff:
    """Doubling delays from ``first`` up to ``maximum``; ``jitter`` spreads each
    delay by ±that fraction, so many clients of one server do not retry in step."""

    def __init__(self, first: float, maximum: float, jitter: float = 0.0) -> None:
        self.first = first
        self.maximum = maximum
        self.jitter = jitter
        self.failures = 0

    @property
    def upcoming(self) -> float:
        """The delay the next failure will get (without jitter), for log lines."""
        return delay_after(self.failures + 1, self.first, self.maximum)

    def failed(self) -> float:
        """Count a failure; returns how long to wait before trying again."""
        self.failures += 1
        delay = delay_after(self.failures, self.first, self.maximum)
        return delay * random.uniform(1 - self.jitter, 1 + self.jitter) if self.jitter else delay

    def succeeded(self) -> None:
        self.failures = 0
