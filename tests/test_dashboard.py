"""deploy/grafana/summoner.json: a well-formed Grafana dashboard on the
provisioned Prometheus datasource, whose every query uses series that a real
``summoner serve`` exports on /metrics, with counters and histogram buckets
only ever read through rate(...[$__rate_interval]).

Compose's side (the grafana service and the files it mounts) is checked in
tests/test_compose.py."""

from __future__ import annotations

import json
import re

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import EXAMPLE_ZONES, ROOT, launch, wait_until_answering

GRAFANA = ROOT / "deploy" / "grafana"
DASHBOARD = json.loads((GRAFANA / "summoner.json").read_text())

# ---- a small PromQL tokenizer: which metric names does an expression use? --

_STRING = re.compile(r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'|`[^`]*`')
_NAME_MATCHER = re.compile(r'__name__\s*=\s*("(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\')')
_MATCHERS = re.compile(r"\{[^{}]*\}")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
_VARIABLE = re.compile(r"\$\{[^}]*\}|\$\w+|\[\[[^\]]*\]\]")
_IDENTIFIER = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")


def metric_names(expr: str) -> set[str]:
    """The ``summoner_*`` metric names ``expr`` selects: identifiers outside
    strings, label matchers, grouping clauses and Grafana variables, plus any
    ``__name__="..."`` matcher."""
    names = {m.group(1)[1:-1] for m in _NAME_MATCHER.finditer(expr)}
    code = _STRING.sub('""', expr)
    code = _MATCHERS.sub(" ", code)        # label names and values
    code = _GROUPING.sub(" ", code)        # by (le, phase) etc.: label names
    code = _VARIABLE.sub(" ", code)        # $__rate_interval
    names.update(m.group() for m in _IDENTIFIER.finditer(code))
    return {name for name in names if name.startswith("summoner_")}


# ---- what a server exposes, as Prometheus will store it ----------------------

# The series names each family type puts on the wire (OpenMetrics text, which
# prometheus_client writes): a counter "x" is only ever "x_total" (and
# "x_created"), a histogram only "x_bucket", "x_sum", "x_count", "x_created".
# So a query for a histogram's or counter's bare family name selects nothing,
# and does not count as exported.
_SERIES_SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "gaugehistogram": ("_bucket", "_gsum", "_gcount"),
    "summary": ("", "_sum", "_count", "_created"),
    "info": ("_info",),
}


def exported_series(exposition: str) -> dict[str, str]:
    """Every series name the exposition has or declares, mapped to its
    family's type.  Declared matters: a labelled family with no children yet
    (summoner_vm_boots_total before the first boot) has HELP and TYPE lines
    and no samples, and its series appear when it counts."""
    series: dict[str, str] = {}
    for family in text_string_to_metric_families(exposition):
        for suffix in _SERIES_SUFFIXES.get(family.type, ("",)):
            series[family.name + suffix] = family.type
        for sample in family.samples:
            series[sample.name] = family.type
    return series


def expressions() -> list[str]:
    return [target["expr"] for panel in DASHBOARD["panels"] for target in panel["targets"]]


def used_names() -> set[str]:
    return {name for expr in expressions() for name in metric_names(expr)}


def rate_violations(expr: str, series: dict[str, str]) -> list[str]:
    """Counters and histogram buckets read other than as
    rate(name[$__rate_interval]), gauges read through rate(), and any range
    other than $__rate_interval."""
    problems = []
    for name in metric_names(expr):
        kind = series.get(name)
        selector = re.escape(name) + r"\s*(?:\{[^{}]*\})?"
        uses = len(re.findall(r"(?<![A-Za-z0-9_:])" + selector + r"(?![A-Za-z0-9_:])", expr))
        in_rate = len(re.findall(r"\brate\(\s*" + selector + r"\s*\[\$__rate_interval\]\s*\)", expr))
        monotonic = kind == "counter" or name.endswith("_bucket") or kind in ("histogram", "summary") and (
            name.endswith("_sum") or name.endswith("_count"))
        if monotonic and in_rate != uses:
            problems.append(f"{name} ({kind}) not read as rate({name}[$__rate_interval])")
        if kind == "gauge" and re.search(r"\b(?:rate|irate|increase)\(\s*" + selector, expr):
            problems.append(f"{name} is a gauge read through a counter function")
    for window in re.findall(r"\[([^\]]*)\]", expr):
        if window != "$__rate_interval":
            problems.append(f"range [{window}] instead of [$__rate_interval]")
    if "histogram_quantile" in expr and not re.search(r"histogram_quantile\(\s*0?\.\d+\s*,\s*sum\s+by\s*\([^)]*\ble\b",
                                                      expr):
        problems.append("histogram_quantile without sum by (le, ...)")
    return problems


# ---- the dashboard -----------------------------------------------------------

def test_the_dashboard_is_well_formed_and_uses_the_provisioned_datasource():
    datasources = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text())
    uids = {source["uid"] for source in datasources["datasources"] if source["type"] == "prometheus"}
    assert uids, "no Prometheus datasource provisioned"
    assert DASHBOARD["uid"] == "summoner" and DASHBOARD["title"]
    assert 36 <= DASHBOARD["schemaVersion"] <= 39        # Grafana 10.x
    assert "id" not in DASHBOARD or DASHBOARD["id"] is None  # provisioning assigns it
    panels = DASHBOARD["panels"]
    assert panels and len({panel["id"] for panel in panels}) == len(panels)
    for panel in panels:
        assert panel["title"] and panel["type"] == "timeseries", panel
        assert {"x", "y", "w", "h"} <= set(panel["gridPos"]) and panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24
        assert panel["datasource"] == {"type": "prometheus", "uid": panel["datasource"]["uid"]}
        assert panel["datasource"]["uid"] in uids, panel["title"]
        assert panel["targets"], panel["title"]
        ref_ids = [target["refId"] for target in panel["targets"]]
        assert len(set(ref_ids)) == len(ref_ids), panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] in uids, (panel["title"], target)
            assert target["expr"].strip() and metric_names(target["expr"]), (panel["title"], target)
    titles = " | ".join(panel["title"] for panel in panels).lower()
    for topic in ("rcode", "latency", "vms by state", "boots by result", "boot phases", "query to ready",
                  "reaps by reason", "arrowhead lookups", "arrowhead lookup latency"):
        assert topic in titles, topic


def test_the_panels_the_brief_asks_for_query_what_they_say():
    queried = {panel["title"]: " ".join(t["expr"] for t in panel["targets"]) for panel in DASHBOARD["panels"]}

    def panel(prefix: str) -> str:
        [expr] = [expr for title, expr in queried.items() if title.startswith(prefix)]
        return expr

    assert "by (rcode)" in panel("DNS queries") and "summoner_dns_queries_total" in panel("DNS queries")
    for quantile in ("0.5", "0.99"):
        assert f"histogram_quantile({quantile}" in panel("Answer latency")
    assert "summoner_dns_query_duration_seconds_bucket" in panel("Answer latency")
    assert "by (state)" in panel("VMs by state")
    assert "by (result)" in panel("Boots by result")
    phases = panel("Boot phases")
    assert "summoner_vm_boot_phase_seconds_bucket" in phases and "le, phase" in phases
    assert "histogram_quantile(0.5" in phases and "histogram_quantile(0.95" in phases
    ready = panel("Query to ready")
    assert "le, kind" in ready and "summoner_vm_query_to_ready_seconds_bucket" in ready
    assert "by (reason)" in panel("Reaps by reason")
    lookups = panel("Arrowhead lookups")
    assert "by (result)" in lookups and "summoner_arrowhead_lookups_total" in lookups
    assert "summoner_arrowhead_lookup_seconds_bucket" in panel("Arrowhead lookup latency")


@pytest.fixture(scope="module")
def exposition(tmp_path_factory) -> str:
    """/metrics of a real summoner serve with every part loaded: the DNS core,
    on-demand VMs (the example zones' services; nothing boots: no query names
    them) and the Arrowhead stage (its orchestrator is a closed loopback port,
    nothing asks it).  prometheus_client declares every family at import,
    so a family is there before it has counted anything."""
    workdir = tmp_path_factory.mktemp("dashboard")
    server = launch(workdir, EXAMPLE_ZONES, "--virt-type", "qemu",
                    "--arrowhead-orchestrator", "http://127.0.0.1:9", "--no-arrowhead-publish")
    try:
        wait_until_answering(server)
        server.query("www.example.org", "A")
        return server.metrics()
    finally:
        server.stop()


def test_every_metric_the_dashboard_queries_is_exported(exposition):
    series = exported_series(exposition)
    used = used_names()
    # The brief's list, so that dropping a panel's metric is noticed too.
    assert {"summoner_dns_queries_total", "summoner_dns_query_duration_seconds_bucket", "summoner_vms",
            "summoner_vm_boots_total", "summoner_vm_boot_phase_seconds_bucket",
            "summoner_vm_query_to_ready_seconds_bucket", "summoner_vm_reaps_total",
            "summoner_arrowhead_lookups_total", "summoner_arrowhead_lookup_seconds_bucket"} <= used
    missing = sorted(used - set(series))
    assert not missing, f"queried but not exported by summoner serve: {missing}"


def test_counters_and_buckets_are_read_through_rate_over_the_rate_interval(exposition):
    series = exported_series(exposition)
    problems = {expr: rate_violations(expr, series) for expr in expressions()}
    assert not {expr: p for expr, p in problems.items() if p}


# ---- the checks themselves catch what they are for --------------------------

def test_the_tokenizer_finds_metric_names_and_nothing_else():
    assert metric_names('histogram_quantile(0.5, sum by (le, phase) '
                        '(rate(summoner_vm_boot_phase_seconds_bucket{phase!="slot"}[$__rate_interval])))') \
        == {"summoner_vm_boot_phase_seconds_bucket"}
    assert metric_names('sum(summoner_vms{state="summoner_not_a_metric"}) / on (job) summoner_zones_loaded') \
        == {"summoner_vms", "summoner_zones_loaded"}
    assert metric_names('{__name__="summoner_zone_records"} + up') == {"summoner_zone_records"}
    assert metric_names("rate(not_summoner_x_total[5m])") == set()


def test_the_exported_check_refuses_bare_and_misspelt_names(exposition):
    series = exported_series(exposition)
    assert series["summoner_dns_queries_total"] == "counter"
    assert series["summoner_vm_boot_phase_seconds_bucket"] == "histogram"
    assert series["summoner_vms"] == "gauge"
    # Declared but not yet counted: there before the first boot.
    assert "summoner_vm_boots_total" in series and "summoner_vm_boots_total{" not in exposition
    for wrong in ("summoner_dns_querys_total",            # misspelt
                  "summoner_dns_queries",                  # a counter's family name: no such series
                  "summoner_vm_boot_phase_seconds",        # a histogram's family name: no such series
                  "summoner_vms_total"):                   # a gauge has no _total
        assert wrong not in series, wrong


def test_the_rate_check_catches_misuse(exposition):
    series = exported_series(exposition)
    assert rate_violations("sum(summoner_dns_queries_total)", series)
    assert rate_violations("rate(summoner_dns_queries_total[5m])", series)
    assert rate_violations("sum by (result) (increase(summoner_vm_boots_total[$__rate_interval]))", series)
    assert rate_violations("rate(summoner_vms[$__rate_interval])", series)
    assert rate_violations("histogram_quantile(0.5, rate(summoner_vm_boot_phase_seconds_bucket"
                           "[$__rate_interval]))", series)
    assert not rate_violations('sum by (rcode) (rate(summoner_dns_queries_total{protocol="udp"}'
                               '[$__rate_interval]))', series)
