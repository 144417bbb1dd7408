#!/usr/bin/env python3
"""Boot-to-first-answer of an image started with plain QEMU (TCG, no libvirt).

Starts the image N times with the flags summoner uses (summoner.rawqemu),
polls GET <probe path> every 10 ms and prints the time from exec to the
first expected status, then min/median/max, the sizes of the kernel and
initrd it booted, the date and the load average.  This is the floor for
summoner's cold-start latency; the rest is libvirt and DNS.

    .venv/bin/python bench/raw_boot.py hello tasks -n 5
    .venv/bin/python bench/raw_boot.py tests/images/silent/image.toml --deadline 3
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

from summoner.images import ImageManifest, load_manifest  # noqa: E402
from summoner.rawqemu import RawVM  # noqa: E402


def manifest_for(spec: str) -> ImageManifest:
    path = Path(spec)
    if not path.suffix:
        path = ROOT / "images" / spec / "image.toml"
    return load_manifest(path)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("images", nargs="*", default=["hello"], help="image names or image.toml paths")
    ap.add_argument("-n", "--runs", type=int, default=5)
    ap.add_argument("--deadline", type=float, default=None,
                    help="seconds per boot before giving up (default: the manifest's boot_timeout_s)")
    ap.add_argument("--machine", choices=("pc", "q35", "microvm"), help="override boot.machine")
    args = ap.parse_args()

    failed = False
    for spec in args.images:
        manifest = manifest_for(spec)
        if args.machine:
            manifest = replace(manifest, boot=replace(manifest.boot, machine=args.machine))
        if missing := manifest.missing_artifacts():
            print(f"{manifest.name}: not built, missing {', '.join(map(str, missing))}", file=sys.stderr)
            return 2
        times: list[float] = []
        for run in range(1, args.runs + 1):
            with tempfile.NamedTemporaryFile(prefix=f"{manifest.name}-", suffix=".console") as console:
                with RawVM.start(manifest, serial_log=Path(console.name)) as vm:
                    elapsed = vm.wait_ready(args.deadline, interval_s=0.01)
                    if elapsed is None:
                        print(f"{manifest.name} run {run}: no {manifest.probe.expect_status} "
                              f"within the deadline\n{vm.console()[-2000:]}{vm.qemu_errors()}", file=sys.stderr)
                        failed = True
                        continue
                    times.append(elapsed)
                    print(f"{manifest.name} ({manifest.boot.machine}) run {run}: {elapsed * 1000:.0f} ms", flush=True)
        if times:
            print(f"{manifest.name} ({manifest.boot.machine}): n={len(times)} min {min(times) * 1000:.0f} ms, "
                  f"median {statistics.median(times) * 1000:.0f} ms, max {max(times) * 1000:.0f} ms")
        sizes = [f"{what} {path.stat().st_size / 1e6:.2f} MB ({path.stat().st_size} bytes)"
                 for what, path in (("kernel", manifest.boot.kernel), ("initrd", manifest.boot.initrd),
                                    ("disk", manifest.boot.disk)) if path is not None]
        print(f"{manifest.name}: {', '.join(sizes)}")
    print(f"measured {time.strftime('%Y-%m-%d %H:%M %Z')}, {os.cpu_count()} cores, load average "
          + " / ".join(f"{load:.2f}" for load in os.getloadavg()))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
