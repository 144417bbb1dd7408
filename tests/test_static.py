"""The static stage (summoner/static.py, its answers compiled by
summoner/compiled.py): exact names, CNAMEs, wildcards, empty non-terminals,
the tentative NXDOMAIN and delegations.

Every behaviour is checked over the wire twice: through the compiled hot
path, and through the chain's slow path (a passing stage in front of the
static stage turns the hot path off), which must answer the same."""

from __future__ import annotations

from pathlib import Path

import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import pytest
from dnslib import QTYPE, RCODE

from summoner.answer import Answer, Query
from summoner.resolution import Chain
from summoner.static import StaticStage
from summoner.wire import Responder
from summoner.zonefile import ZoneSet, parse_zone_text

ZONE = """$ORIGIN zone.test.
$TTL 300
@        IN SOA ns1 hostmaster 1 3600 600 86400 60
         IN NS  ns1
         IN MX  10 mail
ns1      IN A   192.0.2.1
mail     IN A   192.0.2.9
www      IN A   192.0.2.2
         IN AAAA 2001:db8::2
alias    IN CNAME www
chain    IN CNAME alias
dangling IN CNAME nothing
away     IN CNAME host.elsewhere.example.
*.wild   IN A   192.0.2.3
a.b.c    IN A   192.0.2.5
sub      IN NS  ns.sub
ns.sub   IN A   192.0.2.4
"""


def stage() -> StaticStage:
    zone = parse_zone_text(ZONE, "zone.test", Path("zone.test.zone"))
    return StaticStage(ZoneSet({zone.origin: zone}))


class Passes:
    name = "passes"

    def claims(self, key: str, zone: object = None) -> bool:
        return False

    def resolve(self, query: Query, earlier: Answer | None = None) -> None:
        return None


@pytest.fixture(params=["compiled", "chain"])
def ask(request):
    chain = Chain([stage()] if request.param == "compiled" else [Passes(), stage()])
    responder = Responder(chain)

    def ask(name: str, qtype: str = "A") -> dns.message.Message:
        return dns.message.from_wire(responder.respond(dns.message.make_query(name, qtype).to_wire(), "udp"))
    return ask


def records(section, rdtype: str) -> list[str]:
    return [rr.to_text() for rrset in section if rrset.rdtype == dns.rdatatype.from_text(rdtype) for rr in rrset]


def soa_ttl(reply: dns.message.Message) -> int:
    [soa] = [rrset for rrset in reply.authority if rrset.rdtype == dns.rdatatype.SOA]
    return soa.ttl


def test_an_existing_name_is_answered_authoritatively_with_the_question_s_spelling(ask) -> None:
    reply = ask("WwW.Zone.TEST")
    assert reply.rcode() == dns.rcode.NOERROR and reply.flags & dns.flags.AA
    assert records(reply.answer, "A") == ["192.0.2.2"]
    assert reply.answer[0].name.to_text() == "WwW.Zone.TEST."
    assert records(ask("www.zone.test", "AAAA").answer, "AAAA") == ["2001:db8::2"]


def test_a_type_the_name_lacks_is_nodata_with_the_negative_soa(ask) -> None:
    reply = ask("www.zone.test", "MX")
    assert reply.rcode() == dns.rcode.NOERROR and not reply.answer
    assert soa_ttl(reply) == 60  # min(SOA TTL, SOA minimum), RFC 2308


def test_mx_targets_in_the_zone_come_with_their_addresses(ask) -> None:
    reply = ask("zone.test", "MX")
    assert records(reply.answer, "MX") == ["10 mail.zone.test."]
    assert records(reply.additional, "A") == ["192.0.2.9"]


def test_cnames_are_followed_inside_the_zone(ask) -> None:
    reply = ask("chain.zone.test")
    assert records(reply.answer, "CNAME") == ["alias.zone.test.", "www.zone.test."]
    assert records(reply.answer, "A") == ["192.0.2.2"]
    # asked for the CNAME itself: just the CNAME
    assert records(ask("alias.zone.test", "CNAME").answer, "CNAME") == ["www.zone.test."]
    # leaving the zone: the client's resolver follows it
    away = ask("away.zone.test")
    assert away.rcode() == dns.rcode.NOERROR and records(away.answer, "CNAME") == ["host.elsewhere.example."]
    assert not records(away.answer, "A")


def test_a_dangling_cname_is_nxdomain_with_the_cname(ask) -> None:
    reply = ask("dangling.zone.test")
    assert reply.rcode() == dns.rcode.NXDOMAIN
    assert records(reply.answer, "CNAME") == ["nothing.zone.test."]


def test_wildcards_synthesise_names_below_their_closest_encloser(ask) -> None:
    reply = ask("Anything.wild.zone.test")
    assert reply.rcode() == dns.rcode.NOERROR and records(reply.answer, "A") == ["192.0.2.3"]
    assert reply.answer[0].name.to_text() == "Anything.wild.zone.test."  # the query's name, not *.wild
    assert ask("deeper.anything.wild.zone.test").answer  # any depth below the encloser
    nodata = ask("x.wild.zone.test", "AAAA")
    assert nodata.rcode() == dns.rcode.NOERROR and not nodata.answer
    # the wildcard's parent exists (it has a name below it): NODATA, not NXDOMAIN
    parent = ask("wild.zone.test")
    assert parent.rcode() == dns.rcode.NOERROR and not parent.answer


def test_empty_non_terminals_exist(ask) -> None:
    reply = ask("b.c.zone.test")
    assert reply.rcode() == dns.rcode.NOERROR and not reply.answer and soa_ttl(reply) == 60
    assert ask("c.zone.test").rcode() == dns.rcode.NOERROR
    # a wildcard of another branch does not reach here
    assert ask("x.b.c.zone.test").rcode() == dns.rcode.NXDOMAIN


def test_a_missing_name_is_nxdomain_with_the_negative_soa(ask) -> None:
    reply = ask("missing.zone.test")
    assert reply.rcode() == dns.rcode.NXDOMAIN and reply.flags & dns.flags.AA
    assert soa_ttl(reply) == 60


def test_names_below_a_delegation_are_referred_with_glue(ask) -> None:
    reply = ask("host.sub.zone.test")
    assert reply.rcode() == dns.rcode.NOERROR and not reply.flags & dns.flags.AA
    assert not reply.answer
    assert records(reply.authority, "NS") == ["ns.sub.zone.test."]
    assert records(reply.additional, "A") == ["192.0.2.4"]
    assert records(ask("sub.zone.test", "NS").authority, "NS") == ["ns.sub.zone.test."]
    # DS belongs to the parent side of the cut (RFC 4035 3.1.4.1): answered, not referred
    ds = ask("sub.zone.test", "DS")
    assert ds.flags & dns.flags.AA and not records(ds.authority, "NS")


def test_names_in_no_zone_are_not_ours(ask) -> None:
    reply = ask("www.elsewhere.example")
    assert reply.rcode() == dns.rcode.REFUSED and not reply.flags & dns.flags.AA


def test_the_nxdomain_is_tentative_and_names_its_zone() -> None:
    static = stage()
    answer = static.resolve(Query.of("missing.zone.test", "A"))
    assert answer is not None and answer.rcode == RCODE.NXDOMAIN and answer.tentative
    assert answer.zone is not None and answer.zone.origin == "zone.test"
    assert answer.zone.soa.rtype == QTYPE.SOA and answer.zone.soa.ttl == 60
    # a dangling CNAME's target is the zone's own answer: not for later stages
    dangling = static.resolve(Query.of("dangling.zone.test", "A"))
    assert dangling is not None and dangling.rcode == RCODE.NXDOMAIN and not dangling.tentative
    assert dangling.zone is None
    # existing names are definitive
    www = static.resolve(Query.of("www.zone.test", "A"))
    assert www is not None and not www.tentative
    assert static.resolve(Query.of("www.elsewhere.example", "A")) is None


def test_claims_exactly_the_names_of_its_zones() -> None:
    static = stage()
    assert static.claims("missing.zone.test") and static.claims("zone.test")
    assert not static.claims("zone.test.other") and not static.claims("test")
