"""``ADDR:PORT`` as the command line writes listening addresses.

Tests: tests/test_netaddr.py
"""

from __future__ import annotations

import argparse


def host_port(text: str) -> tuple[str, int]:
    """``ADDR:PORT``, or ``[V6ADDR]:PORT`` for IPv6; an empty ADDR means every IPv4 address."""
    if text.startswith("["):
        host, sep, port = text[1:].partition("]:")
        if not sep:
            raise argparse.ArgumentTypeError(f"{text!r}: expected [ADDR]:PORT")
    else:
        host, sep, port = text.rpartition(":")
        if not sep:
            raise argparse.ArgumentTypeError(f"{text!r}: expected ADDR:PORT")
    if not port.isdigit() or int(port) > 65535:
        raise argparse.ArgumentTypeError(f"{text!r}: port must be 0-65535")
    return host or "0.0.0.0", int(port)
