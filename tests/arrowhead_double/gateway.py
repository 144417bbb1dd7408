"""The double's Gateway: the per-session ports through which a consumer
reaches a provider of another cloud (core-java-spring 4.6.2 GatewayService,
ConsumerSideServerSocketThread, RelayConnectionRemovalTask).

What upstream does, and the double with it:

- ``connectConsumer`` takes a free port (``min_port``..``max_port``, 8000-8100
  by default; the double lets the OS choose unless the ``gateway_ports`` knob
  gives a range) and opens a server socket there for this one session; its
  number is what the Gatekeeper puts in the orchestration result.
- The socket accepts **one** connection.  Nobody connecting within
  ``gateway_socket_timeout`` (30000 ms by default: the server socket's
  SO_TIMEOUT) closes the session.
- Once connected, a session idle for ``inactive_gateway_bridge_timeout``
  (60 s by default) is closed; upstream's removal task looks every 10 s, the
  double closes it on time.  The consumer closing its end closes it too.

What the double leaves out: the bytes travel consumer → consumer-side gateway
→ ActiveMQ relay → provider-side gateway → provider upstream, over TLS with
client certificates on the consumer side.  Here the consumer-side port is plain
TCP and forwards straight to the provider's address, which the double's ICN
hands over (upstream's consumer gateway never learns it).

Sessions are listed at ``GET /gateway/mgmt/sessions`` (ActiveSessionListDTO:
``{"data": [ActiveSessionDTO], "count"}``).

Tests: tests/test_arrowhead_double_gatekeeper.py, tests/test_arrowhead_intercloud.py.
"""

from __future__ import annotations

import itertools
import uuid
from typing import Any

from twisted.internet import endpoints, protocol
from twisted.internet.error import CannotListenError
from twisted.logger import Logger

from tests.arrowhead_double.core import CoreError, State, now

log = Logger(namespace="arrowhead-double")
PUBLIC_KEY = "double-gateway-public-key"  # a base64 RSA key upstream; nobody checks it here


class _Session:
    def __init__(self, gateway: Gateway, dto: dict[str, Any], target: tuple[str, int]) -> None:
        self.gateway = gateway
        self.dto = dto
        self.target = target
        self.port: Any = None
        self.consumer: _Consumer | None = None
        self.provider: _Provider | None = None
        self.timer: Any = None

    def arm(self, seconds: float) -> None:
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        self.timer = self.gateway.reactor.callLater(seconds, self.close, "timeout")

    def touch(self) -> None:
        self.arm(float(self.gateway.state.knobs["inactive_gateway_bridge_timeout"]))

    def close(self, why: str = "closed") -> None:
        if self.dto["queueId"] not in self.gateway.sessions:
            return
        del self.gateway.sessions[self.dto["queueId"]]
        self.gateway.state.counters[f"gateway_session_{why}"] += 1
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        if self.port is not None:
            self.port.stopListening()
        for side in (self.consumer, self.provider):
            if side is not None and side.transport is not None:
                side.transport.loseConnection()


class _Provider(protocol.Protocol):
    def __init__(self, session: _Session, consumer: _Consumer) -> None:
        self.session = session
        self.peer = consumer

    def connectionMade(self) -> None:  # noqa: N802 - Twisted API
        self.session.provider = self
        self.peer.transport.resumeProducing()

    def dataReceived(self, data: bytes) -> None:  # noqa: N802 - Twisted API
        self.session.touch()
        self.peer.transport.write(data)

    def connectionLost(self, reason: Any = None) -> None:  # noqa: N802 - Twisted API
        self.session.close()


class _Consumer(protocol.Protocol):
    def __init__(self, session: _Session) -> None:
        self.session = session

    def connectionMade(self) -> None:  # noqa: N802 - Twisted API
        session = self.session
        if session.consumer is not None:  # one accept per session upstream
            self.transport.loseConnection()
            return
        session.consumer = self
        session.port.stopListening()
        session.port = None
        session.touch()
        self.transport.pauseProducing()
        host, port = session.target
        endpoint = endpoints.HostnameEndpoint(session.gateway.reactor, host, port, timeout=5)
        d = endpoints.connectProtocol(endpoint, _Provider(session, self))
        d.addErrback(lambda _: session.close())

    def dataReceived(self, data: bytes) -> None:  # noqa: N802 - Twisted API
        self.session.touch()
        if self.session.provider is not None:
            self.session.provider.transport.write(data)

    def connectionLost(self, reason: Any = None) -> None:  # noqa: N802 - Twisted API
        self.session.close()


class _Factory(protocol.ServerFactory):
    def __init__(self, session: _Session) -> None:
        self.session = session

    def buildProtocol(self, addr: Any) -> protocol.Protocol:  # noqa: N802 - Twisted API
        return _Consumer(self.session)


class Gateway:
    def __init__(self, state: State, reactor: Any, host: str = "127.0.0.1") -> None:
        self.state = state
        self.reactor = reactor
        self.host = host
        self.sessions: dict[str, _Session] = {}
        self._queues = itertools.count(1)

    def reset(self) -> None:
        for session in list(self.sessions.values()):
            session.close()

    def connect_provider(self, consumer_cloud: dict[str, Any]) -> dict[str, Any]:
        """GatewayProviderConnectionResponseDTO (the provider-side half of a
        session: here only the names the consumer side needs)."""
        return {"queueId": f"queue-{uuid.uuid4().hex[:12]}", "peerName": f"gateway-{next(self._queues)}",
                "providerGWPublicKey": PUBLIC_KEY}

    def connect_consumer(self, connection: dict[str, Any], consumer: dict[str, Any], provider: dict[str, Any],
                         consumer_cloud: dict[str, Any], provider_cloud: dict[str, Any], service: str) -> int:
        """GatewayService.connectConsumer: a session and its server socket port."""
        dto = {"queueId": connection["queueId"], "peerName": connection["peerName"], "consumer": consumer,
               "consumerCloud": consumer_cloud, "provider": {k: provider.get(k) for k in
                                                             ("systemName", "address", "port")},
               "providerCloud": provider_cloud, "serviceDefinition": service, "relay": None,
               "sessionStartedAt": now(), "consumerServerSocketPort": None}
        session = _Session(self, dto, (provider["address"], int(provider["port"])))
        session.port = self._listen(session)
        dto["consumerServerSocketPort"] = session.port.getHost().port
        self.sessions[dto["queueId"]] = session
        self.state.counters["gateway_session_opened"] += 1
        session.arm(float(self.state.knobs["gateway_socket_timeout"]))
        return int(dto["consumerServerSocketPort"])

    def _listen(self, session: _Session) -> Any:
        ports = self.state.knobs.get("gateway_ports")
        candidates = range(int(ports[0]), int(ports[1]) + 1) if ports else [0]
        for number in candidates:
            try:
                return self.reactor.listenTCP(number, _Factory(session), interface=self.host)
            except CannotListenError:
                continue
        # GatewayService: an empty port queue is an UnavailableServerException;
        # initICN then answers an empty result.
        raise CoreError("No available gateway port.", "UNAVAILABLE")

    def list(self, body: Any, args: dict[str, str], cn: str | None) -> tuple[int, Any]:
        rows = [s.dto for s in self.sessions.values()]
        return 200, {"data": rows, "count": len(rows)}
