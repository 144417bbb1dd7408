"""Remote fallback (summoner/vm/stage.py's tentative SERVFAIL, answered by
summoner/arrowhead/stage.py): an on-demand host whose VM cannot boot is
answered with another Arrowhead provider of its service.

``summoner serve`` runs as a process with libvirt unreachable (a socket
path where no libvirtd listens), so every boot of ``hello`` fails the way it
does when libvirtd is down; the Arrowhead double holds the other provider.
The same with two summoners and a real VM: tests/vm/test_federation.py.
"""

from __future__ import annotations

import shutil

import dns.rcode
import dns.rdatatype
import pytest

from summoner.arrowhead.publisher import fallback_problems, fallback_service
from tests.arrowhead_double import SUMMONER
from tests.arrowhead_double.fixtures import wait_for
from tests.conftest import EXAMPLE_ZONES


def addresses(response) -> list[str]:
    return [rr.address for rrset in response.answer if rrset.rdtype == dns.rdatatype.A for rr in rrset]


@pytest.fixture
def broken_libvirt(tmp_path):
    return ["--libvirt-uri", f"qemu+unix:///system?socket={tmp_path}/no-libvirtd-here", "--virt-type", "qemu"]


def serve(start_server, double, tmp_path, libvirt: list[str], hello_options: str = ""):
    zones = tmp_path / "zones"
    shutil.copytree(EXAMPLE_ZONES, zones)
    zone = zones / "example.org.zone"
    text = zone.read_text()
    zone.write_text(text.replace('_summoner.hello IN TXT  "image=hello" "idle=300"',
                                 f'_summoner.hello IN TXT  "image=hello" "idle=300" {hello_options}'))
    server = start_server(zones, *libvirt, "--arrowhead-orchestrator", double.http,
                          "--arrowhead-registry", double.http, "--arrowhead-deadline", "2")
    wait_for(lambda: "hello.example.org" in {e["provider"]["address"] for e in double.control("state")["entries"]},
             what="summoner's registration of hello.example.org")
    return server


def test_a_host_whose_vm_cannot_boot_gets_another_provider_of_its_service(start_server, arrowhead_double, tmp_path,
                                                                          broken_libvirt):
    double = arrowhead_double
    server = serve(start_server, double, tmp_path, broken_libvirt)
    # summoner's own registration of hello.example.org is authorized too: it
    # must never be the answer (it would point the client back at the VM that
    # cannot boot)
    double.authorize(SUMMONER, SUMMONER, "hello")
    assert double.register_provider("hello", "127.0.0.77", 8080, system="hello-elsewhere").status_code == 201
    first = server.query("hello.example.org", "A", timeout=30)  # waits on the boot, which fails
    assert first.rcode() == dns.rcode.NOERROR, server.log()[-2000:]
    assert addresses(first) == ["127.0.0.77"]
    again = server.query("hello.example.org", "A")  # libvirt down for longer than a boot: refused at once
    assert addresses(again) == ["127.0.0.77"]
    assert server.metric("summoner_arrowhead_fallbacks_total", result="answer") == 2
    assert server.metric("summoner_vm_boots_total", service="hello.example.org", result="error") == 2
    # the host's own records of other types are still its own
    assert server.query("hello.example.org", "AAAA").rcode() == dns.rcode.NOERROR


def test_without_another_provider_the_answer_stays_servfail(start_server, arrowhead_double, tmp_path,
                                                            broken_libvirt):
    server = serve(start_server, arrowhead_double, tmp_path, broken_libvirt)
    # summoner's own registration of the host does not count as another provider
    arrowhead_double.authorize(SUMMONER, SUMMONER, "hello")
    assert server.query("hello.example.org", "A", timeout=30).rcode() == dns.rcode.SERVFAIL
    assert server.metric("summoner_arrowhead_fallbacks_total", result="no_provider") == 1
    # and the Orchestrator going away is SERVFAIL too, never a stale or foreign answer
    arrowhead_double.stop()
    try:
        assert server.query("hello.example.org", "A", timeout=10).rcode() == dns.rcode.SERVFAIL
    finally:
        arrowhead_double.start()


def test_fallback_off_for_a_host_never_asks_the_orchestrator(start_server, arrowhead_double, tmp_path,
                                                             broken_libvirt):
    double = arrowhead_double
    server = serve(start_server, double, tmp_path, broken_libvirt, '"arrowhead-fallback=off"')
    double.register_provider("hello", "127.0.0.77", 8080, system="hello-elsewhere")
    assert server.query("hello.example.org", "A", timeout=30).rcode() == dns.rcode.SERVFAIL
    assert double.counters().get("orchestration", 0) == 0


class Host:
    def __init__(self, name: str, **extra: str) -> None:
        self.name, self.image, self.location, self.extra = name, "hello", f"zone:3 ({name})", extra


def test_the_service_is_the_published_definition_and_a_bad_switch_is_a_zone_error() -> None:
    assert fallback_service(Host("hello.example.org")) == "hello"
    assert fallback_service(Host("hello.example.org", **{"arrowhead-service": "Greeter"})) == "greeter"
    assert fallback_service(Host("hello.example.org", **{"arrowhead-fallback": "OFF"})) is None
    assert fallback_problems([Host("hello.example.org", **{"arrowhead-fallback": "on"})]) == []
    [problem] = fallback_problems([Host("hello.example.org", **{"arrowhead-fallback": "maybe"})])
    assert problem.startswith("zone:3 (hello.example.org): arrowhead-fallback='maybe' must be on or off")
