"""The on-demand part's admin resources, mounted by the top's admin endpoint:

- ``GET  /services``              → ``[{name, image, state, address, uptime, idle, boot_count, last_error, ...}]``
- ``POST /services/NAME/summon``  → boots (or resumes) NAME and waits until ready or failed
- ``POST /services/NAME/stop``    → stops NAME by its image's stop mode (``?mode=destroy`` to force)

NAME is the host name (``hello.example.org``) or its first label when that is
unambiguous (``hello``).  An action answers 200 when it worked, 503 when it
did not (``ok`` false), 404 for an unknown name, 400 for an unknown mode.

Tests: tests/vm/test_admin.py, tests/vm/test_fleet.py (the facade's methods).
"""

from __future__ import annotations

from typing import Any, Protocol

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import resource, server

from summoner.admin import json_response
from summoner.images import STOP_MODES

log = Logger(namespace="summoner.admin")

Result = dict[str, Any]


class ServicesBackend(Protocol):
    """What the on-demand facade (``summoner.vm.app.OnDemand``) offers the endpoint."""

    def status(self) -> list[dict[str, Any]]: ...
    def find(self, name: str) -> str | None: ...
    def summon(self, name: str) -> defer.Deferred[Result]: ...
    def stop_service(self, name: str, mode: str | None = None) -> defer.Deferred[Result]: ...


class _Action(resource.Resource):
    isLeaf = True  # noqa: N815 (Twisted's name)

    def __init__(self, backend: ServicesBackend, name: str, action: str) -> None:
        super().__init__()
        self.backend = backend
        self.name = name
        self.action = action

    def _start(self, request: server.Request, full: str) -> defer.Deferred[Result] | bytes:
        """The action's Deferred, or the error body when there is nothing to do."""
        if self.action == "summon":
            return self.backend.summon(full)
        if self.action != "stop":
            return json_response(request, 404, {"error": f"unknown action {self.action!r}"})
        mode = request.args.get(b"mode", [b""])[0].decode(errors="replace") or None
        if mode is not None and mode not in STOP_MODES:
            return json_response(request, 400,
                                 {"error": f"mode must be one of {', '.join(STOP_MODES)}, not {mode!r}"})
        return self.backend.stop_service(full, mode)

    def render_POST(self, request: server.Request) -> bytes | int:  # noqa: N802 (Twisted's name)
        full = self.backend.find(self.name)
        if full is None:
            return json_response(request, 404, {"error": f"no on-demand service {self.name!r}"})
        d = self._start(request, full)
        if isinstance(d, bytes):
            return d

        def done(result: Result) -> None:
            if not request.finished:
                request.write(json_response(request, 200 if result.get("ok") else 503, result))
                request.finish()

        def failed(failure: Failure) -> None:
            log.failure("admin {action} {name} failed", failure, action=self.action, name=full)
            if not request.finished:
                request.write(json_response(request, 500, {"ok": False, "error": failure.getErrorMessage()}))
                request.finish()
        d.addCallbacks(done, failed)
        return server.NOT_DONE_YET

    def render_GET(self, request: server.Request) -> bytes:  # noqa: N802
        return json_response(request, 405, {"error": "use POST"})


class _Services(resource.Resource):
    def __init__(self, backend: ServicesBackend) -> None:
        super().__init__()
        self.backend = backend

    def getChild(self, path: bytes, request: server.Request) -> resource.Resource:  # noqa: N802
        if not path:
            return self
        postpath = request.postpath
        action = postpath.pop(0).decode() if postpath else ""
        return _Action(self.backend, path.decode(), action)

    def render_GET(self, request: server.Request) -> bytes:  # noqa: N802
        return json_response(request, 200, self.backend.status())


def admin_resources(backend: ServicesBackend) -> dict[bytes, resource.Resource]:
    """``{b"services": ...}``: what the on-demand part adds to the admin endpoint."""
    return {b"services": _Services(backend)}
