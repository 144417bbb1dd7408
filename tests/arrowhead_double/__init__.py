"""Arrowhead 4.x core double for summoner's tests: see ``server.py``.

``DoubleProcess`` runs it as a separate process on loopback, the way the real
core systems would be separate from summoner.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import requests

ROOT = Path(__file__).resolve().parents[2]

Consumer = tuple[str, str, int]  # a system as Arrowhead identifies it: name, address, port
SUMMONER: Consumer = ("summoner", "127.0.0.1", 53)  # summoner's own system with its default flags


class DoubleProcess:
    """``python -m tests.arrowhead_double`` as a child process.

    Ports are chosen by the OS unless given, and read back from the ready
    line; ``stop`` and ``start`` again keep the ports (for outage tests).
    """

    def __init__(self, pki: Path, http_port: int = 0, https_port: int = 0) -> None:
        self.pki = Path(pki)
        self.http_port = http_port
        self.https_port = https_port
        self.process: subprocess.Popen[str] | None = None

    def start(self) -> DoubleProcess:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.arrowhead_double", "--http-port", str(self.http_port),
             "--https-port", str(self.https_port), "--pki", str(self.pki)],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
            env={**os.environ, "PYTHONPATH": str(ROOT)})
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError("arrowhead double exited before it was ready")
        ready = json.loads(line)
        self.http_port, self.https_port = ready["http"], ready["https"]
        return self

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def https(self) -> str:
        return f"https://127.0.0.1:{self.https_port}"

    # -- test control over the insecure listener

    def control(self, what: str, body: dict[str, Any] | None = None) -> Any:
        if body is None and what == "state":
            response = requests.get(f"{self.http}/control/state", timeout=5)
        else:
            response = requests.post(f"{self.http}/control/{what}", json=body or {}, timeout=5)
        response.raise_for_status()
        return response.json()

    def counters(self) -> dict[str, int]:
        return self.control("state")["counters"]

    def register_provider(self, service: str, address: str, port: int, *, system: str = "provider",
                          uri: str = "/", interfaces: tuple[str, ...] = ("HTTP-INSECURE-JSON",),
                          metadata: dict[str, str] | None = None, secure: str | None = None,
                          authentication_info: str | None = None,
                          authorize: Consumer | None = SUMMONER) -> requests.Response:
        """Register a provider through ``/serviceregistry/register``; then, as
        an operator would, add the intra-cloud rule that lets ``authorize``
        (a registered system: name, address, port) consume it -- None: no rule."""
        response = requests.post(f"{self.http}/serviceregistry/register", timeout=5, json={
            "serviceDefinition": service, "serviceUri": uri, "interfaces": list(interfaces),
            "providerSystem": {"systemName": system, "address": address, "port": port,
                               "authenticationInfo": authentication_info},
            "metadata": metadata, "secure": secure})
        if response.status_code == 201 and authorize is not None:
            provider = response.json()["provider"]
            self.authorize(authorize, (provider["systemName"], provider["address"], provider["port"]), service,
                           interfaces)
        return response

    # -- the management API, over the insecure listener

    def mgmt(self, path: str) -> list[dict[str, Any]]:
        """Every row of a paged management list (``{"data", "count"}``)."""
        response = requests.get(f"{self.http}{path}", timeout=5)
        response.raise_for_status()
        body = response.json()
        assert body["count"] == len(body["data"]), body
        return body["data"]

    def system_id(self, system: Consumer) -> int:
        name, address, port = system
        for row in self.mgmt("/serviceregistry/mgmt/systems"):
            if (row["systemName"], row["address"], row["port"]) == (name.lower(), address.lower(), port):
                return int(row["id"])
        raise AssertionError(f"system {name} ({address}:{port}) is not registered in the double: register it "
                             "(summoner does at start: wait for its registration) before authorizing it")

    def ids(self, service: str, interfaces: tuple[str, ...]) -> tuple[int, list[int]]:
        """The ids of a service definition and of interfaces, from the registry's management lookups."""
        definitions = {d["serviceDefinition"]: d["id"] for d in self.mgmt("/serviceregistry/mgmt/services")}
        known = {i["interfaceName"]: i["id"] for i in self.mgmt("/serviceregistry/mgmt/interfaces")}
        return definitions[service.lower()], [known[i.upper()] for i in interfaces]

    def authorize(self, consumer: Consumer, provider: Consumer, service: str,
                  interfaces: tuple[str, ...] = ("HTTP-INSECURE-JSON",)) -> dict[str, Any]:
        """POST /authorization/mgmt/intracloud for consumer → provider, service, interfaces."""
        service_id, interface_ids = self.ids(service, interfaces)
        response = requests.post(f"{self.http}/authorization/mgmt/intracloud", timeout=5, json={
            "consumerId": self.system_id(consumer), "providerIds": [self.system_id(provider)],
            "serviceDefinitionIds": [service_id], "interfaceIds": interface_ids})
        assert response.status_code == 201, response.text
        return response.json()

    # -- Gatekeeper mode (gatekeeper.py)

    def own_cloud(self) -> dict[str, Any]:
        """This cloud's row of its Gatekeeper's cloud table (CloudResponseDTO)."""
        return next(c for c in self.control("state")["clouds"] if c["ownCloud"])

    def cloud_id(self, other: DoubleProcess) -> int:
        """The id ``other``'s cloud has in this cloud's Gatekeeper."""
        own = other.own_cloud()
        for row in self.mgmt("/gatekeeper/mgmt/clouds"):
            if (row["operator"], row["name"]) == (own["operator"], own["name"]):
                return int(row["id"])
        raise AssertionError(f"cloud {own['name']} is not registered here: join the clouds first")

    def authorize_cloud(self, cloud: DoubleProcess, provider: Consumer, service: str,
                        interfaces: tuple[str, ...] = ("HTTP-INSECURE-JSON",)) -> dict[str, Any]:
        """POST /authorization/mgmt/intercloud: ``cloud`` may consume this
        cloud's ``provider`` (name, address, port) for ``service``."""
        service_id, interface_ids = self.ids(service, interfaces)
        response = requests.post(f"{self.http}/authorization/mgmt/intercloud", timeout=5, json={
            "cloudId": self.cloud_id(cloud), "providerIdList": [self.system_id(provider)],
            "serviceDefinitionIdList": [service_id], "interfaceIdList": interface_ids})
        assert response.status_code == 201, response.text
        return response.json()


def join_clouds(first: DoubleProcess, second: DoubleProcess) -> None:
    """Make two double clouds neighbours, as their operators would: each
    registers the other in its Gatekeeper (``POST /gatekeeper/mgmt/clouds``),
    learns the URL standing in for the relay to it, and its Orchestrator runs
    with a Gatekeeper."""
    for here, there in ((first, second), (second, first)):
        cloud = there.own_cloud()
        response = requests.post(f"{here.http}/gatekeeper/mgmt/clouds", timeout=5, json=[{
            "operator": cloud["operator"], "name": cloud["name"], "secure": False, "neighbor": True,
            "authenticationInfo": None, "gatekeeperRelayIds": [], "gatewayRelayIds": []}])
        assert response.status_code == 201, response.text
        here.control("relay", {"operator": cloud["operator"], "name": cloud["name"], "url": there.http})
        here.control("knobs", {"gatekeeper_is_present": True})
