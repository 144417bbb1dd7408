"""Latency of Arrowhead-resolved names through ``summoner serve``.

Starts the Arrowhead double and summoner (both on loopback), then measures,
one query at a time over UDP:
  * static    -- a static zone record (the floor for any DNS answer here);
  * cached    -- a remote name already in the Arrowhead stage's cache;
  * uncached  -- a remote name never asked before (one orchestration each);
  * double    -- the double's own orchestration response time, asked directly
                 by summoner's own Arrowhead client (Twisted Agent, keep-alive
                 pool) with the very request body the stage builds for that
                 name: the reference costs what summoner's call costs.
Prints p50/p99 per kind and the overhead summoner adds to an uncached lookup
(uncached p50 - double p50).  Targets: cached as fast as static, overhead
<= 5 ms p50.

    .venv/bin/python bench/arrowhead_lookup.py [-n 200]
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from dnslib import DNSRecord

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.arrowhead_double import DoubleProcess  # noqa: E402
from tests.conftest import free_port  # noqa: E402


def percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def ask(sock: socket.socket, address: tuple[str, int], name: str) -> float:
    packet = DNSRecord.question(name, "A").pack()
    started = time.perf_counter()
    sock.sendto(packet, address)
    reply = DNSRecord.parse(sock.recv(4096))
    elapsed = time.perf_counter() - started
    if reply.header.rcode != 0 or not reply.rr:
        raise RuntimeError(f"{name}: unexpected answer\n{reply}")
    return elapsed


def direct_latencies(double: DoubleProcess, n: int) -> list[float]:
    """The double asked directly, as summoner's stage asks it (same client, same body)."""
    import argparse as _argparse

    from twisted.internet import defer, reactor

    from summoner.arrowhead import add_cli_arguments, build, config_from_args
    parser = _argparse.ArgumentParser()
    add_cli_arguments(parser)
    config = config_from_args(parser.parse_args(["--arrowhead-orchestrator", double.http,
                                                 "--arrowhead-domain", "ah.test", "--arrowhead-ttl", "300"]))
    arrowhead = build(config, lambda key: None, reactor)
    samples: list[float] = []

    @defer.inlineCallbacks
    def run():
        try:
            for index in range(-20, n):  # the first 20 warm the connection pool up
                target = arrowhead.stage._target(f"svc{max(index, 0)}.ah.test")
                form = arrowhead.stage._form(target)
                started = time.perf_counter()
                providers = yield arrowhead.client.orchestrate(form, 5.0)
                if index >= 0:
                    samples.append(time.perf_counter() - started)
                    if not providers:
                        raise RuntimeError(f"svc{index}: the double found no provider")
        finally:
            reactor.stop()
    reactor.callWhenRunning(run)
    reactor.run()
    if len(samples) != n:
        raise RuntimeError("direct orchestration calls failed (see above)")
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=200, help="queries per kind (default 200)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="arrowhead-bench-"))
    double = DoubleProcess(work / "pki").start()
    summoner = None
    try:
        for index in range(args.n):
            double.register_provider(f"svc{index}", f"10.0.{index // 250}.{index % 250 + 1}", 8000 + index)
        double.register_provider("hot", "10.9.9.9", 80)
        port = free_port()
        shutil.copytree(ROOT / "zones", work / "zones")
        summoner = subprocess.Popen(
            [sys.executable, "-m", "summoner", "serve", "--listen", f"127.0.0.1:{port}", "--zones",
             str(work / "zones"), "--no-metrics", "--log-level", "warn",
             "--arrowhead-orchestrator", double.http, "--arrowhead-registry", double.http,
             "--arrowhead-domain", "ah.test", "--arrowhead-ttl", "300"],
            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ})
        address = ("127.0.0.1", port)
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.settimeout(5)
        deadline = time.monotonic() + 20
        while True:  # until summoner answers and its system is registered
            try:
                ask(sock, address, "hot.ah.test")
                break
            except (OSError, RuntimeError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        for _ in range(50):  # warm-up
            ask(sock, address, "www.example.org")
            ask(sock, address, "hot.ah.test")
        static = [ask(sock, address, "www.example.org") for _ in range(args.n)]
        cached = [ask(sock, address, "hot.ah.test") for _ in range(args.n)]
        uncached = [ask(sock, address, f"svc{index}.ah.test") for index in range(args.n)]
        direct = direct_latencies(double, args.n)
        print(f"{'kind':<10} {'p50 ms':>8} {'p99 ms':>8}   (n={args.n} each, sequential, loopback UDP)")
        for kind, samples in (("static", static), ("cached", cached), ("uncached", uncached), ("double", direct)):
            print(f"{kind:<10} {percentile(samples, 0.5) * 1000:8.3f} {percentile(samples, 0.99) * 1000:8.3f}")
        overhead = statistics.median(uncached) - statistics.median(direct)
        print(f"added latency over the double's own response, p50: {overhead * 1000:.3f} ms "
              f"(includes the DNS round trip, static p50 {statistics.median(static) * 1000:.3f} ms)")
    finally:
        if summoner is not None:
            summoner.terminate()
            summoner.wait(10)
        double.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
