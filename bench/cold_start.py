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
  (e) where (b) went, per cold boot, from summoner's own "ready in" log line
      (slot, libvirt's domain start -- createXML, or starting a standby's
      vCPUs --, the guest's start to its first good probe) and what is left,
      summoner's share ((b) minus those phases, DNS round trip included);
      the means of summoner_vm_boot_phase_seconds are printed beside them;
  (f) with --standby, the resident memory (VmRSS) of the paused standby QEMU
      and the CPU it used over 5 s;
  (g) stop mode snapshot: restore-to-answer (the guest's state saved to disk,
      its QEMU gone, restored by the query), the save time from summoner's
      "saved to" lines, the file size, and the memory held while stopped
      beside a suspended VM's (its QEMU's VmRSS) -- a snapshotted service must
      have no QEMU process at all;
  (h) golden snapshot (a copy of the image's manifest with snapshot_boot =
      true, in a second summoner; the first runs with --no-snapshot-boot, so
      (b) is a boot): the first query (boot, golden save, restore) and then
      cold query-to-answer from the golden snapshot, beside (a);

and prints the overhead (b) - (a), the date and the load average.  Every
reply is checked (its id, NOERROR, the service's address); a failed one is
counted and printed, never counted as latency, and makes the run exit 1.
Needs libvirtd (scripts/start-libvirt.sh) and built images (make images).
Bounded: --rounds boots of each kind, --warm-queries queries.

    .venv/bin/python bench/cold_start.py [--rounds 5] [--image hello [--image hello-aarch64]]
"""

from __future__ import annotations

import argparse
import json
import os
import re
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
from typing import BinaryIO

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from summoner.images import discover_images, host_arch  # noqa: E402
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
    """One A query over UDP; (seconds, reply), or (seconds, b"") on a timeout."""
    qid = os.getpid() & 0xFFFF
    packet = struct.pack(">HHHHHH", qid, 0x0100, 1, 0, 0, 0)
    packet += b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0" + struct.pack(">HH", 1, 1)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        start = time.perf_counter()
        s.sendto(packet, ("127.0.0.1", port))
        try:
            reply = s.recv(4096)
        except TimeoutError:
            reply = b""
        return time.perf_counter() - start, reply


def rcode(reply: bytes) -> int:
    return reply[3] & 0x0F if len(reply) >= 4 else -1


def answers_address(reply: bytes) -> bool:
    """A response to our query (id, QR bit), NOERROR, with our A record (its 4
    address bytes end the packet)."""
    return (len(reply) >= 12 and struct.unpack(">H", reply[:2])[0] == os.getpid() & 0xFFFF and reply[2] & 0x80
            and rcode(reply) == 0 and struct.unpack(">H", reply[6:8])[0] >= 1
            and reply[-4:] == socket.inet_aton(ADDRESS))


class Checked:
    """Latencies of the replies that were right, and a count of the others."""

    def __init__(self) -> None:
        self.ok: dict[str, list[float]] = {}
        self.failed: dict[str, list[str]] = {}

    def query(self, kind: str, name: str, port: int, timeout: float = 30.0) -> bool:
        elapsed, reply = dns_query(name, port, timeout)
        if answers_address(reply):
            self.ok.setdefault(kind, []).append(elapsed)
            return True
        why = "no reply (timeout)" if not reply else f"rcode {rcode(reply)}, {len(reply)} bytes"
        self.failed.setdefault(kind, []).append(why)
        return False

    def summary(self) -> str:
        kinds = sorted(set(self.ok) | set(self.failed))
        return ", ".join(f"{kind} {len(self.ok.get(kind, [])) + len(self.failed.get(kind, []))} checked / "
                         f"{len(self.failed.get(kind, []))} failed" for kind in kinds)


READY = re.compile(r": ready in (\d+) ms \(([^;]*);")


def ready_phases(log_path: Path) -> list[dict[str, float]]:
    """Phases of every boot, in order, from summoner's "ready in" log lines
    (``ready in 812 ms (slot 0 ms, libvirt 412 ms, guest 380 ms; ...``)."""
    boots = []
    for line in log_path.read_text(errors="replace").splitlines():
        if match := READY.search(line):
            phases = {"total": float(match[1]) / 1000}
            for part in match[2].split(","):
                phase, value, _unit = part.split()
                phases[phase] = float(value) / 1000
            boots.append(phases)
    return boots


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


def qemu_pid(domain: str) -> int | None:
    """The QEMU process running ``domain`` (libvirt names it guest=DOMAIN,...)."""
    found = subprocess.run(["pgrep", "-f", f"guest={domain},"], capture_output=True, text=True).stdout.split()
    return int(found[0]) if len(found) == 1 else None


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def cpu_seconds(pid: int) -> float:
    """utime + stime of every thread of ``pid`` (fields 14 and 15 of /proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


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


def golden_run(manifest, args, work: Path, checked: Checked) -> tuple[list[float], list[float]]:
    """(h): a second summoner on a copy of the manifest with snapshot_boot =
    true; returns (first query, golden cold starts)."""
    image_dir = work / "golden-images" / manifest.name
    image_dir.mkdir(parents=True)
    text = manifest.path.read_text()
    for key, path in (("kernel", manifest.boot.kernel), ("initrd", manifest.boot.initrd)):
        if path is not None:
            text = re.sub(rf'^{key} = "[^"]*"', f'{key} = "{path}"', text, flags=re.M)
    text = re.sub(r"^snapshot_boot = .*$\n", "", text, flags=re.M)
    text = text.replace("[boot]\n", "[boot]\nsnapshot_boot = true\n", 1)
    (image_dir / "image.toml").write_text(text)
    dns_port, admin_port = free_port(), free_port()
    server, log = start_summoner(work / "golden.log", dns_port, admin_port, args.virt_type, "--no-metrics",
                                 "--images", str(work / "golden-images"), "--state-dir", str(work / "golden-state"))
    name = "svc.bench.test"
    try:
        wait_admin(admin_port)
        admin(admin_port, f"/services/{name}/stop?mode=destroy", "POST")
        wait_state(admin_port, name, "stopped")
        checked.query("golden first", name, dns_port)
        for _ in range(args.rounds):
            admin(admin_port, f"/services/{name}/stop?mode=destroy", "POST")
            wait_state(admin_port, name, "stopped")
            time.sleep(0.3)
            checked.query("golden", name, dns_port)
        admin(admin_port, f"/services/{name}/stop?mode=destroy", "POST")
    finally:
        stop_summoner(server, log, name)
    return checked.ok.get("golden first", []), checked.ok.get("golden", [])


def start_summoner(log_path: Path, dns_port: int, admin_port: int, virt_type: str,
                   *extra: str) -> tuple[subprocess.Popen, BinaryIO]:
    """``summoner serve`` on the bench.test zone (beside ``log_path``) with
    the bench's ports, its log going to ``log_path``."""
    log = open(log_path, "wb")
    server = subprocess.Popen(
        [sys.executable, "-m", "summoner", "serve", "--listen", f"127.0.0.1:{dns_port}", "--zones",
         str(log_path.parent / "zones"), "--admin", f"127.0.0.1:{admin_port}", "--virt-type", virt_type, *extra],
        cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    return server, log


def stop_summoner(server: subprocess.Popen, log: BinaryIO, name: str) -> None:
    """Stop it, and the service's VM it leaves running for adoption."""
    server.terminate()
    server.wait(timeout=20)
    log.close()
    subprocess.run(["virsh", "-c", "qemu:///system", "destroy", f"summoner-{name}"], capture_output=True)


def wait_admin(port: int, seconds: float = 20) -> None:
    deadline = time.monotonic() + seconds
    while True:
        try:
            admin(port, "/services")
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--image", action="append", help="image to measure (repeatable: one block each, "
                    "e.g. --image hello --image hello-aarch64; default hello)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--warm-queries", type=int, default=2000)
    ap.add_argument("--virt-type", default="qemu", choices=("qemu", "kvm"))
    ap.add_argument("--standby", action="store_true",
                    help="run summoner with --standby (paused, never-run domains wait for cold queries)")
    args = ap.parse_args()
    code = 0
    for name in args.image or ["hello"]:
        code |= measure(argparse.Namespace(**{**vars(args), "image": name}))
    return code


def measure(args: argparse.Namespace) -> int:
    """Every figure for one image (``args.image``); 1 if a reply was wrong or missing."""
    images = discover_images(ROOT / "images")
    manifest = images[args.image]
    if manifest.boot.arch != host_arch():  # only TCG runs a guest of another architecture
        args.virt_type = "qemu"
    accel = "tcg" if args.virt_type == "qemu" else "kvm"
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
    log_path = work / "summoner.log"
    server, log = start_summoner(
        log_path, dns_port, admin_port, args.virt_type, "--metrics", f"127.0.0.1:{metrics_port}",
        "--images", str(ROOT / "images"), "--log-level", "info",
        "--state-dir", str(work / "state"), "--no-snapshot-boot",  # (b) is a boot; (h) measures golden ones
        *(["--standby"] if args.standby else []))
    name = "svc.bench.test"
    checked = Checked()
    boots: list[dict[str, float]] = []  # phases of each successful cold boot, beside its (b)
    cold_paired: list[float] = []
    rss = cpu = suspended_rss = None
    snapshot_sizes: list[int] = []
    snapshot_left_qemu = 0
    try:
        wait_admin(admin_port)
        admin(admin_port, f"/services/{name}/stop?mode=destroy", "POST")
        for _ in range(args.rounds):
            wait_state(admin_port, name, "stopped", standby=args.standby)
            time.sleep(0.3)  # let the previous QEMU exit fully (it competes for CPU)
            seen = len(ready_phases(log_path))
            if checked.query("cold", name, dns_port):
                # summoner logs "ready in" before it sends the answer (stderr is line-buffered)
                ready = ready_phases(log_path)
                if len(ready) == seen + 1:
                    boots.append(ready[-1])
                    cold_paired.append(checked.ok["cold"][-1])
            admin(admin_port, f"/services/{name}/stop?mode=destroy", "POST")
        phases = phase_means(metrics_port)
        if args.standby:
            wait_state(admin_port, name, "stopped", standby=True)
            time.sleep(1.0)  # the paused QEMU settles
            pid = qemu_pid(f"summoner-{name}")
            if pid is not None:
                rss = rss_mib(pid)
                before = cpu_seconds(pid)
                time.sleep(5.0)
                cpu = (cpu_seconds(pid) - before) / 5.0
        checked.query("boot for warm", name, dns_port)  # boot once more for warm and resume
        for _ in range(args.warm_queries):
            checked.query("warm", name, dns_port, timeout=2.0)
        for _ in range(args.rounds):
            admin(admin_port, f"/services/{name}/stop?mode=suspend", "POST")
            wait_state(admin_port, name, "suspended")
            if suspended_rss is None:
                pid = qemu_pid(f"summoner-{name}")
                suspended_rss = rss_mib(pid) if pid is not None else None
            checked.query("resume", name, dns_port)
        for _ in range(args.rounds):
            admin(admin_port, f"/services/{name}/stop?mode=snapshot", "POST")
            wait_state(admin_port, name, "stopped")
            row = next(r for r in admin(admin_port, "/services") if r["name"] == name)
            if row.get("snapshot_bytes"):
                snapshot_sizes.append(row["snapshot_bytes"])
            snapshot_left_qemu += qemu_pid(f"summoner-{name}") is not None
            time.sleep(0.3)  # like the cold rounds: the saving QEMU has exited
            checked.query("restore", name, dns_port)
        admin(admin_port, f"/services/{name}/stop?mode=destroy", "POST")
    finally:
        stop_summoner(server, log, name)
    golden_first, golden = golden_run(manifest, args, work, checked)

    cold, warm, resume, restore = (checked.ok.get(kind, []) for kind in ("cold", "warm", "resume", "restore"))
    saves = [float(m) / 1000 for m in re.findall(r"saved to \S+ \([\d.]+ MiB in (\d+) ms\)", log_path.read_text())]
    ms = lambda v: f"{v * 1000:8.1f} ms"  # noqa: E731
    spread = lambda v: f"median {ms(statistics.median(v))}  min {ms(min(v))}  max {ms(max(v))}"  # noqa: E731
    print(f"measured {time.strftime('%Y-%m-%d %H:%M %Z')}, {os.cpu_count()} cores, load average "
          + " / ".join(f"{load:.2f}" for load in os.getloadavg()))
    print(f"image {args.image}, accelerator {accel}, {args.rounds} rounds, machine {manifest.boot.machine}"
          f"{', summoner --standby' if args.standby else ''}")
    print(f"replies: {checked.summary()}")
    for kind, whys in checked.failed.items():
        print(f"  failed {kind}: {'; '.join(whys[:5])}{' ...' if len(whys) > 5 else ''}  (log: {log_path})")
    print(f"(a) raw QEMU boot to first HTTP 200   {spread(raw)}")
    if cold:
        print(f"(b) summoner cold query to answer     {spread(cold)}")
    if warm:
        print(f"(c) warm query latency ({len(warm)} good replies)  p50 {pct(warm, 0.5) * 1e6:.0f} us  "
              f"p99 {pct(warm, 0.99) * 1e6:.0f} us")
    if resume:
        print(f"(d) resume from suspend to answer     median {ms(statistics.median(resume))}  "
              f"max {ms(max(resume))}")
    if boots:
        print(f"(e) phases of (b), per cold boot from the 'ready in' lines ({len(boots)} boots):")
        share = [b - sum(p.get(k, 0.0) for k in ("slot", "libvirt", "guest")) for b, p in zip(cold_paired, boots,
                                                                                          strict=True)]
        for label, values in (("slot", [p.get("slot", 0.0) for p in boots]),
                              ("libvirt domain start", [p.get("libvirt", 0.0) for p in boots]),
                              ("guest start to first good probe", [p.get("guest", 0.0) for p in boots]),
                              ("summoner's share ((b) - phases)", share)):
            print(f"    {label:<33} {spread(values)}")
        print("    means from summoner_vm_boot_phase_seconds: "
              + ", ".join(f"{phase} {ms(value).strip()}" for phase, value in sorted(phases.items())))
    if restore:
        held = f"{suspended_rss:.1f} MiB" if suspended_rss is not None else "?"
        print(f"(g) snapshot restore to answer        {spread(restore)}")
        print(f"    save {spread(saves) if saves else 'not logged'}; file "
              + (f"{statistics.median(snapshot_sizes) / 2**20:.1f} MiB" if snapshot_sizes else "?")
              + "; memory held while stopped: "
              + ("none (no QEMU process)" if not snapshot_left_qemu else "A QEMU WAS LEFT")
              + f", suspended: {held} (VmRSS)")
        if cold:
            print(f"    cold boot / restore, medians: {statistics.median(cold) / statistics.median(restore):.2f}x")
    if golden:
        print(f"(h) golden snapshot: first query (boot + save + restore) {ms(golden_first[0]).strip()}" if golden_first
              else "(h) golden snapshot: first query failed")
        print(f"    cold query to answer from it      {spread(golden)}")
        print(f"    golden / raw boot (a), medians: {statistics.median(golden) / statistics.median(raw):.2f}x")
    if args.standby:
        print("(f) one paused standby QEMU: "
              + (f"VmRSS {rss:.1f} MiB, CPU over 5 s {cpu * 100:.2f} % of a core" if rss is not None
                 else "process not found"))
    if cold:
        print(f"overhead (b) - (a), medians: {(statistics.median(cold) - statistics.median(raw)) * 1000:.0f} ms")
    if snapshot_left_qemu:
        print(f"FAILED: a QEMU process was left after {snapshot_left_qemu} snapshot stops")
        return 1
    if checked.failed:
        print(f"FAILED: {sum(map(len, checked.failed.values()))} replies were not the service's address")
        return 1
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
