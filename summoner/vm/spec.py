"""What one service's VM is: its image manifest, the zone's overrides and the
server's settings, folded into one flat, immutable value.

This is the only module that reads image manifests, so the rest of the code
does not depend on the manifest's layout.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
    probe_kind: str          # "http" (status line) or "tcp" (connection held open by the guest)
    expect_status: int
    probe_interval: float    # seconds between probe attempts
    request_timeout: float   # seconds per probe attempt
    boot_timeout: float      # seconds from boot start to probe success
    idle_timeout: float
    stop_mode: str
    shutdown_grace: float
    config_hash: str         # written into the domain's metadata; a change means "reboot"
    machine: str = "pc"


def _get(obj: Any, name: str, default: Any = None) -> Any:
    return getattr(obj, name, default) if obj is not None else default


def _resolve(path: Any, base: Path | None) -> Path | None:
    if path in (None, ""):
        return None
    p = Path(path)
    if not p.is_absolute() and base is not None:
        p = base / p
    return p.resolve()


def manifest_dir(manifest: Any) -> Path | None:
    for attr in ("directory", "dir", "root", "base_dir"):
        value = getattr(manifest, attr, None)
        if value:
            return Path(value)
    path = getattr(manifest, "path", None)
    return Path(path).parent if path else None


def domain_name_for(config: OnDemandConfig, service: str) -> str:
    return config.domain_prefix + service


def build_spec(host: OnDemandHost, manifest: Any, config: OnDemandConfig) -> VMSpec:
    base = manifest_dir(manifest)
    boot, res, svc = _get(manifest, "boot"), _get(manifest, "resources"), _get(manifest, "service")
    probe, reap = _get(manifest, "probe"), _get(manifest, "reap")
    port = host.port or int(_get(svc, "port", 8080))
    memory = host.memory_mib or int(_get(res, "memory_mib", 64))
    vcpus = host.vcpus or int(_get(res, "vcpus", 1))
    probe_path = host.probe_path or _get(probe, "path", "/")
    image_hash = ""
    if hasattr(manifest, "config_hash"):
        image_hash = manifest.config_hash()
    stop_mode = host.stop or config.stop_mode or _get(reap, "stop_mode", "destroy")
    boot_timeout = host.boot_timeout or config.boot_timeout or float(_get(probe, "boot_timeout_s", 10))
    idle = host.idle if host.idle is not None else (
        config.idle_timeout if config.idle_timeout is not None else float(_get(reap, "idle_timeout_s", 300)))
    kind = _get(boot, "kind", "kernel")
    digest = hashlib.sha256("\0".join([
        image_hash, host.fingerprint(), config.network, config.bridge,
    ]).encode()).hexdigest()[:16]
    return VMSpec(
        service=host.name,
        domain_name=domain_name_for(config, host.name),
        image=host.image,
        boot_kind=kind,
        kernel=_resolve(_get(boot, "kernel"), base),
        initrd=_resolve(_get(boot, "initrd"), base),
        cmdline=str(_get(boot, "cmdline", "") or ""),
        disk=_resolve(_get(boot, "disk"), base),
        disk_format=str(_get(boot, "format", "qcow2") or "qcow2"),
        memory_mib=memory,
        vcpus=vcpus,
        address=host.address,
        port=port,
        probe_path=probe_path,
        probe_kind=str(_get(probe, "kind", "http") or "http"),
        expect_status=int(_get(probe, "expect_status", 200)),
        probe_interval=float(_get(probe, "interval_ms", 20)) / 1000.0,
        request_timeout=float(_get(probe, "request_timeout_ms", 500)) / 1000.0,
        boot_timeout=float(boot_timeout),
        idle_timeout=float(idle),
        stop_mode=stop_mode,
        shutdown_grace=float(_get(reap, "shutdown_grace_s", 5)),
        config_hash=digest,
        machine=str(_get(boot, "machine", None) or config.machine),
    )


def missing_artifacts(spec: VMSpec) -> list[str]:
    """Files the VM needs that are not there (an unbuilt image)."""
    wanted = [spec.kernel, spec.initrd] if spec.boot_kind == "kernel" else [spec.disk]
    return [str(p) for p in wanted if p is not None and not p.exists()]
