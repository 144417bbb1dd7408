"""The Prometheus endpoint: conventional names that promtool accepts, counting what happened."""

from __future__ import annotations

import shutil
import subprocess

import pytest


def test_metrics_count_queries_by_protocol_type_and_rcode(example_server) -> None:
    before = example_server.metric("summoner_dns_queries_total", protocol="udp", qtype="A", rcode="NXDOMAIN")
    for _ in range(3):
        example_server.query("missing.example.org", "A")
    example_server.query("www.example.org", "AAAA", tcp=True)
    after = example_server.metric("summoner_dns_queries_total", protocol="udp", qtype="A", rcode="NXDOMAIN")
    assert after - before == 3
    assert example_server.metric("summoner_dns_queries_total", protocol="tcp", qtype="AAAA",
                                 rcode="NOERROR") >= 1
    assert example_server.metric("summoner_dns_query_duration_seconds_count", protocol="udp") >= 3
    assert example_server.metric("summoner_zones_loaded") == 2
    assert example_server.metric("summoner_zone_records") > 40
    assert example_server.metric("summoner_zone_reloads_total", result="success") >= 1


def test_promtool_accepts_the_exposition(example_server) -> None:
    if shutil.which("promtool") is None:
        pytest.fail("promtool is missing: run scripts/install.sh (Debian package prometheus)")
    example_server.query("www.example.org", "A")
    result = subprocess.run(["promtool", "check", "metrics"], input=example_server.metrics(),
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stdout + result.stderr
