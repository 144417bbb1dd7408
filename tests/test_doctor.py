"""summoner doctor against real failures on this host: an image whose kernel
file is missing, a service port QEMU may not listen on, libvirtd not
reachable, and the shipped example on a working host.

The fresh-host case (/dev/kvm root:root 0600) is in tests/vm/test_fresh_host.py.
"""

from __future__ import annotations

import grp
import json
import os
import subprocess
from pathlib import Path

import pytest

from summoner.vm.doctor import can_open
from tests.conftest import EXAMPLE_ZONES, ROOT, summoner_command
from tests.vm.conftest import vm_env  # noqa: F401 (fixture: libvirtd up, images built)

ZONE = """$ORIGIN doc.test.
$TTL 300
@ IN SOA ns1 hostmaster 1 3600 600 86400 60
  IN NS ns1
ns1 IN A 127.0.0.1
svc IN A 127.0.0.40
_summoner.svc IN TXT {options}
"""


def doctor(*args: str) -> tuple[int, list[dict]]:
    done = subprocess.run(summoner_command() + ["doctor", "--json", *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=300)
    assert done.stdout.strip().startswith("["), done.stdout + done.stderr
    return done.returncode, json.loads(done.stdout)


def only(findings: list[dict], check: str) -> list[dict]:
    return [f for f in findings if f["check"] == check]


def zone_dir(tmp_path: Path, options: str) -> Path:
    zones = tmp_path / "zones"
    zones.mkdir()
    (zones / "doc.test.zone").write_text(ZONE.format(options=options))
    return zones


def test_an_image_whose_kernel_file_is_missing_fails_with_the_build_command(tmp_path):
    images = tmp_path / "images"
    (images / "broken").mkdir(parents=True)
    manifest = (ROOT / "images" / "hello" / "image.toml").read_text()
    manifest = manifest.replace('name = "hello"', 'name = "broken"')
    manifest = manifest.replace('kernel = "../kernel/build/vmlinux"', 'kernel = "build/vmlinux"')
    initrd = ROOT / "images" / "hello" / "build" / "initrd.cpio.gz"
    manifest = manifest.replace('initrd = "build/initrd.cpio.gz"', f'initrd = "{initrd}"')
    (images / "broken" / "image.toml").write_text(manifest)
    code, findings = doctor("--zones", str(zone_dir(tmp_path, '"image=broken"')), "--images", str(images),
                            "--virt-type", "qemu")
    assert code == 1
    [broken] = [f for f in only(findings, "images") if f["level"] == "fail"]
    assert broken["detail"] == f"image broken is not built: missing {images / 'broken' / 'build' / 'vmlinux'}"
    assert broken["fix"] == f"summoner image build broken --images {images}"


def test_an_image_qemu_cannot_reach_fails_with_the_fix(tmp_path):
    """A checkout under a private directory: the files are there, but QEMU
    (libvirt-qemu) cannot search a directory above them."""
    import shutil
    private = tmp_path / "private"
    (private / "images" / "hidden" / "build").mkdir(parents=True)
    private.chmod(0o700)
    image = private / "images" / "hidden"
    shutil.copy(ROOT / "images" / "kernel" / "build" / "vmlinux", image / "build" / "vmlinux")
    shutil.copy(ROOT / "images" / "hello" / "build" / "initrd.cpio.gz", image / "build" / "initrd.cpio.gz")
    manifest = (ROOT / "images" / "hello" / "image.toml").read_text().replace('name = "hello"', 'name = "hidden"')
    manifest = manifest.replace('kernel = "../kernel/build/vmlinux"', 'kernel = "build/vmlinux"')
    (image / "image.toml").write_text(manifest)
    code, findings = doctor("--zones", str(zone_dir(tmp_path, '"image=hidden"')), "--images",
                            str(private / "images"), "--virt-type", "qemu")
    assert code == 1
    [hidden] = [f for f in only(findings, "images") if f["level"] == "fail"]
    assert hidden["detail"] == (f"image hidden: QEMU's user libvirt-qemu cannot read {image / 'build' / 'vmlinux'}, "
                                f"{image / 'build' / 'initrd.cpio.gz'} (a directory above it is not searchable); "
                                "every boot of it fails")
    assert hidden["fix"] == "scripts/start-libvirt.sh grants it (setfacl -m u:libvirt-qemu:x on those directories)"


def test_a_port_below_the_unprivileged_limit_fails_with_its_sysctl(tmp_path):
    limit = int(Path("/proc/sys/net/ipv4/ip_unprivileged_port_start").read_text())
    assert limit > 80, "this test needs Debian's default net.ipv4.ip_unprivileged_port_start (1024)"
    code, findings = doctor("--zones", str(zone_dir(tmp_path, '"image=hello" "port=80"')),
                            "--images", str(ROOT / "images"), "--virt-type", "qemu")
    assert code == 1
    [ports] = only(findings, "port-forwards")
    assert ports["level"] == "fail" and ports["figure"] == limit
    assert ports["detail"].startswith(f"svc.doc.test port 80 below net.ipv4.ip_unprivileged_port_start={limit}")
    assert "sysctl -w net.ipv4.ip_unprivileged_port_start=80" in ports["fix"]


def test_libvirtd_unreachable_fails_and_says_how_to_start_it(tmp_path):
    code, findings = doctor("--zones", str(EXAMPLE_ZONES), "--virt-type", "qemu",
                            "--libvirt-uri", f"qemu+unix:///system?socket={tmp_path}/no-libvirtd-here")
    assert code == 1
    [libvirtd] = only(findings, "libvirtd")
    assert libvirtd["level"] == "fail" and "cannot connect to libvirt" in libvirtd["detail"]
    assert "scripts/start-libvirt.sh" in libvirtd["fix"]
    assert not only(findings, "domain-start")  # nothing libvirt-side can be checked


@pytest.mark.vm
def test_the_shipped_example_on_a_set_up_host_passes(vm_env):  # noqa: F811
    code, findings = doctor("--zones", str(EXAMPLE_ZONES), "--virt-type", "qemu")
    assert code == 0, findings
    levels = {f["check"]: f["level"] for f in findings if f["check"] != "virt-host-validate"}
    assert levels == {"zones": "ok", "images": "ok", "kvm-device": "ok", "port-forwards": "ok",
                      "libvirtd": "ok", "hypervisor": "ok", "domain-start": "ok"}
    [start] = only(findings, "domain-start")
    assert 0 < start["figure"] < 2000 and start["unit"] == "ms"
    text = subprocess.run(summoner_command() + ["doctor", "--zones", str(EXAMPLE_ZONES), "--virt-type", "qemu"],
                          capture_output=True, text=True, cwd=ROOT).stdout
    assert any(line.startswith("ok    domain-start       ") and " ms to start" in line for line in text.splitlines())


def test_can_open_follows_owner_group_and_mode_for_the_qemu_user(tmp_path):
    node = tmp_path / "node"
    node.write_text("")
    tmp_path.chmod(0o755)
    kvm_gid = grp.getgrnam("kvm").gr_gid
    os.chown(node, 0, 0)
    node.chmod(0o600)
    assert not can_open(node, "libvirt-qemu")
    assert can_open(node, "root")
    os.chown(node, 0, kvm_gid)
    assert not can_open(node, "libvirt-qemu")  # group kvm, but no group bits
    node.chmod(0o660)
    assert can_open(node, "libvirt-qemu")
    os.chown(node, 0, 0)
    node.chmod(0o666)
    assert can_open(node, "libvirt-qemu")
    assert not can_open(node, "no-such-user-here")


def test_a_guest_of_another_architecture_is_reported_as_tcg_only(tmp_path):
    """An aarch64 image on this x86_64 host: doctor says its guests are emulated;
    asking for KVM for it is a zone error, named as such."""
    libvirt = ("--libvirt-uri", f"qemu+unix:///system?socket={tmp_path}/no-libvirtd-here")
    zones = zone_dir(tmp_path, '"image=hello" "arch=aarch64"')
    _code, findings = doctor("--zones", str(zones), "--virt-type", "auto", *libvirt)
    [arch] = only(findings, "guest-arch")
    assert arch["level"] == "warn"
    assert arch["detail"] == ("image hello-aarch64 is aarch64, this host is x86_64: its guests run under TCG "
                              "(emulated), whatever --virt-type says")
    code, findings = doctor("--zones", str(zones), "--virt-type", "kvm", *libvirt)
    [zone] = only(findings, "zones")
    assert code == 1 and zone["level"] == "fail"
    assert "image hello-aarch64 is aarch64, this host is x86_64: KVM runs only guests of the host's " \
           "architecture; use --virt-type auto or qemu (TCG)" in zone["detail"]
