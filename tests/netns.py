"""A bridged edge segment inside network namespaces, for bridge-mode tests.

What README "Bridge mode" asks an operator to set up on a host, made here in
namespaces the test owns (the only non-loopback addresses tests may use):

    namespace SERVER                                    namespace CLIENT
    ┌──────────────────────────────────────────┐        ┌──────────────────┐
    │ bridge BRIDGE  192.0.2.1/24 2001:db8::1/64│        │ veth 192.0.2.50  │
    │   ├── tap of each guest (libvirt)         │ veth   │      2001:db8::50│
    │   └── veth ───────────────────────────────┼────────┤ dig, curl        │
    │ summoner serve, listening on 192.0.2.1    │        └──────────────────┘
    │ libvirtd + virtlogd of its own            │
    └──────────────────────────────────────────┘

The libvirt daemons run inside SERVER (so QEMU and its taps are there) in a
mount namespace of their own, with a private /run/libvirt (the host's
libvirtd keeps its own) and their sockets in a directory of this test
(``uri``).  ``close`` destroys the guests, stops the daemons and removes
both namespaces; ``bridged_segment`` calls it however the test ends.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

BRIDGE = "br-summoner"
GATEWAY4, GATEWAY6 = "192.0.2.1", "2001:db8::1"
CLIENT4, CLIENT6 = "192.0.2.50", "2001:db8::50"


def run(*argv: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, check=check, timeout=timeout)


@dataclass
class Segment:
    server: str          # namespace names
    client: str
    workdir: Path
    libvirtd: subprocess.Popen | None = None

    @property
    def uri(self) -> str:
        return f"qemu+unix:///system?socket={self.workdir}/sock/libvirt-sock"

    def in_server(self, *argv: str) -> list[str]:
        return ["ip", "netns", "exec", self.server, *argv]

    def in_client(self, *argv: str) -> list[str]:
        return ["ip", "netns", "exec", self.client, *argv]

    def client_run(self, *argv: str, timeout: float = 60) -> subprocess.CompletedProcess:
        return run(*self.in_client(*argv), check=False, timeout=timeout)

    def virsh(self, *argv: str) -> subprocess.CompletedProcess:
        return run("virsh", "-c", self.uri, *argv, check=False)

    def domains(self) -> list[str]:
        return [name for name in self.virsh("list", "--name").stdout.split() if name]

    # -- set-up and tear-down

    def create(self) -> None:
        for ns in (self.server, self.client):
            run("ip", "netns", "add", ns)
        s, c = self.server, self.client
        run("ip", "-n", s, "link", "set", "lo", "up")
        run("ip", "-n", c, "link", "set", "lo", "up")
        run("ip", "-n", s, "link", "add", BRIDGE, "type", "bridge")
        run("ip", "-n", s, "addr", "add", f"{GATEWAY4}/24", "dev", BRIDGE)
        run("ip", "-n", s, "addr", "add", f"{GATEWAY6}/64", "dev", BRIDGE, "nodad")
        run("ip", "-n", s, "link", "set", BRIDGE, "up")
        run("ip", "link", "add", "vsm-s", "netns", s, "type", "veth", "peer", "name", "vsm-c", "netns", c)
        run("ip", "-n", s, "link", "set", "vsm-s", "master", BRIDGE, "up")
        run("ip", "-n", c, "addr", "add", f"{CLIENT4}/24", "dev", "vsm-c")
        run("ip", "-n", c, "addr", "add", f"{CLIENT6}/64", "dev", "vsm-c", "nodad")
        run("ip", "-n", c, "link", "set", "vsm-c", "up")

    def start_libvirt(self) -> None:
        work = self.workdir
        (work / "sock").mkdir(parents=True)
        (work / "libvirtd.conf").write_text(
            f'unix_sock_dir = "{work}/sock"\nunix_sock_group = "root"\nunix_sock_rw_perms = "0700"\n'
            'auth_unix_rw = "none"\nauth_unix_ro = "none"\n')
        # libvirtd in the foreground, our child: stopped and reaped by close()
        script = (f"set -e; mount -t tmpfs tmpfs /run/libvirt; virtlogd -d -p {work}/virtlogd.pid; "
                  f"exec libvirtd -p {work}/libvirtd.pid -f {work}/libvirtd.conf")
        log = open(work / "libvirtd.log", "wb")
        self.libvirtd = subprocess.Popen(self.in_server("unshare", "--mount", "--propagation", "private",
                                                        "sh", "-c", script), stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while self.virsh("version").returncode != 0:
            if self.libvirtd.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the namespace's libvirtd did not answer at {self.uri}: "
                                   f"{(work / 'libvirtd.log').read_text(errors='replace')[-2000:]}")
            time.sleep(0.2)

    def close(self) -> list[str]:
        """Tear everything down; returns what could not be (for the test's report)."""
        problems = []
        if self.libvirtd is not None:
            for name in self.domains():
                self.virsh("destroy", name)
            self.libvirtd.terminate()
            try:
                self.libvirtd.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.libvirtd.kill()
                self.libvirtd.wait()
        _kill_from(self.workdir / "virtlogd.pid")
        for ns in (self.server, self.client):
            for pid in run("ip", "netns", "pids", ns, check=False).stdout.split():
                try:
                    os.kill(int(pid), signal.SIGKILL)  # a QEMU or a summoner left behind
                except ProcessLookupError:
                    pass
            done = run("ip", "netns", "del", ns, check=False)
            if done.returncode != 0 and "No such file" not in done.stderr:
                problems.append(f"ip netns del {ns}: {done.stderr.strip()}")
        return problems


def _kill_from(pidfile: Path) -> None:
    try:
        pid = int(pidfile.read_text().strip())
        os.kill(pid, signal.SIGTERM)
    except (OSError, ValueError):
        return  # never started, or already gone
    for _ in range(100):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)


@contextmanager
def bridged_segment(workdir: Path) -> Iterator[Segment]:
    tag = f"{os.getpid() % 100000}"
    segment = Segment(server=f"summoner-srv-{tag}", client=f"summoner-cli-{tag}", workdir=workdir)
    try:
        segment.create()
        segment.start_libvirt()
        yield segment
    finally:
        problems = segment.close()
        if problems:
            raise RuntimeError("bridge-mode test clean-up: " + "; ".join(problems))
