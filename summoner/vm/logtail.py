"""The last lines of a VM's QEMU log and console, for failure messages.

Tests: tests/vm/test_logtail.py
"""

from __future__ import annotations

import os


def tail_file(path: str, lines: int = 15, max_bytes: int = 16384, skip_argv: bool = False) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - max_bytes))
            data = f.read().decode("utf-8", "replace")
    except OSError:
        return ""
    rows = data.splitlines()
    if skip_argv:
        # libvirt's QEMU log is appended to across runs, each starting with a
        # "starting up" line and the full command line, one argument per
        # line; the failure is in what follows, in the last run.
        starts = [i for i, r in enumerate(rows) if "starting up libvirt" in r]
        if starts:
            rows = rows[starts[-1]:]
        rows = [r for r in rows if not r.startswith("-") and not r.endswith("\\")]
    return "\n".join(rows[-lines:])
