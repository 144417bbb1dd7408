"""Prometheus metrics of the Arrowhead stage and publisher (default registry).

Tests: tests/test_arrowhead_dns.py, tests/test_arrowhead_secure.py, tests/test_dashboard.py (the panels).
"""

from __future__ import annotations

from prometheus_client import Counter, Histogram

LOOKUPS = Counter(
    "summoner_arrowhead_lookups_total",
    "DNS queries that needed an Arrowhead orchestration, by outcome",
    ["result"],  # answer | nxdomain | timeout | error | circuit_open | overloaded
)
LOOKUP_SECONDS = Histogram(
    "summoner_arrowhead_lookup_seconds",
    "Duration of one orchestration call as summoner saw it",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0),
)
CACHE_HITS = Counter(
    "summoner_arrowhead_cache_hits_total",
    "DNS queries answered from the Arrowhead answer cache",
    ["kind"],  # positive | negative
)
FALLBACKS = Counter(
    "summoner_arrowhead_fallbacks_total",
    "Queries for an on-demand host whose VM could not boot, sent to another provider of its service",
    ["result"],  # answer | no_provider | error
)
INTERCLOUD = Counter(
    "summoner_arrowhead_intercloud_results_total",
    "Orchestration results from another cloud (FROM_OTHER_CLOUD), by how the provider is reached",
    ["route"],  # direct | gateway (VIA_GATEWAY: the Gateway's session port)
)
REGISTRATIONS = Counter(
    "summoner_arrowhead_registrations_total",
    "Service Registry operations by outcome",
    # registered | already_registered | unregistered | failed | unregister_failed
    # | system_registered | system_failed
    ["result"],
)

for _result in ("answer", "nxdomain", "timeout", "error", "circuit_open", "overloaded"):
    LOOKUPS.labels(_result)
for _result in ("answer", "no_provider", "error"):
    FALLBACKS.labels(_result)
for _route in ("direct", "gateway"):
    INTERCLOUD.labels(_route)
for _kind in ("positive", "negative"):
    CACHE_HITS.labels(_kind)
