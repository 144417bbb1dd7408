"""Number types for argparse options, shared by every part's options so that
one bad value reads the same wherever it is given (command line or --config).

Tests: tests/test_configfile.py (the messages, through the config file).
"""

from __future__ import annotations

import argparse


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be >= 1")
    return value


def non_negative(text: str) -> float:
    value = float(text)
    if value < 0:
        raise argparse.ArgumentTypeError("must be >= 0")
    return value
