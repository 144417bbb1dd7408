"""Local admin endpoint (server side) and its client (CLI side).

Server: a small Twisted web resource, JSON only, meant for loopback:

- ``GET  /services``                → ``[{name, image, state, address, uptime, idle, boot_count, last_error, ...}]``
- ``POST /services/NAME/summon``    → boots (or resumes) NAME and waits until ready or failed
- ``POST /services/NAME/stop``      → stops NAME by its image's stop mode (``?mode=destroy`` to force)
- ``GET  /arrowhead``               → Arrowhead connection state and published services (404 when off)

NAME is the host name (``hello.example.org``) or its first label when that is
unambiguous (``hello``).

Client: plain ``urllib`` calls for the ``summoner status|summon|stop``
subcommands, which run outside the reactor.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any, Protocol

from twisted.internet import defer
from twisted.logger import Logger
from twisted.web import resource, server

from summoner.vm.config import STOP_MODES

log = Logger(namespace="summoner.admin")

DEFAULT_URL = "http://127.0.0.1:9154"


class AdminBackend(Protocol):
    def status(self) -> list[dict[str, Any]]: ...
    def find(self, name: str) -> str | None: ...
    def summon(self, name: str) -> defer.Deferred: ...
    def stop_service(self, name: str, mode: str | None = None) -> defer.Deferred: ...


def _json(request: Any, code: int, body: Any) -> bytes:
    request.setResponseCode(code)
    request.setHeader(b"content-type", b"application/json")
    request.setHeader(b"cache-control", b"no-store")
    return json.dumps(body, indent=1).encode() + b"\n"


class _Action(resource.Resource):
    isLeaf = True  # noqa: N815 (Twisted's name)

    def __init__(self, backend: AdminBackend, name: str, action: str) -> None:
        super().__init__()
        self.backend = backend
        self.name = name
        self.action = action

    def render_POST(self, request: Any) -> Any:  # noqa: N802 (Twisted's name)
        full = self.backend.find(self.name)
        if full is None:
            return _json(request, 404, {"error": f"no on-demand service {self.name!r}"})
        if self.action == "summon":
            d = self.backend.summon(full)
        elif self.action == "stop":
            mode = request.args.get(b"mode", [b""])[0].decode(errors="replace") or None
            if mode is not None and mode not in STOP_MODES:
                return _json(request, 400, {"error": f"mode must be one of {', '.join(STOP_MODES)}, not {mode!r}"})
            d = self.backend.stop_service(full, mode)
        else:
            return _json(request, 404, {"error": f"unknown action {self.action!r}"})

        def done(result: dict[str, Any]) -> None:
            if not request.finished:
                request.write(_json(request, 200 if result.get("ok") else 503, result))
                request.finish()

        def failed(failure: Any) -> None:
            log.failure("admin {action} {name} failed", failure, action=self.action, name=full)
            if not request.finished:
                request.write(_json(request, 500, {"ok": False, "error": failure.getErrorMessage()}))
                request.finish()
        d.addCallbacks(done, failed)
        return server.NOT_DONE_YET

    def render_GET(self, request: Any) -> bytes:  # noqa: N802
        return _json(request, 405, {"error": "use POST"})


class _Services(resource.Resource):
    def __init__(self, backend: AdminBackend) -> None:
        super().__init__()
        self.backend = backend

    def getChild(self, path: bytes, request: Any) -> resource.Resource:  # noqa: N802
        if not path:
            return self
        postpath = request.postpath
        action = postpath.pop(0).decode() if postpath else ""
        return _Action(self.backend, path.decode(), action)

    def render_GET(self, request: Any) -> bytes:  # noqa: N802
        return _json(request, 200, self.backend.status())


class _Status(resource.Resource):
    isLeaf = True  # noqa: N815 (Twisted's name)

    def __init__(self, status: Callable[[], dict[str, Any]]) -> None:
        super().__init__()
        self.status = status

    def render_GET(self, request: Any) -> bytes:  # noqa: N802
        return _json(request, 200, self.status())


def admin_resource(backend: AdminBackend,
                   arrowhead_status: Callable[[], dict[str, Any]] | None = None) -> resource.Resource:
    root = resource.Resource()
    root.putChild(b"services", _Services(backend))
    if arrowhead_status is not None:
        root.putChild(b"arrowhead", _Status(arrowhead_status))
    return root


# -- client side (no reactor) --------------------------------------------------


class AdminError(Exception):
    pass


def _request(url: str, method: str = "GET", timeout: float = 60.0) -> tuple[int, Any]:
    req = urllib.request.Request(url, method=method, data=b"" if method == "POST" else None)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as exc:
        try:
            body = json.loads(exc.read() or b"null")
        except ValueError:
            body = {"error": str(exc)}
        return exc.code, body
    except (urllib.error.URLError, OSError) as exc:
        raise AdminError(f"cannot reach the summoner admin endpoint at {url}: {exc}") from exc


def base_url(addr: str | tuple[str, int] | None) -> str:
    """``127.0.0.1:9154`` / ``("127.0.0.1", 9154)`` / a URL → a base URL."""
    if addr is None:
        return DEFAULT_URL
    if isinstance(addr, tuple):
        host, port = addr
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
    return addr.rstrip("/") if addr.startswith("http") else f"http://{addr}"


def fetch_status(url: str = DEFAULT_URL) -> list[dict[str, Any]]:
    code, body = _request(base_url(url) + "/services")
    if code != 200:
        raise AdminError(f"status failed: HTTP {code}: {body}")
    return body


def fetch_arrowhead(url: str = DEFAULT_URL) -> dict[str, Any] | None:
    """The Arrowhead part's status, or None when the server runs without it."""
    code, body = _request(base_url(url) + "/arrowhead")
    if code == 404:
        return None
    if code != 200:
        raise AdminError(f"Arrowhead status failed: HTTP {code}: {body}")
    return body


def format_arrowhead(status: dict[str, Any]) -> str:
    """Arrowhead's connection state and the services summoner publishes."""
    orchestrator = status.get("orchestrator", {})
    registry = status.get("registry", {})
    lines = [
        f"Arrowhead ({'secure' if status.get('secure') else 'insecure'}), system {status.get('system_name')}",
        f"  orchestrator: {orchestrator.get('state', '-')} (circuit {orchestrator.get('circuit', '-')})"
        + (f", last error: {orchestrator['last_error']}" if orchestrator.get("last_error") else ""),
        f"  registry: system {registry.get('system', {}).get('state', '-')}",
    ]
    services = registry.get("services", [])
    if services:
        lines.append("  published services:")
        for service in services:
            error = f" ({service['last_error']})" if service.get("last_error") else ""
            lines.append(f"    {service.get('dns_name')}: {service.get('state')}{error}")
    return "\n".join(lines)


def summon(url: str, name: str, timeout: float = 120.0) -> dict[str, Any]:
    code, body = _request(f"{base_url(url)}/services/{name}/summon", "POST", timeout)
    if code == 404:
        raise AdminError(body.get("error", "not found"))
    return body


def stop(url: str, name: str, mode: str | None = None) -> dict[str, Any]:
    q = f"?mode={mode}" if mode else ""
    code, body = _request(f"{base_url(url)}/services/{name}/stop{q}", "POST")
    if code == 404:
        raise AdminError(body.get("error", "not found"))
    return body


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = int(seconds)
    if s < 60:
        return f"{seconds:.1f}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def format_status(rows: list[dict[str, Any]]) -> str:
    """A table for humans: NAME STATE ADDRESS UPTIME IDLE BOOTS LAST ERROR."""
    header = ("NAME", "IMAGE", "STATE", "ADDRESS", "UPTIME", "IDLE", "BOOTS", "LAST ERROR")
    table = [header]
    for r in rows:
        error = (r.get("last_error") or "").splitlines()[0:1]
        err = error[0] if error else ""
        if r.get("retry_in"):
            err = f"(retry in {r['retry_in']:.0f}s) {err}"
        table.append((r["name"], r.get("image", ""), r["state"], f"{r['address']}:{r.get('port', '')}",
                      _duration(r.get("uptime")), _duration(r.get("idle")), str(r.get("boot_count", 0)),
                      err[:60]))
    widths = [max(len(row[i]) for row in table) for i in range(len(header) - 1)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row[:-1], widths, strict=True)) + "  " + row[-1]
             for row in table]
    return "\n".join(line.rstrip() for line in lines)
