"""DNS records for orchestration results: address records (A/AAAA, or one
CNAME for a provider known by host name), SRV for ``_svc._tcp`` names with
the provider's port, TXT with the result's details.  A result that arrives
``VIA_GATEWAY`` (another cloud's provider behind this cloud's Gateway) is
reachable only at its session's port: address answers for it carry that SRV
record in the additional section.

Tests: tests/test_arrowhead_dns.py, tests/test_arrowhead_intercloud.py
"""

from __future__ import annotations

from dnslib import AAAA, CNAME, QTYPE, RR, SRV, TXT, A, DNSLabel

from summoner.answer import Query
from summoner.arrowhead.client import Provider


def records(query: Query, srv_target: str | None, providers: tuple[Provider, ...],
            ttl: int) -> tuple[list[RR], list[RR]]:
    """The answer and additional sections for a name with providers;
    ``srv_target``: for ``_svc._tcp`` names, the host name SRV records point at."""
    name, qtype = query.name, query.qtype
    if srv_target is not None:
        if qtype in (QTYPE.SRV, QTYPE.ANY):
            return _srv(name, srv_target, providers, ttl)
        return [], []
    if qtype in (QTYPE.A, QTYPE.AAAA, QTYPE.ANY):
        wanted = {QTYPE.A: (4,), QTYPE.AAAA: (6,)}.get(qtype, (4, 6))
        records = [_address_rr(name, p, ttl) for p in providers if p.ip is not None and p.ip.version in wanted]
        answer = records or _cname(name, providers, ttl)
        return answer, _gateway_srv(name, providers, ttl) if answer else []
    if qtype == QTYPE.CNAME:
        return _cname(name, providers, ttl), []
    if qtype == QTYPE.TXT:
        return [RR(name, QTYPE.TXT, ttl=ttl, rdata=TXT(_txt_strings([
            f"provider={p.system_name}", f"port={p.port}", f"uri={p.service_uri}",
            f"secure={p.secure}", "interfaces=" + ",".join(p.interfaces)]))) for p in providers], []
    return [], []


def _srv(name: DNSLabel, srv_target: str, providers: tuple[Provider, ...], ttl: int) -> tuple[list[RR], list[RR]]:
    records: list[RR] = []
    additional: list[RR] = []
    weight = 0 if len(providers) == 1 else 1
    seen: set[tuple[int, str]] = set()
    for provider in providers:
        host = provider.address.rstrip(".") if provider.ip is None else srv_target
        if provider.ip is not None:
            additional.append(_address_rr(srv_target + ".", provider, ttl))
        if (provider.port, host) in seen:
            continue  # IP providers share one target name: one SRV per port (no duplicate RRs)
        seen.add((provider.port, host))
        records.append(RR(name, QTYPE.SRV, ttl=ttl, rdata=SRV(0, weight, provider.port, host + ".")))
    return records, additional


def _gateway_srv(name: DNSLabel, providers: tuple[Provider, ...], ttl: int) -> list[RR]:
    """A result through the Gateway is reachable only at its session's port,
    which an address record cannot say: the additional section of an address
    answer carries the SRV record of the name's ``_svc._tcp`` form (the one a
    query for it gets), pointing at the name itself -- or, for a Gateway known
    by host name, at that host."""
    gateways = [p for p in providers if p.via_gateway]
    if not gateways:
        return []
    first, *rest = str(name).rstrip(".").split(".")
    if first.startswith("_"):
        return []
    srv_name = ".".join(["_" + first, "_tcp", *rest]) + "."
    weight = 0 if len(gateways) == 1 else 1
    targets = dict.fromkeys((p.port, str(name) if p.ip is not None else p.address.rstrip(".") + ".")
                            for p in gateways)
    return [RR(srv_name, QTYPE.SRV, ttl=ttl, rdata=SRV(0, weight, port, target)) for port, target in targets]


def _address_rr(name: DNSLabel | str, provider: Provider, ttl: int) -> RR:
    assert provider.ip is not None
    if provider.ip.version == 4:
        return RR(name, QTYPE.A, ttl=ttl, rdata=A(str(provider.ip)))
    return RR(name, QTYPE.AAAA, ttl=ttl, rdata=AAAA(str(provider.ip)))


def _txt_strings(texts: list[str]) -> list[bytes]:
    """TXT character-strings hold at most 255 bytes each (RFC 1035 3.3.14): split longer ones."""
    return [data[i:i + 255] for data in (t.encode() for t in texts) for i in range(0, max(len(data), 1), 255)]


def _cname(name: DNSLabel, providers: tuple[Provider, ...], ttl: int) -> list[RR]:
    # One CNAME at most (RFC 1034); the first hostname provider wins.  A name
    # that has address records for any provider gets no CNAME: a CNAME and
    # other data never share a name (RFC 1034 3.6.2), whatever the query type.
    if any(provider.ip is not None for provider in providers):
        return []
    for provider in providers:
        if provider.ip is None:
            return [RR(name, QTYPE.CNAME, ttl=ttl, rdata=CNAME(provider.address.rstrip(".") + "."))]
    return []
