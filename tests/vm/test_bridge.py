"""Bridge mode end to end (``--network bridge``): guests with their own
addresses on a Linux bridge, clients on another host.

Everything runs inside namespaces this module creates (tests/netns.py: a
bridge with 192.0.2.1/24 and 2001:db8::1/64, a libvirtd of its own whose
guests' taps land on that bridge, summoner listening on the bridge address)
and a client namespace joined to the bridge by a veth pair, which resolves
with dig and fetches with curl, as a machine on the LAN would.  No packet
leaves these namespaces; they are removed however the tests end.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import ROOT, stop_process
from tests.netns import BRIDGE, CLIENT4, GATEWAY4, GATEWAY6, Segment, bridged_segment, run
from tests.vm.conftest import IMAGE_DIRS

HELLO4, HELLO6 = "192.0.2.10", "2001:db8::10"
PREFIX = "summoner-bridge-"
ZONE = f"""$ORIGIN edge.test.
$TTL 60
@       IN SOA ns1 hostmaster 1 3600 600 604800 60
        IN NS  ns1
ns1     IN A   {GATEWAY4}
hello   IN A   {HELLO4}
        IN AAAA {HELLO6}
_summoner.hello IN TXT "image=hello" {{hello}}
"""
DNS_PORT = 53


@pytest.fixture(scope="module")
def segment(vm_env, tmp_path_factory) -> Iterator[Segment]:
    with bridged_segment(tmp_path_factory.mktemp("bridge")) as seg:
        yield seg


@dataclass
class BridgeServer:
    segment: Segment
    process: subprocess.Popen
    log_path: Path
    metrics_port: int

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def metric(self, name: str, **labels: str) -> float:
        """Read from inside the server's namespace, where the endpoint listens."""
        text = subprocess.run(self.segment.in_server("curl", "-s", "-m", "5",
                                                     f"http://127.0.0.1:{self.metrics_port}/metrics"),
                              capture_output=True, text=True).stdout
        total = 0.0
        for line in text.splitlines():
            if line.startswith(name + "{") or line.startswith(name + " "):
                sample, _, value = line.rpartition(" ")
                if all(f'{k}="{v}"' in sample for k, v in labels.items()):
                    total += float(value)
        return total

    def stop(self) -> None:
        stop_process(self.process)


@pytest.fixture
def bridge_server(segment, tmp_path) -> Iterator:
    servers: list[BridgeServer] = []
    for name in segment.domains():  # a guest of an earlier test of this module
        segment.virsh("destroy", name)

    def start(hello: str = '"idle=300"', workdir: Path | None = None) -> BridgeServer:
        workdir = workdir or tmp_path
        zones = workdir / "zones"
        zones.mkdir(exist_ok=True)
        (zones / "edge.test.zone").write_text(ZONE.format(hello=hello))
        metrics_port = 9153 + len(servers)
        args = ["serve", "--listen", f"{GATEWAY4}:{DNS_PORT}", "--zones", str(zones),
                "--metrics", f"127.0.0.1:{metrics_port}", "--admin", "off",
                "--network", "bridge", "--bridge", BRIDGE, "--bridge-gateway", GATEWAY4,
                "--libvirt-uri", segment.uri, "--virt-type", "qemu", "--domain-prefix", PREFIX,
                "--reap-interval", "0.5", "--state-dir", str(workdir / "state"), *IMAGE_DIRS]
        log_path = workdir / f"summoner-{len(servers)}.log"
        with open(log_path, "ab") as log_file:
            process = subprocess.Popen(segment.in_server(sys.executable, "-m", "summoner", *args), cwd=ROOT,
                                       stdout=log_file, stderr=subprocess.STDOUT)
        server = BridgeServer(segment, process, log_path, metrics_port)
        servers.append(server)
        deadline = time.monotonic() + 20
        while dig(segment, "ns1.edge.test", "A", timeout=1) != [GATEWAY4]:
            if process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"summoner did not answer in the namespace:\n{server.log()[-3000:]}")
            time.sleep(0.2)
        return server

    yield start
    for server in servers:
        server.stop()


def dig(segment: Segment, name: str, rdtype: str, timeout: float = 30) -> list[str]:
    """What a client on the LAN gets: dig from the client namespace."""
    done = segment.client_run("dig", "+short", f"+time={int(timeout)}", "+tries=1", "-p", str(DNS_PORT),
                              f"@{GATEWAY4}", name, rdtype, timeout=timeout + 5)
    return [line for line in done.stdout.split() if line and not line.startswith(";")]


def http_status(segment: Segment, address: str) -> str:
    host = f"[{address}]" if ":" in address else address
    done = segment.client_run("curl", "-s", "-m", "5", "-o", "/dev/null", "-w", "%{http_code}",
                              f"http://{host}:8080/", timeout=10)
    return done.stdout.strip()


def domain_of(segment: Segment) -> str:
    return PREFIX + "hello.edge.test"


def test_a_cold_query_boots_the_guest_on_the_bridge_and_both_families_answer(segment, bridge_server):
    server = bridge_server()
    assert segment.domains() == []
    assert dig(segment, "hello.edge.test", "A") == [HELLO4], server.log()[-3000:]
    assert http_status(segment, HELLO4) == "200"
    assert dig(segment, "hello.edge.test", "AAAA") == [HELLO6]
    assert http_status(segment, HELLO6) == "200"
    # the guest is on the bridge, with its own addresses (no port forward)
    xml = segment.virsh("dumpxml", domain_of(segment)).stdout
    assert re.search(rf"<interface type='bridge'>.*<source bridge='{BRIDGE}'/>", xml, re.DOTALL)
    assert f"ip={HELLO4}::{GATEWAY4}:255.255.255.0::eth0:off summoner_ip6={HELLO6}/64" in xml
    assert "hostfwd" not in xml
    # the client reached the guest directly: its neighbour entry is the guest's MAC
    neighbours = segment.client_run("ip", "neigh", "show", HELLO4).stdout
    from summoner.vm.domxml import mac_for
    assert mac_for("hello.edge.test") in neighbours
    assert server.metric("summoner_vm_boots_total", service="hello.edge.test", result="success") == 1


def test_traffic_without_dns_keeps_the_guest_and_silence_reaps_it(segment, bridge_server):
    server = bridge_server(hello='"idle=4"')
    assert dig(segment, "hello.edge.test", "A") == [HELLO4]
    # 8 s of HTTP from the client, twice the idle timeout, and no DNS query
    deadline = time.monotonic() + 8
    while time.monotonic() < deadline:
        assert http_status(segment, HELLO4) == "200"
        time.sleep(0.5)
    assert segment.domains() == [domain_of(segment)], "reaped although the client was using it"
    # then nothing: reaped after the idle timeout (the tap's counters stand still)
    deadline = time.monotonic() + 20
    while segment.domains():
        assert time.monotonic() < deadline, f"not reaped 20 s after the traffic stopped:\n{server.log()[-2000:]}"
        time.sleep(0.5)
    assert server.metric("summoner_vm_reaps_total", reason="idle") == 1


def test_a_restarted_summoner_adopts_the_guest_on_the_bridge(segment, bridge_server, tmp_path):
    first = bridge_server()
    assert dig(segment, "hello.edge.test", "A") == [HELLO4]
    uuid = segment.virsh("domuuid", domain_of(segment)).stdout.strip()
    first.stop()
    assert segment.domains() == [domain_of(segment)]  # guests outlive summoner
    again = bridge_server(workdir=tmp_path)
    assert dig(segment, "hello.edge.test", "AAAA", timeout=5) == [HELLO6]
    assert http_status(segment, HELLO6) == "200"
    assert segment.virsh("domuuid", domain_of(segment)).stdout.strip() == uuid  # the same guest, not a new boot
    assert again.metric("summoner_vm_boots_total", service="hello.edge.test") == 0
    assert "adopt" in again.log()


def test_the_namespaces_reach_nothing_outside_them(segment):
    """The client has no route but the segment: the test cannot send traffic elsewhere."""
    routes = segment.client_run("ip", "route", "show").stdout
    assert routes.split() == ["192.0.2.0/24", "dev", "vsm-c", "proto", "kernel", "scope", "link", "src", CLIENT4]
    assert "default" not in segment.client_run("ip", "-6", "route", "show").stdout


def doctor(segment: Segment, zones: Path, *flags: str) -> dict[str, dict]:
    """``summoner doctor --json`` in the server's namespace, findings by check."""
    done = subprocess.run(segment.in_server(sys.executable, "-m", "summoner", "doctor", "--json", "--zones",
                                            str(zones), "--network", "bridge", "--libvirt-uri", segment.uri,
                                            "--virt-type", "qemu", *IMAGE_DIRS, *flags),
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    return {f["check"]: f for f in json.loads(done.stdout)}


def test_doctor_checks_the_bridge_its_gateways_and_forwarding(segment, tmp_path):
    zones = tmp_path / "zones"
    zones.mkdir()
    (zones / "edge.test.zone").write_text(ZONE.format(hello='"idle=300"'))
    found = doctor(segment, zones, "--bridge", BRIDGE, "--bridge-gateway", GATEWAY4,
                   "--bridge-ipv6-gateway", GATEWAY6)
    assert found["bridge"]["level"] == "ok" and "192.0.2.1/24" in found["bridge"]["detail"]
    # this host is the guests' gateway, but a new namespace does not forward
    assert found["bridge-gateway"]["level"] == "warn"
    assert found["bridge-gateway"]["fix"].startswith("sysctl -w net.ipv4.ip_forward=1")
    assert found["bridge-gateway6"]["fix"].startswith("sysctl -w net.ipv6.conf.all.forwarding=1")
    run(*segment.in_server("sysctl", "-qw", "net.ipv4.ip_forward=1"))
    try:
        found = doctor(segment, zones, "--bridge", BRIDGE, "--bridge-gateway", GATEWAY4)
    finally:
        run(*segment.in_server("sysctl", "-qw", "net.ipv4.ip_forward=0"))
    assert found["bridge-gateway"]["level"] == "ok"
    assert found["bridge-gateway6"]["level"] == "ok"  # none given: the segment only
    # a router elsewhere on the segment is fine; one off it is not
    assert doctor(segment, zones, "--bridge", BRIDGE, "--bridge-gateway", "192.0.2.254")["bridge-gateway"][
        "level"] == "ok"
    elsewhere = doctor(segment, zones, "--bridge", BRIDGE, "--bridge-gateway", "198.51.100.1")["bridge-gateway"]
    assert elsewhere["level"] == "warn" and f"dev {BRIDGE}" in elsewhere["fix"]
    missing = doctor(segment, zones, "--bridge", "br-absent")["bridge"]
    assert missing["level"] == "fail"
    assert missing["fix"].startswith("ip link add br-absent type bridge")


def test_a_suspended_guest_on_the_bridge_is_resumed_by_the_next_query(segment, bridge_server):
    server = bridge_server(hello='"idle=2" "stop=suspend"')
    assert dig(segment, "hello.edge.test", "A") == [HELLO4]
    deadline = time.monotonic() + 20
    while segment.virsh("domstate", domain_of(segment)).stdout.strip() != "paused":
        assert time.monotonic() < deadline, f"not suspended after its idle timeout:\n{server.log()[-2000:]}"
        time.sleep(0.3)
    assert dig(segment, "hello.edge.test", "AAAA", timeout=5) == [HELLO6]
    assert segment.virsh("domstate", domain_of(segment)).stdout.strip() == "running"
    assert http_status(segment, HELLO6) == "200" and http_status(segment, HELLO4) == "200"
    # resumed, not booted again: one boot, and the same guest
    assert server.metric("summoner_vm_boots_total", service="hello.edge.test", result="success") == 1
    assert server.metric("summoner_vm_reaps_total", reason="idle") == 1
