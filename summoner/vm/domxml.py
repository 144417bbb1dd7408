"""libvirt domain XML for one service, and summoner's metadata inside it.

Domains are transient (``createXML``): when a VM stops, nothing is left
defined in libvirt.  What summoner needs to recognise its VMs after a restart
of its own lives in ``<metadata>`` under summoner's XML namespace, where
``virsh dumpxml`` shows it.

Tests: tests/vm/test_domxml.py
"""

from __future__ import annotations

import hashlib
import xml.etree.ElementTree as ET
from dataclasses import dataclass

from summoner.vm.spec import VMSpec

NS = "https://summoner.invalid/xmlns/vm/1"
NS_PREFIX = "summoner"
QEMU_NS = "http://libvirt.org/schemas/domain/qemu/1.0"
LOG_DIR = "/var/log/libvirt/qemu"
USER_GUEST_IP = "10.0.2.15::10.0.2.2:255.255.255.0::eth0:off"

ET.register_namespace("qemu", QEMU_NS)
ET.register_namespace(NS_PREFIX, NS)


@dataclass(frozen=True)
class NetworkSettings:
    mode: str = "user"          # user | bridge
    bridge: str = "br0"
    gateway: str = ""
    netmask: str = "255.255.255.0"
    ipv6_prefix: int = 64
    ipv6_gateway: str = ""


@dataclass(frozen=True)
class Metadata:
    service: str
    image: str
    config_hash: str
    address: str
    port: int
    standby: bool = False


def metadata_xml(spec: VMSpec, standby: bool = False) -> str:
    """The element stored with ``setMetadata`` / embedded at creation.
    ``standby``: created paused ahead of demand; the guest has never run."""
    attrs = {"service": spec.service, "image": spec.image, "hash": spec.config_hash,
             "address": spec.address, "port": str(spec.port)}
    if standby:
        attrs["standby"] = "1"
    el = ET.Element(f"{{{NS}}}vm", attrs)
    return ET.tostring(el, encoding="unicode")


def parse_metadata(text: str | None) -> Metadata | None:
    """Our metadata element, either alone (``dom.metadata()``) or inside a
    whole domain XML; None if absent or not ours."""
    if not text:
        return None
    try:
        root = ET.fromstring(text)
    except ET.ParseError:
        return None
    # dom.metadata() returns the element with its namespace stripped; a
    # whole domain XML has it namespaced under <metadata>.
    el = root if root.tag in (f"{{{NS}}}vm", "vm") else root.find(f"metadata/{{{NS}}}vm")
    if el is None:
        return None
    try:
        return Metadata(el.attrib["service"], el.attrib.get("image", ""), el.attrib.get("hash", ""),
                        el.attrib.get("address", ""), int(el.attrib.get("port", "0")),
                        el.attrib.get("standby") == "1")
    except (KeyError, ValueError):
        return None


def mac_for(service: str) -> str:
    """Stable per service, so a re-booted VM keeps its MAC (neighbour caches)."""
    h = hashlib.sha256(service.encode()).digest()
    return f"52:54:00:{h[0]:02x}:{h[1]:02x}:{h[2]:02x}"


def console_log_path(domain_name: str) -> str:
    return f"{LOG_DIR}/{domain_name}.console.log"


def qemu_log_path(domain_name: str) -> str:
    return f"{LOG_DIR}/{domain_name}.log"


def guest_ip_arg(spec: VMSpec, net: NetworkSettings) -> str:
    """The kernel's ip= (IPv4); in bridge mode for a host with an AAAA also
    summoner_ip6= (and summoner_ip6gw=), which the kernel hands to the
    guest's init as environment variables (images/common/net6.c)."""
    if net.mode == "user":
        return "ip=" + USER_GUEST_IP
    args = [f"ip={spec.address}::{net.gateway}:{net.netmask}::eth0:off"]
    if spec.address6 is not None:
        args.append(f"summoner_ip6={spec.address6}/{net.ipv6_prefix}")
        if net.ipv6_gateway:
            args.append(f"summoner_ip6gw={net.ipv6_gateway}")
    return " ".join(args)


def _sub(parent: ET.Element, tag: str, text: str | None = None, **attrs: str) -> ET.Element:
    el = ET.SubElement(parent, tag, attrs)
    if text is not None:
        el.text = text
    return el


def _os(dom: ET.Element, spec: VMSpec, net: NetworkSettings, machine: str) -> None:
    os_el = _sub(dom, "os")
    _sub(os_el, "type", "hvm", arch=spec.arch, machine=machine)
    if spec.boot_kind != "kernel":
        _sub(os_el, "boot", dev="hd")
        return
    if spec.kernel is None:
        raise ValueError(f"{spec.image}: kernel boot without a kernel")
    _sub(os_el, "kernel", str(spec.kernel))
    if spec.initrd is not None:
        _sub(os_el, "initrd", str(spec.initrd))
    cmdline = " ".join(x for x in (spec.cmdline, guest_ip_arg(spec, net)) if x)
    _sub(os_el, "cmdline", cmdline)


def _disk(dev: ET.Element, spec: VMSpec) -> None:
    if spec.disk is None:
        raise ValueError(f"{spec.image}: disk boot without a disk")
    disk = _sub(dev, "disk", type="file", device="disk")
    _sub(disk, "driver", name="qemu", type=spec.disk_format)
    _sub(disk, "source", file=str(spec.disk))
    _sub(disk, "target", dev="vda", bus="virtio")
    # Several VMs may share one image file and none may change it.
    _sub(disk, "readonly") if spec.disk_format == "raw" else _sub(disk, "transient")


def _console(dev: ET.Element, spec: VMSpec) -> None:
    serial = _sub(dev, "serial", type="pty")
    _sub(serial, "log", file=console_log_path(spec.domain_name), append="off")
    _sub(serial, "target", port="0")
    console = _sub(dev, "console", type="pty")
    _sub(console, "target", type="serial", port="0")


def _network(dom: ET.Element, dev: ET.Element, spec: VMSpec, net: NetworkSettings, host_port: int | None) -> None:
    if net.mode == "bridge":
        iface = _sub(dev, "interface", type="bridge")
        _sub(iface, "source", bridge=net.bridge)
        _sub(iface, "mac", address=mac_for(spec.service))
        _sub(iface, "model", type="virtio")
        _sub(iface, "rom", enabled="no")
        return
    # libvirt 9.0 rejects <interface type='user'> port forwarding (it needs
    # passt), so user networking is passed to QEMU directly.  restrict=on:
    # the guest reaches nothing; only the forwarded port reaches it.
    cl = ET.SubElement(dom, f"{{{QEMU_NS}}}commandline")
    netdev = (f"user,id=sn0,restrict=on,"
              f"hostfwd=tcp:{spec.address}:{host_port or spec.port}-:{spec.port}")
    device = f"virtio-net-pci,netdev=sn0,addr=0x5,romfile=,mac={mac_for(spec.service)}"
    for arg in ("-netdev", netdev, "-device", device):
        ET.SubElement(cl, f"{{{QEMU_NS}}}arg", {"value": arg})


def domain_xml(spec: VMSpec, virt_type: str, net: NetworkSettings, machine: str = "pc",
               emulator: str | None = None, host_port: int | None = None, standby: bool = False) -> str:
    """Domain XML for a transient domain running ``spec``.

    ``virt_type`` is libvirt's domain type: ``kvm`` or ``qemu`` (TCG).
    ``host_port``: forward from this host port instead of the service's own.
    """
    dom = ET.Element("domain", {"type": virt_type})
    _sub(dom, "name", spec.domain_name)
    _sub(dom, "title", f"summoner: {spec.service} ({spec.image})")
    meta = _sub(dom, "metadata")
    meta.append(ET.fromstring(metadata_xml(spec, standby)))
    _sub(dom, "memory", str(spec.memory_mib), unit="MiB")
    _sub(dom, "vcpu", str(spec.vcpus))
    _os(dom, spec, net, machine)
    if spec.arch == "aarch64":
        # virt's default CPU is a 32-bit Cortex-A15; ACPI there needs UEFI, and the
        # kernel is booted directly with a device tree, so no <acpi/>
        if virt_type == "kvm":
            _sub(dom, "cpu", mode="host-passthrough")
        else:
            _sub(_sub(dom, "cpu", mode="custom", match="exact"), "model", "cortex-a57", fallback="forbid")
    else:
        features = _sub(dom, "features")
        _sub(features, "acpi")  # lets stop mode "shutdown" send an ACPI power button
    _sub(dom, "clock", offset="utc")
    # Any guest exit ends the transient domain: a panicking unikernel
    # (panic=-1 reboots) must not loop, and its stop is reported as an event.
    _sub(dom, "on_poweroff", "destroy")
    _sub(dom, "on_reboot", "destroy")
    _sub(dom, "on_crash", "destroy")
    dev = _sub(dom, "devices")
    if emulator:
        _sub(dev, "emulator", emulator)
    if spec.boot_kind == "disk":
        _disk(dev, spec)
    _sub(dev, "controller", type="usb", model="none")
    _console(dev, spec)
    # The balloon would take PCI slot 2 and collide with the NIC we place by
    # hand in user mode; unikernels do not use it anyway.
    _sub(dev, "memballoon", model="none")
    _network(dom, dev, spec, net, host_port)
    return ET.tostring(dom, encoding="unicode")


def empty_domain_xml(name: str, virt_type: str, machine: str = "pc") -> str:
    """A domain with nothing to boot: started paused, it measures what
    libvirt and QEMU cost before any guest runs (``summoner doctor``)."""
    dom = ET.Element("domain", {"type": virt_type})
    _sub(dom, "name", name)
    _sub(dom, "memory", "16", unit="MiB")
    _sub(dom, "vcpu", "1")
    _sub(_sub(dom, "os"), "type", "hvm", arch="x86_64", machine=machine)
    dev = _sub(dom, "devices")
    _sub(dev, "controller", type="usb", model="none")
    _sub(dev, "memballoon", model="none")
    return ET.tostring(dom, encoding="unicode")
