"""deploy/grafana/summoner.json: a well-formed dashboard whose every query
uses metrics that a real summoner serve exports, provisioned by compose."""

from __future__ import annotations

import json
import re

import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import EXAMPLE_ZONES, ROOT

DASHBOARD = json.loads((ROOT / "deploy" / "grafana" / "summoner.json").read_text())
METRIC_NAME = re.compile(r"\bsummoner_[a-z0-9_]+")


def expressions() -> list[str]:
    return [target["expr"] for panel in DASHBOARD["panels"] for target in panel["targets"]]


def exported_names(exposition: str) -> set[str]:
    """Every name a query may use: families, their samples, and the
    suffixes of histograms and counters even before they have samples."""
    names = set()
    for family in text_string_to_metric_families(exposition):
        names.add(family.name)
        names.update(sample.name for sample in family.samples)
        if family.type == "histogram":
            names.update(family.name + suffix for suffix in ("_bucket", "_sum", "_count"))
        elif family.type == "counter":
            names.add(family.name + "_total")
    return names


def test_the_dashboard_is_well_formed_and_uses_the_provisioned_datasource():
    datasources = yaml.safe_load((ROOT / "deploy" / "grafana" / "provisioning" / "datasources"
                                  / "prometheus.yml").read_text())["datasources"]
    uids = {source["uid"] for source in datasources}
    assert DASHBOARD["uid"] == "summoner" and DASHBOARD["panels"]
    for panel in DASHBOARD["panels"]:
        assert panel["title"] and panel["targets"], panel
        assert panel["datasource"]["uid"] in uids
        for target in panel["targets"]:
            assert target["datasource"]["uid"] in uids and METRIC_NAME.search(target["expr"]), target
    titles = " ".join(panel["title"] for panel in DASHBOARD["panels"]).lower()
    for topic in ("rcode", "latency", "vms by state", "boots", "phases", "query to ready", "reaps", "arrowhead"):
        assert topic in titles, topic


def test_every_metric_the_dashboard_queries_is_exported(start_server):
    server = start_server(EXAMPLE_ZONES, "--virt-type", "qemu",
                          "--arrowhead-orchestrator", "http://127.0.0.1:9", "--no-arrowhead-publish")
    server.query("www.example.org", "A")
    exported = exported_names(server.metrics())
    used = {name for expr in expressions() for name in METRIC_NAME.findall(expr)}
    assert used, "no metric found in the dashboard's queries"
    assert used - exported == set(), f"queried but not exported: {sorted(used - exported)}"


def test_the_check_would_catch_a_misspelt_metric(start_server):
    server = start_server(EXAMPLE_ZONES, "--no-on-demand")
    assert "summoner_dns_querys_total" not in exported_names(server.metrics())
    assert "summoner_dns_queries_total" in exported_names(server.metrics())


def test_compose_provisions_the_dashboard_next_to_prometheus():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    grafana = compose["services"]["grafana"]
    mounts = {volume.split(":")[1]: volume.split(":")[0] for volume in grafana["volumes"]}
    assert mounts["/var/lib/grafana/dashboards/summoner.json"] == "./deploy/grafana/summoner.json"
    assert "prometheus" in grafana["depends_on"]
    provider = yaml.safe_load((ROOT / "deploy" / "grafana" / "provisioning" / "dashboards"
                               / "summoner.yml").read_text())["providers"][0]
    assert provider["options"]["path"] == "/var/lib/grafana/dashboards"
