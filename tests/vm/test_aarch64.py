"""aarch64 guests end to end: a real DNS client → ``summoner serve`` →
libvirtd → qemu-system-aarch64 (TCG on this x86_64 host) booting the
aarch64 builds of the images (images/hello-aarch64, images/tasks-aarch64:
the arm64 kernel cross-built from linux-source-6.1, the programs as static
glibc binaries), probed over HTTP through the user-mode port forward.

The zone names the images as an operator on a mixed fleet would:
``image=hello arch=aarch64`` picks hello's aarch64 build."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import dns.rcode
import pytest

from tests.vm.conftest import URI
from tests.vm.test_e2e import addresses, http

pytestmark = [pytest.mark.vm, pytest.mark.slow]

ARM_HOSTS = """arm    IN A 127.0.0.24
_summoner.arm IN TXT "image=hello" "arch=aarch64"
armtasks IN A 127.0.0.25
_summoner.armtasks IN TXT "image=tasks" "arch=aarch64"
"""


def test_a_cold_query_boots_an_aarch64_guest_through_libvirt(od_server):
    # no golden snapshot: the console then shows this boot's own lines
    server = od_server("--no-snapshot-boot", zone_extra=ARM_HOSTS)
    reply = server.query("arm.od.test", "A", timeout=90)
    assert reply.rcode() == dns.rcode.NOERROR, server.log()[-3000:]
    assert addresses(reply) == ["127.0.0.24"]
    assert http("GET", "http://127.0.0.24:8080/") == (200, b"hello from summoner\n")
    domain = "summoner-arm.od.test"
    xml = subprocess.run(["virsh", "-c", URI, "dumpxml", domain], capture_output=True, text=True).stdout
    assert re.search(r"<type arch='aarch64' machine='virt[^']*'>hvm</type>", xml), xml
    assert "<emulator>/usr/bin/qemu-system-aarch64</emulator>" in xml
    assert "<domain type='qemu'" in xml  # a foreign guest: TCG, whatever KVM could do for x86 guests
    row = server.status()["arm.od.test"]
    assert (row["image"], row["arch"]) == ("hello-aarch64", "aarch64")
    console = Path(f"/var/log/libvirt/qemu/{domain}.console.log").read_text(errors="replace")
    # the guest program's own line: the kernel it runs on says aarch64
    assert re.search(r"hello: listening on port 8080 \(6\.1\.\S+ aarch64\)", console), console[-2000:]


def test_the_tasks_round_trip_on_the_aarch64_build(od_server):
    server = od_server(zone_extra=ARM_HOSTS)
    reply = server.query("armtasks.od.test", "A", timeout=90)
    assert reply.rcode() == dns.rcode.NOERROR, server.log()[-3000:]
    base = "http://127.0.0.25:8080/todo/api/v1.0/tasks"
    status, created = http("POST", base, {"title": "summon", "description": "on arm64"})
    assert status == 201, created
    task_id = created["task"]["id"]
    status, listing = http("GET", base)
    assert status == 200 and [t["title"] for t in listing["tasks"] if t["id"] == task_id] == ["summon"]
    assert http("PUT", f"{base}/{task_id}", {"done": True})[1]["task"]["done"] is True
    assert http("DELETE", f"{base}/{task_id}")[0] == 200
    assert http("GET", f"{base}/{task_id}")[0] == 404
    assert server.status()["armtasks.od.test"]["image"] == "tasks-aarch64"
