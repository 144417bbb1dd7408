"""Local admin endpoint (server side) and its client (CLI side).

Server: a small Twisted web site, JSON only, meant for loopback.  It knows no
part of the server: the top (``summoner.app``) listens on ``--admin`` and
mounts what each part contributes (a ``{path segment: Resource}`` mapping):

- the on-demand part (``summoner.vm.admin``): ``GET /services``,
  ``POST /services/NAME/summon``, ``POST /services/NAME/stop[?mode=...]``;
- the Arrowhead part: ``GET /arrowhead`` (404 when Arrowhead is off).

Client: plain ``urllib`` calls for the ``summoner status|summon|stop``
subcommands, which run outside the reactor.

Tests: tests/vm/test_admin.py, tests/test_arrowhead_dns.py (``/arrowhead``).
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from typing import Any

from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IListeningPort, IReactorTCP
from twisted.logger import Logger
from twisted.web import resource, server

from summoner.metrics import QuietSite
from summoner.netaddr import host_port

log = Logger(namespace="summoner.admin")

DEFAULT_ADDRESS = ("127.0.0.1", 9154)  # ServeConfig.admin's default, and where the CLI looks
DEFAULT_URL = f"http://{DEFAULT_ADDRESS[0]}:{DEFAULT_ADDRESS[1]}"

# What a part contributes: path segment under the root -> resource.
Resources = Mapping[bytes, resource.Resource]


def parse_admin(text: str) -> tuple[str, int] | None:
    """``ADDR:PORT`` (IPv6 as ``[::1]:PORT``), or ``off``."""
    if text.lower() in ("off", "none", ""):
        return None
    host, port = host_port(text)
    try:
        ipaddress.ip_address(host)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"bad admin address {host!r}") from exc
    return host, port


def json_response(request: server.Request, code: int, body: object) -> bytes:
    """Set ``code`` and the JSON headers on ``request``; the encoded body."""
    request.setResponseCode(code)
    request.setHeader(b"content-type", b"application/json")
    request.setHeader(b"cache-control", b"no-store")
    return json.dumps(body, indent=1).encode() + b"\n"


class JSONStatus(resource.Resource):
    """``GET`` → ``status()`` as JSON (a part's status page)."""

    isLeaf = True  # noqa: N815 (Twisted's name)

    def __init__(self, status: Callable[[], object]) -> None:
        super().__init__()
        self.status = status

    def render_GET(self, request: server.Request) -> bytes:  # noqa: N802 (Twisted's name)
        return json_response(request, 200, self.status())


class _Root(resource.Resource):
    def getChild(self, path: bytes, request: server.Request) -> resource.Resource:  # noqa: N802
        return _NotFound(path)

    def render_GET(self, request: server.Request) -> bytes:  # noqa: N802
        return json_response(request, 200, {"resources": sorted(p.decode() for p in self.children)})


class _NotFound(resource.Resource):
    isLeaf = True  # noqa: N815 (Twisted's name)

    def __init__(self, path: bytes) -> None:
        super().__init__()
        self.path = path.decode(errors="replace")

    def render(self, request: server.Request) -> bytes:
        return json_response(request, 404, {"error": f"no {self.path!r} here (that part is off)"})


def admin_resource(resources: Resources) -> resource.Resource:
    """The root: every part's resources side by side; 404 (JSON) elsewhere."""
    root = _Root()
    for path, child in resources.items():
        root.putChild(path, child)
    return root


def listen_admin(reactor: IReactorTCP, address: tuple[str, int], resources: Resources) -> IListeningPort | None:
    """Serve ``resources`` on ``address``; None (and an error logged) if it
    cannot listen: DNS matters more than the admin endpoint."""
    host, port = address
    site = QuietSite(admin_resource(resources))
    try:
        listening: IListeningPort = reactor.listenTCP(port, site, interface=host)
    except CannotListenError as exc:
        log.error("admin endpoint disabled: cannot listen on {host}:{port}: {err}",
                  host=host, port=port, err=exc.socketError)
        return None
    paths = ", ".join("/" + p.decode() for p in sorted(resources)) or "nothing to serve"
    log.info("admin endpoint on http://{host}:{port} ({paths})", host=host,
             port=listening.getHost().port, paths=paths)
    return listening


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


def fetch_status(url: str = DEFAULT_URL) -> list[dict[str, Any]] | None:
    """The on-demand services, or None when the server runs without that part."""
    code, body = _request(base_url(url) + "/services")
    if code == 404:
        return None
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


def _size(size: int | None) -> str:
    return "-" if size is None else f"{size / 2**20:.1f} MiB"


def format_status(rows: list[dict[str, Any]]) -> str:
    """A table for humans: NAME IMAGE STATE ADDRESS UPTIME IDLE BOOTS SNAPSHOT LAST ERROR."""
    header = ("NAME", "IMAGE", "STATE", "ADDRESS", "UPTIME", "IDLE", "BOOTS", "SNAPSHOT", "LAST ERROR")
    table = [header]
    for r in rows:
        error = (r.get("last_error") or "").splitlines()[0:1]
        err = error[0] if error else ""
        if r.get("retry_in"):
            err = f"(retry in {r['retry_in']:.0f}s) {err}"
        table.append((r["name"], r.get("image", ""), r["state"], f"{r['address']}:{r.get('port', '')}",
                      _duration(r.get("uptime")), _duration(r.get("idle")), str(r.get("boot_count", 0)),
                      _size(r.get("snapshot_bytes")), err[:60]))
    widths = [max(len(row[i]) for row in table) for i in range(len(header) - 1)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row[:-1], widths, strict=True)) + "  " + row[-1]
             for row in table]
    return "\n".join(line.rstrip() for line in lines)
