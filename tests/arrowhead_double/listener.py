"""The double's HTTP listeners: routing (``{id}`` path segments), the secure
listener's access-control filter (certificate CNs, management paths for the
local system operator), the test knobs that delay, fail or garble a call, and
``ErrorMessageDTO`` answers.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from cryptography.x509.oid import NameOID
from twisted.internet import defer
from twisted.logger import Logger
from twisted.web import resource, server

from tests.arrowhead_double.core import CoreError, SpringError
from tests.arrowhead_double.server import Double

log = Logger(namespace="arrowhead-double")


def _common_name(cert: Any) -> str:
    names = cert.to_cryptography().subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(names[0].value) if names else ""


OPERATION = {"/orchestrator/orchestration": "orchestration", "/serviceregistry/register": "register",
             "/serviceregistry/unregister": "unregister", "/serviceregistry/register-system": "register-system",
             "/serviceregistry/query": "query", "/authorization/mgmt/intracloud": "rules",
             "/authorization/mgmt/intracloud/{id}": "rules"}


def route(routes: dict[tuple[bytes, str], Callable[..., Any]], method: bytes,
          path: str) -> tuple[str, Callable[..., Any] | None, str | None]:
    """(route, handler, id): an exact path, or one whose last segment is an id."""
    if (method, path) in routes:
        return path, routes[(method, path)], None
    head, _, last = path.rpartition("/")
    pattern = head + "/{id}"
    if (method, pattern) in routes and last.lstrip("-").isdigit():
        return pattern, routes[(method, pattern)], last
    return path, None, None


class Listener(resource.Resource):
    isLeaf = True  # noqa: N815 - Twisted API

    def __init__(self, double: Double, secure: bool) -> None:
        super().__init__()
        self.double = double
        self.secure = secure

    def render(self, request: server.Request) -> Any:
        path = request.path.decode()
        pattern, handler, ident = route(self.double.routes, request.method, path)
        if handler is None:
            self._send(request, 404, {"errorMessage": f"No handler for {path}", "errorCode": 404,
                                      "exceptionType": "GENERIC", "origin": path})
            return server.NOT_DONE_YET
        cn = None
        if self.secure and not path.startswith("/control/"):
            cn = _common_name(request.transport.getPeerCertificate())
            host = request.getHost()
            denial = self._access(cn, f"https://{host.host}:{host.port}{path}")
            if denial:
                self._send(request, *CoreError(denial, "AUTH", 401).dto(path))
                return server.NOT_DONE_YET
        operation = OPERATION.get(pattern)
        state = self.double.state
        if operation:
            state.counters[operation] += 1
        delay = float(state.knobs["delay"].get(operation, 0) or 0) if operation else 0.0
        if delay:
            self.double.reactor.callLater(delay, self._handle, request, handler, path, operation, cn, ident)
        else:
            self._handle(request, handler, path, operation, cn, ident)
        return server.NOT_DONE_YET

    def _access(self, cn: str, target: str) -> str | None:
        # AccessControlFilter: five labels, same cloud.operator.arrowhead.eu.
        parts = cn.split(".")
        if len(parts) != 5 or ".".join(parts[1:]) != self.double.cloud_suffix:
            return f"Unauthorized access: {cn}, invalid certificate."
        # CoreSystemAccessControlFilter.checkIfLocalSystemOperator: /mgmt/ is
        # the local system operator's (upstream lets the Onboarding Controller
        # add intra-cloud rules too; the double has none).
        if "/mgmt/" in target and cn.lower() != f"sysop.{self.double.cloud_suffix}":
            return f"{cn} is unauthorized to access {target}"
        return None

    def _handle(self, request: server.Request, handler: Callable[..., Any], path: str,
                operation: str | None, cn: str | None, ident: str | None) -> None:
        if request.finished or request.channel is None:
            return  # the client gave up while we were "slow"
        state = self.double.state
        if operation and state.knobs["fail"].get(operation):
            failure = dict(state.knobs["fail"][operation])
            failure.setdefault("origin", path)
            return self._send(request, int(failure.get("errorCode", 500)), failure)
        if operation and state.knobs["malformed"].get(operation):
            return self._send(request, 200, None, raw=b'{"response": [{"provider": ')
        try:
            raw = request.content.read()
            body = json.loads(raw) if raw else None
        except ValueError:
            return self._send(request, 400, None)
        args = {k.decode(): v[0].decode() for k, v in request.args.items()}
        if ident is not None:
            args["id"] = ident
        d = defer.maybeDeferred(handler, body, args, cn)
        d.addCallback(lambda result: self._send(request, *result))
        d.addErrback(self._failed, request, path)

    def _failed(self, failure: Any, request: server.Request, path: str) -> None:
        if failure.check(CoreError):
            return self._send(request, *failure.value.dto(path))
        if failure.check(SpringError):
            return self._send(request, 400, None)
        log.failure("double failed on {path}", failure, path=path)
        return self._send(request, 500, {"errorMessage": failure.getErrorMessage(), "errorCode": 500,
                                         "exceptionType": "GENERIC", "origin": path})

    @staticmethod
    def _send(request: server.Request, status: int, payload: Any, raw: bytes | None = None) -> None:
        if request.finished or request.channel is None:
            return
        request.setResponseCode(status)
        if raw is None:
            if payload is None:
                raw = b""
            elif isinstance(payload, str):
                request.setHeader(b"Content-Type", b"text/plain")
                raw = payload.encode()
            else:
                request.setHeader(b"Content-Type", b"application/json")
                raw = json.dumps(payload).encode()
        else:
            request.setHeader(b"Content-Type", b"application/json")
        request.write(raw)
        request.finish()
