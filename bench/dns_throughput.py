"""DNS throughput and latency: summoner against NSD 4.6 serving the same zone.

Three query mixes, each answered by both servers in the same run:

- repeated: one name over and over (``www.example.org A``);
- random NXDOMAIN: a random label under the apex (``<random>.example.org A``),
  the "random subdomain" pattern of water-torture attacks;
- random wildcard: a random label under a wildcard (``<random>.dyn.example.org A``).

dnsperf runs each mix against each server for ``--seconds`` as fast as the
server answers, alternating which server goes first, over ``--rounds``
rounds; the table gives min/median/max qps and the ratio of the medians.
Every reply's rcode is counted (dnsperf's "Response codes" line): a reply
with an unexpected rcode, or a lost query, is reported and makes the run
fail, since fast errors are not throughput.  The p99 latency comes from a
second, paced run per mix (``-Q --latency-qps``, ``-v`` so that every reply's
latency is seen): at saturation a p99 only measures the queue.

summoner runs as an operator would run it for static data: ``--no-on-demand``,
metrics on.  NSD runs with RRL off.  ``--workers 1,2`` (the default) makes one
table per process count: summoner ``--workers N`` against NSD
``server-count: N``.  Everything is on loopback; every run is bounded by
``--seconds``.

    usage: .venv/bin/python bench/dns_throughput.py [--seconds 6] [--rounds 3] [--clients 4] [--workers 1,2]
"""

from __future__ import annotations

import argparse
import os
import random
import re
import shutil
import statistics
import string
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.conftest import free_port  # noqa: E402 (after the path set-up)

MIXES = {  # name -> (query line maker, expected rcode)
    "repeated": (lambda rand: "www.example.org A", "NOERROR"),
    "random NXDOMAIN": (lambda rand: f"{rand}.example.org A", "NXDOMAIN"),
    "random wildcard": (lambda rand: f"{rand}.dyn.example.org A", "NOERROR"),
}
WILDCARD = "*.dyn IN A 127.0.0.9\n"


@dataclass
class Run:
    qps: float
    p99_ms: float
    unexpected: int
    lost: int


@dataclass
class Cell:
    runs: list[Run] = field(default_factory=list)

    def qps(self) -> list[float]:
        return sorted(r.qps for r in self.runs)


def query_file(work: Path, mix: str, names: int) -> Path:
    make, _rcode = MIXES[mix]
    rng = random.Random(mix)
    path = work / f"{mix.replace(' ', '_')}.txt"
    count = 1 if mix == "repeated" else names
    path.write_text("".join(make("".join(rng.choices(string.ascii_lowercase + string.digits, k=12))) + "\n"
                            for _ in range(count)))
    return path


def dnsperf(port: int, queries: Path, expected: str, seconds: float, clients: int, latency_qps: int) -> Run:
    out = subprocess.run(["dnsperf", "-s", "127.0.0.1", "-p", str(port), "-d", str(queries), "-l", str(seconds),
                          "-c", str(clients), "-q", "100", "-O", "suppress=timeouts"],
                         capture_output=True, text=True, timeout=seconds + 60).stdout
    qps = float(re.search(r"Queries per second:\s+([\d.]+)", out).group(1))
    lost = int(re.search(r"Queries lost:\s+(\d+)", out).group(1))
    codes = dict(re.findall(r"([A-Z]+) (\d+) \(", re.search(r"Response codes:(.*)", out).group(1)))
    unexpected = sum(int(n) for code, n in codes.items() if code != expected)
    paced = subprocess.run(["dnsperf", "-s", "127.0.0.1", "-p", str(port), "-d", str(queries), "-l", "3",
                            "-c", str(clients), "-Q", str(latency_qps), "-v", "-O", "suppress=timeouts"],
                           capture_output=True, text=True, timeout=60).stdout
    latencies = sorted(float(line.split()[-1]) for line in paced.splitlines() if line.startswith("> "))
    unexpected += sum(1 for line in paced.splitlines() if line.startswith("> ") and line.split()[1] != expected)
    p99 = latencies[int(len(latencies) * 0.99)] * 1000 if latencies else float("nan")
    return Run(qps, p99, unexpected, lost)


def wait_answering(port: int) -> None:
    for _ in range(200):
        done = subprocess.run(["dig", "+short", "+time=1", "+tries=1", "-p", str(port), "@127.0.0.1",
                               "www.example.org", "A"], capture_output=True, text=True)
        if done.returncode == 0 and done.stdout.strip() == "127.0.0.2":  # dig prints its errors on stdout too
            return
        time.sleep(0.1)
    raise SystemExit(f"server on port {port} did not answer")


def start_summoner(work: Path, root: Path, workers: int) -> tuple[subprocess.Popen, int]:
    port = free_port()
    args = [sys.executable, "-m", "summoner", "serve", "--zones", str(work / "zones"), "--listen",
            f"127.0.0.1:{port}", "--metrics", f"127.0.0.1:{free_port()}", "--no-on-demand", "--admin", "off",
            "--log-level", "warn", *(["--workers", str(workers)] if workers > 1 else [])]
    # -m summoner from ``root``: another checkout (--summoner-root) runs its own code
    proc = subprocess.Popen(args, stdout=open(work / "summoner.log", "w"), stderr=subprocess.STDOUT, cwd=root)
    wait_answering(port)
    if workers > 1:
        time.sleep(2.0)  # the workers start after the primary answers
    return proc, port


def start_nsd(work: Path, servers: int) -> tuple[subprocess.Popen, int]:
    port = free_port()
    conf = work / "nsd.conf"
    conf.write_text(f"""server:
  ip-address: 127.0.0.1@{port}
  server-count: {servers}
  username: ""
  chroot: ""
  zonesdir: "{work}"
  database: ""
  zonelistfile: "{work}/zone.list"
  xfrdfile: "{work}/xfrd.state"
  pidfile: "{work}/nsd.pid"
  logfile: "{work}/nsd.log"
  verbosity: 0
  rrl-ratelimit: 0
  minimal-responses: yes
remote-control:
  control-enable: no
zone:
  name: example.org
  zonefile: "{work}/zones/example.org.zone"
""")
    proc = subprocess.Popen(["nsd", "-d", "-c", str(conf)], stdout=open(work / "nsd.out", "w"),
                            stderr=subprocess.STDOUT)
    wait_answering(port)
    return proc, port


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=6.0, help="length of each dnsperf run")
    parser.add_argument("--rounds", type=int, default=3, help="rounds (servers alternate who goes first)")
    parser.add_argument("--clients", type=int, default=4, help="dnsperf clients")
    parser.add_argument("--names", type=int, default=200_000, help="distinct random names per random mix")
    parser.add_argument("--latency-qps", type=int, default=5000, help="pace of the p99 latency runs")
    parser.add_argument("--summoner-root", type=Path, default=ROOT,
                        help="checkout whose summoner to run (default this one), e.g. an older commit to compare")
    parser.add_argument("--workers", default="1,2", help="process counts to compare, comma-separated "
                        "(summoner --workers N against NSD server-count N)")
    args = parser.parse_args()
    for tool in ("dnsperf", "nsd", "dig"):
        if not shutil.which(tool):
            raise SystemExit(f"{tool} is missing: run scripts/install.sh")
    work = Path(tempfile.mkdtemp(prefix="summoner-bench-"))
    procs: list[subprocess.Popen] = []
    try:
        (work / "zones").mkdir()
        zone = (ROOT / "zones" / "example.org.zone").read_text() + WILDCARD
        (work / "zones" / "example.org.zone").write_text(zone)
        files = {mix: query_file(work, mix, args.names) for mix in MIXES}
        code = 0
        for workers in (int(n) for n in args.workers.split(",")):
            summoner, s_port = start_summoner(work, args.summoner_root, workers)
            nsd, n_port = start_nsd(work, workers)
            procs += [summoner, nsd]
            print(f"\ndnsperf -c {args.clients} -q 100 -l {args.seconds:g}, {args.rounds} rounds, "
                  f"{os.cpu_count()} cores, loopback; summoner --no-on-demand --workers {workers} "
                  f"({args.summoner_root}), NSD server-count {workers}, RRL off", flush=True)
            code |= compare(args, files, {"summoner": s_port, "nsd": n_port})
            for proc in (summoner, nsd):
                proc.terminate()
                proc.wait(timeout=20)
        if code:
            print("--- summoner log (tail):\n" + (work / "summoner.log").read_text()[-3000:])
        return code
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
                proc.wait(timeout=20)
        shutil.rmtree(work, ignore_errors=True)


def compare(args: argparse.Namespace, files: dict[str, Path], servers: dict[str, int]) -> int:
    cells = {(mix, server): Cell() for mix in MIXES for server in servers}
    for round_no in range(args.rounds):
        order = list(servers) if round_no % 2 == 0 else list(reversed(servers))
        for mix in MIXES:
            for server in order:
                run = dnsperf(servers[server], files[mix], MIXES[mix][1], args.seconds, args.clients,
                              args.latency_qps)
                cells[(mix, server)].runs.append(run)
                print(f"  round {round_no + 1} {mix:16} {server:8} {run.qps:9.0f} qps  p99 {run.p99_ms:.2f} ms"
                      f"  unexpected rcodes {run.unexpected}  lost {run.lost}", flush=True)
    return report(cells, servers)


def report(cells: dict[tuple[str, str], Cell], servers: dict[str, int]) -> int:
    print("\n| mix | summoner qps (min / median / max) | NSD qps (min / median / max) | ratio of medians "
          "| p99 at the paced rate, summoner / NSD |")
    print("|---|---|---|---|---|")
    bad = 0
    for mix in MIXES:
        s, n = cells[(mix, "summoner")], cells[(mix, "nsd")]
        ratio = statistics.median(s.qps()) / statistics.median(n.qps())
        p99 = [statistics.median(r.p99_ms for r in c.runs) for c in (s, n)]
        print(f"| {mix} | {' / '.join(f'{q:,.0f}' for q in (s.qps()[0], statistics.median(s.qps()), s.qps()[-1]))} "
              f"| {' / '.join(f'{q:,.0f}' for q in (n.qps()[0], statistics.median(n.qps()), n.qps()[-1]))} "
              f"| {ratio:.2f} | {p99[0]:.2f} ms / {p99[1]:.2f} ms |")
        bad += sum(r.unexpected + r.lost for c in (s, n) for r in c.runs)
    if bad:
        print(f"\nFAILED: {bad} replies with an unexpected rcode or lost queries (see the rounds above)")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
