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
Every DNS reply must be NOERROR with the expected address, and the double's
own counter must show exactly one orchestration per uncached query and none
for the static and cached ones (so "cached" really is a cache hit and
"uncached" really is a call).  Prints the date and the load average, p50/p99
per kind and the overhead summoner adds to an uncached lookup (uncached p50 -
double p50).  Targets: cached as fast as static, overhead <= 5 ms p50.

Then the federation rows (bench/federation.py): a cold query for a service on
a second summoner A made through summoner B against the same query made to A
directly, ``--federation-rounds`` pairs (0 skips them; they need libvirtd and
the built images).  Target: B adds at most 5 ms p50.

    .venv/bin/python bench/arrowhead_lookup.py [-n 200] [--federation-rounds 5]
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

from bench import federation  # noqa: E402
from tests.arrowhead_double import DoubleProcess  # noqa: E402
from tests.conftest import free_port  # noqa: E402


def percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def ask(sock: socket.socket, address: tuple[str, int], name: str, expect: str) -> float:
    """One query; its latency, or RuntimeError unless the reply is NOERROR with
    an A record holding ``expect``."""
    question = DNSRecord.question(name, "A")
    started = time.perf_counter()
    sock.sendto(question.pack(), address)
    reply = DNSRecord.parse(sock.recv(4096))
    elapsed = time.perf_counter() - started
    if (reply.header.id != question.header.id or reply.header.rcode != 0
            or [str(rr.rdata) for rr in reply.rr if rr.rtype == 1] != [expect]):
        raise RuntimeError(f"{name}: unexpected answer (expected A {expect})\n{reply}")
    return elapsed


def provider_address(index: int) -> str:
    return f"10.0.{index // 250}.{index % 250 + 1}"


def arrowhead_args(double: DoubleProcess) -> list[str]:
    """The Arrowhead flags of the summoner under test; the direct reference
    builds its client and stage from the very same flags."""
    return ["--arrowhead-orchestrator", double.http, "--arrowhead-registry", double.http,
            "--arrowhead-domain", "ah.test", "--arrowhead-ttl", "300"]


def direct_latencies(double: DoubleProcess, n: int) -> list[float]:
    """The double asked directly, as summoner's stage asks it: summoner's own
    ArrowheadClient (Twisted Agent over a persistent HTTP/1.1 pool, which the
    double's twisted.web keeps alive), built by summoner.arrowhead.build from
    the same flags, and the body made by the stage's own _form for each name.
    The publisher is built but never started, so nothing else is sent."""
    from twisted.internet import defer, reactor

    from summoner.arrowhead import add_cli_arguments, build, config_from_args
    from summoner.deferreds import run_alone
    parser = argparse.ArgumentParser()
    add_cli_arguments(parser)
    config = config_from_args(parser.parse_args(arrowhead_args(double)))
    arrowhead = build(config, reactor)
    samples: list[float] = []

    @defer.inlineCallbacks
    def run():
        for index in range(-20, n):  # the first 20 warm the connection pool up
            target = arrowhead.stage._target(f"svc{max(index, 0)}.ah.test", None)  # ah.test: in no served zone
            form = arrowhead.stage._form(target)
            started = time.perf_counter()
            providers = yield arrowhead.client.orchestrate(form, config.deadline)
            if index >= 0:
                samples.append(time.perf_counter() - started)
            if [p.address for p in providers] != [provider_address(max(index, 0))]:
                raise RuntimeError(f"svc{index}: unexpected providers {providers}")

    try:
        run_alone(run)
    except Exception as exc:
        raise RuntimeError(f"direct orchestration call failed: {exc!r}") from exc
    if len(samples) != n:
        raise RuntimeError(f"{n - len(samples)} direct orchestration calls did not complete")
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=200, help="queries per kind (default 200)")
    parser.add_argument("--federation-rounds", type=int, default=5,
                        help="cold queries per path in the federation rows (default 5; 0 skips them)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="arrowhead-bench-"))
    double = DoubleProcess(work / "pki").start()
    summoner = None
    try:
        # Latency, not authorization, is measured: the double lets every
        # registered consumer through instead of asking for intra-cloud rules.
        double.control("knobs", {"enforce_authorization": False})
        for index in range(args.n):
            double.register_provider(f"svc{index}", provider_address(index), 8000 + index, authorize=None)
        double.register_provider("hot", "10.9.9.9", 80, authorize=None)
        port = free_port()
        shutil.copytree(ROOT / "zones", work / "zones")
        summoner = subprocess.Popen(
            [sys.executable, "-m", "summoner", "serve", "--listen", f"127.0.0.1:{port}", "--zones",
             str(work / "zones"), "--no-metrics", "--log-level", "warn", *arrowhead_args(double)],
            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ})
        address = ("127.0.0.1", port)
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.settimeout(5)
        deadline = time.monotonic() + 20
        while True:  # until summoner answers and its system is registered
            try:
                ask(sock, address, "hot.ah.test", "10.9.9.9")
                break
            except (OSError, RuntimeError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        static_address = "127.0.0.2"  # www.example.org in zones/example.org.zone
        for _ in range(50):  # warm-up
            ask(sock, address, "www.example.org", static_address)
            ask(sock, address, "hot.ah.test", "10.9.9.9")
        orchestrations = [double.counters().get("orchestration", 0)]
        static = [ask(sock, address, "www.example.org", static_address) for _ in range(args.n)]
        cached = [ask(sock, address, "hot.ah.test", "10.9.9.9") for _ in range(args.n)]
        orchestrations.append(double.counters().get("orchestration", 0))
        uncached = [ask(sock, address, f"svc{index}.ah.test", provider_address(index)) for index in range(args.n)]
        orchestrations.append(double.counters().get("orchestration", 0))
        direct = direct_latencies(double, args.n)
        orchestrations.append(double.counters().get("orchestration", 0))
        calls = [after - before for before, after in zip(orchestrations, orchestrations[1:], strict=False)]
        if calls != [0, args.n, args.n + 20]:
            raise RuntimeError(f"orchestration calls seen by the double (static+cached, uncached, direct): {calls}, "
                               f"expected [0, {args.n}, {args.n + 20}]")
        print(f"measured {time.strftime('%Y-%m-%d %H:%M %Z')}, {os.cpu_count()} cores, load average "
              + " / ".join(f"{load:.2f}" for load in os.getloadavg()))
        print(f"{'kind':<10} {'p50 ms':>8} {'p99 ms':>8}   (n={args.n} each, sequential, loopback UDP; every reply "
              f"NOERROR with the expected address; orchestrations seen by the double: 0 static+cached, "
              f"{calls[1]} uncached, {calls[2]} direct incl. 20 warm-up)")
        for kind, samples in (("static", static), ("cached", cached), ("uncached", uncached), ("double", direct)):
            print(f"{kind:<10} {percentile(samples, 0.5) * 1000:8.3f} {percentile(samples, 0.99) * 1000:8.3f}")
        overhead = statistics.median(uncached) - statistics.median(direct)
        print(f"added latency over the double's own response, p50: {overhead * 1000:.3f} ms "
              f"(includes the DNS round trip, static p50 {statistics.median(static) * 1000:.3f} ms)")
        if args.federation_rounds > 0:
            if not federation.libvirt_ready():
                raise RuntimeError("the federation rows need libvirtd: run scripts/start-libvirt.sh "
                                   "(or --federation-rounds 0)")
            for line in federation.report(federation.federation_row(double, work, args.federation_rounds)):
                print(line)
    finally:
        if summoner is not None:
            summoner.terminate()
            summoner.wait(10)
        double.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
