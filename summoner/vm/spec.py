"""What one service's VM is: its image manifest, the zone's overrides and the
server's settings, folded into one flat, immutable value.

This is the only module that reads image manifests, so the rest of the code
does not depend on the manifest's layout.  Precedence: the zone's per-host
value, then the server's flag, then the image's manifest.

Tests: tests/vm/test_spec.py
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from summoner.images import ImageManifest
from summoner.vm.config import OnDemandConfig
from summoner.vm.hosts import OnDemandHost


@dataclass(frozen=True)
class VMSpec:
    service: str             # the host name, e.g. hello.example.org
    domain_name: str         # libvirt domain name
    image: str
    boot_kind: str           # "kernel" (direct kernel boot) or "disk"
    kernel: Path | None
    initrd: Path | None
    cmdline: str
    disk: Path | None
    disk_format: str
    memory_mib: int
    vcpus: int
    address: str
    port: int
    probe_path: str
    expect_status: int
    probe_interval: float    # seconds between probe attempts
    request_timeout: float   # seconds per probe attempt
    boot_timeout: float      # seconds from boot start to probe success
    idle_timeout: float
    stop_mode: str
    shutdown_grace: float
    config_hash: str         # written into the domain's metadata; a change means "reboot"
    machine: str = "pc"
    snapshot_boot: bool = False  # cold starts restore the golden snapshot of the first boot
    address6: str | None = None  # bridge mode: the guest's IPv6 address (the host's AAAA)
    arch: str = "x86_64"         # the guest's architecture (the image's)


def domain_name_for(config: OnDemandConfig, service: str) -> str:
    return config.domain_prefix + service


def _first(*values: float | None) -> float:
    """The first value that is set: zone, then server flag, then image."""
    return float(next(v for v in values if v is not None))


def build_spec(host: OnDemandHost, manifest: ImageManifest, config: OnDemandConfig) -> VMSpec:
    boot, probe, reap = manifest.boot, manifest.probe, manifest.reap
    digest = hashlib.sha256("\0".join([
        manifest.config_hash(), host.fingerprint(), config.network, config.bridge,
        *([str(config.bridge_ipv6_prefix), config.bridge_ipv6_gateway] if host.address6 else []),
    ]).encode()).hexdigest()[:16]
    return VMSpec(
        service=host.name,
        domain_name=domain_name_for(config, host.name),
        image=host.image,
        boot_kind=boot.kind,
        kernel=boot.kernel,
        initrd=boot.initrd,
        cmdline=boot.cmdline,
        disk=boot.disk,
        disk_format=boot.format or "qcow2",
        memory_mib=host.memory_mib or manifest.resources.memory_mib,
        vcpus=host.vcpus or manifest.resources.vcpus,
        address=host.address,
        port=host.port or manifest.service.port,
        probe_path=host.probe_path or probe.path,
        expect_status=probe.expect_status,
        probe_interval=probe.interval_ms / 1000.0,
        request_timeout=probe.request_timeout_ms / 1000.0,
        boot_timeout=_first(host.boot_timeout or None, config.boot_timeout or None, probe.boot_timeout_s),
        idle_timeout=_first(host.idle, config.idle_timeout, reap.idle_timeout_s),
        stop_mode=host.stop or config.stop_mode or reap.stop_mode,
        shutdown_grace=float(reap.shutdown_grace_s),
        config_hash=digest,
        machine=boot.machine or config.machine,
        snapshot_boot=boot.snapshot_boot and config.snapshot_boot,
        address6=host.address6 if config.network == "bridge" else None,
        arch=boot.arch,
    )


def missing_artifacts(spec: VMSpec) -> list[str]:
    """Files the VM needs that are not there (an unbuilt image)."""
    wanted = [spec.kernel, spec.initrd] if spec.boot_kind == "kernel" else [spec.disk]
    return [str(p) for p in wanted if p is not None and not p.exists()]
