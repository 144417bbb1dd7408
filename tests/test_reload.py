"""Zone hot reload: edits on disk take effect within 2 s, bad edits keep the last good zones."""

from __future__ import annotations

import math
import os
import signal
import threading
import time
from pathlib import Path

import dns.exception
import dns.flags
import dns.rcode
import dns.rdatatype
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
    timeouts, is recorded: none may happen.  ``questions`` are names (type A)
    or (name, type) pairs, asked in turn; ``answers`` keeps (time sent,
    question, reply) for each reply."""

    def __init__(self, server, questions: list, check=None) -> None:
        self.server = server
        self.questions = [(q, "A") if isinstance(q, str) else q for q in questions]
        self.check = check or (lambda reply: None if reply.rcode() == dns.rcode.NOERROR
                               else dns.rcode.to_text(reply.rcode()))
        self.errors: list[str] = []
        self.answers: list[tuple[float, tuple[str, str], object]] = []
        self.count = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set() and self.count < 20_000:
            question = self.questions[self.count % len(self.questions)]
            sent = time.monotonic()
            try:
                reply = self.server.query(*question, timeout=2)
                self.answers.append((sent, question, reply))
                problem = self.check(reply)
            except Exception as exc:  # any failure is the finding, not only timeouts
                problem = f"{type(exc).__name__}: {exc}"
            if problem:
                self.errors.append(f"{question}: {problem}")
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


# Two zones whose contents change together between versions 1 and 2: an
# RRset, a CNAME in one zone and its target in the other, a name that exists
# only in version 1, TTLs, and every SOA's serial and negative TTL (the SOA
# comes back with NXDOMAIN and NODATA, so it tells which version answered).
VERSION_A = """$TTL 300
@        IN SOA ns hostmaster ( {n} 3600 600 86400 6{n} )
         IN NS  ns
ns       IN A   127.0.0.1
multi 10{n} IN A 127.0.{n}.1
multi 10{n} IN A 127.0.{n}.2
multi 10{n} IN A 127.0.{n}.3
alias 10{n} IN CNAME t{n}.b.test.
only{n}  IN A   127.0.{n}.7
"""
VERSION_B = """$TTL 300
@        IN SOA ns hostmaster ( {n} 3600 600 86400 6{n} )
         IN NS  ns
ns       IN A   127.0.0.1
t{n} 10{n} IN A 127.0.{n}.9
"""
# ANY is answered through the resolver chain, the others from compiled
# answers: both paths must move to the new version at the same moment.
QUESTIONS = [("multi.a.test", "A"), ("alias.a.test", "A"), ("only1.a.test", "A"), ("t1.b.test", "A"),
             ("multi.a.test", "AAAA"), ("only2.a.test", "A"), ("t2.b.test", "A"), ("multi.a.test", "ANY"),
             ("only1.a.test", "ANY"), ("only2.a.test", "ANY")]


def version_answers(n: int) -> dict[tuple[str, str], tuple[str, list[str], list[str]]]:
    """What each question gets from version ``n`` of both zones, written out
    by hand from the zone text above: (rcode, answer, authority)."""
    soa = {zone: f"{zone}. 6{n} IN SOA ns.{zone}. hostmaster.{zone}. {n} 3600 600 86400 6{n}"
           for zone in ("a.test", "b.test")}
    other = 3 - n
    return {
        ("multi.a.test", "A"): ("NOERROR", [f"multi.a.test. 10{n} IN A 127.0.{n}.{i}" for i in (1, 2, 3)], []),
        ("alias.a.test", "A"): ("NOERROR", [f"alias.a.test. 10{n} IN CNAME t{n}.b.test.",
                                            f"t{n}.b.test. 10{n} IN A 127.0.{n}.9"], []),
        (f"only{n}.a.test", "A"): ("NOERROR", [f"only{n}.a.test. 300 IN A 127.0.{n}.7"], []),
        (f"only{other}.a.test", "A"): ("NXDOMAIN", [], [soa["a.test"]]),
        (f"t{n}.b.test", "A"): ("NOERROR", [f"t{n}.b.test. 10{n} IN A 127.0.{n}.9"], []),
        (f"t{other}.b.test", "A"): ("NXDOMAIN", [], [soa["b.test"]]),
        ("multi.a.test", "AAAA"): ("NOERROR", [], [soa["a.test"]]),
        ("multi.a.test", "ANY"): ("NOERROR", [f"multi.a.test. 10{n} IN A 127.0.{n}.{i}" for i in (1, 2, 3)], []),
        (f"only{n}.a.test", "ANY"): ("NOERROR", [f"only{n}.a.test. 300 IN A 127.0.{n}.7"], []),
        (f"only{other}.a.test", "ANY"): ("NXDOMAIN", [], [soa["a.test"]]),
    }


def write_version(zones: Path, n: int) -> None:
    replace_file(zones / "a.test.zone", VERSION_A.format(n=n))
    replace_file(zones / "b.test.zone", VERSION_B.format(n=n))


def test_queries_during_reloads_see_the_old_or_the_new_zones_never_a_mix(start_server, tmp_path: Path) -> None:
    """Each answer must be exactly what version 1 or version 2 of both zones
    gives; during a reload, once one query has got the new version no later
    one may get the old; and once a reload has been seen, no later query may
    get the old version.  Both files are written before each SIGHUP (polling is off), so
    every reload reads one version from disk: a mix could only be summoner's."""
    zones = tmp_path / "zones"
    zones.mkdir()
    write_version(zones, 1)
    server = start_server(zones, "--no-on-demand", "--reload-interval", "3600", copy_zones=False)
    expected = {n: version_answers(n) for n in (1, 2)}

    def version_of(question, reply) -> int | None:
        got = (dns.rcode.to_text(reply.rcode()),
               sorted(line for rrset in reply.answer for line in rrset.to_text().splitlines()),
               sorted(line for rrset in reply.authority for line in rrset.to_text().splitlines()))
        for n in (1, 2):
            rcode, answer, authority = expected[n][question]
            if got == (rcode, sorted(answer), sorted(authority)) and reply.flags & dns.flags.AA:
                return n
        return None

    def coherent(reply) -> str | None:
        [asked] = reply.question  # dnspython checked it is the question sent
        question = (asked.name.to_text(omit_final_dot=True), dns.rdatatype.to_text(asked.rdtype))
        return None if version_of(question, reply) else f"a mix or a stranger: {reply.to_text()}"

    assert all(version_of(q, server.query(*q)) == 1 for q in QUESTIONS)
    flips: list[tuple[float, float, int]] = []  # (written, seen, version)
    with QueryLoad(server, QUESTIONS, coherent) as load:
        time.sleep(0.2)
        for flip in range(8):  # back and forth, each reload with queries in flight
            n = 2 if flip % 2 == 0 else 1
            written = time.monotonic()
            write_version(zones, n)
            server.signal(signal.SIGHUP)
            wait_for(lambda n=n: all(version_of(q, server.query(*q)) == n for q in QUESTIONS))
            flips.append((written, time.monotonic(), n))
            time.sleep(0.2)
    assert load.errors == [], load.errors[:5]
    # A query sent after a reload was seen whole, and before the next file
    # write, must get the new version: nothing of the old one lingers (in a
    # cache, a compiled fragment, or a zone not yet swapped).
    stale = []
    for (_, seen, n), (next_written, _, _) in zip(flips, [*flips[1:], (math.inf, 0, 0)], strict=True):
        stale += [(question, reply.to_text()) for sent, question, reply in load.answers
                  if seen < sent < next_written and version_of(question, reply) != n]
    assert stale == [], stale[:3]
    # While a reload is under way, the answers go from old to new once.
    for written, seen, n in flips:
        during = [version_of(q, reply) for sent, q, reply in load.answers if written <= sent <= seen]
        if n in during:
            assert 3 - n not in during[during.index(n):], (n, during)
    versions = {version_of(q, reply) for _, q, reply in load.answers}
    assert load.count > 200 and versions == {1, 2}, (load.count, versions)
    assert server.metric("summoner_zone_reloads_total", result="success") == 1 + len(flips)
