"""Random and mutated packets must never take the server down or escape as errors."""

from __future__ import annotations

import random
import socket
import struct

import dns.message
import dns.rcode
import pytest

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


def expected(packet: bytes) -> str:
    """What the packet should get, decided from the packet alone (README,
    "Hostile input"): "drop", an rcode name, or "answer" (a well-formed reply
    to its own question: NOERROR, NXDOMAIN, REFUSED or NOTIMP)."""
    if len(packet) < 12:
        return "drop"
    _id, flags, qdcount = struct.unpack_from("!HHH", packet)
    if flags & 0x8000:
        return "drop"
    if len(packet) > 4096:
        return "FORMERR"
    if (flags >> 11) & 0xF:
        return "NOTIMP"
    if qdcount != 1:
        return "FORMERR"
    try:
        query = dns.message.from_wire(packet, ignore_trailing=True)
        query.question[0].name.to_text().encode("ascii")
    except Exception:
        return "unclear"  # dnspython and dnslib disagree at the edges: FORMERR or an answer
    return "answer" if len(query.question) == 1 else "unclear"


def check(packet: bytes, reply: bytes | None) -> str | None:
    """None if ``reply`` is right for ``packet``, else what is wrong."""
    want = expected(packet)
    if want == "drop":
        return None if reply is None else "answered a packet that must be dropped"
    if reply is None:
        return f"no reply, expected {want}"
    if reply[:2] != packet[:2] or not reply[2] & 0x80:
        return "reply without the query's ID or the QR bit"
    rcode = dns.rcode.to_text(reply[3] & 0xF)
    if rcode == "SERVFAIL":
        return "SERVFAIL: an internal error (static data never fails)"
    if want in ("FORMERR", "NOTIMP"):
        return None if rcode == want else f"{rcode}, expected {want}"
    try:
        parsed = dns.message.from_wire(reply)
    except Exception as exc:
        return f"malformed reply: {exc}"
    if want == "answer":
        query = dns.message.from_wire(packet, ignore_trailing=True)
        if rcode not in ("NOERROR", "NXDOMAIN", "REFUSED", "NOTIMP", "BADVERS", "FORMERR"):
            return f"{rcode} for a well-formed query"
        if rcode != "FORMERR" and [q.to_text() for q in parsed.question] != [q.to_text() for q in query.question]:
            return "reply question differs from the query's"
    return None


@pytest.fixture
def logged_failures():
    """Every Twisted log event carrying a failure (an exception the responder caught)."""
    from twisted.logger import globalLogPublisher
    failures: list[dict] = []

    def observe(event: dict) -> None:
        if event.get("log_failure") is not None:
            failures.append(event)
    globalLogPublisher.addObserver(observe)
    yield failures
    globalLogPublisher.removeObserver(observe)


def test_twenty_thousand_packets_in_process_get_the_answer_their_class_should(logged_failures) -> None:
    responder = Responder(Chain([StaticStage(load_zone_dir(EXAMPLE_ZONES))]))
    wrong, classes = [], {}
    for packet in packets(20_000, seed=20261127):
        for protocol in ("udp", "tcp"):
            reply = responder.respond(packet, protocol)
            assert reply is None or isinstance(reply, bytes)
            problem = check(packet, reply)
            if problem:
                wrong.append(f"{packet.hex()} ({protocol}): {problem}")
            classes[expected(packet)] = classes.get(expected(packet), 0) + 1
    assert not logged_failures, logged_failures[0]["log_failure"].getTraceback()
    assert not wrong, f"{len(wrong)} wrong, e.g.:\n" + "\n".join(wrong[:10])
    # the corpus reaches every class, well-formed queries included
    assert all(classes.get(c, 0) > 200 for c in ("drop", "FORMERR", "NOTIMP", "answer")), classes


def test_twenty_thousand_packets_over_udp_each_get_their_answer(example_server) -> None:
    """Each packet's ID is its index, so every reply is matched to its packet;
    packets go in windows so the socket buffers never overflow."""
    target = (example_server.host, example_server.port)
    wrong, replies_seen, expected_replies = [], 0, 0
    window: dict[int, bytes] = {}
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(2.0)
        for i, packet in enumerate(packets(20_000, seed=4)):
            if len(packet) >= 2:
                packet = struct.pack("!H", i % 65536) + packet[2:]
            sock.sendto(packet, target)
            window[i % 65536] = packet
            if len(window) == 200:
                seen, missing = drain(sock, window)
                replies_seen += seen
                wrong += missing
                expected_replies += sum(expected(p) != "drop" for p in window.values())
                window = {}
        seen, missing = drain(sock, window)
        replies_seen += seen
        wrong += missing
        expected_replies += sum(expected(p) != "drop" for p in window.values())
    assert not wrong, f"{len(wrong)} wrong, e.g.:\n" + "\n".join(wrong[:10])
    assert replies_seen == expected_replies > 10_000
    assert example_server.process.poll() is None
    reply = example_server.query("www.example.org", "A", timeout=5)
    assert [str(rd) for rd in reply.answer[0]] == ["127.0.0.2"]
    assert "Traceback" not in example_server.log()


def drain(sock: socket.socket, window: dict[int, bytes]) -> tuple[int, list[str]]:
    """Read this window's replies; check each against its packet."""
    want = {i for i, p in window.items() if expected(p) != "drop"}
    got: dict[int, bytes] = {}
    while want - set(got):
        try:
            reply = sock.recv(65535)
        except TimeoutError:
            break
        got[struct.unpack("!H", reply[:2])[0]] = reply
    problems = [f"{window[i].hex()}: {check(window[i], got.get(i))}" for i in window
                if check(window[i], got.get(i)) and not (i not in got and expected(window[i]) == "drop")]
    extra = set(got) - want
    problems += [f"{window[i].hex()}: answered a packet that must be dropped" for i in extra]
    return len(got), problems
