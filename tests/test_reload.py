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
    """Background queries during a reload: every answer is checked by
    ``check`` (None: fine, else what is wrong), and every exception, not only
    timeouts, is recorded: none may happen."""

    def __init__(self, server, names: list[str], check=None) -> None:
        self.server, self.names = server, names
        self.check = check or (lambda reply: None if reply.rcode() == dns.rcode.NOERROR
                               else dns.rcode.to_text(reply.rcode()))
        self.errors: list[str] = []
        self.count = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set() and self.count < 20_000:
            name = self.names[self.count % len(self.names)]
            try:
                problem = self.check(self.server.query(name, "A", timeout=2))
            except Exception as exc:  # any failure is the finding, not only timeouts
                problem = f"{type(exc).__name__}: {exc}"
            if problem:
                self.errors.append(f"{name}: {problem}")
            self.count += 1

    def __enter__(self) -> QueryLoad:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(10)
        assert not self._thread.is_alive(), "the query thread did not stop"


def test_edit_takes_effect_within_two_seconds_without_dropping_queries(start_server) -> None:
    server = start_server()
    zone = server.zones / "example.org.zone"
    text = zone.read_text()
    with QueryLoad(server, ["www.example.org"]) as load:
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


VERSION = """multi   IN A {v}.1
multi   IN A {v}.2
multi   IN A {v}.3
alias   IN CNAME target{n}
target{n} IN A {v}.9
"""


def test_queries_during_reloads_see_the_old_or_the_new_zone_never_a_mix(start_server) -> None:
    """Several records change together (an RRset, a CNAME and its target):
    each answer must be wholly one version."""
    server = start_server()
    zone = server.zones / "example.org.zone"
    base = zone.read_text()
    versions = {n: VERSION.format(v=f"127.0.{n}", n=n) for n in (1, 2)}
    replace_file(zone, base + versions[1])
    wait_for(lambda: address(server, "target1.example.org") == "127.0.1.9")
    seen: dict[str, set[int]] = {"multi": set(), "alias": set()}

    def coherent(reply) -> str | None:
        if reply.rcode() != dns.rcode.NOERROR:
            return dns.rcode.to_text(reply.rcode())
        texts = sorted(f"{rrset.name} {rd}" for rrset in reply.answer for rd in rrset)
        for n in (1, 2):
            if reply.question[0].name.to_text().startswith("multi"):
                if texts == [f"multi.example.org. 127.0.{n}.{i}" for i in (1, 2, 3)]:
                    seen["multi"].add(n)
                    return None
            elif texts == [f"alias.example.org. target{n}.example.org.", f"target{n}.example.org. 127.0.{n}.9"]:
                seen["alias"].add(n)
                return None
        return f"a mix or a stranger: {texts}"

    with QueryLoad(server, ["multi.example.org", "alias.example.org"], coherent) as load:
        for flips in range(6):  # back and forth, each reload with queries in flight
            n = 2 if flips % 2 == 0 else 1
            replace_file(zone, base + versions[n])
            wait_for(lambda n=n: address(server, f"target{n}.example.org") == f"127.0.{n}.9")
            time.sleep(0.1)
    assert load.errors == [], load.errors[:5]
    assert load.count > 50 and seen == {"multi": {1, 2}, "alias": {1, 2}}, (load.count, seen)
