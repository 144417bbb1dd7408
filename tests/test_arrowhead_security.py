"""securityRequirements through summoner's DNS: by default summoner asks for
what a DNS answer can stand for (NOT_SECURE, CERTIFICATE), so a TOKEN
provider -- whose token DNS cannot carry, and which an insecure cloud cannot
even make a token for -- never turns a name into SERVFAIL."""

from __future__ import annotations

import dns.rcode

from tests.arrowhead_double.fixtures import wait_for
from tests.test_arrowhead_dns import _zones, arrowhead_args, rrs


def serving(start_server, double, *extra: str):
    server = start_server(*_zones(), *arrowhead_args(double, *extra))
    wait_for(lambda: any(s["systemName"] == "summoner" for s in double.control("state")["systems"]),
             what="summoner's system registration")
    return server


def test_by_default_token_providers_are_not_asked_for_and_certificate_ones_are(start_server, arrowhead_double):
    double = arrowhead_double
    server = serving(start_server, double)
    double.register_provider("temperature", "10.1.2.3", 8080, secure="TOKEN", authentication_info="key")
    double.register_provider("humidity", "10.1.2.4", 8080, secure="TOKEN", authentication_info="key")
    double.register_provider("humidity", "10.1.2.5", 8080, system="certified", secure="CERTIFICATE",
                             authentication_info="key")
    response = server.query("temperature.ah.test", "A")
    assert response.rcode() == dns.rcode.NXDOMAIN  # only a TOKEN provider: none DNS can stand for
    # An insecure cloud accepts CERTIFICATE providers, and summoner's answer is their address.
    assert [rr.address for rr in rrs(server.query("humidity.ah.test", "A"), "A")] == ["10.1.2.5"]
    assert "Token generation" not in server.log()


def test_asking_for_any_security_meets_the_insecure_cloud_s_token_failure(start_server, arrowhead_double):
    double = arrowhead_double
    server = serving(start_server, double, "--arrowhead-security", "ANY")
    double.register_provider("temperature", "10.1.2.3", 8080, secure="TOKEN", authentication_info="key")
    assert server.query("temperature.ah.test", "A").rcode() == dns.rcode.SERVFAIL
    wait_for(lambda: "Token generation is not possible in insecure mode." in server.log(), timeout=3,
             what="the Orchestrator's 500 in the log")
