"""``summoner doctor`` (the on-demand part's host checks): is this host ready to summon VMs?

Checks the host the way an operator would before the first query, one line
per check (ok / warn / fail, the figure, the fix).  ``serve`` runs the quick
ones at start and logs what is not ok; the slow ones (a KVM test boot, a
domain start) run only here, because every boot measures its libvirt phase
anyway (``summoner_vm_boot_phase_seconds``).

libvirt's own ``virt-host-validate`` is run and reported as it is rather than
re-implemented; summoner's checks cover what it cannot know (which user QEMU
runs as, libvirt's domain start-up time, the images' ports).

Tests: tests/test_doctor.py, tests/vm/test_fresh_host.py; the bridge checks (bridgecheck.py):
tests/vm/test_bridge.py.
"""

from __future__ import annotations

import argparse
import enum
import grp
import os
import pwd
import re
import stat
import subprocess
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from twisted.internet import threads
from twisted.internet.interfaces import IReactorTime

from summoner.deferreds import run_alone
from summoner.vm.config import OnDemandConfig
from summoner.vm.spec import VMSpec

if TYPE_CHECKING:
    from summoner.vm.libvirt_backend import LibvirtBackend

KVM_DEVICE = Path("/dev/kvm")
QEMU_CONF = Path("/etc/libvirt/qemu.conf")
UNPRIVILEGED_PORT_START = Path("/proc/sys/net/ipv4/ip_unprivileged_port_start")
# Above this, a domain start is not libvirt's normal cost (0.4-0.8 s here) but
# its QEMU capability cache being rebuilt on every call.
DOMAIN_START_LIMIT_S = 2.0
KVM_FIX = "chgrp kvm /dev/kvm && chmod 0660 /dev/kvm (scripts/start-libvirt.sh does this)"


class Level(enum.Enum):
    OK = "ok"
    WARN = "warn"
    FAIL = "fail"


@dataclass(frozen=True)
class Finding:
    check: str
    level: Level
    detail: str
    fix: str = ""
    figure: float | None = None  # the measured number, in ``unit``
    unit: str = ""

    def line(self) -> str:
        text = f"{self.level.value:<5} {self.check:<18} {self.detail}"
        return f"{text} -- fix: {self.fix}" if self.fix else text

    def as_json(self) -> dict[str, Any]:
        return {"check": self.check, "level": self.level.value, "detail": self.detail, "fix": self.fix,
                "figure": self.figure, "unit": self.unit}


@dataclass
class Plan:
    """What to check: the on-demand settings ``serve`` would run with."""
    config: OnDemandConfig
    zones: Path | None = Path("zones")
    specs: list[VMSpec] = field(default_factory=list)  # filled from the zones


# -- host facts (no libvirt) ---------------------------------------------------

def qemu_user(conf: Path = QEMU_CONF) -> str:
    """The user libvirt runs QEMU as (``user =`` in qemu.conf)."""
    try:
        text = conf.read_text()
    except OSError:
        text = ""
    match = re.search(r'^\s*user\s*=\s*"([^"]+)"', text, re.MULTILINE)
    return match.group(1) if match else "libvirt-qemu"


def can_open(path: Path, user: str) -> bool:
    """Whether ``user`` may read and write ``path``, by its owner, group and mode."""
    try:
        st = path.stat()
        account = pwd.getpwnam(user)
    except (OSError, KeyError):
        return False
    if account.pw_uid == 0:
        return True
    groups = {account.pw_gid} | {g.gr_gid for g in grp.getgrall() if user in g.gr_mem}
    if st.st_uid == account.pw_uid:
        return st.st_mode & (stat.S_IRUSR | stat.S_IWUSR) == (stat.S_IRUSR | stat.S_IWUSR)
    if st.st_gid in groups:
        return st.st_mode & (stat.S_IRGRP | stat.S_IWGRP) == (stat.S_IRGRP | stat.S_IWGRP)
    return st.st_mode & (stat.S_IROTH | stat.S_IWOTH) == (stat.S_IROTH | stat.S_IWOTH)


def describe_node(path: Path) -> str:
    st = path.stat()
    try:
        owner, group = pwd.getpwuid(st.st_uid).pw_name, grp.getgrgid(st.st_gid).gr_name
    except KeyError:
        owner, group = str(st.st_uid), str(st.st_gid)
    return f"{path} {owner}:{group} {stat.S_IMODE(st.st_mode):04o}"


def check_kvm_device(user: str, device: Path = KVM_DEVICE) -> Finding:
    if not device.exists():
        return Finding("kvm-device", Level.WARN, f"{device} is missing: guests run under TCG (emulation)",
                       "load the kvm module (modprobe kvm_intel or kvm_amd) if the CPU has VT-x/AMD-V")
    node = describe_node(device)
    if can_open(device, user):
        return Finding("kvm-device", Level.OK, f"{node}, usable by {user}")
    return Finding("kvm-device", Level.FAIL,
                   f"{node}: {user} (QEMU's user) cannot open it; libvirt then re-probes QEMU on every "
                   "call and each domain start takes tens of seconds", KVM_FIX)


def check_port_limits(specs: Iterable[VMSpec], user: str, network: str,
                      limit_file: Path = UNPRIVILEGED_PORT_START) -> Finding:
    if network != "user":
        return Finding("port-forwards", Level.OK, f"network {network}: guests own their addresses, no forward")
    try:
        limit = int(limit_file.read_text())
    except (OSError, ValueError):
        limit = 1024
    low = sorted({(s.port, s.service) for s in specs if s.port < limit})
    if user == "root" or not low:
        return Finding("port-forwards", Level.OK,
                       f"every service port is >= net.ipv4.ip_unprivileged_port_start ({limit})", figure=limit)
    names = ", ".join(f"{service} port {port}" for port, service in low)
    return Finding("port-forwards", Level.FAIL,
                   f"{names} below net.ipv4.ip_unprivileged_port_start={limit}: QEMU (user {user}) cannot "
                   "listen there", f"serve on a port >= {limit} (port= in the zone), or "
                   f"sysctl -w net.ipv4.ip_unprivileged_port_start={low[0][0]}", figure=limit)


def readable_by(path: Path, user: str) -> bool:
    """Whether ``user`` can read ``path``, every directory above it included
    (asked of the kernel, so ACLs count)."""
    return subprocess.run(["runuser", "-u", user, "--", "test", "-r", str(path)],
                          capture_output=True).returncode == 0


def check_images(images_dirs: Iterable[Path], used: set[str], user: str) -> list[Finding]:
    from summoner.images import ManifestError, discover_images
    findings: list[Finding] = []
    built: list[str] = []
    seen: set[str] = set()
    for directory in images_dirs:
        errors: list[ManifestError] = []
        for name, manifest in discover_images(directory, errors).items():
            if name in seen:
                continue
            seen.add(name)
            missing = manifest.missing_artifacts()
            if not missing:
                unreadable = [str(p) for p in manifest.artifacts() if not readable_by(p, user)]
                if unreadable:
                    findings.append(Finding(
                        "images", Level.FAIL if name in used else Level.WARN,
                        f"image {name}: QEMU's user {user} cannot read " + ", ".join(unreadable)
                        + " (a directory above it is not searchable); every boot of it fails",
                        f"scripts/start-libvirt.sh grants it (setfacl -m u:{user}:x on those directories)"))
                    continue
                built.append(name)
                continue
            level = Level.FAIL if name in used else Level.WARN
            findings.append(Finding("images", level, f"image {name} is not built: missing "
                                    + ", ".join(str(p) for p in missing),
                                    f"summoner image build {name} --images {directory}"))
        findings += [Finding("images", Level.FAIL, str(exc), "fix the manifest") for exc in errors]
    for name in sorted(used - seen):
        findings.append(Finding("images", Level.FAIL, f"the zones use image {name}, which no --images "
                                "directory holds", "add its folder, or fix image= in the zone"))
    if built:
        findings.insert(0, Finding("images", Level.OK, f"{len(built)} built: {', '.join(sorted(built))}"))
    return findings


def check_zones(plan: Plan) -> list[Finding]:
    """Zones valid, on-demand declarations valid; fills ``plan.specs``."""
    from summoner.images import discover_in
    from summoner.vm.hosts import split_on_demand
    from summoner.vm.spec import build_spec
    from summoner.zonefile import ZoneError, load_zone_dir
    assert plan.zones is not None
    fix = f"summoner check --zones {plan.zones} prints every error with its file:line"
    try:
        zones = load_zone_dir(plan.zones)
        images = discover_in(plan.config.images)
        _stripped, hosts = split_on_demand(zones.zones.values(), images, plan.config.network,
                                           plan.config.virt_type)
    except ZoneError as exc:
        shown = "; ".join(exc.problems[:3]) + (f" (+{len(exc.problems) - 3} more)" if len(exc.problems) > 3 else "")
        return [Finding("zones", Level.FAIL, shown, fix)]
    plan.specs = [build_spec(h, images[h.image], plan.config) for h in hosts]
    records = sum(z.record_count for z in zones.zones.values())
    return [Finding("zones", Level.OK, f"{len(zones.zones)} zones, {records} records, "
                    f"{len(hosts)} on-demand hosts in {plan.zones}")]


# virt-host-validate checks for what summoner's guests never use: PCI device
# assignment, confidential (SEV/TDX) guests.
UNUSED_FEATURES = ("device assignment IOMMU support", "secure guest support")
_VALIDATE_LINE = re.compile(r"^\s*\w+: Checking (?:for |if )?(?P<what>.*?)\s*: (?P<verdict>PASS|WARN|FAIL)"
                            r"(?: \((?P<why>.*)\))?\s*$")


def virt_host_validate() -> list[Finding]:
    """libvirt's own host checks, each line that is not PASS as a warning
    (its KVM failures are summoner's warnings too: TCG still works)."""
    try:
        out = subprocess.run(["virt-host-validate", "qemu"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired) as exc:
        return [Finding("virt-host-validate", Level.WARN, f"cannot run it: {exc}",
                        "apt-get install libvirt-clients")]
    findings = []
    for line in out.splitlines():
        match = _VALIDATE_LINE.match(line)
        if match and match["verdict"] != "PASS":
            why = f" ({match['why']})" if match["why"] else ""
            unused = match["what"] in UNUSED_FEATURES
            findings.append(Finding("virt-host-validate", Level.OK if unused else Level.WARN,
                                    f"{match['what']}: {match['verdict']}{why}"
                                    + (" (summoner does not use it)" if unused else "")))
    passed = out.count(": PASS")
    return findings or [Finding("virt-host-validate", Level.OK, f"{passed} checks pass")]


# -- libvirt checks --------------------------------------------------------------

async def check_libvirt(plan: Plan, reactor: IReactorTime, kvm_device_ok: bool) -> list[Finding]:
    from summoner.vm.libvirt_backend import LibvirtBackend
    backend = LibvirtBackend(plan.config.libvirt_uri, reactor, reconnect_min=3600, reconnect_max=3600)
    try:
        if not await backend.start():
            return [Finding("libvirtd", Level.FAIL, f"cannot connect to libvirt at {plan.config.libvirt_uri}",
                            "start it: scripts/start-libvirt.sh (or systemctl start libvirtd)")]
        return await _libvirt_checks(plan, reactor, backend, kvm_device_ok)
    finally:
        await backend.stop()


async def _libvirt_checks(plan: Plan, reactor: IReactorTime, backend: LibvirtBackend,
                          kvm_device_ok: bool) -> list[Finding]:
    from summoner.vm.libvirt_backend import BackendError
    config = plan.config
    virt = "qemu" if config.virt_type == "qemu" else "kvm"
    try:
        hv = await backend.hypervisor(virt, config.machine)
    except BackendError as exc:
        if config.virt_type == "kvm":
            return [Finding("hypervisor", Level.FAIL, f"libvirt offers no kvm domains: {exc}",
                            "use --virt-type auto or qemu")]
        virt = "qemu"
        try:
            hv = await backend.hypervisor(virt, config.machine)
        except BackendError as exc2:
            return [Finding("hypervisor", Level.FAIL, f"libvirt offers no qemu domains either: {exc2}",
                            "apt-get install qemu-system-x86, then restart libvirtd")]
    findings = [Finding("libvirtd", Level.OK, f"libvirt {hv.libvirt_version}, QEMU {hv.qemu_version} "
                        f"at {config.libvirt_uri}"),
                Finding("hypervisor", Level.OK, f"{hv.emulator}, machine {hv.machine}, domain type {virt} offered")]
    if virt == "kvm":
        verdict_finding, virt = await _kvm_boot(plan, reactor, backend, kvm_device_ok)
        findings.append(verdict_finding)
    findings.append(await _domain_start(plan, backend, virt))
    return findings


async def _kvm_boot(plan: Plan, reactor: IReactorTime, backend: LibvirtBackend,
                    kvm_device_ok: bool) -> tuple[Finding, str]:
    from summoner.vm.kvmcheck import KvmBootCheck
    from summoner.vm.spec import missing_artifacts
    if not kvm_device_ok:
        return Finding("kvm-boot", Level.WARN, "not tried: QEMU cannot open /dev/kvm; guests run under TCG",
                       KVM_FIX), "qemu"
    specs = [s for s in plan.specs if not missing_artifacts(s)]
    if not specs:
        return Finding("kvm-boot", Level.WARN, "not tried: no built image in the zones to test-boot",
                       "build the images (make images)"), "kvm"
    spec = min(specs, key=lambda s: s.memory_mib)
    started = time.monotonic()
    verdict = await KvmBootCheck(reactor, backend, plan.config.domain_prefix).verdict(spec, min(8.0, spec.boot_timeout))
    ms = (time.monotonic() - started) * 1000
    if verdict.usable:
        return Finding("kvm-boot", Level.OK, f"{spec.image} booted under KVM ({verdict.why})", figure=ms,
                       unit="ms"), "kvm"
    level = Level.FAIL if plan.config.virt_type == "kvm" else Level.WARN
    return Finding("kvm-boot", level, f"a test boot of {spec.image} under KVM failed: {verdict.why}; "
                   + ("--virt-type kvm cannot work" if level is Level.FAIL else "auto uses TCG (slower)"),
                   "run with --virt-type qemu, or fix nested virtualisation on this host",
                   figure=ms, unit="ms"), "qemu"


async def _domain_start(plan: Plan, backend: LibvirtBackend, virt: str) -> Finding:
    from summoner.vm.domxml import empty_domain_xml
    from summoner.vm.libvirt_backend import BackendError
    name = f"{plan.config.domain_prefix}doctor-{os.getpid()}"
    started = time.monotonic()
    try:
        uuid = await backend.create(name, empty_domain_xml(name, virt, plan.config.machine), autodestroy=True,
                                    paused=True)
    except BackendError as exc:
        return Finding("domain-start", Level.FAIL, f"libvirt cannot start a {virt} domain: {exc}",
                       "see /var/log/libvirt/qemu/" + name + ".log")
    seconds = time.monotonic() - started
    try:
        await backend.destroy(name, uuid)
    except BackendError:
        pass  # autodestroy ends it with the connection
    detail = f"{seconds * 1000:.0f} ms to start an empty paused {virt} domain"
    if seconds <= DOMAIN_START_LIMIT_S:
        return Finding("domain-start", Level.OK, detail, figure=seconds * 1000, unit="ms")
    return Finding("domain-start", Level.FAIL,
                   f"{detail} (over {DOMAIN_START_LIMIT_S:g} s): libvirt is re-probing QEMU's capabilities "
                   "on every call, which happens when QEMU's user cannot open /dev/kvm", KVM_FIX,
                   figure=seconds * 1000, unit="ms")


def check_guest_arches(specs: Iterable[VMSpec]) -> list[Finding]:
    """Guests of another architecture than the host's run under TCG, whatever --virt-type says."""
    from summoner.images import host_arch
    host = host_arch()
    foreign = sorted({(s.image, s.arch) for s in specs if s.arch != host})
    if not foreign:
        return []
    return [Finding("guest-arch", Level.WARN, f"image {image} is {arch}, this host is {host}: its guests run "
                    f"under TCG (emulated), whatever --virt-type says",
                    f"where KVM speed matters, build it for {host} (an image with arch = \"{host}\")")
            for image, arch in foreign]


# -- the whole run ---------------------------------------------------------------

def host_checks(plan: Plan) -> list[Finding]:
    """The quick checks, which need no libvirt (blocking: run in a thread).
    ``serve`` runs these at start with the specs of its zones."""
    user = qemu_user()
    findings = check_images(plan.config.images, {s.image for s in plan.specs}, user)
    findings.append(check_kvm_device(user))
    findings.append(check_port_limits(plan.specs, user, plan.config.network))
    findings += check_guest_arches(plan.specs)
    from summoner.vm.bridgecheck import check_bridge  # it builds on this module's Finding
    findings += check_bridge(plan.config)
    return findings + virt_host_validate()


async def diagnose(plan: Plan, reactor: IReactorTime) -> list[Finding]:
    """Every check, in the order an operator would follow them."""
    findings: list[Finding] = []
    if plan.zones is not None:
        findings += await threads.deferToThread(check_zones, plan)
    findings += await threads.deferToThread(host_checks, plan)
    kvm_ok = all(f.level is Level.OK for f in findings if f.check == "kvm-device")
    findings += await check_libvirt(plan, reactor, kvm_ok)
    return findings


def run(plan: Plan) -> list[Finding]:
    """``diagnose`` on a reactor of its own (the ``doctor`` command)."""
    from twisted.internet import reactor
    return run_alone(lambda: diagnose(plan, reactor))


# -- the command -----------------------------------------------------------------

def add_doctor_command(commands: argparse._SubParsersAction) -> argparse.ArgumentParser:
    from summoner.vm.config import add_cli_arguments
    doctor = commands.add_parser("doctor", help="check that this host can summon VMs (exit 1 on any fail)")
    doctor.add_argument("--zones", type=Path, default=Path("zones"), metavar="DIR",
                        help="zone directory whose on-demand hosts are checked (default zones/)")
    doctor.add_argument("--json", action="store_true", help="print the findings as a JSON array")
    add_cli_arguments(doctor)  # the same on-demand flags as serve: check what serve would use
    doctor.set_defaults(run=run_doctor)
    return doctor


def run_doctor(args: argparse.Namespace) -> int:
    import json
    import logging

    from summoner.vm.config import config_from_args
    logging.getLogger("summoner").setLevel(logging.ERROR)  # findings carry the image errors
    findings = run(Plan(config_from_args(args), args.zones))
    if args.json:
        print(json.dumps([f.as_json() for f in findings], indent=2))
    else:
        for finding in findings:
            print(finding.line())
    return 1 if any(f.level is Level.FAIL for f in findings) else 0
