"""The federation rows of bench/arrowhead_lookup.py: a cold query for a service
on summoner A, made through summoner B (B orchestrates, answers with A's
published host name, the client follows that CNAME to A, which boots the VM)
against the same cold query made to A directly, paired in one run.

Rounds alternate which path goes first; before each query A's VM is
destroyed (admin API) and B's Arrowhead cache has expired (``--arrowhead-ttl
1``), so every query through B costs one orchestration and one cold boot.
Needs libvirtd (scripts/start-libvirt.sh) and the built ``hello`` image.
"""

from __future__ import annotations

import socket
import statistics
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from dnslib import QTYPE, RCODE, DNSRecord

from bench.cold_start import admin, start_summoner, stop_summoner, wait_admin, wait_state
from tests.arrowhead_double import DoubleProcess
from tests.conftest import free_port

HOST = "hello.fed.test"
PREFIX = "summoner-fedbench-"
ADDRESS = "127.0.0.33"
ZONE = f"""$ORIGIN fed.test.
$TTL 300
@ IN SOA ns1 hostmaster 1 3600 600 86400 60
  IN NS ns1
ns1 IN A 127.0.0.1
hello IN A {ADDRESS}
_summoner.hello IN TXT "image=hello" "arrowhead-service=fedhello"
"""


@dataclass
class Samples:
    direct: list[float] = field(default_factory=list)   # A asked directly, cold
    via_b: list[float] = field(default_factory=list)    # B's answer, then A asked for its target, cold
    b_step: list[float] = field(default_factory=list)   # B's part of via_b (orchestration included)


def ask(port: int, name: str, timeout: float = 30.0) -> tuple[float, DNSRecord]:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        question = DNSRecord.question(name, "A")
        started = time.perf_counter()
        sock.sendto(question.pack(), ("127.0.0.1", port))
        reply = DNSRecord.parse(sock.recv(4096))
        elapsed = time.perf_counter() - started
    if reply.header.id != question.header.id or reply.header.rcode != RCODE.NOERROR:
        raise RuntimeError(f"{name}: {RCODE.get(reply.header.rcode)} from port {port}")
    return elapsed, reply


def only(reply: DNSRecord, qtype: int) -> str:
    values = [str(rr.rdata) for rr in reply.rr if rr.rtype == qtype]
    if len(values) != 1:
        raise RuntimeError(f"expected one {QTYPE[qtype]} record, got {reply.rr}")
    return values[0]


def cold(admin_port: int) -> None:
    admin(admin_port, f"/services/{HOST}/stop?mode=destroy", "POST")
    wait_state(admin_port, HOST, "stopped")
    time.sleep(1.2)  # B's cached orchestration (--arrowhead-ttl 1) has expired


def direct(a_port: int) -> float:
    elapsed, reply = ask(a_port, HOST)
    if only(reply, QTYPE.A) != ADDRESS:
        raise RuntimeError(f"A answered {reply.rr}")
    return elapsed


def through_b(a_port: int, b_port: int) -> tuple[float, float]:
    """(B's step, the whole resolution): a stub client following B's CNAME."""
    b_step, reply = ask(b_port, "fedhello.ah.test")  # the service A publishes hello.fed.test as
    target = only(reply, QTYPE.CNAME).rstrip(".")
    if target != HOST:
        raise RuntimeError(f"B answered {reply.rr}")
    return b_step, b_step + direct(a_port)


def federation_row(double: DoubleProcess, work: Path, rounds: int) -> Samples:
    a_dir, b_dir = work / "fed-a", work / "fed-b"
    (a_dir / "zones").mkdir(parents=True)
    (a_dir / "zones" / "fed.test.zone").write_text(ZONE)
    (b_dir / "zones").mkdir(parents=True)
    a_port, a_admin, b_port, b_admin = free_port(), free_port(), free_port(), free_port()
    # Its own domain prefix: a summoner of the default prefix on this libvirtd
    # (a test run, an operator's) would otherwise destroy its VMs as "removed".
    a = start_summoner(a_dir / "summoner.log", a_port, a_admin, "qemu", "--no-metrics", "--no-snapshot-boot",
                       "--domain-prefix", PREFIX,
                       "--arrowhead-registry", double.http, "--arrowhead-system-name", "summoner-a")
    b = start_summoner(b_dir / "summoner.log", b_port, b_admin, "qemu", "--no-metrics", "--no-on-demand",
                       "--no-arrowhead-publish", "--arrowhead-orchestrator", double.http, "--arrowhead-registry",
                       double.http, "--arrowhead-system-name", "summoner-b", "--arrowhead-domain", "ah.test",
                       "--arrowhead-ttl", "1")
    samples = Samples()
    try:
        wait_admin(a_admin)
        deadline = time.monotonic() + 20
        while HOST not in {e["provider"]["address"] for e in double.control("state")["entries"]}:
            if time.monotonic() > deadline:
                raise RuntimeError(f"A never published {HOST}: see {a_dir / 'summoner.log'}")
            time.sleep(0.1)
        cold(a_admin)
        through_b(a_port, b_port)  # warm-up: B's connection pool, the page cache of the image
        for index in range(rounds):
            order = ("direct", "via_b") if index % 2 == 0 else ("via_b", "direct")
            for kind in order:
                cold(a_admin)
                if kind == "direct":
                    samples.direct.append(direct(a_port))
                else:
                    b_step, whole = through_b(a_port, b_port)
                    samples.b_step.append(b_step)
                    samples.via_b.append(whole)
        cold(a_admin)
    except RuntimeError as exc:
        log = (a_dir / "summoner.log").read_text(errors="replace").splitlines()[-15:]
        raise RuntimeError(f"{exc}; A's log ends:\n" + "\n".join(log)) from exc
    finally:
        stop_summoner(a[0], a[1], HOST)
        subprocess.run(["virsh", "-c", "qemu:///system", "destroy", PREFIX + HOST], capture_output=True)
        b[0].terminate()
        b[0].wait(10)
        b[1].close()
    return samples


def report(samples: Samples) -> list[str]:
    def p50(values: list[float]) -> float:
        return statistics.median(values) * 1000

    added = p50(samples.via_b) - p50(samples.direct)
    paired = [v - d for v, d in zip(samples.via_b, samples.direct, strict=True)]
    return [
        f"{'fed-direct':<10} {p50(samples.direct):8.1f} {max(samples.direct) * 1000:8.1f}   "
        f"(cold query to A, A boots {HOST}; n={len(samples.direct)}, max in the p99 column)",
        f"{'fed-via-B':<10} {p50(samples.via_b):8.1f} {max(samples.via_b) * 1000:8.1f}   "
        "(B orchestrates, answers A's CNAME, the client asks A, A boots)",
        f"{'fed-B-step':<10} {p50(samples.b_step):8.3f} {max(samples.b_step) * 1000:8.3f}   "
        "(B's answer alone, one uncached orchestration each)",
        f"federation: B adds {added:.1f} ms p50 over A direct (paired per round: median "
        f"{statistics.median(paired) * 1000:.1f} ms; target <= 5 ms). Cold boots under TCG vary by more than "
        "that from one to the next, so the B step is the figure that measures B itself.",
    ]


def libvirt_ready() -> bool:
    return subprocess.run(["virsh", "-c", "qemu:///system", "version"], capture_output=True).returncode == 0
