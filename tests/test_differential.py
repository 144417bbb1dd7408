"""summoner against NSD 4.6, the reference authoritative server, on the same
zones: a generated corpus of questions (every owner and empty non-terminal,
absent children, wildcard matches, mixed case, several types, with and without
EDNS and DO) must get the same rcode, flags and sections from both.

One difference is summoner's documented choice, and the only one allowed:
it adds the in-zone addresses of MX and SRV targets to the additional section
(saving the client a round trip), which NSD with ``minimal-responses: yes``
leaves out.  Without minimal responses NSD would also add the zone's NS set
to every positive answer, which summoner does not."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import dns.flags
import dns.message
import dns.query
import dns.rdatatype
import pytest

from summoner.zonefile import load_zone_dir
from tests.conftest import ROOT, free_port

TYPES = ("A", "AAAA", "MX", "TXT", "NS", "SOA", "CNAME", "SRV", "PTR", "DS")
ZONE_FILES = (ROOT / "zones" / "example.org.zone", ROOT / "tests" / "zones" / "good" / "wild.test.zone")


@pytest.fixture(scope="module")
def zones(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("differential") / "zones"
    directory.mkdir()
    for path in ZONE_FILES:
        shutil.copy(path, directory)
    return directory


@pytest.fixture(scope="module")
def nsd(zones) -> Iterator[int]:
    if not shutil.which("nsd"):
        pytest.fail("nsd is missing: run scripts/install.sh")
    work, port = zones.parent, free_port()
    entries = "".join(f'zone:\n  name: {path.name.removesuffix(".zone")}\n  zonefile: "{zones / path.name}"\n'
                      for path in ZONE_FILES)
    (work / "nsd.conf").write_text(f"""server:
  ip-address: 127.0.0.1@{port}
  server-count: 1
  username: ""
  chroot: ""
  zonesdir: "{zones}"
  database: ""
  zonelistfile: "{work}/zone.list"
  xfrdfile: "{work}/xfrd.state"
  pidfile: "{work}/nsd.pid"
  logfile: "{work}/nsd.log"
  verbosity: 1
  rrl-ratelimit: 0
  minimal-responses: yes
  refuse-any: no
remote-control:
  control-enable: no
{entries}""")
    process = subprocess.Popen(["nsd", "-d", "-c", str(work / "nsd.conf")], stdout=subprocess.DEVNULL,
                               stderr=subprocess.STDOUT)
    try:
        wait_answering(port)
        yield port
    finally:
        process.terminate()
        process.wait(timeout=20)


@pytest.fixture(scope="module", params=[1, 2], ids=["one-process", "two-processes"])
def summoner(request, zones, tmp_path_factory) -> Iterator[int]:
    """summoner alone, and with ``--workers 2``: each question comes from its
    own source port, so the corpus is spread over both processes."""
    from tests.arrowhead_double.fixtures import wait_for
    from tests.conftest import launch
    server = launch(tmp_path_factory.mktemp("differential-summoner"), zones, "--no-on-demand",
                    "--workers", str(request.param))
    try:
        wait_answering(server.port)
        wait_for(lambda: server.metric("summoner_dns_workers") == request.param - 1, what="the workers answering")
        yield server.port
    finally:
        server.stop()


def wait_answering(port: int) -> None:
    for _ in range(200):
        try:
            dns.query.udp(dns.message.make_query("example.org", "SOA"), "127.0.0.1", port=port, timeout=0.2)
            return
        except dns.exception.Timeout:
            time.sleep(0.05)
    raise AssertionError(f"no DNS server answers on port {port}")


def mixed_case(name: str) -> str:
    return "".join(c.upper() if i % 2 else c for i, c in enumerate(name))


def corpus() -> list[tuple[str, str, bool, bool]]:
    zones = load_zone_dir(Path(ZONE_FILES[0].parent))
    zones.zones.update(load_zone_dir(ZONE_FILES[1].parent).zones)
    names: set[str] = set()
    for zone in zones.zones.values():
        for key in zone.records:
            name = key
            while True:
                names.add(name)  # owners and the empty non-terminals above them
                if name == zone.origin:
                    break
                name = name.split(".", 1)[1]
    names |= {f"absent.{name}" for name in list(names)}
    names |= {"random-label.wild.test", "x.y.wild.test", "deep.wild.test", "x.deep.wild.test",
              "host.sub.wild.test", "a.b.sub.wild.test", "nowhere.example.org", "www.example.net"}
    questions = []
    for name in sorted(names):
        for qtype in TYPES:
            questions.append((name, qtype, False, False))
        questions.append((mixed_case(name), "A", False, False))
        questions.append((name, "A", True, False))
        questions.append((name, "TXT", True, True))
    return questions


def target_addresses(reply: dns.message.Message) -> set[str]:
    """Names whose A/AAAA summoner may add: the MX and SRV targets in the answer."""
    names = set()
    for rrset in reply.answer:
        for rdata in rrset:
            if rrset.rdtype == dns.rdatatype.MX:
                names.add(rdata.exchange.to_text().lower())
            elif rrset.rdtype == dns.rdatatype.SRV:
                names.add(rdata.target.to_text().lower())
    return names


def without_target_addresses(reply: dns.message.Message) -> dns.message.Message:
    targets = target_addresses(reply)
    reply.additional = [rrset for rrset in reply.additional
                        if not (rrset.name.to_text().lower() in targets
                                and rrset.rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA))]
    return reply


def view(reply: dns.message.Message) -> tuple:
    """What must agree: rcode, the header flags, every section, EDNS and DO."""
    def section(rrsets: list) -> list:
        return sorted((rrset.name.to_text().lower(), dns.rdatatype.to_text(rrset.rdtype), rrset.ttl,
                       sorted(rdata.to_text().lower() for rdata in rrset)) for rrset in rrsets)
    flags = reply.flags & (dns.flags.QR | dns.flags.AA | dns.flags.TC | dns.flags.RD)
    return (dns.rcode.to_text(reply.rcode()), dns.flags.to_text(flags), section(reply.answer),
            section(reply.authority), section(reply.additional), reply.edns,
            bool(reply.ednsflags & dns.flags.DO), [q.to_text() for q in reply.question])


def ask(port: int, name: str, qtype: str, edns: bool, do: bool) -> dns.message.Message:
    query = dns.message.make_query(name, qtype, use_edns=0 if edns else None, payload=1232, want_dnssec=do)
    query.flags &= ~dns.flags.RD
    return dns.query.udp(query, "127.0.0.1", port=port, timeout=3, ignore_trailing=True)


def test_summoner_answers_like_nsd(nsd, summoner):
    questions = corpus()
    assert len(questions) > 500
    differences = []
    for name, qtype, edns, do in questions:
        expected = view(ask(nsd, name, qtype, edns, do))
        got = view(without_target_addresses(ask(summoner, name, qtype, edns, do)))
        if got != expected:
            differences.append(f"{name} {qtype} edns={edns} do={do}:\n  nsd:      {expected}\n  summoner: {got}")
    assert not differences, f"{len(differences)} of {len(questions)} differ:\n" + "\n".join(differences[:15])
