"""Listening addresses on the command line (summoner.netaddr)."""

from __future__ import annotations

import argparse
import re

import pytest

from summoner.netaddr import host_port


def test_ipv4_ipv6_and_every_address():
    assert host_port("127.0.0.1:5353") == ("127.0.0.1", 5353)
    assert host_port("[::1]:53") == ("::1", 53)
    assert host_port(":9153") == ("0.0.0.0", 9153)


@pytest.mark.parametrize(("text", "reason"), [
    ("127.0.0.1", "expected ADDR:PORT"),
    ("[::1]53", "expected [ADDR]:PORT"),
    ("127.0.0.1:http", "port must be 0-65535"),
    ("127.0.0.1:70000", "port must be 0-65535"),
])
def test_mistakes_name_what_is_expected(text, reason):
    with pytest.raises(argparse.ArgumentTypeError, match=re.escape(reason)):
        host_port(text)
