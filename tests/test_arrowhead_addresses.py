"""The Service Registry's address rules in summoner (summoner/arrowhead/addresses.py):
the same verdicts as the double's reference copy of upstream's verifier, and
hosts the registry would refuse stopping ``summoner serve`` at load with the
host, the rule and the fix."""

from __future__ import annotations

import argparse

import pytest

from summoner.arrowhead import ArrowheadConfigError, add_cli_arguments, config_from_args
from summoner.arrowhead.addresses import address_problem, normalize
from tests.arrowhead_double import addresses as upstream

ADDRESSES = ["hello.example.org", "hello.example.org.", "1st.example.org", "a.1lab.example.org", "bad_name.org",
             "edge-.example.org", "-edge.example.org", "a..b", "x" * 64 + ".org", "x" * 63 + ".org", "localhost",
             "10.1.2.3", "10.1.2.300", "0.0.0.0", "255.255.255.255", "224.0.0.251", "239.1.1.1", "240.0.0.1",
             "127.0.0.1", "169.254.1.1", "::1", "::", "ff02::1", "fd00::7", "FD00::7", "::ffff:10.1.2.3",
             "fe80::1", "1.2.3", " hello.example.org "]


@pytest.mark.parametrize("address", ADDRESSES)
def test_summoner_refuses_what_the_registry_refuses(address):
    reference = upstream.verify(upstream.normalize(address), allow_self=True, allow_non_routable=True)
    assert (address_problem(address) is None) == (reference is None), (address, reference)
    assert normalize(address) == upstream.normalize(address)


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_cli_arguments(parser)
    return parser.parse_args(["--arrowhead-orchestrator", "http://127.0.0.1:1", *argv])


def test_a_system_address_the_registry_refuses_is_a_startup_error_and_ipv6_is_sent_as_stored():
    with pytest.raises(ArrowheadConfigError, match=r"--arrowhead-system-address '0.0.0.0': the Service Registry "
                                                   r"refuses it \(0.0.0.0 is a placeholder"):
        config_from_args(parse("--arrowhead-system-address", "0.0.0.0"))
    config = config_from_args(parse("--arrowhead-system-address", "FD00::53"))
    assert config.system_address == "fd00:0000:0000:0000:0000:0000:0000:0053"


HOST = '\nhello.1lab IN A 127.0.0.12\n_summoner.hello.1lab IN TXT "image=hello"{extra}\n'


def zones_with(tmp_path, extra: str = ""):
    import shutil

    from tests.conftest import EXAMPLE_ZONES
    directory = tmp_path / "zones"
    shutil.copytree(EXAMPLE_ZONES, directory)
    zone = directory / "example.org.zone"
    zone.write_text(zone.read_text() + HOST.format(extra=extra))
    return directory, zone


def test_a_published_host_whose_name_has_a_label_starting_with_a_digit_stops_serve(start_server, arrowhead_double,
                                                                                    tmp_path):
    directory, zone = zones_with(tmp_path)
    line = len(zone.read_text().splitlines())  # the _summoner TXT record
    server = start_server(directory, "--arrowhead-registry", arrowhead_double.http, wait=False)
    assert server.process.wait(20) == 1
    log = server.log()
    assert (f"{server.zones}/example.org.zone:{line}: on-demand host hello.1lab.example.org cannot be published in "
            "Arrowhead: the Service Registry refuses hello.1lab.example.org as a provider address: its label "
            "'1lab' breaks the rule that every dot-separated label of a name must be letters, digits and dashes, "
            "start with a letter, not end with a dash, and be at most 63 characters (NetworkAddressVerifier) "
            "-- fix: rename the host, or set arrowhead=off in its _summoner TXT record, or serve with "
            "--no-arrowhead-publish") in log, log
    assert "summoner: not starting: the zone files above are invalid" in log
    assert arrowhead_double.counters().get("register", 0) == 0


def test_the_same_host_kept_out_of_arrowhead_is_served(start_server, arrowhead_double, tmp_path):
    from tests.arrowhead_double.fixtures import wait_for
    directory, _ = zones_with(tmp_path, ' "arrowhead=off"')
    server = start_server(directory, "--arrowhead-registry", arrowhead_double.http)
    wait_for(lambda: {e["provider"]["address"] for e in arrowhead_double.control("state")["entries"]}
             == {"hello.example.org", "tasks.example.org"}, what="the other hosts published")
    assert server.stop() == 0
