"""summoner.vm.domxml: the domain XML libvirt is given, checked against
libvirt's own schema (``virt-xml-validate``) and read back for the values
that matter: memory, vCPUs, boot, the port forward, the console log,
summoner's metadata."""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from summoner.vm.domxml import (
    NS,
    QEMU_NS,
    Metadata,
    NetworkSettings,
    console_log_path,
    domain_xml,
    empty_domain_xml,
    mac_for,
    metadata_xml,
    parse_metadata,
    qemu_log_path,
)
from summoner.vm.spec import VMSpec

KERNEL = VMSpec(
    service="hello.example.org", domain_name="summoner-hello.example.org", image="hello",
    boot_kind="kernel", kernel=Path("/srv/images/hello/vmlinux"), initrd=Path("/srv/images/hello/initrd.gz"),
    cmdline="console=ttyS0 panic=-1", disk=None, disk_format="qcow2", memory_mib=96, vcpus=2,
    address="127.0.0.10", port=8080, probe_path="/", expect_status=200,
    probe_interval=0.02, request_timeout=0.5, boot_timeout=10.0, idle_timeout=300.0, stop_mode="destroy",
    shutdown_grace=5.0, config_hash="0123456789abcdef",
)
DISK = dataclasses.replace(
    KERNEL, service="osv.example.org", domain_name="summoner-osv.example.org", image="osv", boot_kind="disk",
    kernel=None, initrd=None, cmdline="", disk=Path("/srv/images/osv/osv.qcow2"), machine="q35")
USER = NetworkSettings("user")
BRIDGE = NetworkSettings("bridge", "br7", "192.0.2.1", "255.255.255.0")

VALIDATE = shutil.which("virt-xml-validate")
needs_validator = pytest.mark.skipif(VALIDATE is None, reason="virt-xml-validate (libvirt-clients) not installed")


def validate(xml: str, tmp_path: Path, name: str = "domain.xml") -> None:
    path = tmp_path / name
    path.write_text(xml)
    result = subprocess.run([VALIDATE, str(path), "domain"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr + xml


def qemu_args(root: ET.Element) -> list[str]:
    return [arg.get("value") for arg in root.findall(f"{{{QEMU_NS}}}commandline/{{{QEMU_NS}}}arg")]


CASES = {
    "kernel-user-qemu": (KERNEL, "qemu", USER, {}),
    "kernel-user-kvm": (KERNEL, "kvm", USER, {}),
    "kernel-bridge-kvm": (dataclasses.replace(KERNEL, address="192.0.2.7"), "kvm", BRIDGE, {}),
    "kernel-bridge-qemu": (dataclasses.replace(KERNEL, address="192.0.2.7", initrd=None), "qemu", BRIDGE, {}),
    "disk-qcow2-user-qemu": (DISK, "qemu", USER, {}),
    "disk-raw-bridge-kvm": (dataclasses.replace(DISK, disk_format="raw"), "kvm", BRIDGE, {}),
    "kernel-user-kvm-standby": (KERNEL, "kvm", USER, {"standby": True}),
    "kernel-user-check-port": (KERNEL, "kvm", USER, {"host_port": 41234, "emulator": "/usr/bin/qemu-system-x86_64"}),
}


@needs_validator
@pytest.mark.parametrize("case", sorted(CASES))
def test_the_domain_validates_against_libvirts_schema(case, tmp_path):
    spec, virt, net, kw = CASES[case]
    validate(domain_xml(spec, virt, net, spec.machine, **kw), tmp_path)


@needs_validator
@pytest.mark.parametrize("virt", ["kvm", "qemu"])
def test_the_empty_domain_validates(virt, tmp_path):
    validate(empty_domain_xml("summoner-doctor-empty", virt, "q35"), tmp_path)


@needs_validator
def test_the_validator_rejects_a_broken_domain(tmp_path):
    """The schema check is not vacuous: an on_crash libvirt does not know fails."""
    root = ET.fromstring(domain_xml(KERNEL, "kvm", USER))
    root.find("on_crash").text = "explode"
    path = tmp_path / "broken.xml"
    path.write_text(ET.tostring(root, encoding="unicode"))
    result = subprocess.run([VALIDATE, str(path), "domain"], capture_output=True, text=True, timeout=60)
    assert result.returncode != 0


@pytest.mark.parametrize("virt", ["kvm", "qemu"])
def test_size_name_and_type(virt):
    root = ET.fromstring(domain_xml(KERNEL, virt, USER))
    assert root.tag == "domain" and root.get("type") == virt
    assert root.findtext("name") == "summoner-hello.example.org"
    assert root.findtext("title") == "summoner: hello.example.org (hello)"
    memory = root.find("memory")
    assert (memory.text, memory.get("unit")) == ("96", "MiB")
    assert root.findtext("vcpu") == "2"
    assert root.find("os/type").attrib == {"arch": "x86_64", "machine": "pc"}
    # any exit ends the transient domain
    assert [root.findtext(t) for t in ("on_poweroff", "on_reboot", "on_crash")] == ["destroy"] * 3
    assert root.find("features/acpi") is not None


def test_kernel_boot_in_user_mode():
    root = ET.fromstring(domain_xml(KERNEL, "kvm", USER))
    assert root.findtext("os/kernel") == "/srv/images/hello/vmlinux"
    assert root.findtext("os/initrd") == "/srv/images/hello/initrd.gz"
    assert root.findtext("os/cmdline") == "console=ttyS0 panic=-1 ip=10.0.2.15::10.0.2.2:255.255.255.0::eth0:off"
    assert root.find("os/boot") is None and root.find("devices/disk") is None
    assert qemu_args(root) == [
        "-netdev", "user,id=sn0,restrict=on,hostfwd=tcp:127.0.0.10:8080-:8080",
        "-device", f"virtio-net-pci,netdev=sn0,addr=0x5,romfile=,mac={mac_for('hello.example.org')}",
    ]
    assert root.find("devices/interface") is None
    assert root.find("devices/memballoon").get("model") == "none"  # keeps PCI slot 2 free of it


def test_the_forward_can_come_from_another_host_port():
    """The KVM check forwards a private port to the service's port."""
    root = ET.fromstring(domain_xml(KERNEL, "kvm", USER, host_port=41234))
    assert "user,id=sn0,restrict=on,hostfwd=tcp:127.0.0.10:41234-:8080" in qemu_args(root)


def test_kernel_boot_in_bridge_mode():
    spec = dataclasses.replace(KERNEL, address="192.0.2.7")
    root = ET.fromstring(domain_xml(spec, "kvm", BRIDGE))
    assert root.findtext("os/cmdline").endswith(" ip=192.0.2.7::192.0.2.1:255.255.255.0::eth0:off")
    iface = root.find("devices/interface")
    assert iface.get("type") == "bridge"
    assert iface.find("source").get("bridge") == "br7"
    assert iface.find("mac").get("address") == mac_for("hello.example.org")
    assert iface.find("model").get("type") == "virtio"
    assert qemu_args(root) == []  # no hostfwd: the guest has its own address


def test_a_bridge_mode_host_with_an_aaaa_gives_the_guest_its_ipv6_address():
    spec = dataclasses.replace(KERNEL, address="192.0.2.7", address6="2001:db8::7")
    cmdline = ET.fromstring(domain_xml(spec, "kvm", BRIDGE)).findtext("os/cmdline")
    assert cmdline.endswith(" ip=192.0.2.7::192.0.2.1:255.255.255.0::eth0:off summoner_ip6=2001:db8::7/64")
    routed = dataclasses.replace(BRIDGE, ipv6_prefix=56, ipv6_gateway="2001:db8::1")
    cmdline = ET.fromstring(domain_xml(spec, "kvm", routed)).findtext("os/cmdline")
    assert cmdline.endswith(" summoner_ip6=2001:db8::7/56 summoner_ip6gw=2001:db8::1")


def test_an_aarch64_guest_boots_on_virt_with_a_64_bit_cpu_and_no_acpi():
    spec = dataclasses.replace(KERNEL, arch="aarch64", machine="virt", cmdline="console=ttyAMA0")
    root = ET.fromstring(domain_xml(spec, "qemu", USER, "virt"))
    assert root.find("os/type").attrib == {"arch": "aarch64", "machine": "virt"}
    assert root.find("cpu").get("mode") == "custom" and root.findtext("cpu/model") == "cortex-a57"
    assert root.find("features") is None  # ACPI on virt needs UEFI; the kernel gets a device tree
    kvm = ET.fromstring(domain_xml(spec, "kvm", USER, "virt"))
    assert kvm.find("cpu").attrib == {"mode": "host-passthrough"}
    x86 = ET.fromstring(domain_xml(KERNEL, "qemu", USER))
    assert x86.find("os/type").get("arch") == "x86_64" and x86.find("cpu") is None
    assert x86.find("features/acpi") is not None


def test_disk_boot():
    root = ET.fromstring(domain_xml(DISK, "qemu", USER, DISK.machine))
    assert root.find("os/kernel") is None and root.find("os/cmdline") is None
    assert root.find("os/boot").get("dev") == "hd"
    assert root.find("os/type").get("machine") == "q35"
    disk = root.find("devices/disk")
    assert disk.find("source").get("file") == "/srv/images/osv/osv.qcow2"
    assert disk.find("driver").attrib == {"name": "qemu", "type": "qcow2"}
    assert disk.find("target").attrib == {"dev": "vda", "bus": "virtio"}
    # several VMs share the image and none may change it
    assert disk.find("transient") is not None and disk.find("readonly") is None
    raw = ET.fromstring(domain_xml(dataclasses.replace(DISK, disk_format="raw"), "qemu", USER)).find("devices/disk")
    assert raw.find("readonly") is not None and raw.find("transient") is None


def test_the_console_is_logged_where_summoner_reads_it():
    root = ET.fromstring(domain_xml(KERNEL, "qemu", USER))
    log = root.find("devices/serial/log")
    assert log.attrib == {"file": "/var/log/libvirt/qemu/summoner-hello.example.org.console.log", "append": "off"}
    assert log.get("file") == console_log_path(KERNEL.domain_name)
    assert qemu_log_path(KERNEL.domain_name) == "/var/log/libvirt/qemu/summoner-hello.example.org.log"
    assert root.find("devices/console/target").attrib == {"type": "serial", "port": "0"}


def test_an_emulator_is_named_only_when_given():
    assert ET.fromstring(domain_xml(KERNEL, "kvm", USER)).find("devices/emulator") is None
    root = ET.fromstring(domain_xml(KERNEL, "kvm", USER, emulator="/opt/qemu/bin/qemu-system-x86_64"))
    assert root.findtext("devices/emulator") == "/opt/qemu/bin/qemu-system-x86_64"


@pytest.mark.parametrize("standby", [False, True])
def test_the_metadata_inside_the_domain(standby):
    xml = domain_xml(KERNEL, "kvm", USER, standby=standby)
    el = ET.fromstring(xml).find(f"metadata/{{{NS}}}vm")
    expected = {"service": "hello.example.org", "image": "hello", "hash": "0123456789abcdef",
                "address": "127.0.0.10", "port": "8080"}
    assert el.attrib == ({**expected, "standby": "1"} if standby else expected)
    assert parse_metadata(xml) == Metadata("hello.example.org", "hello", "0123456789abcdef", "127.0.0.10", 8080,
                                           standby)


def test_the_metadata_alone_as_libvirt_returns_it():
    alone = metadata_xml(KERNEL, standby=True)
    assert parse_metadata(alone) == Metadata("hello.example.org", "hello", "0123456789abcdef", "127.0.0.10",
                                             8080, True)
    # dom.metadata() hands the element back with its namespace stripped
    stripped = '<vm service="a.example.org" image="a" hash="h" address="127.0.0.2" port="81"/>'
    assert parse_metadata(stripped) == Metadata("a.example.org", "a", "h", "127.0.0.2", 81, False)


@pytest.mark.parametrize("text", [None, "", "<not xml", "<domain><name>x</name></domain>",
                                  '<vm image="a"/>', '<vm service="a" port="eighty"/>'])
def test_what_is_not_our_metadata(text):
    assert parse_metadata(text) is None


def test_the_mac_is_stable_per_service_in_qemus_range():
    assert mac_for("hello.example.org") == mac_for("hello.example.org")
    assert mac_for("hello.example.org") != mac_for("tasks.example.org")
    assert mac_for("hello.example.org").startswith("52:54:00:")


def test_a_boot_without_its_file_is_refused():
    with pytest.raises(ValueError, match="hello: kernel boot without a kernel"):
        domain_xml(dataclasses.replace(KERNEL, kernel=None), "kvm", USER)
    with pytest.raises(ValueError, match="osv: disk boot without a disk"):
        domain_xml(dataclasses.replace(DISK, disk=None), "kvm", USER)
