"""Assembles the server: zones → stages → responder → transports, plus
metrics, the on-demand part (libvirt) and the Arrowhead part when configured.

The stages never see each other; this is the one place that knows them all.

Tests: tests/test_reload.py, tests/test_dns_conformance.py (``summoner serve`` as a process)
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from twisted.internet import defer
from twisted.internet.interfaces import IReactorCore
from twisted.logger import Logger

from summoner import metrics
from summoner.admin import DEFAULT_ADDRESS, JSONStatus, Resources, listen_admin
from summoner.ratelimit import RateLimit, RateLimiter
from summoner.resolution import Chain, Stage
from summoner.server import TCP_IDLE_TIMEOUT, listen_dns, stop_listening
from summoner.static import StaticStage
from summoner.wire import Responder
from summoner.workers import Listen, WorkerPool, ZoneUpdate
from summoner.zonefile import ZoneSet, load_zone_dir
from summoner.zonewatch import ZoneWatcher, record_loaded

if TYPE_CHECKING:
    from summoner.arrowhead.config import ArrowheadConfig
    from summoner.vm.config import OnDemandConfig

log = Logger(namespace="summoner")

# A hook that sees every zone set before the static stage does and may take
# records out of it (on-demand hosts are declared in zone files).
ZoneHook = Callable[[ZoneSet], ZoneSet]


@dataclass(frozen=True)
class ServeConfig:
    listen: tuple[str, int] = ("127.0.0.1", 5353)
    zones: Path = Path("zones")
    metrics: tuple[str, int] | None = ("127.0.0.1", 9153)
    tcp_idle_timeout: float = TCP_IDLE_TIMEOUT
    reload_interval: float = 1.0
    rate_limit: RateLimit | None = None  # UDP response rate limiting; None: off
    admin: tuple[str, int] | None = DEFAULT_ADDRESS  # admin endpoint (every part's resources); None: off
    workers: int = 1  # processes answering DNS on the port (summoner.workers); 1: this one alone
    log_format: str = "human"  # what workers log in (this process's is set by the command)
    log_level: str = "info"


class App:
    def __init__(self, config: ServeConfig, reactor: IReactorCore, ondemand: OnDemandConfig | None = None,
                 arrowhead: ArrowheadConfig | None = None) -> None:
        """``reactor``: the running reactor (core, time, TCP, UDP);
        ``ondemand``: None: on-demand hosts are served as static records;
        ``arrowhead``: None: off."""
        self.config = config
        self.reactor = reactor
        self.static = StaticStage()
        stages: list[Stage] = [self.static]
        self.zone_hooks: list[ZoneHook] = []
        self.ondemand = None
        if ondemand is not None:
            from summoner.vm.app import OnDemand
            self.ondemand = OnDemand(ondemand, reactor)
            stages.append(self.ondemand.stage)
            self.zone_hooks.append(self._take_on_demand_hosts)
        self.arrowhead = None
        if arrowhead is not None:
            from summoner.arrowhead import build
            self.arrowhead = build(arrowhead, reactor)
            stages.append(self.arrowhead.stage)  # last: it takes what the others leave
            if self.ondemand is not None:
                # remote fallback: a host whose VM cannot boot is answered
                # with another provider of its service, when Arrowhead has one
                self.ondemand.stage.remote = self.arrowhead.remote_service_of
        self.chain = Chain(stages)
        self.responder = Responder(self.chain)
        self.watcher = ZoneWatcher(config.zones, self.apply_zones, config.reload_interval, reactor)
        self.ports: tuple = ()
        self.workers: WorkerPool | None = None
        self.served = ZoneSet()  # the zones the static stage answers from
        self.metrics_port = None
        self.admin_port = None

    def _take_on_demand_hosts(self, zones: ZoneSet) -> ZoneSet:
        """On-demand declarations leave the zones for the on-demand stage;
        raises ZoneError (the zone set is refused) for bad declarations."""
        stripped, hosts = self.ondemand.split(zones.zones.values())
        if self.arrowhead is not None:
            self.arrowhead.check_hosts(hosts)  # a host the Service Registry would refuse: the zones are refused
        self.ondemand.update_hosts(hosts)
        return ZoneSet({zone.origin: zone for zone in stripped})

    def apply_zones(self, zones: ZoneSet) -> None:
        for hook in self.zone_hooks:
            zones = hook(zones)
        self.static.update(zones)
        self.served = zones
        self.responder.clear_cache()
        if self.workers is not None:
            self.workers.update(self._worker_zones(zones))

    def _worker_zones(self, zones: ZoneSet) -> ZoneUpdate:
        """What workers answer from: the static zones, and what the later stages claim."""
        claimed = frozenset(self.ondemand.stage.entries) if self.ondemand is not None else frozenset()
        return ZoneUpdate(zones, claimed, claim_all=self.arrowhead is not None)

    def load_initial_zones(self) -> ZoneSet:
        """Raises ZoneError: serve refuses to start on an invalid zone."""
        zones = load_zone_dir(self.config.zones)
        self.apply_zones(zones)
        record_loaded(zones)
        return zones

    def listen(self) -> None:
        host, port = self.config.listen
        limiter = RateLimiter(self.config.rate_limit, time.monotonic) if self.config.rate_limit else None
        shared = self.config.workers > 1
        self.ports = listen_dns(self.reactor, self.responder, host, port, self.config.tcp_idle_timeout, limiter,
                                share_port=shared)
        port = self.ports[0].getHost().port
        log.info("answering DNS on {host} port {port} (UDP and TCP)", host=host, port=port)
        if shared:
            config = self.config
            self.workers = WorkerPool(self.reactor, self.responder, config.workers - 1,
                                      Listen(host, port, config.tcp_idle_timeout, config.rate_limit,
                                             config.log_format, config.log_level))
            self.workers.update(self._worker_zones(self.served))
            self.workers.start()
        if self.config.metrics is not None:
            mhost, mport = self.config.metrics
            site = metrics.QuietSite(metrics.metrics_resource())
            self.metrics_port = self.reactor.listenTCP(mport, site, interface=mhost)
            log.info("metrics on http://{host}:{port}/metrics", host=mhost,
                     port=self.metrics_port.getHost().port)
        self.watcher.start()
        signal.signal(signal.SIGHUP, lambda *_: self.reactor.callFromThread(self.watcher.reload, "SIGHUP"))

    def start(self) -> None:
        """Start the parts that work in the background once the reactor runs:
        libvirt (adopting running VMs) and Arrowhead publishing."""
        if self.config.admin is not None:
            self.admin_port = listen_admin(self.reactor, self.config.admin, self.admin_resources())
        if self.ondemand is not None:
            self.reactor.callWhenRunning(self.ondemand.start)
        if self.arrowhead is not None:
            from summoner.arrowhead.publisher import published_services
            arrowhead = self.arrowhead

            def publish(hosts: list) -> None:
                arrowhead.update_services(published_services(hosts))
            if self.ondemand is not None:
                self.ondemand.on_hosts_changed.append(publish)
                publish(self.ondemand.published_hosts())
            else:
                arrowhead.update_services([])
            arrowhead.start()

    def admin_resources(self) -> Resources:
        """Every part's admin resources: ``/services`` (on-demand), ``/arrowhead``."""
        resources = dict(self.ondemand.admin_resources()) if self.ondemand is not None else {}
        if self.arrowhead is not None:
            resources[b"arrowhead"] = JSONStatus(self.arrowhead.status)
        return resources

    def stop(self) -> defer.Deferred:
        """Clean shutdown: Arrowhead withdraws what it published; VMs keep
        running for the next start to adopt."""
        self.watcher.stop()
        ports = [*self.ports, *(p for p in (self.metrics_port, self.admin_port) if p is not None)]
        stopping = [stop_listening(tuple(ports))]
        if self.workers is not None:
            stopping.append(self.workers.stop())
        if self.ondemand is not None:
            stopping.append(self.ondemand.stop())
        if self.arrowhead is not None:
            stopping.append(self.arrowhead.stop())
        return defer.DeferredList(stopping, consumeErrors=True)
