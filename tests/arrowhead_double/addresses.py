"""The Service Registry's address rules, as core-common 4.6.2 has them:
``NetworkAddressPreProcessor.normalize`` then ``NetworkAddressVerifier.verify``.

Written from upstream for the double alone (summoner has its own copy in
summoner/arrowhead/addresses.py): the double is the reference summoner's
check is tested against, so it must not share summoner's code.
"""

from __future__ import annotations

import ipaddress
import re

PREFIX = "Network address verification failure: "
IPV4 = re.compile(r"\b(25[0-5]|2[0-4][0-9]|[01]?[0-9][0-9]?)\.(25[0-5]|2[0-4][0-9]|[01]?[0-9][0-9]?)\."
                  r"(25[0-5]|2[0-4][0-9]|[01]?[0-9][0-9]?)\.(25[0-5]|2[0-4][0-9]|[01]?[0-9][0-9]?)\b")
IPV6 = re.compile(r"^([0-9a-fA-F]{4}:){7}[0-9a-fA-F]{4}$")
LABEL = re.compile(r"^[A-Za-z](?:[0-9A-Za-z-]*[0-9A-Za-z])?$")


def normalize(address: str) -> str:
    """Lower-cased and trimmed; an IPv6 address (IPv4-hybrid too) written out
    as eight groups of four hex digits; anything else as it is."""
    candidate = (address or "").lower().strip()
    if ":" not in candidate:
        return candidate
    try:
        return ipaddress.IPv6Address(candidate).exploded
    except ValueError:
        return candidate  # not IPv6: the verifier refuses it as a name


def verify(candidate: str, *, allow_self: bool, allow_non_routable: bool) -> str | None:
    """None, or the InvalidParameterException message upstream gives."""
    if not candidate:
        return PREFIX + "Network address is empty."
    candidate = candidate.strip()
    if IPV4.fullmatch(candidate):
        return _ipv4(candidate, allow_self, allow_non_routable)
    if IPV6.fullmatch(candidate):
        return _ipv6(candidate, allow_self, allow_non_routable)
    return _name(candidate, allow_self)


def _ipv4(candidate: str, allow_self: bool, allow_non_routable: bool) -> str | None:
    what = PREFIX + candidate + " ipv4 network address is invalid: "
    if not allow_self and candidate.startswith("127"):
        return what + "self-addressing is disabled."
    if not allow_non_routable and candidate.startswith("169.254"):
        return what + "non-routable-addressing is disabled."
    if candidate == "0.0.0.0":
        return what + "placeholder address is denied."
    if candidate == "255.255.255.255":
        return what + "local broadcast address is denied."
    if 224 <= int(candidate.split(".")[0]) <= 239:
        return what + "multicast addresses are denied."
    return None


def _ipv6(candidate: str, allow_self: bool, allow_non_routable: bool) -> str | None:
    what = PREFIX + candidate + " ipv6 network address is invalid: "
    if not allow_self and candidate == "0000:0000:0000:0000:0000:0000:0000:0001":
        return what + "self-addressing is disabled."
    if not allow_non_routable and candidate.startswith("fe80"):
        return what + "non-routable-addressing is disabled."
    if candidate == "0000:0000:0000:0000:0000:0000:0000:0000":
        return what + "unspecified address is denied."
    if candidate.startswith("ff"):
        return what + "multicast addresses are denied."
    return None


def _name(candidate: str, allow_self: bool) -> str | None:
    # Java's split drops trailing empty strings: "a.b." passes, "a..b" does not.
    parts = candidate.split(".")
    while len(parts) > 1 and parts[-1] == "":
        parts.pop()
    for part in parts:
        if len(part.strip()) > 63 or not LABEL.fullmatch(part.strip()):
            return (PREFIX + candidate + " no-type network address is invalid: dot(.) separated parts can contain "
                    "only letters (english alphabet), numbers and dash (-) and have to start with a letter (also "
                    "cannot end with dash). A part can contain maximum 63 character.")
    if not allow_self and candidate.lower() in ("localhost", "loopback"):
        return PREFIX + candidate + " no-type network address is invalid: self-addressing is disabled."
    return None
