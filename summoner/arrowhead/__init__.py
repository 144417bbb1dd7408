"""Eclipse Arrowhead 4.x integration: a resolution stage that answers names
summoner does not hold through dynamic orchestration, and a publisher that
registers on-demand hosts in the Service Registry.

The app's whole interface::

    add_cli_arguments(parser)                 # --arrowhead-* flags
    config = config_from_args(args)           # None: Arrowhead off; ArrowheadConfigError: exit
    arrowhead = build(config, reactor)
    chain = Chain([static, on_demand, arrowhead.stage])
    arrowhead.check_hosts(hosts)              # at each zone load: ZoneError for a host the registry would refuse
    arrowhead.update_services(published_services(hosts))      # at start and on zone changes
    arrowhead.start()                         # fires at once; registration runs in the background
    yield arrowhead.stop()                    # clean shutdown: unregisters published services
    arrowhead.status()                        # dict for the admin endpoint / `summoner status`

Tests: tests/test_arrowhead_dns.py, tests/test_arrowhead_publish.py, tests/test_arrowhead_secure.py,
tests/test_arrowhead_addresses.py
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime

from summoner.arrowhead.client import ArrowheadClient
from summoner.arrowhead.config import (
    ArrowheadConfig,
    ArrowheadConfigError,
    ServiceMapping,
    add_cli_arguments,
    config_from_args,
    own_system,
)
from summoner.arrowhead.publisher import (
    ArrowheadPublisher,
    PublishableHost,
    PublishedService,
    fallback_problems,
    fallback_service,
    publish_problems,
    published_services,
)
from summoner.arrowhead.stage import ArrowheadStage
from summoner.zonefile import ZoneError

__all__ = [
    "Arrowhead",
    "ArrowheadConfig",
    "ArrowheadConfigError",
    "ArrowheadPublisher",
    "ArrowheadStage",
    "PublishedService",
    "ServiceMapping",
    "add_cli_arguments",
    "build",
    "config_from_args",
    "published_services",
]


_CIRCUIT_STATE = {"closed": "up", "half-open": "probing", "open": "down"}


@dataclass
class Arrowhead:
    """The stage and the publisher, sharing one HTTP client and one identity."""

    config: ArrowheadConfig
    client: ArrowheadClient
    stage: ArrowheadStage
    publisher: ArrowheadPublisher

    def update_services(self, services: Iterable[PublishedService]) -> None:
        self.publisher.update_services(services)

    def check_hosts(self, hosts: Iterable[PublishableHost]) -> None:
        """Raises ZoneError (the zone set is refused) when publishing is on and
        the Service Registry would refuse a host's address or service definition."""
        hosts = list(hosts)
        problems = fallback_problems(hosts)
        if self.config.publish:
            problems += publish_problems(hosts)
        if problems:
            raise ZoneError(problems)

    def remote_service_of(self, host: PublishableHost) -> str | None:
        """For the on-demand stage: the service another provider may answer
        ``host`` with while its VM cannot boot (None: no fallback)."""
        if self.config.orchestrator_url is None:
            return None
        return fallback_service(host)

    def start(self) -> defer.Deferred:
        return self.publisher.start()

    def stop(self) -> defer.Deferred:
        return self.publisher.stop()

    def status(self) -> dict[str, Any]:
        stage = self.stage.status()
        publisher = self.publisher.status()
        connected = publisher["system"]["state"] == "registered" if self.config.registry_url else None
        return {
            "enabled": True,
            "secure": self.config.secure,
            "system_name": self.config.system_name,
            "orchestrator": {**stage, "state": _CIRCUIT_STATE[stage["circuit"]]},
            "registry": {**publisher, "connected": connected},
        }


def build(config: ArrowheadConfig, reactor: IReactorTime) -> Arrowhead:
    """Wire the Arrowhead part.  In-zone names reach the stage as an earlier
    stage's tentative answer, which carries its zone (``Answer.zone``)."""
    client = ArrowheadClient(reactor, orchestrator_url=config.orchestrator_url, registry_url=config.registry_url,
                             tls=config.tls, connect_timeout=config.deadline)
    own = own_system(config)
    stage = ArrowheadStage(config, client, own, reactor)
    publisher = ArrowheadPublisher(config, client, own, reactor)
    stage.on_unknown_requester = publisher.system_lost
    return Arrowhead(config, client, stage, publisher)
