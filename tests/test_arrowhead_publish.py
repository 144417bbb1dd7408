"""Publishing on-demand hosts in the double's Service Registry over real HTTP,
and the stage's synchronous cache path."""

from __future__ import annotations

import argparse
import dataclasses

import pytest
from twisted.internet import defer, reactor, task
from twisted.trial import unittest

from summoner.answer import Query
from summoner.arrowhead import PublishedService, add_cli_arguments, build, config_from_args
from tests.arrowhead_double import SUMMONER

HELLO = PublishedService("hello.example.org", "hello", 8080, "hello", "/greet", {"idle": "300"})
TASKS = PublishedService("tasks.example.org.", "tasks", 8081, "tasks")


def make(double, *extra: str):
    parser = argparse.ArgumentParser()
    add_cli_arguments(parser)
    args = parser.parse_args(["--arrowhead-orchestrator", double.http, "--arrowhead-registry", double.http,
                              "--arrowhead-domain", "ah.test", *extra])
    arrowhead = build(config_from_args(args), reactor)
    arrowhead.publisher._backoff.first = 0.1  # keep the test short
    return arrowhead


@defer.inlineCallbacks
def eventually(predicate, timeout: float = 10.0):
    waited = 0.0
    while not (value := predicate()):
        if waited > timeout:
            raise AssertionError("condition not reached in time")
        yield task.deferLater(reactor, 0.05, lambda: None)
        waited += 0.05
    return value


class PublisherTest(unittest.TestCase):
    @pytest.fixture(autouse=True)
    def _double(self, arrowhead_double):
        self.double = arrowhead_double

    def entries(self) -> dict[str, dict]:
        return {e["provider"]["address"]: e for e in self.double.control("state")["entries"]}

    @defer.inlineCallbacks
    def test_hosts_appear_after_start_and_disappear_after_clean_stop(self):
        arrowhead = make(self.double)
        arrowhead.update_services([HELLO, TASKS])
        yield arrowhead.start()
        entries = yield eventually(lambda: len(self.entries()) == 2 and self.entries())
        hello = entries["hello.example.org"]
        assert hello["provider"]["systemName"] == "summoner" and hello["provider"]["port"] == 8080
        assert hello["serviceDefinition"]["serviceDefinition"] == "hello"
        assert hello["serviceUri"] == "/greet" and hello["secure"] == "NOT_SECURE"
        assert hello["metadata"] == {"summoner-image": "hello", "idle": "300"}
        assert [i["interfaceName"] for i in hello["interfaces"]] == ["HTTP-INSECURE-JSON"]
        assert "tasks.example.org" in entries  # the trailing dot of a DNS name is not part of the address
        status = arrowhead.status()["registry"]
        assert {s["state"] for s in status["services"]} == {"registered"}
        yield arrowhead.stop()
        assert self.entries() == {}
        # summoner's own system stays: authorization rules refer to it
        assert any(s["systemName"] == "summoner" for s in self.double.control("state")["systems"])

    @defer.inlineCallbacks
    def test_changed_metadata_is_registered_again(self):
        arrowhead = make(self.double)
        self.addCleanup(arrowhead.stop)
        arrowhead.update_services([HELLO])
        yield arrowhead.start()
        yield eventually(lambda: "hello.example.org" in self.entries())
        changed = dataclasses.replace(HELLO, metadata={"idle": "60"})
        arrowhead.update_services([changed])
        yield eventually(lambda: self.entries().get("hello.example.org", {}).get("metadata")
                         == {"summoner-image": "hello", "idle": "60"})
        assert self.double.counters()["unregister"] == 1

    @defer.inlineCallbacks
    def test_removed_host_is_unregistered(self):
        arrowhead = make(self.double)
        self.addCleanup(arrowhead.stop)
        arrowhead.update_services([HELLO, TASKS])
        yield arrowhead.start()
        yield eventually(lambda: len(self.entries()) == 2)
        arrowhead.update_services([TASKS])
        yield eventually(lambda: list(self.entries()) == ["tasks.example.org"])
        assert self.double.counters()["unregister"] == 1

    @defer.inlineCallbacks
    def test_registry_down_at_start_is_retried_and_never_blocks(self):
        self.double.stop()
        self.addCleanup(lambda: self.double.process or self.double.start())
        arrowhead = make(self.double)
        self.addCleanup(arrowhead.stop)
        arrowhead.update_services([HELLO])
        started = arrowhead.start()
        assert started.called  # start does not wait for the registry
        yield eventually(lambda: arrowhead.publisher.system_state == "failed")
        self.double.start()
        yield eventually(lambda: "hello.example.org" in self.entries(), timeout=15)
        assert arrowhead.status()["registry"]["services"][0]["attempts"] == 1

    @defer.inlineCallbacks
    def test_existing_entry_counts_as_registered(self):
        # Left over from a run that crashed before unregistering.
        self.double.register_provider("hello", "hello.example.org", 8080, system="summoner", uri="/greet",
                                      authorize=None)
        arrowhead = make(self.double)
        self.addCleanup(arrowhead.stop)
        arrowhead.update_services([HELLO])
        yield arrowhead.start()
        yield eventually(lambda: [s["state"] for s in arrowhead.status()["registry"]["services"]] == ["registered"])
        assert self.double.counters()["register"] == 2  # ours, then summoner's answered "already exists"
        assert len(self.entries()) == 1

    @defer.inlineCallbacks
    def test_cache_hit_is_answered_synchronously_with_the_remaining_ttl(self):
        self.double.register_provider("temperature", "10.1.2.3", 8080, authorize=None)
        arrowhead = make(self.double, "--arrowhead-ttl", "20")
        self.addCleanup(arrowhead.stop)
        yield arrowhead.start()
        yield eventually(lambda: arrowhead.publisher.system_state == "registered")
        self.double.authorize(SUMMONER, ("provider", "10.1.2.3", 8080), "temperature")
        first = yield arrowhead.stage.resolve(Query.of("temperature.ah.test", "A"))
        assert 19 <= first.answer[0].ttl <= 20
        assert first.cacheable and first.cache_seconds is not None and first.cache_seconds <= 1.0
        yield task.deferLater(reactor, 1.1, lambda: None)
        second = arrowhead.stage.resolve(Query.of("TEMPERATURE.ah.test", "A"))
        assert not isinstance(second, defer.Deferred)
        assert str(second.answer[0].rdata) == "10.1.2.3"
        assert second.answer[0].ttl <= first.answer[0].ttl - 1  # never outlives the cache entry
        assert self.double.counters()["orchestration"] == 1

    @defer.inlineCallbacks
    def test_mapping_turns_names_into_service_requirements(self):
        arrowhead = make(self.double, "--arrowhead-map", "celsius.ah.test", "service=thermo", "meta.unit=celsius")
        self.addCleanup(arrowhead.stop)
        yield arrowhead.start()
        yield eventually(lambda: arrowhead.publisher.system_state == "registered")
        self.double.register_provider("thermo", "10.9.9.9", 80, metadata={"unit": "kelvin"})
        self.double.register_provider("thermo", "10.1.1.1", 80, system="other", metadata={"unit": "celsius"})
        answer = yield arrowhead.stage.resolve(Query.of("celsius.ah.test", "A"))
        assert [str(rr.rdata) for rr in answer.answer] == ["10.1.1.1"]
        # Outside every served zone and Arrowhead domain: not this stage's name.
        assert arrowhead.stage.resolve(Query.of("thermo.elsewhere.test", "A")) is None


def test_on_demand_hosts_become_published_services():
    from types import SimpleNamespace

    from summoner.arrowhead import published_services
    hosts = [
        SimpleNamespace(name="hello.example.org", image="hello", port=8080, extra={}),
        SimpleNamespace(name="tasks.example.org", image="tasks", port=None,
                        extra={"arrowhead-service": "todo", "arrowhead-uri": "/api", "meta.team": "ops"}),
        SimpleNamespace(name="secret.example.org", image="x", port=80, extra={"arrowhead": "off"}),
        SimpleNamespace(name="bad_name.example.org", image="x", port=80, extra={}),
    ]
    assert published_services(hosts) == [
        PublishedService("hello.example.org", "hello", 8080, "hello", "/"),
        PublishedService("tasks.example.org", "todo", 80, "tasks", "/api", {"team": "ops"}),
    ]


def test_no_on_demand_server_still_serves_the_arrowhead_status_page(start_server, arrowhead_double):
    """The admin endpoint belongs to the top: without the on-demand part,
    /arrowhead is there, /services is a JSON 404 and ``summoner status`` says so."""
    import json
    import subprocess
    import sys
    import urllib.error
    import urllib.request

    from tests.arrowhead_double.fixtures import wait_for
    from tests.conftest import EXAMPLE_ZONES, ROOT
    server = start_server(EXAMPLE_ZONES, "--no-on-demand", "--arrowhead-orchestrator", arrowhead_double.http,
                          "--arrowhead-registry", arrowhead_double.http, "--arrowhead-domain", "ah.test")
    base = f"http://127.0.0.1:{server.admin_port}"
    wait_for(lambda: json.load(urllib.request.urlopen(base + "/arrowhead", timeout=5))["registry"]["system"]
             ["state"] == "registered", what="summoner's system registration on /arrowhead")
    status = json.load(urllib.request.urlopen(base + "/arrowhead", timeout=5))
    assert status["orchestrator"]["state"] == "up" and status["registry"]["services"] == []
    with pytest.raises(urllib.error.HTTPError) as missing:
        urllib.request.urlopen(base + "/services", timeout=5)
    assert missing.value.code == 404 and "error" in json.loads(missing.value.read())
    done = subprocess.run([sys.executable, "-m", "summoner", "status", "--admin", base], capture_output=True,
                          text=True, cwd=ROOT, timeout=30)
    assert done.returncode == 0, done.stderr
    assert "no on-demand part" in done.stdout and "registry: system registered" in done.stdout
    assert "libvirt" not in server.log()
    assert server.stop() == 0
