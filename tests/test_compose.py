"""docker-compose.yml: valid per the Compose Specification schema, coherent
with the files it mounts, and its summoner command accepted by the real CLI.

Docker cannot run on the development machines, so this is validation, not a
run: the schema is the Compose Specification's own (tests/data/compose)."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
import yaml

from summoner.cli import build_parser

ROOT = Path(__file__).resolve().parent.parent
SCHEMA = json.loads((ROOT / "tests" / "data" / "compose" / "compose-spec.json").read_text())


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_compose_file_follows_the_compose_specification(compose):
    jsonschema.Draft202012Validator(SCHEMA, format_checker=jsonschema.FormatChecker()).validate(compose)


@pytest.mark.parametrize("mistake", [
    {"comand": ["serve"]},                                            # misspelt key
    {"depends_on": {"orchestrator": {"condition": "service_ready"}}},  # no such condition
    {"ports": "53:53"},                                               # a list, not a string
])
def test_the_schema_check_catches_mistakes(compose, mistake):
    summoner = {**compose["services"]["summoner"], **mistake}
    broken = {**compose, "services": {**compose["services"], "summoner": summoner}}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft202012Validator(SCHEMA).validate(broken)


def test_summoner_command_is_accepted_by_the_cli(compose):
    command = compose["services"]["summoner"]["command"]
    args = build_parser().parse_args([str(word) for word in command])  # exits (fails the test) on an unknown flag
    assert args.command == "serve"
    from summoner.arrowhead import config_from_args
    config = config_from_args(args)
    assert config is not None and config.orchestrator_url == "http://orchestrator:8441"
    assert args.metrics == ("0.0.0.0", 9153)


def test_local_files_it_mounts_exist_and_prometheus_scrapes_summoner(compose):
    for service in compose["services"].values():
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            # images/ holds build output (make images), not tracked files.
            if source.startswith("./") and source != "./images":
                assert (ROOT / source).exists(), source
    build = compose["services"]["summoner"]["build"]
    assert (ROOT / build["context"] / build["dockerfile"]).exists()
    prometheus = yaml.safe_load((ROOT / "deploy" / "prometheus.yml").read_text())
    targets = [t for job in prometheus["scrape_configs"] for c in job["static_configs"] for t in c["targets"]]
    assert "summoner:9153" in targets


def test_orchestrator_runs_without_gatekeeper():
    properties = (ROOT / "deploy" / "arrowhead" / "orchestrator.properties").read_text().splitlines()
    assert "gatekeeper_is_present=false" in properties


def test_grafana_provisions_the_summoner_dashboard_on_the_compose_prometheus(compose):
    grafana = compose["services"]["grafana"]
    assert grafana["image"].startswith("grafana/grafana-oss:10.")
    assert "prometheus" in grafana["depends_on"]
    # Published on loopback only; anonymous users may look, not edit.
    assert grafana["ports"] == ["127.0.0.1:3000:3000"]
    assert grafana["environment"]["GF_AUTH_ANONYMOUS_ENABLED"] == "true"
    assert grafana["environment"]["GF_AUTH_ANONYMOUS_ORG_ROLE"] == "Viewer"
    mounts = {}
    for volume in grafana["volumes"]:
        source, target, mode = volume.split(":")
        assert mode == "ro" and source.startswith("./"), volume
        assert (ROOT / source).exists(), source   # tracked in the repository
        mounts[target] = ROOT / source
    # Grafana reads every YAML file in these two directories at start.
    datasources = mounts["/etc/grafana/provisioning/datasources"]
    dashboards = mounts["/etc/grafana/provisioning/dashboards"]
    assert (datasources / "prometheus.yml").is_file() and (dashboards / "summoner.yml").is_file()
    [source] = yaml.safe_load((datasources / "prometheus.yml").read_text())["datasources"]
    assert source["type"] == "prometheus" and source["access"] == "proxy"
    host, port = source["url"].removeprefix("http://").split(":")
    assert host == "prometheus" and host in compose["services"]
    assert any(p.split(":")[-1] == port for p in compose["services"]["prometheus"]["ports"])
    [provider] = yaml.safe_load((dashboards / "summoner.yml").read_text())["providers"]
    assert provider["type"] == "file"
    dashboard_dir = provider["options"]["path"]
    files = {target: path for target, path in mounts.items() if target.startswith(dashboard_dir + "/")}
    assert files == {f"{dashboard_dir}/summoner.json": ROOT / "deploy" / "grafana" / "summoner.json"}
    dashboard = json.loads(files[f"{dashboard_dir}/summoner.json"].read_text())
    assert {p["datasource"]["uid"] for p in dashboard["panels"]} == {source["uid"]}
    assert grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"] in files
