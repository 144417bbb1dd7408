"""``summoner arrowhead rules`` against the double, end to end: one summoner
publishes its on-demand hosts, another (the consumer) resolves them through
orchestration over DNS; without the rules that is NXDOMAIN, after
``--apply`` it resolves, a second run sends nothing, and ``--remove`` drops
the rule of a host that left the zones."""

from __future__ import annotations

import subprocess
import sys

import dns.rcode
import pytest

from tests.arrowhead_double.fixtures import wait_for
from tests.conftest import EXAMPLE_ZONES, ROOT

READER = ("reader", "127.0.0.1", 5300)  # the consumer summoner's system


def rules(double, zones, *extra: str, registry: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "summoner", "arrowhead", "rules", "--zones", str(zones),
         "--arrowhead-registry", registry or double.http, "--arrowhead-authorization", registry or double.http,
         "--consumer", "reader", *extra], capture_output=True, text=True, cwd=ROOT, timeout=60)


def systems(double) -> set[tuple[str, str, int]]:
    return {(s["systemName"], s["address"], s["port"]) for s in double.control("state")["systems"]}


@pytest.fixture
def cloud(start_server, arrowhead_double):
    """A publishing summoner (the example zones) and a consuming one."""
    double = arrowhead_double
    publisher = start_server(EXAMPLE_ZONES, "--arrowhead-registry", double.http)
    wait_for(lambda: {e["provider"]["address"] for e in double.control("state")["entries"]}
             == {"hello.example.org", "tasks.example.org"}, what="the on-demand hosts published")
    reader = start_server(EXAMPLE_ZONES, "--no-on-demand", "--arrowhead-orchestrator", double.http,
                          "--arrowhead-registry", double.http, "--arrowhead-domain", "ah.test",
                          "--arrowhead-system-name", "reader", "--arrowhead-system-port", "5300",
                          "--arrowhead-ttl", "1", "--no-arrowhead-publish")
    wait_for(lambda: READER in systems(double), what="the consumer's system registration")
    return publisher, reader, double


def test_rules_apply_lets_the_consumer_resolve_published_hosts_and_remove_drops_those_of_hosts_gone(cloud):
    publisher, reader, double = cloud
    assert reader.query("hello.ah.test", "A").rcode() == dns.rcode.NXDOMAIN  # no rule: no provider
    shown = rules(double, publisher.zones)
    assert shown.returncode == 1, shown.stderr
    lines = shown.stdout.splitlines()
    assert lines == [
        "missing      reader (127.0.0.1:5300) -> summoner (hello.example.org:8080) service hello "
        "interfaces HTTP-INSECURE-JSON",
        "missing      reader (127.0.0.1:5300) -> summoner (tasks.example.org:8080) service tasks "
        "interfaces HTTP-INSECURE-JSON"], shown.stdout
    assert double.control("state")["rules"] == []  # printing changes nothing

    applied = rules(double, publisher.zones, "--apply")
    assert applied.returncode == 0, applied.stdout + applied.stderr
    assert [line.split()[0] for line in applied.stdout.splitlines()] == ["added", "added"]
    response = wait_for(lambda: (r := reader.query("hello.ah.test", "A")).rcode() == dns.rcode.NOERROR and r,
                        timeout=5, what="the consumer's answer once the negative entry expired")
    assert [str(rr.target) for rrset in response.answer for rr in rrset] == ["hello.example.org."]

    calls = double.counters().get("rules", 0)
    again = rules(double, publisher.zones, "--apply", "--remove")
    assert again.returncode == 0 and [line.split()[0] for line in again.stdout.splitlines()] == [
        "present", "present"], again.stdout
    assert double.counters().get("rules", 0) == calls + 1  # one list, nothing added or removed

    zone = publisher.zones / "example.org.zone"
    zone.write_text(zone.read_text().replace('_summoner.tasks IN TXT  "image=tasks" "idle=300"', ""))
    wait_for(lambda: {e["provider"]["address"] for e in double.control("state")["entries"]}
             == {"hello.example.org"}, what="tasks withdrawn")
    kept = rules(double, publisher.zones)
    assert kept.returncode == 0  # an obsolete rule is reported, not a failure without --remove
    assert kept.stdout.splitlines()[-1].startswith(
        "obsolete     reader (127.0.0.1:5300) -> summoner (tasks.example.org:8080) service tasks")
    removed = rules(double, publisher.zones, "--remove")
    assert removed.returncode == 0, removed.stdout
    assert [line.split()[0] for line in removed.stdout.splitlines()] == ["present", "removed"]
    assert [r["providerSystem"]["address"] for r in double.control("state")["rules"]] == ["hello.example.org"]


def test_a_rule_lacking_an_interface_is_replaced(cloud):
    publisher, reader, double = cloud
    ids = {s["serviceDefinition"]: s["id"] for s in double.mgmt("/serviceregistry/mgmt/services")}
    assert double.register_provider("other", "10.0.0.1", 1, system="x", interfaces=("HTTP-SECURE-JSON",),
                                    authorize=None).status_code == 201
    secure = {i["interfaceName"]: i["id"] for i in double.mgmt("/serviceregistry/mgmt/interfaces")}
    import requests
    requests.post(f"{double.http}/authorization/mgmt/intracloud", timeout=5, json={
        "consumerId": double.system_id(READER), "providerIds": [double.system_id(("summoner", "hello.example.org",
                                                                                   8080))],
        "serviceDefinitionIds": [ids["hello"]], "interfaceIds": [secure["HTTP-SECURE-JSON"]]}).raise_for_status()
    shown = rules(double, publisher.zones)
    assert shown.stdout.splitlines()[0].startswith("stale        reader (127.0.0.1:5300) -> summoner "
                                                   "(hello.example.org:8080) service hello")
    assert "allows only HTTP-SECURE-JSON" in shown.stdout
    applied = rules(double, publisher.zones, "--apply")
    assert [line.split()[0] for line in applied.stdout.splitlines()] == ["replaced", "added"], applied.stdout
    hello = [r for r in double.control("state")["rules"] if r["providerSystem"]["address"] == "hello.example.org"]
    assert [[i["interfaceName"] for i in r["interfaces"]] for r in hello] == [["HTTP-INSECURE-JSON"]]


def test_an_unknown_consumer_and_a_secure_cloud_without_sysop_name_the_fix(start_server, arrowhead_double,
                                                                          arrowhead_pki):
    double = arrowhead_double
    unknown = rules(double, EXAMPLE_ZONES)
    assert unknown.returncode == 1
    assert ("--consumer reader: no system of that name is registered in the Service Registry; start the consumer "
            "(it registers itself) or register it, then run this again") in unknown.stderr
    summoner_tls = ["--arrowhead-cert", str(arrowhead_pki / "summoner.pem"),
                    "--arrowhead-key", str(arrowhead_pki / "summoner.key"),
                    "--arrowhead-truststore", str(arrowhead_pki / "truststore.pem")]
    no_sysop = rules(double, EXAMPLE_ZONES, *summoner_tls, registry=double.https)
    assert no_sysop.returncode == 2
    assert "the management endpoints of a secure cloud are the local system operator's: give --sysop-pkcs12" \
        in no_sysop.stderr
    as_sysop = rules(double, EXAMPLE_ZONES, *summoner_tls, "--sysop-cert", str(arrowhead_pki / "sysop.pem"),
                     "--sysop-key", str(arrowhead_pki / "sysop.key"), registry=double.https)
    assert "--consumer reader: no system of that name" in as_sysop.stderr  # it got through to the lists
    as_summoner = rules(double, EXAMPLE_ZONES, *summoner_tls, "--sysop-cert", str(arrowhead_pki / "summoner.pem"),
                        "--sysop-key", str(arrowhead_pki / "summoner.key"), registry=double.https)
    assert as_summoner.returncode == 1
    assert "summoner.testcloud.aitia.arrowhead.eu is unauthorized to access" in as_summoner.stderr
