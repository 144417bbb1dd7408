#!/usr/bin/env python3
"""Write a gzip'd newc cpio initramfs holding one static program as /init.

Why not `cpio -o`: creating /dev/console with it needs mknod (root) and the
archive would carry the build machine's mtimes and inode numbers.  Writing
the format directly is ~40 lines, needs no privileges and gives byte-identical
output for identical input, so image hashes are stable across rebuilds.

usage: mkinitramfs.py OUTPUT.cpio.gz INIT_BINARY
"""

import gzip
import sys
from pathlib import Path


def _entry(ino: int, name: str, mode: int, data: bytes = b"", rdev: tuple[int, int] = (0, 0)) -> bytes:
    encoded = name.encode() + b"\0"
    fields = (
        ino, mode, 0, 0, 1, 0, len(data),  # ino mode uid gid nlink mtime filesize
        0, 0, rdev[0], rdev[1],  # devmajor devminor rdevmajor rdevminor
        len(encoded), 0,  # namesize check
    )
    header = b"070701" + b"".join(b"%08X" % f for f in fields)
    out = header + encoded
    out += b"\0" * (-len(out) % 4)
    out += data + b"\0" * (-len(data) % 4)
    return out


def build(init: bytes) -> bytes:
    archive = b"".join(
        (
            _entry(1, "dev", 0o040755),
            # The kernel opens /dev/console for init's stdin/stdout/stderr
            # before running it; without the node the guest program has no
            # console and its diagnostics are lost.
            _entry(2, "dev/console", 0o020600, rdev=(5, 1)),
            _entry(3, "init", 0o100755, init),
            _entry(0, "TRAILER!!!", 0),
        )
    )
    archive += b"\0" * (-len(archive) % 512)
    return gzip.compress(archive, compresslevel=9, mtime=0)


def main() -> None:
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    output, init = Path(sys.argv[1]), Path(sys.argv[2])
    tmp = output.with_suffix(".tmp")
    tmp.write_bytes(build(init.read_bytes()))
    tmp.replace(output)  # never leave a half-written initrd behind


if __name__ == "__main__":
    main()
