"""Fixtures that run the real ``summoner serve`` and talk to it as clients do."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import dns.message
import dns.query
import dns.rdatatype
import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE_ZONES = ROOT / "zones"


def free_port(host: str = "127.0.0.1") -> int:
    """A port free for both UDP and TCP on ``host``."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    for _ in range(50):
        with socket.socket(family, socket.SOCK_STREAM) as tcp:
            tcp.bind((host, 0))
            port = tcp.getsockname()[1]
            try:
                with socket.socket(family, socket.SOCK_DGRAM) as udp:
                    udp.bind((host, port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port")


@dataclass
class Server:
    host: str
    port: int
    metrics_port: int
    process: subprocess.Popen
    log_path: Path
    zones: Path
    args: list[str] = field(default_factory=list)
    admin_port: int = 0

    def query(self, name: str, rdtype: str = "A", tcp: bool = False, timeout: float = 5.0,
              **kwargs) -> dns.message.Message:
        message = dns.message.make_query(name, rdtype, **kwargs)
        if tcp:
            return dns.query.tcp(message, self.host, port=self.port, timeout=timeout)
        return dns.query.udp(message, self.host, port=self.port, timeout=timeout, ignore_trailing=True)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_log(self, text: str, timeout: float = 15.0) -> str:
        """The log once it holds ``text``: some lines are written after the
        event a test waits for (a failed boot is logged once QEMU's log is read)."""
        deadline = time.monotonic() + timeout
        while text not in (log := self.log()):
            if time.monotonic() > deadline:
                raise AssertionError(f"{text!r} not logged within {timeout}s:\n{log[-3000:]}")
            time.sleep(0.1)
        return log

    def metrics(self) -> str:
        import urllib.request
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as reply:
            return reply.read().decode()

    def metric(self, name: str, **labels: str) -> float:
        """Sum of the samples of ``name`` whose labels include ``labels``."""
        total = 0.0
        for line in self.metrics().splitlines():
            if not line.startswith(name + "{") and not line.startswith(name + " "):
                continue
            sample, _, value = line.rpartition(" ")
            if all(f'{k}="{v}"' in sample for k, v in labels.items()):
                total += float(value)
        return total

    def signal(self, sig: int) -> None:
        self.process.send_signal(sig)

    def stop(self) -> int:
        return stop_process(self.process)


def stop_process(process: subprocess.Popen) -> int:
    """SIGTERM, as an operator stops summoner; SIGKILL after 20 s."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode


def summoner_command() -> list[str]:
    return [sys.executable, "-m", "summoner"]


def wait_until_answering(server: Server, deadline: float = 20.0) -> None:
    start = time.monotonic()
    while time.monotonic() - start < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"summoner exited with {server.process.returncode}:\n{server.log()}")
        try:
            server.query(".", "SOA", timeout=0.3)
            return
        except (dns.exception.Timeout, OSError):
            time.sleep(0.05)
    raise RuntimeError(f"summoner did not answer within {deadline}s:\n{server.log()}")


def launch(workdir: Path, zone_dir: Path, *extra: str, host: str = "127.0.0.1",
           server_class: type[Server] = Server) -> Server:
    """Start ``summoner serve`` on free ports, logging to ``workdir``; does not wait."""
    port, metrics_port, admin_port = free_port(host), free_port(), free_port()
    listen = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    # Each server gets its own admin port: parallel servers must not meet.
    admin = [] if "--admin" in extra else ["--admin", f"127.0.0.1:{admin_port}"]
    args = ["serve", "--listen", listen, "--zones", str(zone_dir),
            "--metrics", f"127.0.0.1:{metrics_port}", *admin, *extra]
    log_path = workdir / "summoner.log"
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen(summoner_command() + args, stdout=log_file, stderr=subprocess.STDOUT,
                                   cwd=ROOT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    return server_class(host, port, metrics_port, process, log_path, zone_dir, args, admin_port)


@pytest.fixture
def start_server(tmp_path_factory) -> Iterator:
    """Start ``summoner serve`` with a zone directory (copied, so tests may edit it)."""
    servers: list[Server] = []

    def start(zones: Path = EXAMPLE_ZONES, *extra: str, host: str = "127.0.0.1",
              copy_zones: bool = True, wait: bool = True) -> Server:
        workdir = tmp_path_factory.mktemp("summoner")
        zone_dir = workdir / "zones"
        if copy_zones:
            shutil.copytree(zones, zone_dir)
        else:
            zone_dir = zones
        server = launch(workdir, zone_dir, *extra, host=host)
        servers.append(server)
        if wait:
            wait_until_answering(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture(scope="module")
def example_server(tmp_path_factory) -> Iterator[Server]:
    """One server on the shipped example zones plus the test zones, shared by a module."""
    workdir = tmp_path_factory.mktemp("example")
    zone_dir = workdir / "zones"
    shutil.copytree(EXAMPLE_ZONES, zone_dir)
    for path in (ROOT / "tests" / "zones" / "good").glob("*.zone"):
        shutil.copy(path, zone_dir)
    server = launch(workdir, zone_dir, "--tcp-idle-timeout", "2")
    try:
        wait_until_answering(server)
        yield server
    finally:
        server.stop()


# The Arrowhead core double and its PKI (tests/arrowhead_double).
pytest_plugins = ["tests.arrowhead_double.fixtures"]
