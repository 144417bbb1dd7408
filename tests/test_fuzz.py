"""Random and mutated packets must never take the server down or escape as errors."""

from __future__ import annotations

import random
import socket
import struct
import time

import dns.message
import dns.rcode
from dnslib import DNSRecord

from summoner.resolution import Chain
from summoner.static import StaticStage
from summoner.wire import Responder
from summoner.zonefile import load_zone_dir
from tests.conftest import EXAMPLE_ZONES

SEEDS = [
    dns.message.make_query("www.example.org", "A").to_wire(),
    dns.message.make_query("big.wild.test", "TXT", use_edns=0, payload=1232).to_wire(),
    dns.message.make_query("nope.example.org", "AAAA", use_edns=0).to_wire(),
    dns.message.make_query("docs.example.org", "ANY").to_wire(),
]


def mutate(rng: random.Random, packet: bytes) -> bytes:
    data = bytearray(packet)
    for _ in range(rng.randint(1, 6)):
        action = rng.randrange(5)
        if action == 0 and data:
            data[rng.randrange(len(data))] = rng.randrange(256)
        elif action == 1 and data:
            del data[rng.randrange(len(data)):]
        elif action == 2:
            data[rng.randrange(len(data) + 1):0] = rng.randbytes(rng.randint(1, 40))
        elif action == 3 and len(data) >= 12:
            struct.pack_into("!H", data, 4 + 2 * rng.randrange(4), rng.choice([0, 1, 2, 0xFFFF]))
        else:
            data[rng.randrange(len(data) + 1):0] = b"\xc0" + bytes([rng.randrange(256)])
    return bytes(data)


def packets(count: int, seed: int):
    rng = random.Random(seed)
    for i in range(count):
        if i % 4 == 0:
            yield rng.randbytes(rng.randint(0, 600))
        else:
            yield mutate(rng, rng.choice(SEEDS))


def test_twenty_thousand_packets_in_process_never_raise(tmp_path) -> None:
    """Every packet through the real Responder: an answer is a well-formed response to that ID, or None."""
    responder = Responder(Chain([StaticStage(load_zone_dir(EXAMPLE_ZONES))]))
    answered = 0
    for packet in packets(20_000, seed=20261127):
        for protocol in ("udp", "tcp"):
            reply = responder.respond(packet, protocol)
            if reply is None:
                continue
            assert isinstance(reply, bytes)
            assert reply[:2] == packet[:2]
            assert reply[2] & 0x80  # QR
            DNSRecord.parse(reply)  # what we send is itself well formed
            answered += 1
    assert answered > 10_000


def test_twenty_thousand_packets_over_udp_then_a_valid_query(example_server) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setblocking(False)
        target = (example_server.host, example_server.port)
        started = time.monotonic()
        for i, packet in enumerate(packets(20_000, seed=4)):
            try:
                sock.sendto(packet, target)
            except (BlockingIOError, OSError):
                pass
            if i % 200 == 0:
                # drain answers and pace the flood so the socket buffers mostly hold it
                time.sleep(0.002)
                try:
                    while True:
                        sock.recv(65535)
                except BlockingIOError:
                    pass
            assert time.monotonic() - started < 120
    assert example_server.process.poll() is None
    reply = example_server.query("www.example.org", "A", timeout=5)
    assert reply.rcode() == dns.rcode.NOERROR
    assert [str(rd) for rd in reply.answer[0]] == ["127.0.0.2"]
    assert "Traceback" not in example_server.log()
