"""Memory under a flood of distinct names: summoner's RSS stays bounded.

Starts ``summoner serve --no-on-demand`` on the example zone plus a wildcard,
sends ``--names`` distinct random names (half NXDOMAIN, half wildcard) with
dnsperf, twice, and prints the resident memory before, after the first
round and after the second.  Compiled fragments are kept per zone, type and
name *length*, and the replay cache holds only existing names (at most
50,000 answers), so the second round must not grow the process.

    .venv/bin/python bench/memory_bound.py [--names 1000000]
"""

from __future__ import annotations

import argparse
import random
import shutil
import string
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.dns_throughput import WILDCARD, wait_answering  # noqa: E402
from tests.conftest import free_port  # noqa: E402


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def names_file(path: Path, count: int, seed: int) -> None:
    rng = random.Random(seed)
    alphabet = string.ascii_lowercase + string.digits
    with path.open("w") as out:
        for i in range(count):
            label = "".join(rng.choices(alphabet, k=rng.randint(6, 30)))
            out.write(f"{label}.example.org A\n" if i % 2 else f"{label}.dyn.example.org A\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--names", type=int, default=1_000_000, help="distinct names per round")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="summoner-memory-"))
    try:
        (work / "zones").mkdir()
        (work / "zones" / "example.org.zone").write_text((ROOT / "zones" / "example.org.zone").read_text() + WILDCARD)
        port = free_port()
        with open(work / "summoner.log", "w") as log:
            server = subprocess.Popen(
                [sys.executable, "-m", "summoner", "serve", "--zones", str(work / "zones"), "--listen",
                 f"127.0.0.1:{port}", "--metrics", f"127.0.0.1:{free_port()}", "--no-on-demand", "--admin", "off",
                 "--log-level", "warn"], stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
        try:
            wait_answering(port)
            print(f"start: {rss_mib(server.pid):.1f} MiB RSS")
            for round_no in (1, 2):
                queries = work / f"names{round_no}.txt"
                names_file(queries, args.names, seed=round_no)
                out = subprocess.run(["dnsperf", "-s", "127.0.0.1", "-p", str(port), "-d", str(queries), "-n", "1",
                                      "-c", "4", "-q", "100", "-O", "suppress=timeouts"],
                                     capture_output=True, text=True, timeout=1800).stdout
                completed = next(line for line in out.splitlines() if "Queries completed" in line).strip()
                print(f"after {round_no * args.names:,} distinct names: {rss_mib(server.pid):.1f} MiB RSS "
                      f"({completed})")
        finally:
            server.terminate()
            server.wait(timeout=20)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
