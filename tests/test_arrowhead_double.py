"""The Arrowhead double itself, over real HTTP(S): Authorization's intra-cloud
rules and the Orchestrator's filtering through them, the Service Registry's
address rules and management lookups, token generation -- each as
core-java-spring 4.6.2 has it, since summoner's tests trust the double."""

from __future__ import annotations

import pytest
import requests

from tests.arrowhead_double import SUMMONER

RULES = "/authorization/mgmt/intracloud"
TEMPERATURE = ("provider", "10.1.2.3", 8080)


def provide(double, service: str, system: tuple[str, str, int], **options) -> requests.Response:
    name, address, port = system
    return double.register_provider(service, address, port, system=name, **options)


def register_system(double, name: str, address: str, port: int) -> requests.Response:
    return requests.post(f"{double.http}/serviceregistry/register-system", timeout=5,
                         json={"systemName": name, "address": address, "port": port})


def orchestrate(double, service: str, requester=SUMMONER, security: list[str] | None = None,
                base: str | None = None, **tls) -> requests.Response:
    name, address, port = requester
    return requests.post(f"{base or double.http}/orchestrator/orchestration", timeout=5, **tls, json={
        "requesterSystem": {"systemName": name, "address": address, "port": port},
        "requestedService": {"serviceDefinitionRequirement": service, "securityRequirements": security},
        "orchestrationFlags": {"overrideStore": True, "matchmaking": False}})


def providers(response: requests.Response) -> list[tuple[str, int]]:
    assert response.status_code == 200, response.text
    return [(r["provider"]["address"], r["provider"]["port"]) for r in response.json()["response"]]


def error(response: requests.Response, status: int, exception_type: str) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["exceptionType"] == exception_type and body["errorCode"] == status and "origin" in body
    return body["errorMessage"]


@pytest.fixture
def double(arrowhead_double):
    assert register_system(arrowhead_double, *SUMMONER).status_code == 201
    return arrowhead_double


def test_without_a_rule_orchestration_is_empty_and_a_rule_lets_exactly_its_consumer_through(double):
    provide(double, "temperature", TEMPERATURE, authorize=None)
    assert register_system(double, "other", "10.0.0.9", 53).status_code == 201
    assert providers(orchestrate(double, "temperature")) == []
    created = double.authorize(SUMMONER, TEMPERATURE, "temperature")
    [rule] = created["data"]
    assert created["count"] == 1
    assert rule["consumerSystem"]["systemName"] == "summoner" and rule["providerSystem"]["port"] == 8080
    assert rule["serviceDefinition"]["serviceDefinition"] == "temperature"
    assert [i["interfaceName"] for i in rule["interfaces"]] == ["HTTP-INSECURE-JSON"]
    assert {"id", "createdAt", "updatedAt"} <= set(rule)
    assert providers(orchestrate(double, "temperature")) == [("10.1.2.3", 8080)]
    assert providers(orchestrate(double, "temperature", ("other", "10.0.0.9", 53))) == []
    # removed: nothing again
    assert requests.delete(f"{double.http}{RULES}/{rule['id']}", timeout=5).status_code == 200
    assert providers(orchestrate(double, "temperature")) == []
    message = error(requests.delete(f"{double.http}{RULES}/{rule['id']}", timeout=5), 400, "INVALID_PARAMETER")
    assert message == f"AuthorizationIntraCloud with id of '{rule['id']}' not exists"


def test_a_rule_for_another_interface_filters_the_provider_out(double):
    provide(double, "temperature", TEMPERATURE, interfaces=("HTTP-SECURE-JSON",), authorize=None)
    double.register_provider("temperature", "10.1.2.4", 8080, system="other",
                             interfaces=("HTTP-INSECURE-JSON", "HTTP-SECURE-JSON"), authorize=None)
    double.register_provider("humidity", "10.1.2.5", 1, system="third", authorize=None)  # interface id for the rule
    double.authorize(SUMMONER, TEMPERATURE, "temperature", ("HTTP-INSECURE-JSON",))
    double.authorize(SUMMONER, ("other", "10.1.2.4", 8080), "temperature", ("HTTP-INSECURE-JSON",))
    [result] = orchestrate(double, "temperature").json()["response"]
    assert result["provider"]["systemName"] == "other"
    assert [i["interfaceName"] for i in result["interfaces"]] == ["HTTP-INSECURE-JSON"]  # only the allowed one


def test_adding_an_existing_rule_is_skipped_whatever_its_interfaces(double):
    provide(double, "temperature", TEMPERATURE, interfaces=("HTTP-INSECURE-JSON", "HTTP-SECURE-JSON"),
            authorize=None)
    double.authorize(SUMMONER, TEMPERATURE, "temperature", ("HTTP-INSECURE-JSON",))
    again = double.authorize(SUMMONER, TEMPERATURE, "temperature", ("HTTP-SECURE-JSON",))
    assert again == {"data": [], "count": 0}  # upstream only logs it
    [rule] = double.mgmt(RULES)
    assert [i["interfaceName"] for i in rule["interfaces"]] == ["HTTP-INSECURE-JSON"]


def test_rule_requests_are_checked_as_upstream_checks_them(double):
    url = f"{double.http}{RULES}"
    message = error(requests.post(url, json={"consumerId": 0}, timeout=5), 400, "BAD_PAYLOAD")
    assert message == ("Payload is invalid due to the following reasons: invalid consumer id, providerId list is "
                       "empty, serviceDefinitionList is empty, interfaceList is empty")
    both = {"consumerId": 1, "providerIds": [1, 2], "serviceDefinitionIds": [3, 4], "interfaceIds": [5]}
    assert "both contain more" in error(requests.post(url, json=both, timeout=5), 400, "BAD_PAYLOAD")
    missing = {"consumerId": 99999, "providerIds": [1], "serviceDefinitionIds": [1], "interfaceIds": [1]}
    assert error(requests.post(url, json=missing, timeout=5), 400, "INVALID_PARAMETER") == (
        "Consumer system with id of 99999 not exists")


def test_lists_are_paged_like_upstream(double):
    for index in range(5):
        double.register_provider(f"svc{index}", f"10.0.1.{index + 1}", 80, system=f"p{index}")
    url = f"{double.http}{RULES}"
    everything = requests.get(url, timeout=5).json()
    assert everything["count"] == 5 and len(everything["data"]) == 5
    second = requests.get(url, params={"page": 1, "item_per_page": 2}, timeout=5).json()
    assert second["count"] == 5 and [r["id"] for r in second["data"]] == [r["id"] for r in everything["data"][2:4]]
    newest = requests.get(url, params={"direction": "DESC"}, timeout=5).json()["data"][0]
    assert newest["id"] == everything["data"][-1]["id"]
    assert "undefined size or page" in error(requests.get(url, params={"page": 1}, timeout=5), 400, "BAD_PAYLOAD")
    systems = double.mgmt("/serviceregistry/mgmt/systems")
    assert {"summoner", "p0", "p4"} <= {s["systemName"] for s in systems}
    assert {d["serviceDefinition"] for d in double.mgmt("/serviceregistry/mgmt/services")} == {
        f"svc{i}" for i in range(5)}
    assert [i["interfaceName"] for i in double.mgmt("/serviceregistry/mgmt/interfaces")] == ["HTTP-INSECURE-JSON"]


def test_management_paths_need_the_system_operator_certificate(double, arrowhead_pki):
    tls = {"verify": str(arrowhead_pki / "master.pem")}
    as_summoner = requests.get(f"{double.https}{RULES}", timeout=5, **tls,
                               cert=(str(arrowhead_pki / "summoner.pem"), str(arrowhead_pki / "summoner.key")))
    message = error(as_summoner, 401, "AUTH")
    assert message == (f"summoner.testcloud.aitia.arrowhead.eu is unauthorized to access "
                       f"https://127.0.0.1:{double.https_port}{RULES}")
    as_sysop = requests.get(f"{double.https}/serviceregistry/mgmt/systems", timeout=5, **tls,
                            cert=(str(arrowhead_pki / "sysop.pem"), str(arrowhead_pki / "sysop.key")))
    assert as_sysop.status_code == 200 and as_sysop.json()["count"] >= 1


@pytest.mark.parametrize("address, reason", [
    ("1st.example.org", "no-type network address is invalid: dot(.) separated parts can contain only letters"),
    ("bad_name.example.org", "no-type network address is invalid"),
    ("edge-.example.org", "no-type network address is invalid"),
    ("0.0.0.0", "ipv4 network address is invalid: placeholder address is denied."),
    ("255.255.255.255", "ipv4 network address is invalid: local broadcast address is denied."),
    ("224.0.0.251", "ipv4 network address is invalid: multicast addresses are denied."),
    ("::", "ipv6 network address is invalid: unspecified address is denied."),
    ("ff02::1", "ipv6 network address is invalid: multicast addresses are denied."),
    ("10.1.2.300", "no-type network address is invalid"),
])
def test_the_registry_refuses_addresses_as_network_address_verifier_does(double, address, reason):
    response = double.register_provider("temperature", address, 8080, authorize=None)
    message = error(response, 400, "BAD_PAYLOAD")
    assert message.startswith("Network address verification failure: ") and reason in message, message
    assert message.endswith(" Address detection process was skipped")
    assert error(register_system(double, "consumer", address, 1), 400, "BAD_PAYLOAD") == message


def test_loopback_and_link_local_are_allowed_as_shipped_and_refused_when_configured_so(double):
    for address in ("127.0.0.5", "localhost", "::1", "169.254.1.1", "hello.example.org"):
        assert register_system(double, "fine", address, 1).status_code == 201, address
    # Stored as NetworkAddressPreProcessor normalises it.
    assert "0000:0000:0000:0000:0000:0000:0000:0001" in {s["address"] for s in double.control("state")["systems"]}
    double.control("knobs", {"allow_self_addressing": False, "allow_non_routable_addressing": False})
    assert "self-addressing is disabled." in error(register_system(double, "no", "127.0.0.5", 1), 400, "BAD_PAYLOAD")
    assert "self-addressing is disabled." in error(register_system(double, "no", "localhost", 1), 400, "BAD_PAYLOAD")
    assert "non-routable-addressing is disabled." in error(
        register_system(double, "no", "fe80::1", 1), 400, "BAD_PAYLOAD")


def test_token_providers_fail_orchestration_in_an_insecure_cloud_unless_excluded(double, arrowhead_pki):
    provide(double, "temperature", TEMPERATURE, secure="TOKEN", authentication_info="key")
    message = error(orchestrate(double, "temperature"), 500, "ARROWHEAD")
    assert message == "Token generation is not possible in insecure mode."
    assert providers(orchestrate(double, "temperature", security=["NOT_SECURE", "CERTIFICATE"])) == []
    # In the secure cloud the token is made (a marker stands in for the JWE).
    cert = (str(arrowhead_pki / "summoner.pem"), str(arrowhead_pki / "summoner.key"))
    secure = orchestrate(double, "temperature", base=double.https, verify=str(arrowhead_pki / "master.pem"),
                         cert=cert)
    [result] = secure.json()["response"]
    assert result["authorizationTokens"] == {"HTTP-INSECURE-JSON": "double-token"}
