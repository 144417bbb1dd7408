"""The double's Gatekeeper mode over real HTTP: two double clouds, the
inter-cloud rules of Authorization, GSD and ICN, and the Gateway's sessions --
each as core-java-spring 4.6.2 has it (see tests/arrowhead_double/gatekeeper.py)."""

from __future__ import annotations

import socket
import time

import pytest
import requests

from tests.arrowhead_double import SUMMONER
from tests.arrowhead_double.fixtures import wait_for

RULES = "/authorization/mgmt/intercloud"
SERVICE = {"serviceDefinitionRequirement": "temperature", "interfaceRequirements": ["HTTP-INSECURE-JSON"]}


def register_requester(double, system=SUMMONER) -> None:
    name, address, port = system
    response = requests.post(f"{double.http}/serviceregistry/register-system", timeout=5,
                             json={"systemName": name, "address": address, "port": port})
    assert response.status_code == 201, response.text


def orchestrate(double, *, intercloud: bool = True, trigger: bool = False, matchmaking: bool = True):
    name, address, port = SUMMONER
    return requests.post(f"{double.http}/orchestrator/orchestration", timeout=10, json={
        "requesterSystem": {"systemName": name, "address": address, "port": port},
        "requestedService": SERVICE,
        "orchestrationFlags": {"overrideStore": True, "matchmaking": matchmaking, "enableInterCloud": intercloud,
                               "triggerInterCloud": trigger}})


@pytest.fixture
def provided(clouds, echo_server):
    """cloud1 provides temperature (no rules yet); summoner's system is in cloud2."""
    cloud1, cloud2 = clouds
    response = cloud1.register_provider("temperature", "127.0.0.1", echo_server, authorize=None)
    assert response.status_code == 201, response.text
    register_requester(cloud2)
    return cloud1, cloud2, ("provider", "127.0.0.1", echo_server)


def test_no_gatekeeper_mode_refuses_inter_cloud_as_upstream(arrowhead_double):
    register_requester(arrowhead_double)
    response = orchestrate(arrowhead_double, trigger=True)
    assert response.status_code == 400
    assert response.json()["errorMessage"] == ("Forced inter cloud service request can not be served. "
                                               "Orchestrator runs in NO GATEKEEPER mode.")
    # enableInterCloud alone: the local (empty) result, no Gatekeeper asked
    assert orchestrate(arrowhead_double).json() == {"response": []}


def test_intercloud_rules_add_list_get_delete(provided):
    cloud1, cloud2, provider = provided
    clouds = cloud1.mgmt("/gatekeeper/mgmt/clouds")
    assert {(c["name"], c["ownCloud"], c["neighbor"]) for c in clouds} == {("cloud1", True, False),
                                                                            ("cloud2", False, True)}
    created = cloud1.authorize_cloud(cloud2, provider, "temperature")
    assert created["count"] == 1
    [rule] = created["data"]
    assert set(rule) == {"id", "cloud", "provider", "serviceDefinition", "interfaces", "createdAt", "updatedAt"}
    assert rule["cloud"]["name"] == "cloud2" and rule["provider"]["systemName"] == "provider"
    assert [i["interfaceName"] for i in rule["interfaces"]] == ["HTTP-INSECURE-JSON"]
    # the same cloud, provider and service again: skipped, not an error
    assert cloud1.authorize_cloud(cloud2, provider, "temperature")["count"] == 0
    assert [r["id"] for r in cloud1.mgmt(RULES)] == [rule["id"]]
    assert requests.get(f"{cloud1.http}{RULES}/{rule['id']}", timeout=5).json()["id"] == rule["id"]
    assert requests.delete(f"{cloud1.http}{RULES}/{rule['id']}", timeout=5).status_code == 200
    missing = requests.get(f"{cloud1.http}{RULES}/{rule['id']}", timeout=5)
    assert missing.status_code == 400
    assert missing.json()["errorMessage"] == f"AuthorizationInterCloud with id of '{rule['id']}' not exists"
    bad = requests.post(f"{cloud1.http}{RULES}", timeout=5, json={"cloudId": 0, "providerIdList": []})
    assert bad.status_code == 400
    assert bad.json()["errorMessage"] == ("Cloud Id is not valid, ProviderList is null or blank, "
                                          "ServiceDefinitionList is null or blank, InterfaceList is null or blank")
    unknown = requests.post(f"{cloud1.http}{RULES}", timeout=5, json={
        "cloudId": 999, "providerIdList": [1], "serviceDefinitionIdList": [1], "interfaceIdList": [1]})
    assert (unknown.status_code, unknown.json()["errorMessage"]) == (400, "Cloud with id of 999 not exists")


def test_gsd_and_icn_find_the_other_cloud_s_provider_only_with_a_rule(provided):
    cloud1, cloud2, provider = provided
    assert orchestrate(cloud2).json() == {"response": []}
    gsd = requests.post(f"{cloud2.http}/gatekeeper/init_gsd", timeout=5, json={"requestedService": SERVICE}).json()
    assert gsd == {"results": [], "unsuccessfulRequests": 1}
    cloud1.authorize_cloud(cloud2, provider, "temperature")
    gsd = requests.post(f"{cloud2.http}/gatekeeper/init_gsd", timeout=5, json={"requestedService": SERVICE}).json()
    [poll] = gsd["results"]
    assert poll["providerCloud"]["name"] == "cloud1" and poll["providerCloud"]["id"] == cloud2.cloud_id(cloud1)
    assert (poll["numOfProviders"], poll["availableInterfaces"], poll["gatewayIsMandatory"]) == (
        1, ["HTTP-INSECURE-JSON"], False)
    name, address, port = SUMMONER
    icn = requests.post(f"{cloud2.http}/gatekeeper/init_icn", timeout=5, json={
        "requestedService": SERVICE, "targetCloudId": poll["providerCloud"]["id"],
        "requesterSystem": {"systemName": name, "address": address, "port": port}}).json()
    [result] = icn["response"]
    assert (result["provider"]["address"], result["provider"]["port"]) == provider[1:]
    answer = orchestrate(cloud2)
    assert answer.status_code == 200, answer.text
    [result] = answer.json()["response"]
    assert (result["provider"]["systemName"], result["provider"]["port"]) == ("provider", provider[2])
    assert result["warnings"] == ["TTL_UNKNOWN", "FROM_OTHER_CLOUD"]
    # without enableInterCloud the local cloud's (empty) answer stands
    assert orchestrate(cloud2, intercloud=False).json() == {"response": []}


def test_gateway_mode_a_session_port_that_forwards_then_times_out(provided):
    cloud1, cloud2, provider = provided
    cloud1.authorize_cloud(cloud2, provider, "temperature")
    cloud1.control("knobs", {"gateway_is_mandatory": True, "gateway_is_present": True})
    # a requester cloud without a gateway is refused by the provider cloud
    refused = orchestrate(cloud2)
    assert (refused.status_code, refused.json()["errorMessage"]) == (400, "Requester cloud must have gateway available")
    cloud2.control("knobs", {"gateway_is_present": True, "inactive_gateway_bridge_timeout": 1.0,
                             "gateway_socket_timeout": 1.5})
    answer = orchestrate(cloud2)
    assert answer.status_code == 200, answer.text
    [result] = answer.json()["response"]
    assert result["warnings"] == ["TTL_UNKNOWN", "VIA_GATEWAY", "FROM_OTHER_CLOUD"]
    gateway = result["provider"]
    assert gateway["systemName"] == "gateway" and gateway["address"] == "127.0.0.1"
    [session] = cloud2.mgmt("/gateway/mgmt/sessions")
    assert session["consumerServerSocketPort"] == gateway["port"] != provider[2]
    assert session["provider"]["port"] == provider[2] and session["consumer"]["systemName"] == "summoner"
    with socket.create_connection(("127.0.0.1", gateway["port"]), timeout=5) as conn:
        conn.sendall(b"ping")
        assert conn.recv(16) == b"ping"  # through the gateway to the provider
        time.sleep(1.5)  # idle past inactive_gateway_bridge_timeout
        assert conn.recv(16) == b""  # the gateway closed the session
    assert cloud2.mgmt("/gateway/mgmt/sessions") == []
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", gateway["port"]), timeout=2).close()
    # a session nobody connects to is gone after gateway_socket_timeout
    orchestrate(cloud2)
    assert len(cloud2.mgmt("/gateway/mgmt/sessions")) == 1
    wait_for(lambda: cloud2.mgmt("/gateway/mgmt/sessions") == [], timeout=5, what="the unused session to close")


def test_gatekeeper_errors_as_upstream(provided):
    cloud1, cloud2, _ = provided
    name, address, port = SUMMONER
    unknown = requests.post(f"{cloud2.http}/gatekeeper/init_icn", timeout=5, json={
        "requestedService": SERVICE, "targetCloudId": 999,
        "requesterSystem": {"systemName": name, "address": address, "port": port}})
    assert (unknown.status_code, unknown.json()["errorMessage"]) == (400, "Cloud with id '999' not exists")
    again = requests.post(f"{cloud2.http}/gatekeeper/mgmt/clouds", timeout=5,
                          json=[{"operator": "aitia", "name": "cloud1", "neighbor": True}])
    assert again.status_code == 400 and "uinque constraint violation" in again.json()["errorMessage"]
    # a cloud with no neighbours: the GSD, and so the orchestration, fails with upstream's 400
    cloud2.control("reset", {"registry": True})
    cloud2.control("knobs", {"gatekeeper_is_present": True})
    register_requester(cloud2)
    lonely = orchestrate(cloud2)
    assert lonely.status_code == 400
    assert lonely.json()["errorMessage"] == ("initGSDPoll failed: Neither preferred clouds were given, nor neighbor "
                                             "clouds registered")
