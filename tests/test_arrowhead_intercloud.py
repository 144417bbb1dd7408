"""Inter-cloud resolution end to end: ``summoner serve`` B in double cloud 2
with ``--arrowhead-intercloud`` resolves a service whose provider is in
double cloud 1, through the two clouds' Gatekeepers (GSD, then ICN), with
real DNS clients -- directly, through cloud 2's Gateway (VIA_GATEWAY: the
session's port, and answers that do not outlive the session), and for a host
that summoner A publishes in cloud 1 (no VM boots here: tests/vm/ is where
connections summon VMs)."""

from __future__ import annotations

import socket
import time

import dns.rcode
import dns.rdatatype
import pytest

from tests.arrowhead_double.fixtures import wait_for
from tests.conftest import EXAMPLE_ZONES, ROOT

SESSION = 3  # seconds: the double Gateway's timeouts and summoner's --arrowhead-gateway-session
# No libvirt: these summoners never boot, and must not adopt the VMs of a
# libvirtd this machine may run for other tests.
NO_LIBVIRT = ("--libvirt-uri", "qemu+unix:///system?socket=/nonexistent/no-libvirtd-here", "--virt-type", "qemu")


def serve_in(start_server, cloud, *extra: str, zones=EXAMPLE_ZONES):
    """summoner B, a system of ``cloud``, its own registration done."""
    server = start_server(zones, *NO_LIBVIRT, "--arrowhead-orchestrator", cloud.http,
                          "--arrowhead-registry", cloud.http, "--arrowhead-domain", "ah.test",
                          "--arrowhead-deadline", "5", *extra)
    wait_for(lambda: any(s["systemName"] == "summoner" for s in cloud.control("state")["systems"]),
             what="summoner's system registration")
    return server


def rrs(section, rdtype: str) -> list:
    return [rr for rrset in section if rrset.rdtype == dns.rdatatype.from_text(rdtype) for rr in rrset]


def ttls(section, rdtype: str) -> list[int]:
    return [rrset.ttl for rrset in section if rrset.rdtype == dns.rdatatype.from_text(rdtype)]


@pytest.fixture
def provider(clouds, echo_server):
    """temperature, provided in cloud 1 by a live TCP server; no rule yet."""
    cloud1, _ = clouds
    response = cloud1.register_provider("temperature", "127.0.0.1", echo_server, authorize=None)
    assert response.status_code == 201, response.text
    return ("provider", "127.0.0.1", echo_server)


def test_a_cloud1_provider_resolves_in_cloud2_only_with_the_intercloud_rule(start_server, clouds, provider):
    cloud1, cloud2 = clouds
    server = serve_in(start_server, cloud2, "--arrowhead-intercloud", "--arrowhead-ttl", "2")
    assert server.query("temperature.ah.test", "A").rcode() == dns.rcode.NXDOMAIN
    cloud1.authorize_cloud(cloud2, provider, "temperature")
    # once the negative answer (2 s) has expired, the rule makes it resolve
    response = wait_for(lambda: (r := server.query("temperature.ah.test", "A")).rcode() == dns.rcode.NOERROR and r,
                        timeout=6, what="the name to resolve once the inter-cloud rule exists")
    assert [rr.address for rr in rrs(response.answer, "A")] == ["127.0.0.1"]
    assert all(0 < ttl <= 2 for ttl in ttls(response.answer, "A"))
    assert not rrs(response.additional, "SRV")  # a direct provider: its port is its registered one
    srv = server.query("_temperature._tcp.ah.test", "SRV")
    assert [(rr.port, str(rr.target)) for rr in rrs(srv.answer, "SRV")] == [(provider[2], "temperature.ah.test.")]
    assert server.metric("summoner_arrowhead_intercloud_results_total", route="direct") >= 1
    # without --arrowhead-intercloud, cloud 2 alone has nothing
    local_only = serve_in(start_server, cloud2)
    assert local_only.query("temperature.ah.test", "A").rcode() == dns.rcode.NXDOMAIN


def test_via_gateway_srv_carries_the_session_port_and_outlives_no_session(start_server, clouds, provider):
    cloud1, cloud2 = clouds
    cloud1.authorize_cloud(cloud2, provider, "temperature")
    cloud1.control("knobs", {"gateway_is_present": True, "gateway_is_mandatory": True})
    cloud2.control("knobs", {"gateway_is_present": True, "gateway_socket_timeout": SESSION,
                             "inactive_gateway_bridge_timeout": SESSION})
    server = serve_in(start_server, cloud2, "--arrowhead-intercloud", "--arrowhead-ttl", "30",
                      "--arrowhead-gateway-session", str(SESSION))
    response = server.query("_temperature._tcp.ah.test", "SRV")
    assert response.rcode() == dns.rcode.NOERROR, response
    [session] = cloud2.mgmt("/gateway/mgmt/sessions")
    port = session["consumerServerSocketPort"]
    assert port != provider[2] and session["provider"]["port"] == provider[2]
    assert [(rr.port, str(rr.target)) for rr in rrs(response.answer, "SRV")] == [(port, "temperature.ah.test.")]
    assert [rr.address for rr in rrs(response.additional, "A")] == ["127.0.0.1"]  # the Gateway's address
    assert all(0 < ttl <= SESSION for ttl in ttls(response.answer, "SRV") + ttls(response.additional, "A"))
    # an address query: the Gateway's address, the session port in an additional SRV
    address = server.query("temperature.ah.test", "A")
    assert [rr.address for rr in rrs(address.answer, "A")] == ["127.0.0.1"]
    assert [(str(rrset.name), rr.port) for rrset in address.additional if rrset.rdtype == dns.rdatatype.SRV
            for rr in rrset] == [("_temperature._tcp.ah.test.", port)]
    assert all(0 < ttl <= SESSION for ttl in ttls(address.answer, "A") + ttls(address.additional, "SRV"))
    assert cloud2.counters()["orchestration"] == 1  # one session for both answers
    # the port reaches the provider in cloud 1
    with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
        conn.sendall(b"hello from cloud 2")
        assert conn.recv(64) == b"hello from cloud 2"
    assert server.metric("summoner_arrowhead_intercloud_results_total", route="gateway") >= 1
    # past the session's lifetime summoner negotiates again: a new session, whose port the answer carries
    time.sleep(SESSION + 0.5)
    again = server.query("_temperature._tcp.ah.test", "SRV")
    assert cloud2.counters()["orchestration"] == 2
    [fresh] = [s for s in cloud2.mgmt("/gateway/mgmt/sessions") if s["queueId"] != session["queueId"]]
    assert [rr.port for rr in rrs(again.answer, "SRV")] == [fresh["consumerServerSocketPort"]]


def test_summoner_b_in_cloud2_finds_the_host_summoner_a_publishes_in_cloud1(start_server, clouds):
    cloud1, cloud2 = clouds
    serve_in(start_server, cloud1)  # summoner A: example.org, hello on demand, published in cloud 1
    [hello] = wait_for(lambda: [e for e in cloud1.control("state")["entries"]
                                if e["provider"]["address"] == "hello.example.org"],
                       what="A's registration of hello.example.org")
    published = (hello["provider"]["systemName"], "hello.example.org", hello["provider"]["port"])
    # B serves another zone; hello is not its own
    b = serve_in(start_server, cloud2, "--arrowhead-intercloud", "--arrowhead-ttl", "2",
                 zones=ROOT / "tests" / "zones" / "good")
    assert b.query("hello.ah.test", "A").rcode() == dns.rcode.NXDOMAIN
    cloud1.authorize_cloud(cloud2, published, "hello")
    response = wait_for(lambda: (r := b.query("hello.ah.test", "A")).rcode() == dns.rcode.NOERROR and r,
                        timeout=6, what="A's host to resolve through B once cloud 1 has the rule")
    # a host-name provider: B's answer sends the client to A's name, whose DNS summons the VM
    assert [str(rr.target) for rr in rrs(response.answer, "CNAME")] == ["hello.example.org."]
    srv = b.query("_hello._tcp.ah.test", "SRV")
    assert [(rr.port, str(rr.target)) for rr in rrs(srv.answer, "SRV")] == [(published[2], "hello.example.org.")]
