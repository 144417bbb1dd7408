"""Metrics of the on-demand part (prometheus_client default registry).

Label values are bounded: services come from zone files (an operator-sized
set), results and reasons from fixed vocabularies below.

Tests: tests/vm/test_probe.py (probe attempts), tests/vm/test_phases.py (boot
phases); the fleet's counters in tests/vm/test_fleet.py.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

BOOT_RESULTS = ("success", "timeout", "error", "capacity", "backoff")
REAP_REASONS = ("idle", "capacity", "admin", "removed", "changed", "external")
STATES = ("stopped", "booting", "ready", "suspended", "stopping", "failed")

# Boots take ~1-3 s under TCG and tens of ms under KVM; resumes take
# milliseconds.  The buckets cover both, with the 100 ms resume target and the
# 3 s boot target as boundaries.
READY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 7.5, 10.0, 20.0, 30.0)

BOOTS = Counter(
    "summoner_vm_boots_total",
    "VM boot attempts by service and result (success, timeout, error, capacity, backoff).",
    ["service", "result"],
)
QUERY_TO_READY = Histogram(
    "summoner_vm_query_to_ready_seconds",
    "From the first query that found a service not ready to the service being ready, "
    "by kind (boot, resume, restore, golden).",
    ["kind"], buckets=READY_BUCKETS,
)
BOOT_PHASES = Histogram(
    "summoner_vm_boot_phase_seconds",
    "Time spent in each phase of a boot or resume: slot (waiting for a boot slot), libvirt (domain "
    "start), guest (domain started to first successful probe), resume.",
    ["phase"], buckets=READY_BUCKETS,
)
PROBE_ATTEMPTS = Counter(
    "summoner_vm_probe_attempts_total", "HTTP readiness probe attempts, by result (ok, fail).", ["result"],
)
VMS = Gauge("summoner_vms", "Services by state.", ["state"])
REAPS = Counter(
    "summoner_vm_reaps_total",
    "VM stops by reason (idle, capacity, admin, removed, changed, external).",
    ["reason"],
)
WAITERS = Gauge("summoner_vm_waiters", "DNS queries waiting for a VM to become ready.")
RECONNECTS = Counter("summoner_libvirt_reconnects_total", "Successful reconnections to libvirtd.")
CAPACITY_REFUSALS = Counter(
    "summoner_vm_capacity_refusals_total",
    "Boots refused (SERVFAIL) because no idle VM could be reaped to make room.",
)

for _reason in REAP_REASONS:
    REAPS.labels(_reason)
for _state in STATES:
    VMS.labels(_state)
for _result in ("ok", "fail"):
    PROBE_ATTEMPTS.labels(_result)
for _phase in ("slot", "libvirt", "guest", "resume"):
    BOOT_PHASES.labels(_phase)
for _kind in ("boot", "resume", "restore", "golden"):
    QUERY_TO_READY.labels(_kind)
SNAPSHOTS = Gauge("summoner_vm_snapshots", "Saved guest states on disk, by kind: stopped (stop mode snapshot) "
                  "or golden (snapshot_boot).", ["kind"])
SNAPSHOT_BYTES = Gauge("summoner_vm_snapshot_bytes", "Disk taken by saved guest states, by kind.", ["kind"])
for _kind in ("stopped", "golden"):
    SNAPSHOTS.labels(_kind)
    SNAPSHOT_BYTES.labels(_kind)
