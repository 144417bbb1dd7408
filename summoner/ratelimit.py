"""Response rate limiting for UDP, in the manner of NSD's and BIND's RRL.

An authoritative server on a public address is a reflector: a spoofed query
of 40 bytes becomes an answer of hundreds, aimed at the victim.  So answers
to one client *network* (an IPv4 /24, an IPv6 /56, as both do by default)
beyond ``rate`` per second are not sent.  Every ``slip``-th of them goes out
truncated instead (TC, no records): a real client behind the flood retries
over TCP, which is never limited because TCP cannot be spoofed.  ``slip`` 0
drops them all.

One token bucket per network, refilled at ``rate`` per second up to one
second's worth.  The table is bounded: when it is full it is emptied, which
at worst lets a flood through for a second.

Tests: tests/test_ratelimit.py
"""

from __future__ import annotations

import enum
import ipaddress
from collections.abc import Callable
from dataclasses import dataclass

from prometheus_client import Counter

MAX_NETWORKS = 100_000

LIMITED = Counter("summoner_dns_rrl_limited_total",
                  "UDP answers held back by response rate limiting, by action (dropped, slipped: sent truncated).",
                  ["action"])
for _action in ("dropped", "slipped"):
    LIMITED.labels(_action)


class Verdict(enum.Enum):
    ANSWER = "answer"
    SLIP = "slip"    # send a truncated answer instead
    DROP = "drop"


@dataclass(frozen=True)
class RateLimit:
    rate: float                 # answers per second per network; 0: off
    slip: int = 2               # every slip-th limited answer goes out truncated; 0: none
    ipv4_prefix: int = 24
    ipv6_prefix: int = 56


class RateLimiter:
    def __init__(self, limit: RateLimit, clock: Callable[[], float]) -> None:
        self.limit = limit
        self.clock = clock
        self._buckets: dict[str, list[float]] = {}  # network -> [tokens, last refill, limited so far]
        self._dropped = LIMITED.labels("dropped")
        self._slipped = LIMITED.labels("slipped")

    def network(self, host: str) -> str:
        if ":" in host:
            return str(ipaddress.IPv6Network((host.split("%", 1)[0], self.limit.ipv6_prefix), strict=False))
        head, _, _ = host.rpartition(".")
        if self.limit.ipv4_prefix == 24 and head:
            return head  # the common case without building an address object
        return str(ipaddress.IPv4Network((host, self.limit.ipv4_prefix), strict=False))

    def check(self, host: str) -> Verdict:
        """One answer to ``host`` is due: may it go out?"""
        now = self.clock()
        key = self.network(host)
        bucket = self._buckets.get(key)
        rate = self.limit.rate
        if bucket is None:
            if len(self._buckets) >= MAX_NETWORKS:
                self._buckets.clear()
            bucket = self._buckets[key] = [rate, now, 0.0]
        else:
            bucket[0] = min(rate, bucket[0] + (now - bucket[1]) * rate)
            bucket[1] = now
        if bucket[0] >= 1.0:
            bucket[0] -= 1.0
            return Verdict.ANSWER
        bucket[2] += 1
        if self.limit.slip and bucket[2] % self.limit.slip == 0:
            self._slipped.inc()
            return Verdict.SLIP
        self._dropped.inc()
        return Verdict.DROP
