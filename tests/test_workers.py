"""``summoner serve --workers N`` (summoner/workers.py, summoner/worker.py):
several processes on one port with SO_REUSEPORT, static data answered by
each, everything else relayed to the primary, one metrics view.

Each query here comes from a new socket, so from a new source port: the
kernel spreads them over the processes by address and port, and 64 of them
reach both processes but with a chance of 2**-64."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time

import dns.exception
import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import pytest

from tests.arrowhead_double.fixtures import wait_for

CLIENTS = 64


def processes_on(port: int) -> set[int]:
    """The pids holding a UDP socket on ``port`` (what ``ss`` shows an operator)."""
    out = subprocess.run(["ss", "-Hulpn", f"sport = :{port}"], capture_output=True, text=True, check=True).stdout
    return {int(pid) for pid in re.findall(r"pid=(\d+)", out)}


def start(start_server, *extra: str):
    server = start_server(*extra, "--workers", "2")
    wait_for(lambda: server.metric("summoner_dns_workers") == 1, what="the worker answering", timeout=20)
    return server


@pytest.fixture
def static_server(start_server):
    from tests.conftest import EXAMPLE_ZONES
    return start(start_server, EXAMPLE_ZONES, "--no-on-demand")


def addresses(response) -> list[str]:
    return [rr.address for rrset in response.answer if rrset.rdtype == dns.rdatatype.A for rr in rrset]


def from_many_clients(server, name: str, rdtype: str = "A", timeout: float = 3.0, **kwargs) -> list:
    """The answers to CLIENTS queries, each from its own source port (None: none came)."""
    answers = []
    for _ in range(CLIENTS):
        try:
            answers.append(server.query(name, rdtype, timeout=timeout, **kwargs))
        except dns.exception.Timeout:
            answers.append(None)
    return answers


def test_two_processes_answer_on_the_port_and_metrics_count_each_query_once(static_server):
    server = static_server
    holders = processes_on(server.port)
    assert len(holders) == 2 and server.process.pid in holders
    answers = from_many_clients(server, "www.example.org")
    assert [addresses(a) for a in answers] == [["127.0.0.2"]] * CLIENTS
    # the worker reports once a second; every query counted once, whichever process answered it
    wait_for(lambda: server.metric("summoner_dns_queries_total", qtype="A") == CLIENTS,
             what=f"{CLIENTS} A queries counted", timeout=5)
    time.sleep(1.5)
    assert server.metric("summoner_dns_queries_total", qtype="A") == CLIENTS


def test_the_worker_answers_static_data_while_the_primary_is_stuck(static_server):
    server = static_server
    server.signal(signal.SIGSTOP)
    try:
        answers = from_many_clients(server, "www.example.org", timeout=0.3)
    finally:
        server.signal(signal.SIGCONT)
    answered = [a for a in answers if a is not None]
    # the clients whose port hashes to the worker are answered; the others wait on the primary
    assert 0 < len(answered) < CLIENTS
    assert all(addresses(a) == ["127.0.0.2"] and a.flags & dns.flags.AA for a in answered)
    assert all(addresses(a) == ["127.0.0.2"] for a in from_many_clients(server, "www.example.org"))


def test_queries_the_worker_cannot_settle_are_answered_by_the_primary(static_server):
    server = static_server
    # ANY takes the chain (not the compiled path); class CH is refused there
    for answer in from_many_clients(server, "example.org", "ANY"):
        assert answer.rcode() == dns.rcode.NOERROR and {"SOA", "NS", "MX", "TXT"} <= {
            dns.rdatatype.to_text(rrset.rdtype) for rrset in answer.answer}
    for answer in from_many_clients(server, "version.bind", "TXT", rdclass=dns.rdataclass.CH):
        assert answer.rcode() == dns.rcode.REFUSED
    # a malformed query (QDCOUNT 2, one question) is FORMERR from every process
    wire = dns.message.make_query("www.example.org", "A").to_wire()
    wire = wire[:4] + b"\0\2" + wire[6:]
    for _ in range(CLIENTS):
        with _send(wire, server) as sock:
            reply = sock.recv(512)
        assert reply[:2] == wire[:2] and reply[3] & 0x0F == dns.rcode.FORMERR
    over_tcp = [server.query("example.org", "ANY", tcp=True) for _ in range(8)]
    assert all(a.rcode() == dns.rcode.NOERROR for a in over_tcp)
    wait_for(lambda: server.metric("summoner_dns_queries_total", qtype="ANY") == CLIENTS + 8,
             what="the relayed ANY queries counted once each", timeout=5)


def _send(wire: bytes, server):
    import socket
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.settimeout(3)
    sock.sendto(wire, (server.host, server.port))
    return sock


def test_a_zone_reload_reaches_every_process(static_server):
    server = static_server
    zone = server.zones / "example.org.zone"
    zone.write_text(zone.read_text().replace("www     IN A    127.0.0.2", "www     IN A    127.0.0.42")
                    .replace("2026112701 ; serial", "2026112702 ; serial"))
    wait_for(lambda: addresses(server.query("www.example.org")) == ["127.0.0.42"], what="the reload", timeout=10)
    time.sleep(0.5)  # the worker gets the new zones from the primary right after it loads them
    assert [addresses(a) for a in from_many_clients(server, "www.example.org")] == [["127.0.0.42"]] * CLIENTS


def test_a_worker_that_dies_is_started_again(static_server):
    server = static_server
    [worker] = processes_on(server.port) - {server.process.pid}
    os.kill(worker, signal.SIGKILL)
    wait_for(lambda: len(processes_on(server.port) - {server.process.pid, worker}) == 1,
             what="a new worker on the port", timeout=15)
    wait_for(lambda: server.metric("summoner_dns_workers") == 1, what="the new worker answering", timeout=5)
    assert f"DNS worker 1 (pid {worker}) ended" in server.log()
    assert [addresses(a) for a in from_many_clients(server, "www.example.org")] == [["127.0.0.2"]] * CLIENTS


def test_stopping_the_primary_stops_its_workers(static_server):
    server = static_server
    [worker] = processes_on(server.port) - {server.process.pid}
    assert server.stop() == 0
    wait_for(lambda: not os.path.exists(f"/proc/{worker}"), what="the worker's exit", timeout=10)


def test_on_demand_names_go_to_the_primary_s_state_machine(start_server, tmp_path):
    """A worker must not answer an on-demand host from the zone (its address,
    or NXDOMAIN once the declaration is taken out): only the primary knows
    whether its VM runs.  libvirt is unreachable here, so that is SERVFAIL."""
    from tests.conftest import EXAMPLE_ZONES
    server = start(start_server, EXAMPLE_ZONES, "--libvirt-uri",
                   f"qemu+unix:///system?socket={tmp_path}/no-libvirtd-here", "--virt-type", "qemu")
    assert server.query("hello.example.org", "A", timeout=30).rcode() == dns.rcode.SERVFAIL
    assert {a.rcode() for a in from_many_clients(server, "hello.example.org")} == {dns.rcode.SERVFAIL}
    # the declaration itself is configuration, not data, in every process
    assert {a.rcode() for a in from_many_clients(server, "_summoner.hello.example.org", "TXT")} == {
        dns.rcode.NXDOMAIN}
    assert [addresses(a) for a in from_many_clients(server, "www.example.org")] == [["127.0.0.2"]] * CLIENTS


def test_arrowhead_names_are_relayed(start_server, arrowhead_double):
    from tests.conftest import EXAMPLE_ZONES
    from tests.test_arrowhead_dns import arrowhead_args
    server = start(start_server, EXAMPLE_ZONES, "--no-on-demand", *arrowhead_args(arrowhead_double))
    wait_for(lambda: any(s["systemName"] == "summoner" for s in arrowhead_double.control("state")["systems"]),
             what="summoner's system registration")
    arrowhead_double.register_provider("temperature", "10.1.2.3", 8080)
    answers = from_many_clients(server, "temperature.ah.test")
    assert [addresses(a) for a in answers] == [["10.1.2.3"]] * CLIENTS
    assert {a.rcode() for a in from_many_clients(server, "nosuch.example.org")} == {dns.rcode.NXDOMAIN}
