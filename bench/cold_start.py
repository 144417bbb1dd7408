#!/usr/bin/env python3
"""Cold-start benchmark: what summoning costs on top of booting.

In one run, on the same image (default ``hello``) and accelerator (TCG unless
``--virt-type kvm``), it measures:

  (a) raw boot-to-first-HTTP-200: the image started directly with QEMU
      (same machine, memory, kernel, initrd, command line and user-mode
      port forward as summoner uses), probed every 20 ms with overlapping
      attempts, as summoner probes;
  (b) summoner cold query-to-answer: DNS query for a stopped service until
      the A answer arrives (the answer goes out when the probe succeeds);
  (c) warm query latency p50/p99 (service running, answer from cache);
  (d) resume-from-suspend query-to-answer;
  (e) where (b) went, from summoner's own boot-phase metric
      (summoner_vm_boot_phase_seconds): libvirt's domain start, the guest's
      start to its first good probe, and what is left, summoner's share;
  (f) with --standby, the resident memory of the paused standby QEMU;

and prints the overhead (b) - (a).  Every reply's rcode and address is
checked; a wrong one fails the run rather than counting as latency.  Needs libvirtd (scripts/start-libvirt.sh)
and built images (make images).  Bounded: --rounds boots of each kind.

    .venv/bin/python bench/cold_start.py [--rounds 5] [--image hello]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from summoner.images import discover_images  # noqa: E402
from summoner.rawqemu import RawVM  # noqa: E402
from tests.conftest import free_port  # noqa: E402

ADDRESS = "127.0.0.31"
RAW_ADDRESS = "127.0.0.32"


def raw_boot(manifest, accel: str) -> float:
    """(a): QEMU started directly with the flags summoner's domains use, probed
    the way summoner probes (an attempt every 20 ms, overlapping)."""
    with RawVM.start(manifest, RAW_ADDRESS, accel=accel) as vm:
        took = vm.wait_ready(deadline_s=30, interval_s=0.02)
    if took is None:
        raise RuntimeError("raw boot did not answer within 30 s")
    return took


def dns_query(name: str, port: int, timeout: float = 30.0) -> tuple[float, bytes]:
    qid = os.getpid() & 0xFFFF
    packet = struct.pack(">HHHHHH", qid, 0x0100, 1, 0, 0, 0)
    packet += b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0" + struct.pack(">HH", 1, 1)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        start = time.perf_counter()
        s.sendto(packet, ("127.0.0.1", port))
        reply = s.recv(4096)
        return time.perf_counter() - start, reply


def rcode(reply: bytes) -> int:
    return reply[3] & 0x0F


def answers_address(reply: bytes) -> bool:
    """NOERROR with our A record (its 4 address bytes end the packet)."""
    return rcode(reply) == 0 and struct.unpack(">H", reply[6:8])[0] >= 1 and reply[-4:] == socket.inet_aton(ADDRESS)


def phase_means(metrics_port: int) -> dict[str, float]:
    """Mean seconds per boot phase so far, from summoner's /metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as reply:
        text = reply.read().decode()
    sums: dict[str, float] = {}
    counts: dict[str, float] = {}
    for line in text.splitlines():
        for kind, into in (("_sum", sums), ("_count", counts)):
            prefix = f"summoner_vm_boot_phase_seconds{kind}{{phase=\""
            if line.startswith(prefix):
                phase = line[len(prefix):].split('"', 1)[0]
                into[phase] = float(line.rsplit(" ", 1)[1])
    return {phase: sums[phase] / counts[phase] for phase in sums if counts.get(phase)}


def standby_rss_mib(domain: str) -> float | None:
    """VmRSS of the QEMU process running ``domain`` (libvirt names it guest=...)."""
    found = subprocess.run(["pgrep", "-f", f"guest={domain},"], capture_output=True, text=True).stdout.split()
    if not found:
        return None
    for line in Path(f"/proc/{found[0]}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return None


def admin(port: int, path: str, method: str = "GET"):
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method,
                                 data=b"" if method == "POST" else None)
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return json.load(r)
    except urllib.error.HTTPError as exc:
        return json.load(exc)


def wait_state(port: int, name: str, state: str, timeout: float = 20, standby: bool = False) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rows = {r["name"]: r for r in admin(port, "/services")}
        if rows[name]["state"] == state and (rows[name].get("standby") or not standby):
            return
        time.sleep(0.05)
    raise RuntimeError(f"{name} not {state}: {rows[name]}")


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--image", default="hello")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--warm-queries", type=int, default=2000)
    ap.add_argument("--virt-type", default="qemu", choices=("qemu", "kvm"))
    ap.add_argument("--standby", action="store_true",
                    help="run summoner with --standby (paused, never-run domains wait for cold queries)")
    args = ap.parse_args()
    accel = "tcg" if args.virt_type == "qemu" else "kvm"
    images = discover_images(ROOT / "images")
    manifest = images[args.image]
    if manifest.missing_artifacts():
        print(f"image {args.image} is not built: make images", file=sys.stderr)
        return 1

    raw = [raw_boot(manifest, accel) for _ in range(args.rounds)]

    work = Path(tempfile.mkdtemp(prefix="summoner-bench-"))
    (work / "zones").mkdir()
    (work / "zones" / "bench.test.zone").write_text(
        "$ORIGIN bench.test.\n$TTL 300\n@ IN SOA ns1 hostmaster 1 3600 600 86400 60\n  IN NS ns1\n"
        f"ns1 IN A 127.0.0.1\nsvc IN A {ADDRESS}\n_summoner.svc IN TXT \"image={args.image}\"\n")
    dns_port, metrics_port, admin_port = free_port(), free_port(), free_port()
    log = open(work / "summoner.log", "wb")
    server = subprocess.Popen(
        [sys.executable, "-m", "summoner", "serve", "--listen", f"127.0.0.1:{dns_port}", "--zones",
         str(work / "zones"), "--metrics", f"127.0.0.1:{metrics_port}", "--admin", f"127.0.0.1:{admin_port}",
         "--virt-type", args.virt_type, "--images", str(ROOT / "images"), "--log-level", "warn",
         *(["--standby"] if args.standby else [])],
        cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    name = "svc.bench.test"
    cold: list[float] = []
    resume: list[float] = []
    warm: list[float] = []
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                admin(admin_port, "/services")
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        admin(admin_port, f"/services/{name}/stop?mode=destroy", "POST")
        for _ in range(args.rounds):
            wait_state(admin_port, name, "stopped", standby=args.standby)
            time.sleep(0.3)  # let the previous QEMU exit fully (it competes for CPU)
            elapsed, reply = dns_query(name, dns_port)
            assert answers_address(reply), f"cold query failed (rcode {rcode(reply)}), see {work}/summoner.log"
            cold.append(elapsed)
            admin(admin_port, f"/services/{name}/stop?mode=destroy", "POST")
        phases = phase_means(metrics_port)
        if args.standby:
            wait_state(admin_port, name, "stopped", standby=True)
            rss = standby_rss_mib(f"summoner-{name}")
        elapsed, reply = dns_query(name, dns_port)  # boot once more for warm and resume
        bad = 0
        for _ in range(args.warm_queries):
            elapsed, reply = dns_query(name, dns_port)
            if answers_address(reply):
                warm.append(elapsed)
            else:
                bad += 1
        assert not bad, f"{bad} of {args.warm_queries} warm replies were not the service's address"
        for _ in range(args.rounds):
            admin(admin_port, f"/services/{name}/stop?mode=suspend", "POST")
            wait_state(admin_port, name, "suspended")
            elapsed, reply = dns_query(name, dns_port)
            assert answers_address(reply), f"resume query failed (rcode {rcode(reply)})"
            resume.append(elapsed)
        admin(admin_port, f"/services/{name}/stop?mode=destroy", "POST")
    finally:
        server.terminate()
        server.wait(timeout=20)
        log.close()
        subprocess.run(["virsh", "-c", "qemu:///system", "destroy", f"summoner-{name}"], capture_output=True)

    ms = lambda v: f"{v * 1000:8.1f} ms"  # noqa: E731
    print(f"image {args.image}, accelerator {accel}, {args.rounds} rounds, machine {manifest.boot.machine}"
          f"{', summoner --standby' if args.standby else ''}")
    print(f"(a) raw QEMU boot to first HTTP 200   median {ms(statistics.median(raw))}  "
          f"min {ms(min(raw))}  max {ms(max(raw))}")
    print(f"(b) summoner cold query to answer     median {ms(statistics.median(cold))}  "
          f"min {ms(min(cold))}  max {ms(max(cold))}")
    print(f"(c) warm query latency ({len(warm)} queries)  p50 {pct(warm, 0.5) * 1e6:.0f} us  "
          f"p99 {pct(warm, 0.99) * 1e6:.0f} us")
    print(f"(d) resume from suspend to answer     median {ms(statistics.median(resume))}  "
          f"max {ms(max(resume))}")
    libvirt, guest = phases.get("libvirt", 0.0), phases.get("guest", 0.0)
    print(f"(e) phases of (b), means: slot {ms(phases.get('slot', 0.0))}, libvirt domain start {ms(libvirt)}, "
          f"guest start to first good probe {ms(guest)}; summoner's own share "
          f"(mean of (b) - libvirt - guest) {ms(statistics.mean(cold) - libvirt - guest)}")
    if args.standby:
        print("(f) resident memory of one paused standby QEMU: "
              + (f"{rss:.1f} MiB" if rss is not None else "not found"))
    print(f"overhead (b) - (a), medians: {(statistics.median(cold) - statistics.median(raw)) * 1000:.0f} ms")
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
