"""DNS-core metrics (Prometheus naming: ``summoner_`` prefix, base units).

Other parts (VMs, Arrowhead) keep their metrics in their own modules; all of
them land in prometheus_client's default registry, which the metrics endpoint
serves.

Tests: tests/test_metrics.py
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator

from dnslib import QTYPE, RCODE
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.twisted import MetricsResource
from twisted.web.resource import Resource
from twisted.web.server import Site

# DNS answers take tens of microseconds from cache and up to seconds when a VM
# boots behind them, so the buckets span both.
QUERY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

BADVERS = 16
PROTOCOLS = ("udp", "tcp")
_TYPE_NAMES = {number: name for number, name in QTYPE.forward.items()}


# What QueryStats counted: (protocol, qtype, rcode) → queries; protocol →
# latency bucket counts; protocol → seconds (``serve --workers`` sends these).
QueryCounts = tuple[dict[tuple[str, int, int], int], dict[str, list[int]], dict[str, float]]


def rcode_name(rcode: int) -> str:
    return "BADVERS" if rcode == BADVERS else RCODE.get(rcode, str(rcode))


class QueryStats:
    """``summoner_dns_queries_total`` and ``summoner_dns_query_duration_seconds``.

    Every query passes here, and prometheus_client's labelled counters and
    histograms take a lock and a label lookup each time (3-4 us here, as much
    as a whole compiled answer).  So the hot path adds to plain integers
    (``record``), and the families are built when Prometheus scrapes
    (``collect``, on the web server's thread: it reads snapshots).
    """

    def __init__(self, buckets: tuple[float, ...] = QUERY_BUCKETS) -> None:
        self.bounds = buckets
        self.counts: dict[tuple[str, int, int], int] = {}
        self.buckets = {p: [0] * (len(buckets) + 1) for p in PROTOCOLS}
        self.sums = dict.fromkeys(PROTOCOLS, 0.0)

    def record(self, protocol: str, qtype: int, rcode: int, seconds: float) -> None:
        key = (protocol, qtype if qtype in _TYPE_NAMES else -1, rcode)  # bounded: unknown types are "other"
        counts = self.counts
        counts[key] = counts.get(key, 0) + 1
        bounds = self.bounds  # almost every answer falls in the first bucket: no bisect for those
        self.buckets[protocol][0 if seconds <= bounds[0] else bisect_left(bounds, seconds)] += 1
        self.sums[protocol] += seconds

    def drain(self) -> QueryCounts:
        """What was counted since the last drain, and zero again (a worker
        process reports its increments so)."""
        counts = (self.counts, self.buckets, self.sums)
        self.counts = {}
        self.buckets = {p: [0] * (len(self.bounds) + 1) for p in PROTOCOLS}
        self.sums = dict.fromkeys(PROTOCOLS, 0.0)
        return counts

    def add(self, counts: QueryCounts) -> None:
        """Another process's drained counts, added to these."""
        queries, buckets, sums = counts
        for key, n in queries.items():
            self.counts[key] = self.counts.get(key, 0) + n
        for protocol, by_bucket in buckets.items():
            mine = self.buckets[protocol]
            for index, n in enumerate(by_bucket):
                mine[index] += n
        for protocol, seconds in sums.items():
            self.sums[protocol] += seconds

    def describe(self) -> Iterator[Metric]:
        return iter(self._families({}))

    def collect(self) -> Iterator[Metric]:
        return iter(self._families(dict(list(self.counts.items()))))

    def _families(self, counts: dict[tuple[str, int, int], int]) -> list[Metric]:
        queries = CounterMetricFamily("summoner_dns_queries", "DNS queries answered, by transport, query type "
                                      "and response code.", labels=("protocol", "qtype", "rcode"))
        for (protocol, qtype, rcode), n in sorted(counts.items()):
            queries.add_metric((protocol, _TYPE_NAMES.get(qtype, "other"), rcode_name(rcode)), n)
        latency = HistogramMetricFamily("summoner_dns_query_duration_seconds",
                                        "Time from receiving a query to sending its answer.", labels=("protocol",))
        for protocol in PROTOCOLS:
            counts_by_bucket, running, cumulative = list(self.buckets[protocol]), 0, []
            for bound, n in zip((*self.bounds, float("inf")), counts_by_bucket, strict=True):
                running += n
                cumulative.append((str(bound) if bound != float("inf") else "+Inf", running))
            latency.add_metric((protocol,), cumulative, self.sums[protocol])
        return [queries, latency]


QUERY_STATS = QueryStats()
REGISTRY.register(QUERY_STATS)
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
