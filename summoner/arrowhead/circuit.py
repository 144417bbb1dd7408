"""The Arrowhead stage's circuit breaker: an Orchestrator that keeps failing
is left alone for a while (SERVFAIL at once) instead of being asked by every
query.

Tests: tests/test_arrowhead_dns.py (the circuit end to end)
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.logger import Logger

log = Logger(namespace="summoner.arrowhead")


class CircuitBreaker:
    """closed → (``threshold`` consecutive failures) → open → (``cooldown``) →
    half-open: one probe call goes through; its outcome closes or re-opens."""

    def __init__(self, threshold: int, cooldown: float, clock: Callable[[], float]) -> None:
        self.threshold = threshold
        self.cooldown = cooldown
        self._clock = clock
        self.state = "closed"
        self.failures = 0
        self.opened_at = 0.0

    def allow(self) -> bool:
        if self.state == "closed":
            return True
        if self.state == "open" and self._clock() - self.opened_at >= self.cooldown:
            self.state = "half-open"
            return True
        return False  # open and cooling down, or a probe already in flight

    def succeeded(self) -> None:
        if self.state != "closed":
            log.info("Arrowhead Orchestrator answers again; circuit closed")
        self.state, self.failures = "closed", 0

    def failed(self) -> None:
        self.failures += 1
        if self.state == "half-open" or self.failures >= self.threshold:
            if self.state != "open":
                log.warn("Arrowhead Orchestrator failed {n} time(s) in a row; circuit open, answering SERVFAIL "
                         "for {s:g} s before probing again", n=self.failures, s=self.cooldown)
            self.state, self.opened_at = "open", self._clock()
