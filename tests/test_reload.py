"""Zone hot reload: edits on disk take effect within 2 s, bad edits keep the last good zones."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import dns.exception
import dns.rcode
import pytest


def wait_for(predicate, timeout: float = 2.5, interval: float = 0.05):
    """Poll until predicate() is truthy; returns elapsed seconds."""
    started = time.monotonic()
    while True:
        result = predicate()
        if result:
            return time.monotonic() - started
        if time.monotonic() - started > timeout:
            raise AssertionError(f"not true within {timeout}s")
        time.sleep(interval)


def address(server, name: str) -> str | None:
    reply = server.query(name, "A")
    if reply.rcode() != dns.rcode.NOERROR or not reply.answer:
        return None
    return str(reply.answer[-1][0])


def replace_file(path: Path, text: str) -> None:
    """Write then rename, as editors and config management do."""
    tmp = path.with_suffix(".tmp-edit")
    tmp.write_text(text)
    os.replace(tmp, path)


class QueryLoad:
    """Background queries during a reload: none may fail or time out."""

    def __init__(self, server, name: str) -> None:
        self.server, self.name = server, name
        self.errors: list[str] = []
        self.count = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set() and self.count < 20_000:
            try:
                reply = self.server.query(self.name, "A", timeout=2)
                if reply.rcode() != dns.rcode.NOERROR:
                    self.errors.append(dns.rcode.to_text(reply.rcode()))
            except dns.exception.Timeout:
                self.errors.append("timeout")
            self.count += 1

    def __enter__(self) -> QueryLoad:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(10)


def test_edit_takes_effect_within_two_seconds_without_dropping_queries(start_server) -> None:
    server = start_server()
    zone = server.zones / "example.org.zone"
    text = zone.read_text()
    with QueryLoad(server, "www.example.org") as load:
        replace_file(zone, text.replace("www     IN A    127.0.0.2", "www     IN A    127.0.0.22")
                     + "fresh   IN A    127.0.0.99\n")
        elapsed = wait_for(lambda: address(server, "fresh.example.org") == "127.0.0.99")
        assert address(server, "www.example.org") == "127.0.0.22"
    assert elapsed < 2.0
    assert load.count > 10 and load.errors == []
    assert server.metric("summoner_zone_reloads_total", result="success") >= 2


def test_in_place_edit_is_noticed(start_server) -> None:
    server = start_server()
    zone = server.zones / "example.org.zone"
    with open(zone, "a") as handle:  # appended in place, no rename
        handle.write("appended IN A 127.0.0.77\n")
    wait_for(lambda: address(server, "appended.example.org") == "127.0.0.77")


def test_adding_and_removing_a_zone_file(start_server) -> None:
    server = start_server()
    assert server.query("www.added.test", "A").rcode() == dns.rcode.REFUSED
    (server.zones / "added.test.zone").write_text(
        "$TTL 60\n@ IN SOA ns hm 1 2 3 4 5\n@ IN NS ns\nns IN A 127.0.0.1\nwww IN A 127.0.4.4\n")
    wait_for(lambda: address(server, "www.added.test") == "127.0.4.4")
    (server.zones / "added.test.zone").unlink()
    wait_for(lambda: server.query("www.added.test", "A").rcode() == dns.rcode.REFUSED)
    assert address(server, "www.example.org") == "127.0.0.2"


def test_broken_edit_keeps_the_last_good_zones_and_is_counted(start_server) -> None:
    server = start_server()
    zone = server.zones / "example.org.zone"
    good = zone.read_text()
    replace_file(zone, good + "broken IN A 999.1.1.1\n")
    wait_for(lambda: server.metric("summoner_zone_reloads_total", result="failure") >= 1)
    assert address(server, "www.example.org") == "127.0.0.2"
    assert f"{zone}:{len(good.splitlines()) + 1}: A record has an invalid address" in server.log()
    replace_file(zone, good + "mended IN A 127.0.0.5\n")
    wait_for(lambda: address(server, "mended.example.org") == "127.0.0.5")


def test_sighup_reloads_at_once(start_server) -> None:
    # polling every 60 s, so only SIGHUP can explain a fast reload
    server = start_server(Path(__file__).resolve().parent.parent / "zones", "--reload-interval", "60")
    zone = server.zones / "example.org.zone"
    with open(zone, "a") as handle:
        handle.write("hup IN A 127.0.0.88\n")
    server.signal(signal.SIGHUP)
    wait_for(lambda: address(server, "hup.example.org") == "127.0.0.88", timeout=1.5)


@pytest.mark.parametrize("fmt", ["json"])
def test_json_log_format(start_server, fmt: str) -> None:
    import json
    server = start_server(Path(__file__).resolve().parent.parent / "zones", "--log-format", fmt)
    zone = server.zones / "example.org.zone"
    replace_file(zone, zone.read_text() + "bad IN A 1.2.3\n")
    wait_for(lambda: server.metric("summoner_zone_reloads_total", result="failure") >= 1)
    records = [json.loads(line) for line in server.log().splitlines() if line.startswith("{")]
    assert records, server.log()
    errors = [r for r in records if r["level"] == "error"]
    assert errors and "invalid address" in errors[0]["message"]
    assert {"time", "level", "logger", "message"} <= set(errors[0])
