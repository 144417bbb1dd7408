"""Response rate limiting: per-network token buckets, slip, and a real UDP
flood from one source network while another network is still answered."""

from __future__ import annotations

import socket
import struct
import time

import dns.flags
import dns.message
import dns.query
import dns.rcode

from summoner.ratelimit import RateLimit, RateLimiter, Verdict


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_network_gets_its_rate_then_slips_every_second_answer():
    clock = Clock()
    limiter = RateLimiter(RateLimit(rate=5, slip=2), clock)
    verdicts = [limiter.check("192.0.2.10") for _ in range(11)]
    assert verdicts[:5] == [Verdict.ANSWER] * 5
    assert verdicts[5:] == [Verdict.DROP, Verdict.SLIP] * 3  # then every 2nd held-back answer is truncated
    assert limiter.check("192.0.2.200") is Verdict.DROP          # same /24: the same empty bucket
    assert limiter.check("198.51.100.1") is Verdict.ANSWER      # another network is untouched
    clock.now += 0.4                                             # 0.4 s refills 2 answers
    # two answers, then the network's 8th held-back answer: every 2nd slips
    assert [limiter.check("192.0.2.10") for _ in range(3)] == [Verdict.ANSWER, Verdict.ANSWER, Verdict.SLIP]


def test_networks_follow_the_prefixes():
    limiter = RateLimiter(RateLimit(rate=1, ipv4_prefix=24, ipv6_prefix=56), Clock())
    assert limiter.network("192.0.2.77") == limiter.network("192.0.2.1") != limiter.network("192.0.3.1")
    assert limiter.network("2001:db8:0:ab::1") == limiter.network("2001:db8:0:ff::2")  # one /56
    assert limiter.network("2001:db8:0:100::1") != limiter.network("2001:db8:0:ff::2")
    wide = RateLimiter(RateLimit(rate=1, ipv4_prefix=16), Clock())
    assert wide.network("10.1.2.3") == wide.network("10.1.200.9") == "10.1.0.0/16"


def test_slip_zero_drops_everything_beyond_the_rate():
    limiter = RateLimiter(RateLimit(rate=2, slip=0), Clock())
    assert [limiter.check("192.0.2.1") for _ in range(6)] == [Verdict.ANSWER] * 2 + [Verdict.DROP] * 4


def flood(server, source: str, count: int) -> dict[str, int]:
    """``count`` queries from ``source``, in bursts of 50 (far above the
    limit, yet no socket buffer overflows, so every reply sent is seen)."""
    query = dns.message.make_query("www.example.org", "A")
    seen = {"answers": 0, "truncated": 0}
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((source, 0))
        sock.settimeout(0.3)
        for burst in range(0, count, 50):
            for i in range(burst, min(count, burst + 50)):
                query.id = i
                sock.sendto(query.to_wire(), (server.host, server.port))
            collect(sock, seen, quiet=0.02)
        collect(sock, seen, quiet=0.3)
    return seen


def collect(sock: socket.socket, seen: dict[str, int], quiet: float) -> None:
    sock.settimeout(quiet)
    while True:
        try:
            reply = sock.recv(4096)
        except TimeoutError:
            return
        flags = struct.unpack("!H", reply[2:4])[0]
        seen["truncated" if flags & 0x0200 else "answers"] += 1


def test_a_flood_from_one_network_is_limited_while_another_is_answered(start_server):
    from tests.conftest import EXAMPLE_ZONES
    server = start_server(EXAMPLE_ZONES, "--no-on-demand", "--rrl-rate", "50", "--rrl-slip", "2")
    started = time.monotonic()
    flooded = flood(server, "127.0.1.1", 2000)
    took = time.monotonic() - started
    # At most one second's burst plus the refill over the flood's duration...
    assert flooded["answers"] <= 50 + 50 * took + 5, (flooded, took)
    # ...and about half of the rest goes out truncated (slip 2): real clients retry on TCP.
    assert 0.4 * (2000 - flooded["answers"]) <= flooded["truncated"] <= 0.6 * (2000 - flooded["answers"]), flooded
    # Another network, meanwhile and after, is answered normally.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.2.1", 0))
        reply = dns.query.udp(dns.message.make_query("www.example.org", "A"), server.host, port=server.port,
                              timeout=2, sock=sock)
    assert reply.rcode() == dns.rcode.NOERROR and not reply.flags & dns.flags.TC and reply.answer
    # TCP is never limited, not even for the flooding network.
    reply = dns.query.tcp(dns.message.make_query("www.example.org", "A"), server.host, port=server.port,
                          timeout=2, source="127.0.1.1")
    assert reply.answer and str(reply.answer[0][0]) == "127.0.0.2"
    assert server.metric("summoner_dns_rrl_limited_total", action="slipped") == flooded["truncated"]
    assert server.metric("summoner_dns_rrl_limited_total", action="dropped") >= 2000 - flooded["answers"] \
        - flooded["truncated"] - 5


def test_rate_limiting_is_off_by_default(start_server):
    from tests.conftest import EXAMPLE_ZONES
    server = start_server(EXAMPLE_ZONES, "--no-on-demand")
    assert flood(server, "127.0.3.1", 300)["answers"] == 300
