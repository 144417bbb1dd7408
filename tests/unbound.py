"""A real recursive resolver for end-to-end tests: Unbound on loopback, with a
stub zone per summoner, the way a site's resolver sends its clients' queries
for local zones to the servers that hold them.

Everything outside the stub zones is refused by Unbound itself, so nothing a
test asks can leave loopback (no root priming, no DNSSEC lookups).
"""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import dns.exception
import dns.message
import dns.query
import dns.rdatatype

from tests.conftest import free_port


class Unbound:
    def __init__(self, workdir: Path, stubs: dict[str, int]) -> None:
        """``stubs``: zone name → the loopback port of the server holding it."""
        self.workdir = workdir
        self.stubs = stubs
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    def config(self) -> str:
        lines = ["server:", f"  interface: 127.0.0.1@{self.port}", f"  port: {self.port}",
                 '  username: ""', '  chroot: ""', f'  directory: "{self.workdir}"',
                 f'  pidfile: "{self.workdir}/unbound.pid"', "  use-syslog: no",
                 f'  logfile: "{self.workdir}/unbound.log"', "  verbosity: 1",
                 '  module-config: "iterator"', "  do-ip6: no", "  do-not-query-localhost: no",
                 "  access-control: 127.0.0.0/8 allow",
                 # ".test" is one of Unbound's default local zones (RFC 6761): let it through,
                 # and refuse everything that is not a stub zone here.
                 '  local-zone: "test." nodefault', '  local-zone: "." refuse']
        for zone in self.stubs:
            lines.append(f'  local-zone: "{zone}." transparent')
        for zone, port in self.stubs.items():
            lines += ["stub-zone:", f'  name: "{zone}."', f"  stub-addr: 127.0.0.1@{port}"]
        return "\n".join(lines) + "\n"

    def start(self) -> Unbound:
        binary = shutil.which("unbound") or "/usr/sbin/unbound"
        conf = self.workdir / "unbound.conf"
        conf.write_text(self.config())
        checked = subprocess.run(["unbound-checkconf", str(conf)], capture_output=True, text=True)
        assert checked.returncode == 0, f"unbound.conf refused: {checked.stdout}{checked.stderr}"
        self.process = subprocess.Popen([binary, "-d", "-c", str(conf)], stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                self.query(next(iter(self.stubs)), "SOA", timeout=0.5)
                return self
            except (dns.exception.Timeout, ConnectionRefusedError):
                assert self.process.poll() is None, f"unbound exited: {self.log()}"
        raise AssertionError(f"unbound did not answer within 10 s: {self.log()}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)
        self.process = None

    def query(self, name: str, rdtype: str, timeout: float = 5.0, tries: int = 1) -> dns.message.Message:
        """Ask as a stub resolver does: ``tries`` times, ``timeout`` seconds each.
        Unbound drops a reply that comes later than its discard-timeout (1.9 s);
        a client's retry then gets it (from the cache, or the same recursion)."""
        request = dns.message.make_query(name, dns.rdatatype.from_text(rdtype))
        for attempt in range(tries):
            try:
                return dns.query.udp(request, "127.0.0.1", port=self.port, timeout=timeout)
            except dns.exception.Timeout:
                if attempt == tries - 1:
                    raise
        raise AssertionError("tries must be at least 1")

    def log(self) -> str:
        path = self.workdir / "unbound.log"
        return path.read_text() if path.exists() else ""
