"""Assembles the server: zones → stages → responder → transports, plus metrics."""

from __future__ import annotations

import signal
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from twisted.internet import defer
from twisted.logger import Logger

from summoner import metrics
from summoner.resolution import Chain, Stage
from summoner.server import TCP_IDLE_TIMEOUT, listen_dns, stop_listening
from summoner.static import StaticStage
from summoner.wire import Responder
from summoner.zonefile import ZoneSet, load_zone_dir
from summoner.zonewatch import ZoneWatcher, record_loaded

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


class App:
    def __init__(self, config: ServeConfig, reactor, stages: list[Stage] | None = None,
                 zone_hooks: list[ZoneHook] | None = None) -> None:
        self.config = config
        self.reactor = reactor
        self.static = StaticStage()
        self.chain = Chain([self.static, *(stages or [])])
        self.responder = Responder(self.chain)
        self.zone_hooks = list(zone_hooks or [])
        self.watcher = ZoneWatcher(config.zones, self.apply_zones, config.reload_interval, reactor)
        self.ports: tuple = ()
        self.metrics_port = None

    def apply_zones(self, zones: ZoneSet) -> None:
        for hook in self.zone_hooks:
            zones = hook(zones)
        self.static.update(zones)
        self.responder.clear_cache()

    def load_initial_zones(self) -> ZoneSet:
        """Raises ZoneError: serve refuses to start on an invalid zone."""
        zones = load_zone_dir(self.config.zones)
        self.apply_zones(zones)
        record_loaded(zones)
        return zones

    def listen(self) -> None:
        host, port = self.config.listen
        self.ports = listen_dns(self.reactor, self.responder, host, port, self.config.tcp_idle_timeout)
        log.info("answering DNS on {host} port {port} (UDP and TCP)", host=host,
                 port=self.ports[0].getHost().port)
        if self.config.metrics is not None:
            mhost, mport = self.config.metrics
            site = metrics.QuietSite(metrics.metrics_resource())
            self.metrics_port = self.reactor.listenTCP(mport, site, interface=mhost)
            log.info("metrics on http://{host}:{port}/metrics", host=mhost,
                     port=self.metrics_port.getHost().port)
        self.watcher.start()
        signal.signal(signal.SIGHUP, lambda *_: self.reactor.callFromThread(self.watcher.reload, "SIGHUP"))

    def stop(self) -> defer.Deferred:
        self.watcher.stop()
        ports = list(self.ports) + ([self.metrics_port] if self.metrics_port else [])
        return stop_listening(tuple(ports))
