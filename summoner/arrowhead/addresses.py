"""The addresses the Arrowhead 4.6 Service Registry accepts, checked before
summoner registers anything (core-common's ``NetworkAddressPreProcessor`` and
``NetworkAddressVerifier``).

A published host's provider address is its DNS name, so a name the registry
would refuse (a label starting with a digit, an underscore) is reported when
the zones load, naming the host, the rule and the fix, instead of as a 400
from the registry later.  The rules that depend on the registry's
configuration (``allow_self_addressing``, ``allow_non_routable_addressing``:
loopback, ``localhost``, link-local) are left to the registry: its shipped
configuration allows them, and summoner cannot know what an operator changed.

Tests: tests/test_arrowhead_addresses.py
"""

from __future__ import annotations

import ipaddress
import re

# CommonNamePartVerifier: each dot-separated part of a name.
LABEL_RE = re.compile(r"^[A-Za-z](?:[0-9A-Za-z-]*[0-9A-Za-z])?$")
# The verifier's IPv4 pattern: four decimal octets, nothing else (10.1.2.300 is a "name").
IPV4_RE = re.compile(r"^(25[0-5]|2[0-4][0-9]|[01]?[0-9][0-9]?)(\.(25[0-5]|2[0-4][0-9]|[01]?[0-9][0-9]?)){3}$")
IPV6_RE = re.compile(r"^([0-9a-f]{4}:){7}[0-9a-f]{4}$")
NAME_RULE = ("every dot-separated label of a name must be letters, digits and dashes, start with a letter, "
             "not end with a dash, and be at most 63 characters")


def normalize(address: str) -> str:
    """The address as the registry stores it: lower-cased, trimmed, IPv6
    written out in eight groups of four hex digits."""
    candidate = address.lower().strip()
    if ":" in candidate:
        try:
            return ipaddress.IPv6Address(candidate).exploded
        except ValueError:
            return candidate
    return candidate


def address_problem(address: str) -> str | None:
    """Why the Service Registry would refuse ``address`` (None: it accepts it)."""
    candidate = normalize(address)
    if not candidate:
        return "the address is empty"
    if IPV4_RE.match(candidate):
        first = int(candidate.split(".")[0])
        if candidate == "0.0.0.0":
            return "0.0.0.0 is a placeholder, not an address"
        if candidate == "255.255.255.255":
            return "255.255.255.255 is the local broadcast address"
        if 224 <= first <= 239:
            return f"{candidate} is a multicast address"
        return None
    if IPV6_RE.match(candidate):
        if candidate == "0000:0000:0000:0000:0000:0000:0000:0000":
            return ":: is the unspecified address"
        if candidate.startswith("ff"):
            return f"{address} is a multicast address"
        return None
    labels = candidate.rstrip(".").split(".")
    for label in labels:
        if len(label) > 63 or not LABEL_RE.match(label):
            return f"its label {label!r} breaks the rule that {NAME_RULE}"
    return None
