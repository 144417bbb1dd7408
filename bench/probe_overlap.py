#!/usr/bin/env python3
"""Overlapping vs one-at-a-time readiness probing, with summoner's own probe.

Boots the image with plain QEMU (summoner.rawqemu: the flags and user-mode
port forward summoner's domains use, TCG) and waits for it with
summoner.vm.probe.Probe -- the class summoner's boots use, with the image's
interval and request timeout -- in two modes:

  overlapping   as shipped: an attempt starts every interval even while older
                ones wait (up to MAX_PENDING_ATTEMPTS at once);
  one at a time MAX_PENDING_ATTEMPTS = 1: the next attempt starts at the first
                interval tick after the previous one ended.

Prints, per mode, the time from QEMU's exec to the probe's success (median,
min, max) and the attempts made, the date and the load average.  The modes
alternate which goes first in each round.  Bounded: --rounds boots per mode,
each within the image's boot_timeout_s.

    .venv/bin/python bench/probe_overlap.py [--rounds 5] [--image hello]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from twisted.internet import defer, reactor, task  # noqa: E402

from summoner.deferreds import run_alone  # noqa: E402
from summoner.images import discover_images  # noqa: E402
from summoner.rawqemu import RawVM  # noqa: E402
from summoner.vm import probe as probe_module  # noqa: E402

ADDRESS = "127.0.0.33"
SHIPPED = probe_module.MAX_PENDING_ATTEMPTS
MODES = {"overlapping": SHIPPED, "one at a time": 1}


@defer.inlineCallbacks
def boot_and_probe(manifest, pending: int):
    """(seconds from exec to the first good probe, attempts)."""
    spec = manifest.probe
    probe_module.MAX_PENDING_ATTEMPTS = pending
    vm = RawVM.start(manifest, ADDRESS)
    try:
        probe = probe_module.Probe(reactor, vm.host, vm.port, spec.path, expect_status=spec.expect_status,
                                   interval=spec.interval_ms / 1000, request_timeout=spec.request_timeout_ms / 1000,
                                   deadline=reactor.seconds() + spec.boot_timeout_s - (time.monotonic() - vm.started))
        attempts = yield probe.run()
        return time.monotonic() - vm.started, attempts
    finally:
        probe_module.MAX_PENDING_ATTEMPTS = SHIPPED
        vm.stop()
        vm.stderr.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--image", default="hello")
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    manifest = discover_images(ROOT / "images")[args.image]
    if manifest.missing_artifacts():
        print(f"image {args.image} is not built: make images", file=sys.stderr)
        return 1
    results: dict[str, list[tuple[float, int]]] = {mode: [] for mode in MODES}

    @defer.inlineCallbacks
    def run():
        for round_ in range(args.rounds):
            order = list(MODES) if round_ % 2 == 0 else list(reversed(MODES))
            for mode in order:
                yield task.deferLater(reactor, 0.3, lambda: None)  # the previous QEMU is gone
                results[mode].append((yield boot_and_probe(manifest, MODES[mode])))

    run_alone(run)
    spec = manifest.probe
    print(f"measured {time.strftime('%Y-%m-%d %H:%M %Z')}, {os.cpu_count()} cores, load average "
          + " / ".join(f"{load:.2f}" for load in os.getloadavg()))
    print(f"image {args.image}, plain QEMU (TCG), machine {manifest.boot.machine}, {args.rounds} boots per mode; "
          f"summoner's Probe, interval {spec.interval_ms} ms, request timeout {spec.request_timeout_ms} ms")
    for mode, pending in MODES.items():
        times = [t for t, _ in results[mode]]
        attempts = [a for _, a in results[mode]]
        print(f"{mode:<14} (at most {pending:>2} pending)  exec to first good probe: median "
              f"{statistics.median(times) * 1000:6.0f} ms  min {min(times) * 1000:6.0f} ms  "
              f"max {max(times) * 1000:6.0f} ms;  attempts median {statistics.median(attempts):.0f}")
    late = (statistics.median(t for t, _ in results["one at a time"])
            - statistics.median(t for t, _ in results["overlapping"]))
    print(f"one at a time answers {late * 1000:.0f} ms later (medians)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
