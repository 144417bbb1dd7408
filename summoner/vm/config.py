"""Settings of the on-demand part and the CLI flags that set them.

Tests: tests/test_configfile.py
"""

from __future__ import annotations

import argparse
import re
from dataclasses import dataclass
from pathlib import Path

from summoner.argtypes import positive_int
from summoner.images import STOP_MODES

VIRT_TYPES = ("auto", "kvm", "qemu")
NETWORK_MODES = ("user", "bridge")


@dataclass(frozen=True)
class OnDemandConfig:
    # Several directories may hold images (e.g. images/ and tests/images/).
    images: tuple[Path, ...] = (Path("images"),)
    libvirt_uri: str = "qemu:///system"
    virt_type: str = "auto"
    network: str = "user"
    bridge: str = "br0"
    # Bridge mode hands the guest its zone address on the kernel command
    # line; the gateway and netmask of that segment come from here.
    bridge_gateway: str = ""
    bridge_netmask: str = "255.255.255.0"
    # IPv6 (hosts with an AAAA): the prefix length of the segment, and a
    # default router for guests ("" none: only the segment reaches them)
    bridge_ipv6_prefix: int = 64
    bridge_ipv6_gateway: str = ""
    machine: str = "pc"  # when the image's manifest names none
    max_vms: int = 16
    memory_budget_mib: int = 4096
    max_concurrent_boots: int = 2
    answer_ttl: int = 10
    reap_interval: float = 1.0
    # A VM may be reaped to make room only after this much idleness, so that a
    # burst of queries for N+1 services does not make them evict each other.
    evict_min_idle: float = 5.0
    retry_backoff: float = 5.0
    retry_backoff_max: float = 300.0
    # Overrides of image defaults for every service (None: the image decides).
    boot_timeout: float | None = None
    idle_timeout: float | None = None
    stop_mode: str | None = None
    domain_prefix: str = "summoner-"
    # Keep a paused, never-run domain ready for each stopped service, so a
    # cold query skips libvirt's domain start-up (the libvirt boot phase) and only waits
    # for the guest's own boot.
    standby: bool = False
    # Stop mode "snapshot": where saved guest states live, and how much disk
    # they may take together.
    state_dir: Path = Path("/var/lib/summoner")
    snapshot_budget_mib: int = 2048
    # Honour the images' snapshot_boot (cold starts from a golden snapshot).
    snapshot_boot: bool = True


def _domain_prefix(text: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*-", text):
        raise argparse.ArgumentTypeError(f"{text!r}: letters, digits, '_', '.' and '-', ending in '-'")
    return text


def add_cli_arguments(parser: argparse.ArgumentParser) -> None:
    d = OnDemandConfig()
    g = parser.add_argument_group("on-demand VMs")
    g.add_argument("--images", type=Path, action="append", default=None, metavar="DIR",
                   help="directory of image folders (NAME/image.toml); repeatable (default: images)")
    g.add_argument("--libvirt-uri", default=d.libvirt_uri, help="libvirt connection URI (default: %(default)s)")
    g.add_argument("--virt-type", choices=VIRT_TYPES, default=d.virt_type,
                   help="kvm, qemu (TCG) or auto: KVM if it works, else TCG (default: %(default)s)")
    g.add_argument("--network", choices=NETWORK_MODES, default=d.network,
                   help="user: QEMU user networking on the zone's 127.x address; bridge: tap on --bridge "
                        "(default: %(default)s)")
    g.add_argument("--bridge", default=d.bridge, help="bridge for --network bridge (default: %(default)s)")
    g.add_argument("--bridge-gateway", default=d.bridge_gateway, metavar="ADDR",
                   help="gateway given to guests in bridge mode")
    g.add_argument("--bridge-netmask", default=d.bridge_netmask, metavar="MASK",
                   help="netmask given to guests in bridge mode (default: %(default)s)")
    g.add_argument("--bridge-ipv6-prefix", type=int, choices=range(1, 129), default=d.bridge_ipv6_prefix,
                   metavar="BITS", help="prefix length of the IPv6 address given to guests whose host has an "
                                        "AAAA record, in bridge mode (default: %(default)s)")
    g.add_argument("--bridge-ipv6-gateway", default=d.bridge_ipv6_gateway, metavar="ADDR",
                   help="IPv6 default router given to those guests (default: none, the segment only)")
    g.add_argument("--machine", default=d.machine,
                   help="QEMU machine type for images that name none (default: %(default)s)")
    g.add_argument("--max-vms", type=positive_int, default=d.max_vms,
                   help="most VMs running or suspended at once (default: %(default)s)")
    g.add_argument("--memory-budget-mib", type=positive_int, default=d.memory_budget_mib,
                   help="total guest memory allowed (default: %(default)s)")
    g.add_argument("--max-concurrent-boots", type=positive_int, default=d.max_concurrent_boots,
                   help="boots in progress at once; more wait their turn (default: %(default)s)")
    g.add_argument("--answer-ttl", type=int, default=d.answer_ttl,
                   help="TTL of on-demand A/AAAA answers unless the zone says ttl= (default: %(default)s)")
    g.add_argument("--reap-interval", type=float, default=d.reap_interval,
                   help="seconds between idle checks (default: %(default)s)")
    g.add_argument("--evict-min-idle", type=float, default=d.evict_min_idle,
                   help="idle seconds before a VM may be reaped to make room (default: %(default)s)")
    g.add_argument("--retry-backoff", type=float, default=d.retry_backoff,
                   help="seconds before retrying a failed boot, doubling per failure (default: %(default)s)")
    g.add_argument("--retry-backoff-max", type=float, default=d.retry_backoff_max,
                   help="cap of the retry back-off (default: %(default)s)")
    g.add_argument("--boot-timeout", type=float, default=None,
                   help="override every image's boot deadline (seconds)")
    g.add_argument("--idle-timeout", type=float, default=None,
                   help="override every image's idle timeout (seconds)")
    g.add_argument("--stop-mode", choices=STOP_MODES, default=None,
                   help="override every image's stop mode")
    g.add_argument("--standby", action=argparse.BooleanOptionalAction, default=d.standby,
                   help="keep a paused, not yet booted domain per stopped service: cold boots skip "
                        "libvirt's domain start-up (costs one idle QEMU process per service)")
    g.add_argument("--domain-prefix", type=_domain_prefix, default=d.domain_prefix, metavar="PREFIX",
                   help="libvirt domain names of this summoner's VMs start with it; reconciliation touches no "
                        "other domain, so summoners sharing a libvirtd need their own (default: %(default)s)")
    g.add_argument("--state-dir", type=Path, default=d.state_dir, metavar="DIR",
                   help="where stop mode snapshot keeps saved guests (default: %(default)s)")
    g.add_argument("--snapshot-boot", action=argparse.BooleanOptionalAction, default=d.snapshot_boot,
                   help="cold-start images with snapshot_boot = true from the golden snapshot of their first "
                        "boot (--no-snapshot-boot: always boot)")
    g.add_argument("--snapshot-budget-mib", type=positive_int, default=d.snapshot_budget_mib,
                   help="disk all snapshots may take together; beyond it an idle VM is destroyed instead "
                        "(default: %(default)s)")


def config_from_args(args: argparse.Namespace) -> OnDemandConfig:
    return OnDemandConfig(
        images=tuple(args.images) if args.images else OnDemandConfig.images,
        libvirt_uri=args.libvirt_uri,
        virt_type=args.virt_type,
        network=args.network,
        bridge=args.bridge,
        bridge_gateway=args.bridge_gateway,
        bridge_netmask=args.bridge_netmask,
        bridge_ipv6_prefix=args.bridge_ipv6_prefix,
        bridge_ipv6_gateway=args.bridge_ipv6_gateway,
        machine=args.machine,
        max_vms=args.max_vms,
        memory_budget_mib=args.memory_budget_mib,
        max_concurrent_boots=args.max_concurrent_boots,
        answer_ttl=args.answer_ttl,
        reap_interval=args.reap_interval,
        evict_min_idle=args.evict_min_idle,
        retry_backoff=args.retry_backoff,
        retry_backoff_max=args.retry_backoff_max,
        boot_timeout=args.boot_timeout,
        idle_timeout=args.idle_timeout,
        state_dir=args.state_dir,
        snapshot_budget_mib=args.snapshot_budget_mib,
        snapshot_boot=args.snapshot_boot,
        stop_mode=args.stop_mode,
        domain_prefix=args.domain_prefix,
        standby=args.standby,
    )
