"""Admin endpoint rendering (summoner.admin's root, summoner.vm.admin's
/services) and the CLI-side formatting."""

from __future__ import annotations

from summoner.admin import base_url, format_status


def test_format_status_table():
    rows = [
        {"name": "hello.example.org", "image": "hello", "state": "ready", "address": "127.0.0.10", "port": 8080,
         "uptime": 3725.0, "idle": 12.5, "boot_count": 3, "last_error": None, "retry_in": None},
        {"name": "silent.example.org", "image": "silent", "state": "failed", "address": "127.0.0.12",
         "port": 8080, "uptime": None, "idle": None, "boot_count": 1,
         "last_error": "not ready within 3s; last probe error: connection closed\nmore", "retry_in": 4.2},
        {"name": "tasks.example.org", "image": "tasks", "state": "stopped", "address": "127.0.0.11", "port": 8080,
         "uptime": None, "idle": None, "boot_count": 2, "last_error": None, "retry_in": None,
         "snapshot_bytes": 9_227_468},
    ]
    text = format_status(rows)
    lines = text.splitlines()
    assert lines[0].split() == ["NAME", "IMAGE", "STATE", "ADDRESS", "UPTIME", "IDLE", "BOOTS", "SNAPSHOT", "LAST",
                                "ERROR"]
    assert "1h02m" in lines[1] and "12.5s" in lines[1] and lines[1].split()[6] == "3"
    assert "(retry in 4s) not ready within 3s" in lines[2] and "more" not in lines[2]
    assert lines[1].split()[7] == "-" and lines[3].split()[7:9] == ["8.8", "MiB"]  # the saved state's size


def test_base_url():
    assert base_url("127.0.0.1:9154") == "http://127.0.0.1:9154"
    assert base_url(("::1", 9154)) == "http://[::1]:9154"
    assert base_url("http://x:1/") == "http://x:1"
    assert base_url(None) == "http://127.0.0.1:9154"


def test_stop_with_an_unknown_mode_is_refused_not_destroyed():
    import json

    from twisted.internet import defer
    from twisted.web.test.requesthelper import DummyRequest

    from summoner.admin import admin_resource
    from summoner.vm.admin import admin_resources

    class Backend:
        stops: list = []

        def status(self):
            return []

        def find(self, name):
            return "hello.example.org"

        def summon(self, name):
            return defer.succeed({"ok": True})

        def stop_service(self, name, mode=None):
            self.stops.append(mode)
            return defer.succeed({"ok": True})

    backend = Backend()
    root = admin_resource(admin_resources(backend))
    request = DummyRequest([b"stop"])  # what is left after services/hello
    request.method = b"POST"
    request.args = {b"mode": [b"destory"]}
    body = root.getChildWithDefault(b"services", request).getChildWithDefault(b"hello", request).render(request)
    assert request.responseCode == 400 and "mode must be one of" in json.loads(body)["error"]
    assert backend.stops == []  # a typo never becomes a destroy


def _render(root, path: bytes, method: bytes = b"GET"):
    import json

    from twisted.web.test.requesthelper import DummyRequest
    segments = path.strip(b"/").split(b"/")
    request = DummyRequest(segments[1:])
    request.method = method
    body = root.getChildWithDefault(segments[0], request).render(request)
    return request.responseCode, json.loads(body)


def test_the_root_mounts_each_parts_resources_and_knows_no_part():
    from summoner.admin import JSONStatus, admin_resource
    root = admin_resource({b"arrowhead": JSONStatus(lambda: {"secure": False})})
    assert _render(root, b"/arrowhead") == (200, {"secure": False})
    code, body = _render(root, b"/services")  # no on-demand part: a JSON 404
    assert code == 404 and "services" in body["error"]
    import ast

    import summoner.admin
    tree = ast.parse(open(summoner.admin.__file__).read())
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    imported |= {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    assert not {m for m in imported if m and m.startswith(("summoner.vm", "summoner.arrowhead", "summoner.app"))}


def test_parse_admin():
    import argparse

    import pytest

    from summoner.admin import parse_admin
    assert parse_admin("127.0.0.1:9154") == ("127.0.0.1", 9154)
    assert parse_admin("[::1]:1") == ("::1", 1)
    assert parse_admin("off") is None
    with pytest.raises(argparse.ArgumentTypeError):
        parse_admin("localhost:9154")


def test_the_app_mounts_arrowhead_without_the_on_demand_part():
    from twisted.internet import reactor

    from summoner.admin import admin_resource
    from summoner.app import App, ServeConfig
    from summoner.arrowhead.config import ArrowheadConfig
    assert App(ServeConfig(), reactor).admin_resources() == {}
    app = App(ServeConfig(), reactor, arrowhead=ArrowheadConfig(orchestrator_url="http://127.0.0.1:1"))
    resources = app.admin_resources()
    assert set(resources) == {b"arrowhead"}
    code, body = _render(admin_resource(resources), b"/arrowhead")
    assert code == 200 and body["system_name"] == "summoner" and body["orchestrator"]["state"] == "up"
