"""Zone files: what summoner accepts, named-checkzone accepts; what it rejects, named-checkzone rejects."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from dnslib import QTYPE

from summoner.zonefile import ZoneError, load_zone_dir, parse_zone_file, parse_zone_text, zone_name_for

ROOT = Path(__file__).resolve().parent.parent
GOOD = sorted((ROOT / "tests" / "zones" / "good").glob("*.zone")) + [ROOT / "zones" / "example.org.zone"]
BAD = sorted((ROOT / "tests" / "zones" / "bad").glob("*.zone"))
# named-checkzone only warns about (and drops) out-of-zone data; summoner
# refuses it, because silently dropping an admin's record hides a typo.
NAMED_WARNS_ONLY = {"out-of-zone": "ignoring out-of-zone data"}

needs_named = pytest.mark.skipif(shutil.which("named-checkzone") is None,
                                 reason="named-checkzone (bind9-utils) is not installed")


def named_checkzone(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["named-checkzone", zone_name_for(path), str(path)],
                          capture_output=True, text=True, timeout=30)


@needs_named
@pytest.mark.parametrize("path", GOOD, ids=lambda p: p.name)
def test_accepted_zones_are_accepted_by_named_checkzone(path: Path) -> None:
    zone = parse_zone_file(path)
    assert zone.record_count > 0
    result = named_checkzone(path)
    assert result.returncode == 0, result.stdout + result.stderr


@needs_named
@pytest.mark.parametrize("path", BAD, ids=lambda p: p.name)
def test_rejected_zones_are_rejected_by_both(path: Path) -> None:
    """Where named-checkzone names the line, it is the line summoner names."""
    with pytest.raises(ZoneError) as caught:
        parse_zone_file(path)
    for problem in caught.value.problems:
        file_part, line, reason = problem.split(":", 2)
        assert file_part == str(path) and line.isdigit() and reason.strip()
    result = named_checkzone(path)
    output = result.stdout + result.stderr
    warning = NAMED_WARNS_ONLY.get(path.stem)
    if warning:
        assert warning in output
    else:
        assert result.returncode != 0, output
    named_lines = set(re.findall(rf"{re.escape(str(path))}:(\d+):", output))
    assert named_lines <= {problem.split(":")[1] for problem in caught.value.problems}, output


# Each bad zone's one problem, exactly as `summoner check` prints it.
REJECTIONS = [
    ("dup-soa", 5, "duplicate SOA record (the first is at line 2)"),
    ("cname-and-data", 6, "CNAME and other data at www.cname-and-data. (RFC 1034 3.6.2)"),
    ("unknown-type", 5, "unknown record type FOO"),
    ("bad-ttl", 5, "TTL 99999999999 is above the maximum 2147483647"),
    ("bad-ttl-unit", 5, "bad TTL '1x'"),
    ("bad-address", 5, "A record has an invalid address '127.0.0'"),
    ("unbalanced", 5, "unbalanced '(' (never closed)"),
    ("out-of-zone", 5, "www.example.net. is outside the zone's origin out-of-zone."),
    # $TTL given, NS and its address present: the missing SOA itself is what is reported
    ("no-soa", 1, "zone no-soa has no SOA record at its apex"),
    ("no-apex-ns", 2, "zone no-apex-ns has no NS records at its apex"),  # the SOA's line: the apex
    ("ns-without-address", 4, "NS ns2.ns-without-address. is inside the zone but has no address records (A or AAAA)"),
    ("two-cnames", 6, "www.two-cnames. has more than one CNAME record"),  # the second one, as named says
    ("unterminated", 5, "unterminated quoted string"),
    ("generic-length", 5, "generic rdata length 3 does not match 2 bytes"),
]


def test_every_bad_zone_has_its_expected_rejection() -> None:
    assert sorted(stem for stem, _, _ in REJECTIONS) == sorted(path.stem for path in BAD)


@pytest.mark.parametrize(("stem", "line", "reason"), REJECTIONS, ids=[r[0] for r in REJECTIONS])
def test_errors_name_the_line_and_the_reason(stem: str, line: int, reason: str) -> None:
    path = ROOT / "tests" / "zones" / "bad" / f"{stem}.zone"
    with pytest.raises(ZoneError) as caught:
        parse_zone_file(path)
    assert caught.value.problems == [f"{path}:{line}: {reason}"]


@pytest.mark.parametrize(("stem", "line", "reason"), REJECTIONS, ids=[r[0] for r in REJECTIONS])
def test_summoner_check_prints_the_rejection(stem: str, line: int, reason: str, tmp_path: Path) -> None:
    shutil.copy(ROOT / "tests" / "zones" / "bad" / f"{stem}.zone", tmp_path)
    result = subprocess.run([sys.executable, "-m", "summoner", "check", "--zones", str(tmp_path)],
                            capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [f"{tmp_path / stem}.zone:{line}: {reason}"]


HEAD = "$TTL 300\n@ IN SOA ns hm 1 3600 600 86400 60\n IN NS ns\nns IN A 127.0.0.1\n"
# Problems no bad zone file shows, each as one line after HEAD (line 5):
# the exact reason, as `summoner check` prints it.
LINE_REJECTIONS = [
    (") stray", "unbalanced ')'"),
    ("$ORIGIN a b", "$ORIGIN takes exactly one name"),
    ("$TTL", "$TTL takes exactly one value"),
    ("$TTL 5q", "bad TTL '5q'"),
    ("$INCLUDE other.zone", "unsupported directive $INCLUDE"),
    ("www", "record for www.t. has no type"),
    ("www 300 IN", "record for www.t. has no type"),
    ("www CH A 127.0.0.1", "class CH is not served (only IN)"),
    ("www IN A", "A record has no data"),
    ("www IN A 1.2.3.4 5.6.7.8", "A record needs 1 field(s), got 2"),
    ("www IN AAAA 1.2.3.4", "AAAA record has an invalid address '1.2.3.4'"),
    ("www IN MX 70000 mail", "MX preference must be 0-65535, got '70000'"),
    ("www IN SRV 1 2 port target", "SRV port must be 0-65535, got 'port'"),
    ("www IN CNAME a b", "CNAME record needs 1 field(s), got 2"),
    ("sub IN SOA ns hm x 1 2 3 4", "SOA serial must be 0-4294967295, got 'x'"),
    ("www IN TXT " + '"' + "x" * 256 + '"', "a TXT string is longer than 255 bytes"),
    ("www IN TYPE99 abc", "TYPE99 needs RFC 3597 generic data (\\# LENGTH HEX)"),
    ("www IN TYPE99 \\# x", "generic rdata needs '\\# LENGTH HEX'"),
    ("www IN SSHFP 1", "invalid SSHFP data '1': list index out of range"),
]


@pytest.mark.parametrize(("line", "reason"), LINE_REJECTIONS, ids=[r[1] for r in LINE_REJECTIONS])
def test_each_problem_names_its_line_and_reason_exactly(line: str, reason: str) -> None:
    with pytest.raises(ZoneError) as caught:
        parse_zone_text(HEAD + line + "\n", "t", Path("t.zone"))
    assert caught.value.problems == [f"t.zone:5: {reason}"]


def test_an_indented_first_record_has_no_owner_and_a_record_before_any_ttl_has_none() -> None:
    with pytest.raises(ZoneError) as caught:
        parse_zone_text("  IN A 127.0.0.1\nwww IN A 127.0.0.2\n", "t", Path("t.zone"))
    assert caught.value.problems == ["t.zone:1: record has no owner name and there is no previous owner",
                                     "t.zone:2: no TTL given and no $TTL or SOA before this record"]


def test_every_problem_of_a_zone_is_reported_in_line_order() -> None:
    text = HEAD + "a IN A 1.2.3\nb IN FOO x\nwww IN CNAME a\nwww IN A 127.0.0.9\n"
    with pytest.raises(ZoneError) as caught:
        parse_zone_text(text, "t", Path("t.zone"))
    assert caught.value.problems == ["t.zone:5: A record has an invalid address '1.2.3'",
                                     "t.zone:6: unknown record type FOO",
                                     "t.zone:8: CNAME and other data at www.t. (RFC 1034 3.6.2)"]


def test_master_file_features() -> None:
    zone = parse_zone_file(ROOT / "tests" / "zones" / "good" / "wild.test.zone")
    assert zone.origin == "wild.test"
    assert zone.soa.rdata.times == (2026112701, 7200, 1800, 604800, 120)
    assert zone.negative_ttl == 120
    ns2 = {rr.rtype: rr for rr in zone.records["ns2.wild.test"]}
    assert ns2[QTYPE.A].ttl == 3600 and ns2[QTYPE.AAAA].ttl == 3600  # TTL/class in both orders
    assert zone.records["exists.wild.test"][0].ttl == 3600  # $TTL 1h
    assert "relative.other.wild.test" in zone.records  # $ORIGIN switch
    quote = zone.records["quote.wild.test"][0].rdata.data
    assert quote == [b"semi;colon", b'with "quotes"', b"tab\tend"]
    srv = zone.records["_sip._udp.wild.test"][0].rdata
    assert str(srv.target) == "exists.wild.test." and srv.port == 5060


def test_record_without_ttl_or_soa_minimum() -> None:
    zone = parse_zone_text("@ IN SOA ns hm 1 2 3 4 77\n IN NS ns\nns IN A 127.0.0.1\n", "t", Path("t.zone"))
    assert zone.records["ns.t"][0].ttl == 77  # RFC 1035: the SOA minimum when there is no $TTL


def test_check_command_reports_every_error_and_fails(tmp_path: Path) -> None:
    for path in BAD:
        shutil.copy(path, tmp_path)
    result = subprocess.run([sys.executable, "-m", "summoner", "check", "--zones", str(tmp_path)],
                            capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) >= len(BAD)
    for path in BAD:
        assert any(line.startswith(f"{tmp_path / path.name}:") for line in lines), path.name


def test_check_command_passes_the_shipped_zones() -> None:
    result = subprocess.run([sys.executable, "-m", "summoner", "check", "--zones", "zones"],
                            capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "example.org" in result.stdout


def test_serve_refuses_to_start_on_an_invalid_zone(tmp_path: Path) -> None:
    shutil.copy(ROOT / "tests" / "zones" / "bad" / "dup-soa.zone", tmp_path)
    result = subprocess.run([sys.executable, "-m", "summoner", "serve", "--zones", str(tmp_path), "--listen",
                             "127.0.0.1:0", "--no-metrics"], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert result.returncode == 1
    assert f"{tmp_path / 'dup-soa.zone'}:5: duplicate SOA" in result.stderr


def test_two_files_for_one_zone_are_rejected(tmp_path: Path) -> None:
    (tmp_path / "a.zone").write_text("$ORIGIN a.\n@ 60 IN SOA ns hm 1 2 3 4 5\n@ 60 IN NS ns\nns 60 IN A 127.0.0.1\n")
    load_zone_dir(tmp_path)  # one file is fine
    (tmp_path / "A.zone").write_text((tmp_path / "a.zone").read_text())
    with pytest.raises(ZoneError, match="also served from"):
        load_zone_dir(tmp_path)


def test_soa_serial_is_a_32_bit_number_not_a_ttl() -> None:
    rest = "1h 2 3 4\n@ 60 IN NS ns\nns 60 IN A 127.0.0.1\n"
    zone = parse_zone_text(f"@ 60 IN SOA ns hm 4294967295 {rest}", "t", Path("t.zone"))
    assert zone.soa.rdata.times[:2] == (4294967295, 3600)  # above 2^31 is a valid serial
    for bad in ("1h", "4294967296"):
        with pytest.raises(ZoneError, match="SOA serial"):
            parse_zone_text(f"@ 60 IN SOA ns hm {bad} {rest}", "t", Path("t.zone"))


def test_the_rfc_3597_generic_form_is_accepted_and_served(start_server, tmp_path: Path) -> None:
    import dns.rcode
    import dns.rdatatype
    zones = tmp_path / "zones"
    zones.mkdir()
    (zones / "generic.test.zone").write_text(
        "$TTL 300\n@ IN SOA ns1 hostmaster ( 1 3600 600 604800 60 )\n  IN NS ns1\nns1 IN A 127.0.0.1\n"
        "opaque IN TYPE65534 \\# 2 abcd\n"
        "split  IN TYPE65534 \\# 3 ab cd ef\n")  # the hex may come in pieces (RFC 3597 5)
    zone = parse_zone_file(zones / "generic.test.zone")
    assert [rr.rtype for rr in zone.records["opaque.generic.test"]] == [65534]
    if shutil.which("named-checkzone"):
        result = named_checkzone(zones / "generic.test.zone")
        assert result.returncode == 0, result.stdout + result.stderr
    server = start_server(zones, "--no-on-demand", copy_zones=False)
    for name, data, tcp in (("opaque", "abcd", False), ("opaque", "abcd", True), ("split", "abcdef", False)):
        reply = server.query(f"{name}.generic.test", "TYPE65534", tcp=tcp)
        assert reply.rcode() == dns.rcode.NOERROR
        [rrset] = reply.answer
        assert rrset.rdtype == 65534 and rrset.ttl == 300 and len(rrset) == 1
        assert rrset[0].to_wire() == bytes.fromhex(data)
        assert dns.rdatatype.to_text(rrset.rdtype) == "TYPE65534"
    # the name has only that type: another type is NODATA, not the generic record
    nodata = server.query("opaque.generic.test", "A")
    assert nodata.rcode() == dns.rcode.NOERROR and not nodata.answer
