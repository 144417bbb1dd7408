"""pytest fixtures for the Arrowhead double (loaded from tests/conftest.py)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.arrowhead_double import DoubleProcess, join_clouds, pki

SYSTEMS = ["orchestrator", "serviceregistry", "summoner", "provider", "sysop"]


@pytest.fixture(scope="session")
def arrowhead_pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The cloud's PKI (the double's server certificate, summoner's client one)."""
    return pki.generate(tmp_path_factory.mktemp("pki"), SYSTEMS)


@pytest.fixture(scope="session")
def foreign_pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Another cloud's PKI: same shape and names, different keys and CA."""
    return pki.generate(tmp_path_factory.mktemp("foreign-pki"), ["summoner"], cloud="othercloud")


@pytest.fixture(scope="module")
def arrowhead_double_process(arrowhead_pki: Path) -> Iterator[DoubleProcess]:
    double = DoubleProcess(arrowhead_pki).start()
    try:
        yield double
    finally:
        double.stop()


@pytest.fixture
def arrowhead_double(arrowhead_double_process: DoubleProcess) -> DoubleProcess:
    """The module's double, running, with knobs, counters and registry reset."""
    if arrowhead_double_process.process is None:
        arrowhead_double_process.start()  # a previous test stopped it
    arrowhead_double_process.control("reset", {"registry": True})
    return arrowhead_double_process


@pytest.fixture(scope="module")
def cloud_processes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[DoubleProcess, DoubleProcess]]:
    """Two double clouds, ``cloud1`` and ``cloud2`` (their own PKIs, registries,
    orchestrators, authorization and gatekeepers), as processes."""
    doubles = [DoubleProcess(pki.generate(tmp_path_factory.mktemp(name), SYSTEMS, cloud=name)).start()
               for name in ("cloud1", "cloud2")]
    try:
        yield doubles[0], doubles[1]
    finally:
        for double in doubles:
            double.stop()


@pytest.fixture
def clouds(cloud_processes: tuple[DoubleProcess, DoubleProcess]) -> tuple[DoubleProcess, DoubleProcess]:
    """The two clouds, reset, then joined by their Gatekeepers (no gateway)."""
    for double in cloud_processes:
        if double.process is None:
            double.start()
        double.control("reset", {"registry": True})
    join_clouds(*cloud_processes)
    return cloud_processes


@pytest.fixture
def echo_server() -> Iterator[int]:
    """A TCP echo server on loopback (its port): a provider that shows bytes
    got through, e.g. through the double's Gateway."""
    server = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            with conn:
                while data := conn.recv(4096):
                    conn.sendall(data)

    threading.Thread(target=serve, daemon=True).start()
    yield server.getsockname()[1]
    server.close()


def wait_for(predicate: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
    """Poll until ``predicate()`` is truthy (the thing is asynchronous by design)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)
