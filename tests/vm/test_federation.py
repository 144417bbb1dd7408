"""Two summoners, one Arrowhead (issue 12): summoner A serves ``od.test`` and
publishes its on-demand hosts; summoner B serves ``b.test`` and resolves
names it does not hold by orchestration.  A real Unbound resolver sends each
zone to its summoner (tests/unbound.py), as a site's resolver would, and the
client only ever talks to Unbound.  Marked ``vm``: A and B boot real guests.

- Federation: ``hello.b.test`` through B is A's ``hello.od.test`` (a CNAME
  from B, then A boots the VM on that demand); NXDOMAIN until
  ``summoner arrowhead rules --apply`` adds the rule B needs.
- Inter-cloud: the same with A and B in two double clouds joined by their
  Gatekeepers; NXDOMAIN until cloud 1 has the inter-cloud rule for cloud 2.
- Remote fallback: A's ``broken`` (a silent image) stands for the service
  ``hello``; when its boot fails, A answers with B's provider of ``hello``,
  which B boots.
"""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass

import dns.rcode
import dns.rdatatype
import pytest

from tests.arrowhead_double import DoubleProcess
from tests.arrowhead_double.fixtures import wait_for
from tests.conftest import ROOT, launch, wait_until_answering
from tests.unbound import Unbound
from tests.vm.conftest import IMAGE_DIRS, ODServer

pytestmark = [pytest.mark.vm, pytest.mark.slow]

A_SYSTEM = ("summoner-a", "127.0.0.1", 5301)
B_SYSTEM = ("summoner-b", "127.0.0.1", 5302)

B_ZONE = """$ORIGIN b.test.
$TTL 300
@ IN SOA ns1 hostmaster 1 3600 600 86400 5
  IN NS ns1
ns1 IN A 127.0.0.1
{extra}"""


def arrowhead_flags(double: DoubleProcess, system: tuple[str, str, int]) -> list[str]:
    return ["--arrowhead-orchestrator", double.http, "--arrowhead-registry", double.http,
            "--arrowhead-system-name", system[0], "--arrowhead-system-port", str(system[2]),
            "--arrowhead-ttl", "2"]


def registered(double: DoubleProcess) -> set[str]:
    return {e["provider"]["address"] for e in double.control("state")["entries"]}


def systems(double: DoubleProcess) -> set[tuple[str, str, int]]:
    return {(s["systemName"], s["address"], s["port"]) for s in double.control("state")["systems"]}


def http_status(url: str) -> int:
    with urllib.request.urlopen(url, timeout=10) as reply:
        return reply.status


def addresses(reply) -> list[str]:
    return [rr.address for rrset in reply.answer if rrset.rdtype == dns.rdatatype.A for rr in rrset]


def cnames(reply) -> list[str]:
    return [str(rr.target) for rrset in reply.answer if rrset.rdtype == dns.rdatatype.CNAME for rr in rrset]


@dataclass
class Federation:
    double: DoubleProcess  # A's cloud (and B's, unless they are two clouds)
    a: ODServer
    b: ODServer
    resolver: Unbound

    def rules(self, publisher: tuple[str, str, int], consumer: tuple[str, str, int],
              *extra: str) -> subprocess.CompletedProcess:
        """``summoner arrowhead rules`` for the hosts the summoner ``publisher``
        (A_SYSTEM or B_SYSTEM) publishes, as its operator runs it."""
        server = self.a if publisher == A_SYSTEM else self.b
        return subprocess.run(
            [sys.executable, "-m", "summoner", "arrowhead", "rules", "--zones", str(server.zones),
             *IMAGE_DIRS, "--arrowhead-registry", self.double.http, "--arrowhead-authorization",
             self.double.http, "--arrowhead-system-name", publisher[0], "--arrowhead-system-port",
             str(publisher[2]), "--consumer", "{}@{}:{}".format(*consumer), *extra],
            capture_output=True, text=True, cwd=ROOT, timeout=60)


@pytest.fixture
def federation(od_server, tmp_path) -> Iterator:
    """``start(a_cloud, b_cloud, a_hello=..., a_extra=..., b_extra=..., b_flags=...)``:
    A on od.test (the od_server zone) in ``a_cloud``, B on b.test in ``b_cloud``
    (the same double, or two joined by their Gatekeepers), and Unbound in front."""
    started: list[Unbound | ODServer] = []

    def start(a_cloud: DoubleProcess, b_cloud: DoubleProcess, *, a_hello: str = "", a_extra: str = "",
              b_extra: str = "", b_flags: tuple[str, ...] = ()) -> Federation:
        a = od_server(*arrowhead_flags(a_cloud, A_SYSTEM), hello=a_hello, zone_extra=a_extra)
        zones = tmp_path / "b-zones"
        zones.mkdir()
        (zones / "b.test.zone").write_text(B_ZONE.format(extra=b_extra))
        # Two summoners on one libvirtd: each its own domain prefix, or each
        # one's reconciliation would destroy the other's VMs as "removed".
        b = launch(tmp_path, zones, "--virt-type", "qemu", "--state-dir", str(tmp_path / "b-state"),
                   "--domain-prefix", "summoner-b-",
                   *IMAGE_DIRS, *arrowhead_flags(b_cloud, B_SYSTEM), *b_flags, server_class=ODServer)
        started.append(b)
        wait_until_answering(b)
        wait_for(lambda: A_SYSTEM in systems(a_cloud) and B_SYSTEM in systems(b_cloud),
                 what="both summoners' system registrations")
        resolver = Unbound(tmp_path, {"od.test": a.port, "b.test": b.port}).start()
        started.append(resolver)
        return Federation(a_cloud, a, b, resolver)

    yield start
    for item in reversed(started):
        item.stop()


def test_a_client_of_b_reaches_a_service_that_a_boots_on_demand(federation, arrowhead_double):
    fed = federation(arrowhead_double, arrowhead_double)
    wait_for(lambda: "hello.od.test" in registered(fed.double), what="A's registration of hello.od.test")
    # No intra-cloud rule lets B consume A's hello: no provider, NXDOMAIN.
    assert fed.resolver.query("hello.b.test", "A").rcode() == dns.rcode.NXDOMAIN
    shown = fed.rules(A_SYSTEM, B_SYSTEM)
    assert shown.returncode == 1
    assert ("missing      summoner-b (127.0.0.1:5302) -> summoner-a (hello.od.test:8080) service hello "
            "interfaces HTTP-INSECURE-JSON") in shown.stdout.splitlines(), shown.stdout
    applied = fed.rules(A_SYSTEM, B_SYSTEM, "--apply")
    assert applied.returncode == 0, applied.stdout + applied.stderr
    assert fed.a.status()["hello.od.test"]["state"] != "ready"  # nothing has asked A for it yet
    time.sleep(5)  # the negative answer's lifetime (b.test's SOA minimum, and Unbound's cache of it)
    started = time.monotonic()
    reply = fed.resolver.query("hello.b.test", "A", timeout=2.5, tries=12)
    elapsed = time.monotonic() - started
    assert reply.rcode() == dns.rcode.NOERROR, fed.resolver.log()[-2000:] + fed.b.log()[-2000:]
    assert cnames(reply) == ["hello.od.test."]  # B's answer: A's provider
    assert addresses(reply) == ["127.0.0.20"]    # A's answer, after the boot
    assert http_status("http://127.0.0.20:8080/") == 200
    assert fed.a.status()["hello.od.test"]["state"] == "ready"
    assert fed.a.metric("summoner_vm_boots_total", service="hello.od.test", result="success") == 1
    assert fed.b.metric("summoner_arrowhead_lookups_total", result="answer") >= 1
    print(f"cold query through Unbound and B to A's VM: {elapsed:.2f}s")


def test_a_host_that_cannot_boot_is_answered_with_the_other_summoners_provider(federation, arrowhead_double):
    fed = federation(
        arrowhead_double, arrowhead_double,
        a_hello='"arrowhead=off"',  # A's own hello would be "another provider" too
        a_extra='broken IN A 127.0.0.24\n_summoner.broken IN TXT "image=silent" "boot_timeout=3" '
                '"arrowhead-service=hello"',
        b_extra='hello IN A 127.0.0.30\n_summoner.hello IN TXT "image=hello"')
    wait_for(lambda: {"broken.od.test", "hello.b.test"} <= registered(fed.double),
             what="the registrations of broken.od.test (A) and hello.b.test (B)")
    applied = fed.rules(B_SYSTEM, A_SYSTEM, "--apply")
    assert applied.returncode == 0, applied.stdout + applied.stderr
    reply = fed.resolver.query("broken.od.test", "A", timeout=2.5, tries=12)
    assert reply.rcode() == dns.rcode.NOERROR, fed.resolver.log()[-2000:] + fed.a.log()[-3000:]
    assert cnames(reply) == ["hello.b.test."]
    assert addresses(reply) == ["127.0.0.30"]  # B booted its hello on that demand
    assert http_status("http://127.0.0.30:8080/") == 200
    assert fed.a.metric("summoner_arrowhead_fallbacks_total", result="answer") >= 1  # one per waiting query
    assert fed.a.metric("summoner_vm_boots_total", service="broken.od.test", result="timeout") == 1
    assert fed.b.metric("summoner_vm_boots_total", service="hello.b.test", result="success") == 1


def test_inter_cloud_a_client_in_cloud2_reaches_the_host_a_boots_in_cloud1(federation, clouds):
    """A in double cloud 1, B in cloud 2 with --arrowhead-intercloud; the two
    Gatekeepers (GSD, then ICN) find A's host, once cloud 1 lets cloud 2 in."""
    cloud1, cloud2 = clouds
    fed = federation(cloud1, cloud2, b_flags=("--arrowhead-intercloud", "--arrowhead-deadline", "5"))
    wait_for(lambda: "hello.od.test" in registered(cloud1), what="A's registration of hello.od.test in cloud 1")
    assert fed.resolver.query("hello.b.test", "A").rcode() == dns.rcode.NXDOMAIN  # no inter-cloud rule
    cloud1.authorize_cloud(cloud2, ("summoner-a", "hello.od.test", 8080), "hello")
    time.sleep(5)  # the negative answer's lifetime
    reply = fed.resolver.query("hello.b.test", "A", timeout=2.5, tries=12)
    assert reply.rcode() == dns.rcode.NOERROR, fed.resolver.log()[-2000:] + fed.b.log()[-2000:]
    assert cnames(reply) == ["hello.od.test."]
    assert addresses(reply) == ["127.0.0.20"]
    assert http_status("http://127.0.0.20:8080/") == 200
    assert fed.a.metric("summoner_vm_boots_total", service="hello.od.test", result="success") == 1
    assert fed.b.metric("summoner_arrowhead_intercloud_results_total", route="direct") >= 1
