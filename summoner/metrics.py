"""DNS-core metrics (Prometheus naming: ``summoner_`` prefix, base units).

Other parts (VMs, Arrowhead) keep their metrics in their own modules; all of
them land in prometheus_client's default registry, which the metrics endpoint
serves.
"""

from __future__ import annotations

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.twisted import MetricsResource
from twisted.web.resource import Resource
from twisted.web.server import Site

# DNS answers take tens of microseconds from cache and up to seconds when a VM
# boots behind them, so the buckets span both.
QUERY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

QUERIES = Counter(
    "summoner_dns_queries_total", "DNS queries answered, by transport, query type and response code.",
    ["protocol", "qtype", "rcode"],
)
QUERY_SECONDS = Histogram(
    "summoner_dns_query_duration_seconds", "Time from receiving a query to sending its answer.",
    ["protocol"], buckets=QUERY_BUCKETS,
)
REJECTED = Counter(
    "summoner_dns_rejected_packets_total",
    "Packets that were not answered normally: malformed, truncated, not a query, unsupported.",
    ["reason"],
)
TRUNCATED = Counter(
    "summoner_dns_truncated_responses_total", "UDP answers sent with TC set because they did not fit.",
)
CACHE_MISSES = Counter(
    "summoner_dns_response_cache_misses_total",
    "Queries not answered from pre-encoded responses (the rest of summoner_dns_queries_total were).",
)
ZONE_RELOADS = Counter(
    "summoner_zone_reloads_total", "Zone set loads, by result (success, failure).", ["result"],
)
ZONES_LOADED = Gauge("summoner_zones_loaded", "Zones currently served.")
RECORDS_LOADED = Gauge("summoner_zone_records", "Resource records currently served from zone files.")
LAST_RELOAD = Gauge(
    "summoner_zone_last_reload_success_timestamp_seconds", "When the zone set was last loaded successfully.",
)

for _result in ("success", "failure"):
    ZONE_RELOADS.labels(_result)


def metrics_resource(registry: CollectorRegistry = REGISTRY) -> Resource:
    root = Resource()
    root.putChild(b"metrics", MetricsResource(registry))
    return root


class QuietSite(Site):
    """A Site that writes no access log line per scrape."""

    noisy = False

    def log(self, request) -> None:
        pass
