"""DNS transports: UDP datagrams and RFC 7766 TCP streams over one Responder.

Tests: tests/test_dns_conformance.py (UDP and TCP transports of a real server)
"""

from __future__ import annotations

import socket

from twisted.internet import defer, protocol
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IReactorSocket, IReactorTCP, IReactorUDP
from twisted.logger import Logger
from twisted.protocols.basic import Int16StringReceiver
from twisted.protocols.policies import TimeoutMixin

from summoner.ratelimit import RateLimiter, Verdict
from summoner.wire import Responder, truncated_reply

log = Logger(namespace="summoner.server")

TCP_IDLE_TIMEOUT = 10.0  # RFC 7766 6.2.3 suggests seconds, not minutes
MAX_TCP_PENDING = 64
UDP_BUFFER_BYTES = 4 * 1024 * 1024  # answers in flight per connection before we stop reading


class DNSDatagramProtocol(protocol.DatagramProtocol):
    noisy = False

    def __init__(self, responder: Responder, limiter: RateLimiter | None = None) -> None:
        self.responder = responder
        self.limiter = limiter
        self._sendto = None

    def startProtocol(self) -> None:  # noqa: N802
        handle = self.transport.getHandle()
        # Bursts (many clients retrying at once) overflow the default ~200 KB
        # receive buffer long before the CPU is the limit.
        try:
            handle.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, UDP_BUFFER_BYTES)
            handle.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, UDP_BUFFER_BYTES)
        except OSError as exc:
            log.warn("could not enlarge UDP socket buffers: {exc}", exc=exc)
        # The port's write() re-validates the address string on every call; the
        # address came from recvfrom, so the hot path sends on the socket itself.
        self._sendto = handle.sendto

    def datagramReceived(self, data: bytes, addr) -> None:  # noqa: N802 (Twisted's name)
        if self.limiter is not None:
            verdict = self.limiter.check(addr[0])
            if verdict is not Verdict.ANSWER:
                # Decided before answering: under a flood the work saved is the point.
                reply = truncated_reply(data) if verdict is Verdict.SLIP else None
                if reply is not None:
                    self._send(reply, addr)
                return
        response = self.responder.respond(data, "udp")
        if type(response) is bytes:  # not isinstance(.., Deferred): an ABC check costs 0.5 us a query
            self._send(response, addr)
        elif response is not None:
            response.addCallback(self._send, addr)

    def _send(self, response: bytes | None, addr) -> None:
        if response is None:  # a relayed query the primary would not answer
            return
        try:
            self._sendto(response, addr)
        except OSError as exc:  # a full socket buffer or a vanished route: drop, as UDP does
            log.debug("UDP send to {addr} failed: {exc}", addr=addr, exc=exc)


class DNSStreamProtocol(Int16StringReceiver, TimeoutMixin):
    """Length-prefixed messages (RFC 1035 4.2.2), several per connection, answered
    as they complete (RFC 7766 6.2.1.1 allows out-of-order answers)."""

    def __init__(self, responder: Responder, idle_timeout: float) -> None:
        self.responder = responder
        self.idle_timeout = idle_timeout
        self.pending = 0

    def connectionMade(self) -> None:  # noqa: N802
        self.setTimeout(self.idle_timeout)

    def stringReceived(self, data: bytes) -> None:  # noqa: N802
        self.resetTimeout()
        response = self.responder.respond(data, "tcp")
        if response is None:
            # RFC 7766 has no way to answer what we cannot read; a client that
            # sends garbage over a stream loses the stream.
            self.transport.loseConnection()
            return
        if not isinstance(response, defer.Deferred):
            self.sendString(response)
            return
        self.pending += 1
        if self.pending >= MAX_TCP_PENDING:
            self.transport.pauseProducing()
        response.addCallback(self._deliver)

    def _deliver(self, response: bytes | None) -> None:
        self.pending -= 1
        if self.pending < MAX_TCP_PENDING:
            self.transport.resumeProducing()
        if response is None:  # a relayed query the primary would not answer: as above
            self.transport.loseConnection()
            return
        if self.transport.connected:
            self.sendString(response)
            self.resetTimeout()

    def timeoutConnection(self) -> None:  # noqa: N802
        if self.pending:
            self.resetTimeout()  # still owe answers: keep the stream until they go out
            return
        self.transport.loseConnection()

    def connectionLost(self, reason=protocol.connectionDone) -> None:  # noqa: N802
        self.setTimeout(None)


class DNSStreamFactory(protocol.ServerFactory):
    noisy = False

    def __init__(self, responder: Responder, idle_timeout: float = TCP_IDLE_TIMEOUT) -> None:
        self.responder = responder
        self.idle_timeout = idle_timeout

    def buildProtocol(self, addr) -> DNSStreamProtocol:  # noqa: N802
        proto = DNSStreamProtocol(self.responder, self.idle_timeout)
        proto.factory = self
        return proto


def listen_dns(reactor: IReactorUDP | IReactorTCP | IReactorSocket, responder: Responder, host: str, port: int,
               idle_timeout: float = TCP_IDLE_TIMEOUT, limiter: RateLimiter | None = None,
               share_port: bool = False) -> tuple:
    """Listen on UDP (rate-limited by ``limiter`` if given) and TCP (never
    limited) on one address; returns both listening ports.  ``share_port``:
    with ``SO_REUSEPORT``, so that the other processes of ``serve --workers``
    can bind the same port (each must set it)."""
    datagrams, streams = DNSDatagramProtocol(responder, limiter), DNSStreamFactory(responder, idle_timeout)
    if not share_port:
        udp = reactor.listenUDP(port, datagrams, interface=host, maxPacketSize=65535)
        tcp = reactor.listenTCP(udp.getHost().port if port == 0 else port, streams, interface=host, backlog=128)
        return udp, tcp
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    udp_socket = _shared_socket(family, socket.SOCK_DGRAM, host, port)
    with udp_socket:
        tcp_socket = _shared_socket(family, socket.SOCK_STREAM, host, udp_socket.getsockname()[1])
        with tcp_socket:
            tcp_socket.listen(128)
            # adopt*Port duplicate the descriptors: the sockets here are closed after
            udp = reactor.adoptDatagramPort(udp_socket.fileno(), family, datagrams, maxPacketSize=65535)
            tcp = reactor.adoptStreamPort(tcp_socket.fileno(), family, streams)
    return udp, tcp


def _shared_socket(family: int, kind: int, host: str, port: int) -> socket.socket:
    """A bound non-blocking socket with SO_REUSEPORT; raises CannotListenError."""
    sock = socket.socket(family, kind)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if kind == socket.SOCK_STREAM:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setblocking(False)
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise CannotListenError(host, port, exc) from exc
    return sock


def stop_listening(ports: tuple) -> defer.Deferred:
    return defer.gatherResults([defer.maybeDeferred(p.stopListening) for p in ports])
