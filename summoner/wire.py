"""DNS wire format: from request bytes to response bytes, transport-agnostic.

Three paths, fastest first:

1. *replay*: an identical question (everything after the 2-byte ID, EDNS
   options included) that a stage allowed to be replayed (on-demand and
   Arrowhead answers) gets its pre-encoded response with the ID patched in,
   as long as the answer's ``on_hit`` says it still holds (otherwise that
   one entry is dropped and the query resolved afresh);
2. *compiled*: a query of the usual shape (one IN question, at most an OPT
   record) is parsed here without dnslib, and the chain's compiled stage
   answers it from encoded fragments (``summoner.compiled``): every static
   answer, random and wildcard names included, takes this path;
3. *chain*: everything else is parsed with dnslib, validated, resolved
   through the stage chain and encoded.

All three follow RFC 6891 for EDNS (OPT echoed with the DO bit, RFC 3225)
and truncate UDP answers that do not fit.

Tests: tests/test_wire.py
"""

from __future__ import annotations

import math
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass

from dnslib import EDNS0, QTYPE, RCODE, RR, DNSHeader, DNSRecord
from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from summoner import metrics
from summoner.answer import Answer, Query, name_key, servfail
from summoner.compiled import Fragment
from summoner.resolution import Chain

log = Logger(namespace="summoner.wire")

HEADER = struct.Struct("!HHHHHH")
_COUNTS = struct.Struct("!HHHHH")  # the header after its ID
CLASSIC_UDP_SIZE = 512
# RFC 9715 / DNS flag day 2020: 1232 bytes avoids IP fragmentation on most paths.
SERVER_UDP_SIZE = 1232
# No legitimate single-question query comes near this; larger is hostile.
MAX_QUERY_SIZE = 4096
OPT = 41
BADVERS = 16
_QR = 0x8000
_AA = 0x0400
_TC = 0x0200
# Flags a response keeps from its query (RFC 1035 RD; RFC 4035 CD).
_ECHOED = 0x0100 | 0x0010
_META_TYPES = {QTYPE.AXFR, QTYPE.IXFR, 253, 254}  # zone transfers, MAILB, MAILA
_STATS = metrics.QUERY_STATS
# Types the compiled path leaves to the chain: meta types, and ANY.
_CHAIN_TYPES = frozenset((*_META_TYPES, QTYPE.ANY))
_DO = 0x8000  # the OPT TTL's DNSSEC OK bit (RFC 3225)
_OPT_TAIL = struct.Struct("!HHIH")
_QUESTION_TAIL = struct.Struct("!HH")
# The OPT record a response carries: root owner, our UDP size, no options.
_OPT_RECORD = {do: b"\0" + _OPT_TAIL.pack(OPT, SERVER_UDP_SIZE, do, 0) for do in (0, _DO)}


# A query of the usual shape, parsed without dnslib: a plain tuple, because
# building even a slotted dataclass costs a microsecond per query here.
#   flags, question_end (just past QCLASS), name (the question name in wire
#   form, lower-cased), starts (where each suffix of name begins; the last is
#   the root), qtype, udp_limit (largest UDP response the client takes), opt
#   (the OPT record to answer with; b"" when the query had none)
HotQuery = tuple[int, int, bytes, list[int], int, int, bytes]


def parse_hot(data: bytes) -> HotQuery | None:
    """The one hot shape: a query, opcode 0, one IN question with an
    uncompressed name, nothing else but one version-0 OPT record.  None for
    anything else, which the dnslib path then validates and answers."""
    size = len(data)
    if size < 17 or size > 512:
        return None
    _id, flags, qdcount, ancount, nscount, arcount = HEADER.unpack_from(data)
    if flags & 0xF800 or qdcount != 1 or ancount or nscount or arcount > 1:
        return None  # a response, another opcode, or unusual counts
    i, starts = 12, []
    while True:
        length = data[i]
        if length == 0:
            break
        if length > 63:
            return None  # a compression pointer or a reserved label type
        starts.append(i - 12)
        i += length + 1
        if i >= size:
            return None
    starts.append(i - 12)
    end = i + 5
    if end > size or i - 11 > 255:
        return None
    qtype, qclass = _QUESTION_TAIL.unpack_from(data, i + 1)
    name = data[12:i + 1]
    if qclass != 1 or qtype in _CHAIN_TYPES or not name.isascii():
        return None  # non-ASCII labels: dnslib's rules (UTF-8 or FORMERR) decide, as for every other name
    name = name.lower()
    if not arcount:
        return (flags, end, name, starts, qtype, CLASSIC_UDP_SIZE, b"") if end == size else None
    if end + 11 > size or data[end] != 0:
        return None
    rtype, udp_size, ttl, rdlength = _OPT_TAIL.unpack_from(data, end + 1)
    if rtype != OPT or ttl & 0x00FF0000 or end + 11 + rdlength != size:
        return None  # not an OPT, version above 0 (BADVERS), or trailing bytes
    limit = min(max(udp_size, CLASSIC_UDP_SIZE), SERVER_UDP_SIZE)
    return flags, end, name, starts, qtype, limit, _OPT_RECORD[ttl & _DO]


def truncated_reply(data: bytes) -> bytes | None:
    """TC and the question, no records: "ask again over TCP" (rate limiting's
    slip).  None for a query not of the usual shape."""
    hot = parse_hot(data)
    if hot is None:
        return None
    flags, question_end, _name, _starts, _qtype, _limit, opt = hot
    header = _COUNTS.pack(_QR | _TC | (flags & _ECHOED), 1, 0, 0, 1 if opt else 0)
    return data[:2] + header + data[12:question_end] + opt


# Request bytes and transport ("udp", "tcp") → the response, later or now (None: none at all).
Relay = Callable[[bytes, str], "bytes | defer.Deferred | None"]


@dataclass(frozen=True, slots=True)
class _Cached:
    tail: bytes  # the encoded response without its ID
    expires: float  # time.perf_counter() deadline; inf for answers that do not age
    qtype: int
    rcode: int
    on_hit: Callable[[], bool] | None  # False: the answer no longer holds


class RejectLog:
    """One log line per class of rejected packet per interval, not one per packet."""

    def __init__(self, interval: float = 10.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval = interval
        self.clock = clock
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def __call__(self, reason: str, detail: str) -> None:
        metrics.REJECTED.labels(reason).inc()
        now = self.clock()
        last = self._last.get(reason)
        if last is not None and now - last < self.interval:
            self._suppressed[reason] = self._suppressed.get(reason, 0) + 1
            return
        self._last[reason] = now
        more = self._suppressed.pop(reason, 0)
        log.warn("rejected packet ({reason}): {detail}{more}", reason=reason, detail=detail,
                 more=f" ({more} more like it since the last report)" if more else "")


class Responder:
    """Turns request bytes into response bytes (or a Deferred of them, or None
    when the packet deserves no answer at all)."""

    def __init__(self, chain: Chain, cache_limit: int = 50_000, relay: Relay | None = None) -> None:
        """``relay``: where queries go that the replay and compiled paths do
        not settle, instead of the chain (a ``--workers`` worker sends them to
        the primary, which counts them)."""
        self.chain = chain
        self.cache_limit = cache_limit
        self.relay = relay
        self._caches: dict[str, dict[bytes, _Cached]] = {"udp": {}, "tcp": {}}
        self.reject = RejectLog()

    def clear_cache(self) -> None:
        """Forget every pre-encoded answer (the app does, on a zone reload)."""
        for cache in self._caches.values():
            cache.clear()

    def respond(self, data: bytes, protocol: str) -> bytes | defer.Deferred | None:
        started = time.perf_counter()
        cache = self._caches[protocol]
        entry = cache.get(data[2:])
        if entry is not None and started < entry.expires:
            if entry.on_hit is None or entry.on_hit():
                _STATS.record(protocol, entry.qtype, entry.rcode, time.perf_counter() - started)
                return data[:2] + entry.tail
            cache.pop(data[2:], None)  # stale: this one answer is resolved afresh
        try:
            hot = parse_hot(data)
            if hot is not None:
                fragment = self.chain.compiled(hot[2], hot[3], hot[4])
                if fragment is not None:
                    return self._assemble(data, hot, fragment, protocol, started)
            if self.relay is not None:
                return self.relay(data, protocol)
            metrics.CACHE_MISSES.inc()
            return self._resolve(data, protocol, started)
        except Exception:
            # Nothing a client sends may escape as an exception: the transport
            # would log and carry on, but the client deserves SERVFAIL.
            log.failure("unexpected error answering a {protocol} packet", protocol=protocol)
            return _header_only(data, RCODE.SERVFAIL)

    def _resolve(self, data: bytes, protocol: str, started: float) -> bytes | defer.Deferred | None:
        if len(data) < HEADER.size:
            self.reject("short", f"{len(data)} bytes, no complete header")
            return None
        _id, flags, qdcount, _an, _ns, _ar = HEADER.unpack_from(data)
        if flags & _QR:
            self.reject("response", "a response arrived where queries are expected")
            return None
        if len(data) > MAX_QUERY_SIZE:
            self.reject("oversized", f"{len(data)} bytes")
            return self._error(data, RCODE.FORMERR, protocol, started)
        opcode = (flags >> 11) & 0xF
        if opcode != 0:
            self.reject("opcode", f"opcode {opcode} is not implemented")
            return self._error(data, RCODE.NOTIMP, protocol, started)
        if qdcount != 1:
            self.reject("qdcount", f"{qdcount} questions (exactly one is allowed)")
            return self._error(data, RCODE.FORMERR, protocol, started)
        try:
            request = DNSRecord.parse(data)
        except Exception as exc:  # dnslib raises DNSError, struct.error, UnicodeError...
            self.reject("malformed", str(exc)[:120])
            return self._error(data, RCODE.FORMERR, protocol, started)
        opts = [rr for rr in request.ar if rr.rtype == OPT]
        if len(opts) > 1:
            self.reject("malformed", "more than one OPT record")
            return self._error(data, RCODE.FORMERR, protocol, started)
        opt = opts[0] if opts else None
        question = request.q
        if opt is not None and (opt.ttl >> 16) & 0xFF != 0:
            return self._finish(data, request, protocol, started,
                                Answer(rcode=BADVERS, authoritative=False), opt)
        if question.qclass != 1 and question.qclass != 255:
            return self._finish(data, request, protocol, started,
                                Answer(rcode=RCODE.REFUSED, authoritative=False), opt)
        if question.qtype in _META_TYPES:
            return self._finish(data, request, protocol, started,
                                Answer(rcode=RCODE.NOTIMP, authoritative=False), opt)
        query = Query(question.qname, question.qtype, question.qclass, name_key(question.qname), protocol)
        result = self.chain.resolve(query)
        if isinstance(result, defer.Deferred):
            return result.addErrback(self._chain_failed).addCallback(
                self._finish_late, data, request, protocol, started, opt)
        return self._finish(data, request, protocol, started, result, opt)

    def _assemble(self, data: bytes, hot: HotQuery, fragment: Fragment, protocol: str, started: float) -> bytes:
        """Header + the query's own question (its case echoed) + the fragment + OPT."""
        flags, question_end, _name, _starts, qtype, udp_limit, opt = hot
        rcode = fragment.rcode
        flags = _QR | (flags & _ECHOED) | rcode | (_AA if fragment.authoritative else 0)
        answers, authority, additional = fragment.counts
        body = fragment.body
        if opt:
            additional += 1
        if protocol == "udp" and question_end + len(body) + len(opt) > udp_limit:
            metrics.TRUNCATED.inc()
            flags |= _TC
            answers = authority = 0
            additional = 1 if opt else 0
            body = b""
        response = b"".join((data[:2], _COUNTS.pack(flags, 1, answers, authority, additional),
                             data[12:question_end], body, opt))
        if fragment.replayable:
            self._remember(protocol, data, _Cached(response[2:], math.inf, qtype, rcode, None))
        _STATS.record(protocol, qtype, rcode, time.perf_counter() - started)
        return response

    def _remember(self, protocol: str, data: bytes, entry: _Cached) -> None:
        cache = self._caches[protocol]
        if len(cache) >= self.cache_limit:
            cache.clear()  # cheaper than LRU bookkeeping on every hit
        cache[data[2:]] = entry

    def _chain_failed(self, failure: Failure) -> Answer:
        log.failure("resolution failed", failure)
        return servfail()

    def _finish_late(self, answer: Answer, data: bytes, request: DNSRecord, protocol: str,
                     started: float, opt: RR | None) -> bytes:
        """``_finish`` for answers that arrived later: respond() can no longer
        catch what encoding raises, so this does (a Deferred that fails would
        leave the client unanswered)."""
        try:
            return self._finish(data, request, protocol, started, answer, opt)
        except Exception:
            log.failure("unexpected error encoding a {protocol} answer", protocol=protocol)
            return _header_only(data, RCODE.SERVFAIL)

    def _finish(self, data: bytes, request: DNSRecord, protocol: str, started: float,
                answer: Answer, opt: RR | None) -> bytes:
        flags = HEADER.unpack_from(data)[1]
        extended, rcode = divmod(answer.rcode, 16)
        header = DNSHeader(id=request.header.id, bitmap=_QR | (flags & _ECHOED) | rcode)
        if answer.authoritative:
            header.bitmap |= _AA
        response = DNSRecord(header, q=request.q, rr=list(answer.answer),
                             auth=list(answer.authority), ar=list(answer.additional))
        limit = 65535
        if opt is not None:
            response.add_ar(_edns(opt, extended))
            if protocol == "udp":
                limit = min(max(opt.rclass, CLASSIC_UDP_SIZE), SERVER_UDP_SIZE)
        elif protocol == "udp":
            limit = CLASSIC_UDP_SIZE
        packed = bytes(response.pack())
        if len(packed) > limit:
            packed = self._truncated(request, header, opt, extended)
        qtype = request.q.qtype
        if answer.cacheable:
            lifetime = answer.cache_seconds
            expires = started + lifetime if lifetime is not None else math.inf
            self._remember(protocol, data, _Cached(packed[2:], expires, qtype, answer.rcode, answer.on_hit))
        _STATS.record(protocol, qtype, answer.rcode, time.perf_counter() - started)
        return packed

    def _truncated(self, request: DNSRecord, header: DNSHeader, opt: RR | None, extended: int) -> bytes:
        """RFC 2181 9: nothing partial; the client retries over TCP (RFC 7766)."""
        metrics.TRUNCATED.inc()
        header = DNSHeader(id=header.id, bitmap=header.bitmap | _TC)
        response = DNSRecord(header, q=request.q)
        if opt is not None:
            response.add_ar(_edns(opt, extended))
        return bytes(response.pack())

    def _error(self, data: bytes, rcode: int, protocol: str, started: float) -> bytes:
        _STATS.record(protocol, -1, rcode, time.perf_counter() - started)
        return _header_only(data, rcode)


def _edns(opt: RR, extended: int) -> EDNS0:
    """Our OPT record, echoing the query's DO bit (RFC 3225 3)."""
    return EDNS0(udp_len=SERVER_UDP_SIZE, ext_rcode=extended, flags="do" if opt.ttl & _DO else "")


def _header_only(data: bytes, rcode: int) -> bytes:
    """An error response carrying only the request's ID, opcode and RD bit,
    for requests whose body cannot be trusted."""
    _id, flags, *_ = HEADER.unpack_from(data)
    return HEADER.pack(_id, _QR | (flags & 0x7900) | rcode, 0, 0, 0, 0)


