"""Fixtures for tests that boot real guests: libvirtd, built images, a zone of
on-demand hosts, ``summoner serve`` processes, and cleanup of our domains."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import ROOT, Server, launch, wait_until_answering

URI = "qemu:///system"
IMAGE_DIRS = ["--images", str(ROOT / "images"), "--images", str(ROOT / "tests" / "images")]

# One zone, distinct addresses from the shipped example zone, so these tests
# never meet VMs of other tests' servers.
ZONE = """$ORIGIN od.test.
$TTL 300
@ IN SOA ns1 hostmaster 1 3600 600 86400 60
  IN NS ns1
ns1 IN A 127.0.0.1
hello  IN A 127.0.0.20
_summoner.hello IN TXT "image=hello" {hello}
tasks  IN A 127.0.0.21
_summoner.tasks IN TXT "image=tasks" {tasks}
crowd  IN A 127.0.0.22
_summoner.crowd IN TXT "image=hello" {crowd}
silent IN A 127.0.0.23
_summoner.silent IN TXT "image=silent" "boot_timeout=3"
{extra}"""


def libvirt_up() -> bool:
    return subprocess.run(["virsh", "-c", URI, "version"], capture_output=True).returncode == 0


@pytest.fixture(scope="session")
def vm_env() -> None:
    """libvirtd running (started by scripts/start-libvirt.sh if needed) and
    the images built (cheap when they are: make decides)."""
    if not shutil.which("virsh"):
        pytest.fail("libvirt is not installed: run scripts/install.sh")
    if not libvirt_up():
        subprocess.run([str(ROOT / "scripts" / "start-libvirt.sh")], check=True)
    from summoner.images import build_image
    build_image("all", ROOT / "images")


def our_domains() -> list[str]:
    """Names of running domains carrying summoner metadata."""
    import libvirt

    from summoner.vm.domxml import NS
    conn = libvirt.open(URI)
    try:
        names = []
        for dom in conn.listAllDomains(0):
            try:
                dom.metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, NS, 0)
            except libvirt.libvirtError:
                continue
            names.append(dom.name())
        return names
    finally:
        conn.close()


def destroy_ours() -> None:
    for name in our_domains():
        subprocess.run(["virsh", "-c", URI, "destroy", name], capture_output=True)


@pytest.fixture
def clean_domains(vm_env) -> Iterator[None]:
    destroy_ours()
    yield
    destroy_ours()


class ODServer(Server):
    def status(self) -> dict[str, dict]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.admin_port}/services", timeout=10) as reply:
            return {row["name"]: row for row in json.load(reply)}

    def wait_state(self, name: str, state: str, timeout: float = 20.0) -> dict:
        deadline = time.monotonic() + timeout
        row: dict = {}
        while time.monotonic() < deadline:
            row = self.status()[name]
            if row["state"] == state:
                return row
            time.sleep(0.1)
        raise AssertionError(f"{name} did not become {state} within {timeout}s: {row}\n{self.log()[-3000:]}")


@pytest.fixture
def od_server(vm_env, clean_domains, tmp_path_factory) -> Iterator:
    """Start ``summoner serve`` on the od.test zone; keyword arguments fill the
    zone's per-host options (e.g. ``hello='"idle=2"'``); extra args go to serve.
    Depends on ``clean_domains`` so that servers stop before the domains are
    destroyed (a running server would notice and prepare standby domains)."""
    servers: list[ODServer] = []

    def start(*extra: str, hello: str = "", tasks: str = "", crowd: str = "", zone_extra: str = "",
              images_first: tuple[str, ...] = ()) -> ODServer:
        """``zone_extra``: more records at the end of the zone; ``images_first``:
        image directories searched before the shipped ones (the first wins a name)."""
        workdir = tmp_path_factory.mktemp("od")
        zones = workdir / "zones"
        zones.mkdir()
        (zones / "od.test.zone").write_text(ZONE.format(hello=hello, tasks=tasks, crowd=crowd, extra=zone_extra))
        first = [arg for directory in images_first for arg in ("--images", directory)]
        server = launch(workdir, zones, "--virt-type", "qemu", "--reap-interval", "0.5", "--state-dir",
                        str(workdir / "state"), *first, *IMAGE_DIRS,
                        *extra, server_class=ODServer)
        servers.append(server)
        wait_until_answering(server)
        return server

    yield start
    for server in servers:
        server.stop()


def stop_libvirtd() -> None:
    """Stop the libvirtd we run (by its pid file) and wait until it is gone."""
    pid_file = Path("/var/run/libvirtd.pid")
    pid = int(pid_file.read_text().strip())
    os.kill(pid, 15)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    raise AssertionError(f"libvirtd (pid {pid}) did not stop within 15 s")


def start_libvirtd() -> None:
    """Start libvirtd itself (not scripts/start-libvirt.sh, which also sets up the host)."""
    subprocess.run(["libvirtd", "-d"], check=True)
    deadline = time.monotonic() + 30
    while not libvirt_up():
        if time.monotonic() > deadline:
            raise AssertionError("libvirtd did not come back")
        time.sleep(0.1)


def restart_libvirtd() -> None:
    stop_libvirtd()
    start_libvirtd()
