"""Arrowhead resolution end to end: real DNS clients, ``summoner serve`` as a
process, and the Arrowhead double as another process."""

from __future__ import annotations

import concurrent.futures
import time

import dns.exception
import dns.flags
import dns.rcode
import dns.rdatatype
import pytest

from tests.arrowhead_double import SUMMONER
from tests.arrowhead_double.fixtures import wait_for

DEADLINE = 0.5
COOLDOWN = 1.5


def arrowhead_args(double, *extra: str, deadline: float = DEADLINE) -> list[str]:
    return ["--arrowhead-orchestrator", double.http, "--arrowhead-registry", double.http,
            "--arrowhead-domain", "ah.test", "--arrowhead-deadline", str(deadline),
            "--arrowhead-circuit-threshold", "2", "--arrowhead-circuit-cooldown", str(COOLDOWN),
            "--arrowhead-ttl", "30", *extra]


@pytest.fixture
def served(start_server, arrowhead_double):
    """summoner wired to the double, its own system already registered."""
    server = start_server(*_zones(), *arrowhead_args(arrowhead_double))
    wait_for(lambda: any(s["systemName"] == "summoner" for s in arrowhead_double.control("state")["systems"]),
             what="summoner's system registration")
    return server, arrowhead_double


def _zones():
    from tests.conftest import EXAMPLE_ZONES
    return (EXAMPLE_ZONES,)


def rrs(response, rdtype: str) -> list:
    return [rr for rrset in response.answer if rrset.rdtype == dns.rdatatype.from_text(rdtype) for rr in rrset]


def test_remote_name_resolves_to_the_provider_address(served):
    server, double = served
    assert double.register_provider("temperature", "10.1.2.3", 8080).status_code == 201
    response = server.query("temperature.ah.test", "A")
    assert response.rcode() == dns.rcode.NOERROR
    assert [rr.address for rr in rrs(response, "A")] == ["10.1.2.3"]
    assert 0 < response.answer[0].ttl <= 30
    # Names inside a served zone that the zone does not hold go to Arrowhead too.
    double.register_provider("humidity", "10.1.2.4", 8081)
    assert [rr.address for rr in rrs(server.query("humidity.example.org", "A"), "A")] == ["10.1.2.4"]
    # Static records are still answered by the zone, not by Arrowhead.
    assert [rr.address for rr in rrs(server.query("www.example.org", "A"), "A")] == ["127.0.0.2"]


def test_hostname_provider_is_a_cname_and_ipv6_an_aaaa(served):
    server, double = served
    double.register_provider("pressure", "sensor7.plant.example", 9000)
    double.register_provider("flow", "fd00::7", 9001)
    cname = rrs(server.query("pressure.ah.test", "A"), "CNAME")
    assert [str(rr.target) for rr in cname] == ["sensor7.plant.example."]
    assert [rr.address for rr in rrs(server.query("flow.ah.test", "AAAA"), "AAAA")] == ["fd00::7"]


def test_srv_query_carries_the_provider_port(served):
    server, double = served
    double.register_provider("temperature", "10.1.2.3", 8080)
    response = server.query("_temperature._tcp.ah.test", "SRV")
    srv = rrs(response, "SRV")
    assert [(rr.port, str(rr.target)) for rr in srv] == [(8080, "temperature.ah.test.")]
    glue = [rr.address for rrset in response.additional if rrset.rdtype == dns.rdatatype.A for rr in rrset]
    assert glue == ["10.1.2.3"]
    # the parent of every _svc._tcp name exists (RFC 8020): NODATA, not NXDOMAIN
    parent = server.query("_tcp.ah.test", "A")
    assert parent.rcode() == dns.rcode.NOERROR and not parent.answer
    assert [rrset.rdtype for rrset in parent.authority] == [dns.rdatatype.SOA]


def test_unknown_service_is_nxdomain_with_soa_and_negatively_cached(served):
    server, double = served
    response = server.query("nosuchservice.ah.test", "A")
    assert response.rcode() == dns.rcode.NXDOMAIN
    assert response.authority and response.authority[0].rdtype == dns.rdatatype.SOA
    in_zone = server.query("nosuchservice.example.org", "A")
    assert in_zone.rcode() == dns.rcode.NXDOMAIN
    # in a served zone, the zone's own SOA (handed down by the static stage), not a synthetic one
    [soa] = in_zone.authority
    assert str(soa.name) == "example.org." and soa[0].serial == 2026112701 and str(soa[0].mname) == "ns1.example.org."
    assert 0 < soa.ttl <= 60  # the zone's negative TTL bounds it
    calls = double.counters()["orchestration"]
    assert server.query("nosuchservice.ah.test", "A").rcode() == dns.rcode.NXDOMAIN
    assert double.counters()["orchestration"] == calls  # answered from the negative cache


def test_without_zone_names_in_zone_names_stay_the_zone_s(start_server, arrowhead_double):
    server = start_server(*_zones(), *arrowhead_args(arrowhead_double, "--no-arrowhead-zone-names"))
    wait_for(lambda: any(s["systemName"] == "summoner" for s in arrowhead_double.control("state")["systems"]),
             what="summoner's system registration")
    arrowhead_double.register_provider("humidity", "10.1.2.4", 8081)
    in_zone = server.query("humidity.example.org", "A")
    assert in_zone.rcode() == dns.rcode.NXDOMAIN and not in_zone.answer
    assert [rrset.rdtype for rrset in in_zone.authority] == [dns.rdatatype.SOA]
    assert arrowhead_double.counters().get("orchestration", 0) == 0  # never asked
    # the Arrowhead domains still are Arrowhead's
    assert [rr.address for rr in rrs(server.query("humidity.ah.test", "A"), "A")] == ["10.1.2.4"]


def test_names_outside_zones_and_domains_stay_refused(served):
    server, double = served
    assert server.query("temperature.elsewhere.test", "A").rcode() == dns.rcode.REFUSED
    assert double.counters().get("orchestration", 0) == 0


def test_cached_answer_does_not_ask_again(served):
    server, double = served
    double.register_provider("temperature", "10.1.2.3", 8080)
    server.query("temperature.ah.test", "A")
    server.query("temperature.ah.test", "A")
    server.query("_temperature._tcp.ah.test", "SRV")
    assert double.counters()["orchestration"] == 1
    assert server.metric("summoner_arrowhead_cache_hits_total") >= 2


def test_orchestrator_down_servfail_then_open_circuit_then_recovery(served):
    server, double = served
    double.register_provider("temperature", "10.1.2.3", 8080)
    double.stop()
    for name in ("a1.ah.test", "a2.ah.test"):  # two failures open the circuit
        started = time.monotonic()
        assert server.query(name, "A").rcode() == dns.rcode.SERVFAIL
        assert time.monotonic() - started < DEADLINE + 0.5
    started = time.monotonic()
    assert server.query("a3.ah.test", "A").rcode() == dns.rcode.SERVFAIL
    assert time.monotonic() - started < 0.1  # circuit open: no waiting at all
    assert server.metric("summoner_arrowhead_lookups_total", result="circuit_open") >= 1
    double.start()  # same ports; the registry comes back empty, like a restarted SR with a fresh DB
    double.register_provider("temperature", "10.1.2.3", 8080, authorize=None)
    time.sleep(COOLDOWN + 0.1)
    # The probe reaches the Orchestrator again.  The restarted double has
    # forgotten summoner's system: Authorization answers that the consumer does
    # not exist (SERVFAIL, not cached); summoner notices and registers it again.
    assert server.query("temperature.ah.test", "A").rcode() == dns.rcode.SERVFAIL
    wait_for(lambda: any(s["systemName"] == "summoner" for s in double.control("state")["systems"]),
             what="summoner's system registered again")
    # Its rules went with the database: the operator adds them again.
    double.authorize(SUMMONER, ("provider", "10.1.2.3", 8080), "temperature")
    response = server.query("temperature.ah.test", "A")
    assert [rr.address for rr in rrs(response, "A")] == ["10.1.2.3"]


def test_slow_orchestrator_gives_servfail_at_the_deadline(served):
    server, double = served
    double.register_provider("temperature", "10.1.2.3", 8080)
    double.control("knobs", {"delay": {"orchestration": 3}})
    started = time.monotonic()
    assert server.query("temperature.ah.test", "A", timeout=5).rcode() == dns.rcode.SERVFAIL
    elapsed = time.monotonic() - started
    assert DEADLINE - 0.05 <= elapsed < DEADLINE + 0.5
    assert server.metric("summoner_arrowhead_lookups_total", result="timeout") == 1


def test_error_message_dto_is_servfail_and_logged(served):
    server, double = served
    double.register_provider("temperature", "10.1.2.3", 8080)
    double.control("knobs", {"fail": {"orchestration": {
        "errorMessage": "Orchestrator can't find authorization check URI.", "errorCode": 500,
        "exceptionType": "ARROWHEAD"}}})
    assert server.query("temperature.ah.test", "A").rcode() == dns.rcode.SERVFAIL
    wait_for(lambda: "Orchestrator can't find authorization check URI." in server.log(), timeout=3,
             what="the ErrorMessageDTO text in the log")
    assert "ARROWHEAD" in server.log()


def test_malformed_json_is_servfail(served):
    server, double = served
    double.register_provider("temperature", "10.1.2.3", 8080)
    double.control("knobs", {"malformed": {"orchestration": True}})
    assert server.query("temperature.ah.test", "A").rcode() == dns.rcode.SERVFAIL
    assert server.metric("summoner_arrowhead_lookups_total", result="error") == 1


def test_concurrent_queries_for_one_name_share_one_orchestration(served):
    server, double = served
    double.register_provider("temperature", "10.1.2.3", 8080)
    double.control("knobs", {"delay": {"orchestration": 0.2}})  # keep the first call open while all arrive

    def ask(_: int):
        try:
            return server.query("temperature.ah.test", "A", timeout=5).rcode()
        except dns.exception.Timeout:
            return None

    with concurrent.futures.ThreadPoolExecutor(max_workers=100) as pool:
        codes = list(pool.map(ask, range(100)))
    assert codes == [dns.rcode.NOERROR] * 100
    assert double.counters()["orchestration"] == 1


def test_a_flood_of_distinct_names_is_capped_not_forwarded(served):
    server, double = served
    # the double holds every orchestration until summoner's deadline has passed
    double.control("knobs", {"delay": {"orchestration": DEADLINE + 0.5}})

    def ask(i: int):
        try:
            return server.query(f"random{i}.ah.test", "A", timeout=5).rcode()
        except dns.exception.Timeout:
            return None

    with concurrent.futures.ThreadPoolExecutor(max_workers=100) as pool:  # all in flight at once
        codes = list(pool.map(ask, range(100)))
    assert codes == [dns.rcode.SERVFAIL] * 100
    assert server.metric("summoner_arrowhead_lookups_total", result="overloaded") >= 1
    assert double.counters()["orchestration"] <= 64


def test_bad_arrowhead_flags_stop_startup(start_server, arrowhead_double):
    from tests.conftest import EXAMPLE_ZONES
    server = start_server(EXAMPLE_ZONES, "--arrowhead-orchestrator", "ftp://x", wait=False)
    assert server.process.wait(10) == 2
    assert "--arrowhead-orchestrator must be an http:// or https:// URL" in server.log()


def test_arrowhead_domain_apex_has_a_synthesized_soa(served):
    server, double = served
    response = server.query("ah.test", "SOA")
    assert response.rcode() == dns.rcode.NOERROR
    assert [str(rrset.name) for rrset in response.answer] == ["ah.test."]
    assert response.flags & dns.flags.AA
    assert double.counters().get("orchestration", 0) == 0


def _published(double) -> set[str]:
    return {e["provider"]["address"] for e in double.control("state")["entries"]}


def test_served_on_demand_hosts_are_published_shown_in_status_and_withdrawn_on_stop(served):
    import subprocess
    import sys

    from tests.conftest import ROOT
    server, double = served
    wait_for(lambda: _published(double) == {"hello.example.org", "tasks.example.org"},
             what="the example zone's on-demand hosts in the registry")
    status = subprocess.run([sys.executable, "-m", "summoner", "status", "--admin",
                             f"127.0.0.1:{server.admin_port}"], capture_output=True, text=True, cwd=ROOT, timeout=30)
    assert status.returncode == 0, status.stderr
    assert "hello.example.org" in status.stdout and "stopped" in status.stdout  # the VM table
    assert "orchestrator: up" in status.stdout
    assert "registry: system registered" in status.stdout
    assert "hello.example.org: registered" in status.stdout
    # a host removed from the zone is withdrawn from the registry
    zone = server.zones / "example.org.zone"
    zone.write_text(zone.read_text().replace('_summoner.tasks IN TXT  "image=tasks" "idle=300"', ""))
    wait_for(lambda: _published(double) == {"hello.example.org"}, what="tasks withdrawn after the reload")
    assert server.stop() == 0
    assert _published(double) == set()  # a clean stop unregisters what it published


def test_several_providers_without_matchmaking(start_server, arrowhead_double):
    double = arrowhead_double
    server = start_server(*_zones(), *arrowhead_args(double, "--no-arrowhead-matchmaking"))
    wait_for(lambda: any(s["systemName"] == "summoner" for s in double.control("state")["systems"]),
             what="summoner's system registration")
    double.register_provider("pump", "10.3.0.1", 8080, system="pump1")
    double.register_provider("pump", "10.3.0.2", 8080, system="pump2")
    double.register_provider("pump", "10.3.0.3", 9090, system="pump3")
    assert sorted(rr.address for rr in rrs(server.query("pump.ah.test", "A"), "A")) == [
        "10.3.0.1", "10.3.0.2", "10.3.0.3"]
    srv = server.query("_pump._tcp.ah.test", "SRV")
    # one SRV per port on the shared target: an RRset holds no duplicate records
    assert sorted(rr.port for rr in rrs(srv, "SRV")) == [8080, 9090]
    txt = server.query("pump.ah.test", "TXT")
    assert len(rrs(txt, "TXT")) == 3
    # an address provider beside a hostname provider: never a CNAME next to the A records
    double.register_provider("valve", "10.4.0.1", 80, system="valve1")
    double.register_provider("valve", "valve.plant.example.net", 80, system="valve2")
    assert [rr.address for rr in rrs(server.query("valve.ah.test", "A"), "A")] == ["10.4.0.1"]
    for qtype in ("AAAA", "CNAME"):
        reply = server.query("valve.ah.test", qtype)
        assert reply.rcode() == dns.rcode.NOERROR and not reply.answer, qtype


def test_pipelined_tcp_answers_come_back_as_they_complete(served):
    """RFC 7766 6.2.1.1: a slow answer (an orchestration) does not hold back
    the fast ones queued behind it on the same connection."""
    import socket
    import struct

    import dns.message
    import dns.query
    server, double = served
    double.register_provider("temperature", "10.1.2.3", 8080)
    double.control("knobs", {"delay": {"orchestration": 0.3}})
    names = ["temperature.ah.test", "www.example.org", "mail.example.org", "www.example.net"]
    queries = [dns.message.make_query(name, "A", id=2000 + i) for i, name in enumerate(names)]
    with socket.create_connection((server.host, server.port), timeout=5) as sock:
        sock.sendall(b"".join(struct.pack("!H", len(w)) + w for w in (q.to_wire() for q in queries)))
        order = []
        for _ in names:
            reply, _ = dns.query.receive_tcp(sock, time.monotonic() + 5)
            order.append(reply)
    assert [r.id for r in order][-1] == 2000, [r.id for r in order]  # the slow one last
    assert sorted(r.id for r in order) == [2000, 2001, 2002, 2003]
    by_id = {r.id: r for r in order}
    assert [rr.address for rr in rrs(by_id[2000], "A")] == ["10.1.2.3"]
    assert [rr.address for rr in rrs(by_id[2001], "A")] == ["127.0.0.2"]
    assert by_id[2003].rcode() == dns.rcode.REFUSED  # in no zone, no Arrowhead domain


# -- the circuit breaker after its cool-down (threshold 2, cool-down COOLDOWN)

# What the Orchestrator answers when its database is gone: an unhealthy 500.
ORCHESTRATOR_FAILS = {"fail": {"orchestration": {
    "errorMessage": "Database operation exception", "errorCode": 500, "exceptionType": "ARROWHEAD"}}}
ORCHESTRATOR_WORKS = {"fail": {"orchestration": None}, "delay": {"orchestration": 0}}
PROBE_HELD = 2.0  # how long the double holds the probe: the flood arrives meanwhile


@pytest.fixture
def breaker(start_server, arrowhead_double):
    """summoner with a deadline long enough for the double to hold a probe."""
    server = start_server(*_zones(), *arrowhead_args(arrowhead_double, deadline=PROBE_HELD + 2))
    wait_for(lambda: any(s["systemName"] == "summoner" for s in arrowhead_double.control("state")["systems"]),
             what="summoner's system registration")
    return server, arrowhead_double


def circuit(server) -> str:
    import requests
    return requests.get(f"http://127.0.0.1:{server.admin_port}/arrowhead", timeout=5).json()["orchestrator"]["circuit"]


def orchestrations(double) -> int:
    return double.counters().get("orchestration", 0)


def assert_circuit_open_for(server, double, names) -> None:
    """Each name is SERVFAIL at once, counted as circuit_open, and nothing reaches the Orchestrator."""
    sent, rejected = orchestrations(double), server.metric("summoner_arrowhead_lookups_total", result="circuit_open")
    for name in names:
        started = time.monotonic()
        assert server.query(name, "A").rcode() == dns.rcode.SERVFAIL
        assert time.monotonic() - started < 0.25
    assert server.metric("summoner_arrowhead_lookups_total", result="circuit_open") == rejected + len(names)
    assert orchestrations(double) == sent


def open_the_circuit(server, double) -> float:
    """Two failing orchestrations (the threshold); returns when the circuit opened."""
    double.control("knobs", ORCHESTRATOR_FAILS)
    for name in ("fail1.ah.test", "fail2.ah.test"):
        assert server.query(name, "A").rcode() == dns.rcode.SERVFAIL
    opened = time.monotonic()
    assert orchestrations(double) == 2
    assert server.metric("summoner_arrowhead_lookups_total", result="error") == 2
    assert circuit(server) == "open"
    assert_circuit_open_for(server, double, ["open1.ah.test", "open2.ah.test"])
    return opened


def rcode_or_none(server, name: str, timeout: float = 5.0):
    try:
        return server.query(name, "A", timeout=timeout).rcode()
    except dns.exception.Timeout:
        return None


def sleep_until(moment: float) -> None:
    time.sleep(max(0.0, moment - time.monotonic()))


def test_a_failed_probe_after_the_cooldown_opens_the_circuit_for_another_cooldown(breaker):
    server, double = breaker
    opened = open_the_circuit(server, double)
    sleep_until(opened + COOLDOWN + 0.2)
    # The cool-down is over: one probe goes to the (still failing) Orchestrator,
    # which holds it; a flood of other names arriving meanwhile is not let through.
    double.control("knobs", {"delay": {"orchestration": PROBE_HELD}})
    with concurrent.futures.ThreadPoolExecutor(max_workers=20) as pool:
        probe = pool.submit(server.query, "probe.ah.test", "A", timeout=PROBE_HELD + 5)
        wait_for(lambda: orchestrations(double) == 3, timeout=PROBE_HELD, what="the probe at the Orchestrator")
        assert circuit(server) == "half-open"
        rejected = server.metric("summoner_arrowhead_lookups_total", result="circuit_open")
        codes = list(pool.map(lambda i: rcode_or_none(server, f"flood{i}.ah.test", timeout=1), range(40)))
        assert codes == [dns.rcode.SERVFAIL] * 40
        assert orchestrations(double) == 3
        assert server.metric("summoner_arrowhead_lookups_total", result="circuit_open") == rejected + 40
        assert not probe.done()  # all of the flood came while the probe was out
        assert probe.result().rcode() == dns.rcode.SERVFAIL  # the 500, after PROBE_HELD
    reopened = time.monotonic()
    assert server.metric("summoner_arrowhead_lookups_total", result="error") == 3
    # The failed probe opened the circuit again, not closed it, and for a whole
    # new cool-down counted from the probe's failure.
    assert circuit(server) == "open"
    double.control("knobs", ORCHESTRATOR_WORKS)
    double.register_provider("temperature", "10.1.2.3", 8080)
    assert_circuit_open_for(server, double, ["again1.ah.test", "temperature.ah.test"])
    sleep_until(reopened + COOLDOWN * 0.7)
    assert_circuit_open_for(server, double, ["again2.ah.test", "temperature.ah.test"])
    # ...after which the next probe goes out again.
    sleep_until(reopened + COOLDOWN + 0.2)
    assert [rr.address for rr in rrs(server.query("temperature.ah.test", "A"), "A")] == ["10.1.2.3"]
    assert orchestrations(double) == 4
    assert circuit(server) == "closed"


def test_a_successful_probe_after_the_cooldown_closes_the_circuit(breaker):
    server, double = breaker
    opened = open_the_circuit(server, double)
    double.control("knobs", ORCHESTRATOR_WORKS)
    double.register_provider("temperature", "10.1.2.3", 8080)
    sleep_until(opened + COOLDOWN + 0.2)
    assert [rr.address for rr in rrs(server.query("temperature.ah.test", "A"), "A")] == ["10.1.2.3"]
    assert orchestrations(double) == 3
    # Closed: every name goes to the Orchestrator again, many at a time...
    assert circuit(server) == "closed"
    rejected = server.metric("summoner_arrowhead_lookups_total", result="circuit_open")
    with concurrent.futures.ThreadPoolExecutor(max_workers=10) as pool:
        codes = list(pool.map(lambda i: rcode_or_none(server, f"after{i}.ah.test"), range(10)))
    assert codes == [dns.rcode.NXDOMAIN] * 10  # no such services: each one asked
    assert orchestrations(double) == 13
    assert server.metric("summoner_arrowhead_lookups_total", result="circuit_open") == rejected
    # ...and the failures before the probe are forgotten: it takes the whole
    # threshold of new ones to open it again.
    double.control("knobs", ORCHESTRATOR_FAILS)
    assert server.query("fail3.ah.test", "A").rcode() == dns.rcode.SERVFAIL
    assert circuit(server) == "closed"
    assert server.query("fail4.ah.test", "A").rcode() == dns.rcode.SERVFAIL
    assert orchestrations(double) == 15
    assert circuit(server) == "open"
    assert_circuit_open_for(server, double, ["open3.ah.test"])
