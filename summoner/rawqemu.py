"""Boot an image with plain QEMU, without libvirt: for image tests and the
raw boot benchmark.

The flags mirror the domain summoner defines through libvirt (TCG, machine
from the manifest, user networking with one forwarded port, a virtio NIC
without option ROM, kernel ``ip=`` settings), so a boot time measured here is
the floor for what summoner can achieve; the difference is libvirt's own cost.

Tests: tests/test_images.py (its boots are marked vm); bench/raw_boot.py uses it.
"""

from __future__ import annotations

import errno
import os
import selectors
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from summoner.images import ImageManifest
from summoner.vm.domxml import USER_GUEST_IP

# QEMU user networking: the guest is always 10.0.2.15 behind gateway 10.0.2.2.
USER_NET_IP_PARAM = "ip=" + USER_GUEST_IP


def qemu_command(manifest: ImageManifest, host: str, port: int, *, accel: str = "tcg",
                 serial_log: Path | None = None) -> list[str]:
    """argv that boots ``manifest`` with the guest's service port forwarded to host:port."""
    boot = manifest.boot
    microvm = boot.machine == "microvm"
    # microvm has no PCI; with ACPI off QEMU adds virtio_mmio.device= to the
    # kernel command line itself, which our kernel understands.
    machine = "microvm,acpi=off" if microvm else boot.machine or "pc"
    nic = "virtio-net-device" if microvm else "virtio-net-pci"
    aarch64 = boot.arch == "aarch64"
    argv = [
        "qemu-system-aarch64" if aarch64 else "qemu-system-x86_64",
        "-accel", accel,
        "-M", machine,
        # virt's default CPU is a 32-bit Cortex-A15 (what the libvirt domain sets too)
        *(["-cpu", "host" if accel == "kvm" else "cortex-a57"] if aarch64 else []),
        "-nodefaults", "-no-user-config",
        "-display", "none",
        "-m", str(manifest.resources.memory_mib),
        "-smp", str(manifest.resources.vcpus),
        "-serial", f"file:{serial_log}" if serial_log else "null",
        # A panicking guest (panic=-1 reboots) must end the process, not loop.
        "-no-reboot",
        # restrict=on: the guest can reach nothing; only the forwarded port reaches it.
        "-netdev", f"user,id=n0,restrict=on,hostfwd=tcp:{host}:{port}-:{manifest.service.port}",
        # romfile= : skip the iPXE option ROM, SeaBIOS would spend time running it.
        "-device", f"{nic},netdev=n0" + ("" if microvm else ",romfile="),
    ]
    if boot.kind == "kernel":
        assert boot.kernel is not None
        argv += ["-kernel", str(boot.kernel)]
        if boot.initrd is not None:
            argv += ["-initrd", str(boot.initrd)]
        cmdline = boot.cmdline
        if manifest.network.ip_config == "kernel-cmdline":
            cmdline = f"{cmdline} {USER_NET_IP_PARAM}".strip()
        argv += ["-append", cmdline]
    else:
        assert boot.disk is not None
        # snapshot=on: several VMs may boot from one image and none may change it.
        argv += ["-drive", f"file={boot.disk},format={boot.format},if=virtio,snapshot=on"]
    if boot.firmware is not None:
        argv += ["-bios", str(boot.firmware)]
    return argv


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def http_get(host: str, port: int, path: str = "/", *, method: str = "GET", body: bytes | None = None,
             timeout: float = 0.5) -> tuple[int, bytes] | None:
    """One HTTP/1.0 request; (status, body), or None if the service is not
    there yet.  Plain sockets rather than http.client so that every failure
    mode of a booting guest (refused, reset, EOF from QEMU's forwarder before
    the guest listens) reads as "not yet"."""
    head = f"{method} {path} HTTP/1.0\r\nHost: {host}\r\n"
    if body is not None:
        head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
    request = (head + "\r\n").encode() + (body or b"")
    try:
        with socket.create_connection((host, port), timeout=timeout) as s:
            s.sendall(request)
            chunks = []
            while chunk := s.recv(65536):
                chunks.append(chunk)
    except OSError:
        return None
    response = b"".join(chunks)
    head_bytes, sep, payload = response.partition(b"\r\n\r\n")
    parts = head_bytes.split(b" ", 2)
    if not sep or len(parts) < 2 or not parts[0].startswith(b"HTTP/") or not parts[1].isdigit():
        return None
    return int(parts[1]), payload


@dataclass
class _Attempt:
    started: float
    sent: bool = False
    response: bytes = b""


def _start_attempt(selector: selectors.BaseSelector, host: str, port: int, now: float) -> None:
    sock = socket.socket()
    sock.setblocking(False)
    if sock.connect_ex((host, port)) not in (0, errno.EINPROGRESS):
        sock.close()  # QEMU not listening yet: try again next interval
        return
    selector.register(sock, selectors.EVENT_WRITE, _Attempt(now))


def _close(selector: selectors.BaseSelector, sock: socket.socket) -> None:
    selector.unregister(sock)
    sock.close()


def _advance(selector: selectors.BaseSelector, key: selectors.SelectorKey, request: bytes) -> int | None:
    """Move one probe attempt forward; its HTTP status once the response is complete."""
    sock, attempt = key.fileobj, key.data
    try:
        if not attempt.sent:
            if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
                raise OSError("connect failed")
            sock.sendall(request)  # tiny request into an empty buffer
            attempt.sent = True
            selector.modify(sock, selectors.EVENT_READ, attempt)
            return None
        chunk = sock.recv(65536)
    except OSError:
        _close(selector, sock)
        return None
    if chunk:
        attempt.response += chunk
        return None
    _close(selector, sock)
    parts = attempt.response.split(b" ", 2)
    if len(parts) >= 2 and parts[0].startswith(b"HTTP/") and parts[1].isdigit():
        return int(parts[1])
    return None


@dataclass
class RawVM:
    """One running QEMU process; use as a context manager so it always dies."""

    manifest: ImageManifest
    host: str
    port: int
    process: subprocess.Popen[bytes]
    started: float  # time.monotonic() just before the exec
    serial_log: Path | None
    stderr: IO[bytes]  # a file, not a pipe: a pipe nobody reads could stall QEMU

    @classmethod
    def start(cls, manifest: ImageManifest, host: str = "127.0.0.1", port: int | None = None,
              serial_log: Path | None = None, accel: str = "tcg") -> RawVM:
        port = port or free_port(host)
        argv = qemu_command(manifest, host, port, accel=accel, serial_log=serial_log)
        stderr = tempfile.TemporaryFile()
        started = time.monotonic()
        process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                   stderr=stderr, start_new_session=True)
        return cls(manifest, host, port, process, started, serial_log, stderr)

    def wait_ready(self, deadline_s: float | None = None, interval_s: float = 0.01) -> float | None:
        """Probe the manifest's HTTP path until it returns expect_status;
        seconds since start, or None at the deadline (or if QEMU died).

        Attempts overlap: a new one starts every ``interval_s`` even while
        older ones are pending.  With QEMU user networking an attempt made
        before the guest's NIC is up is accepted by QEMU on the host side and
        then hangs until its timeout (QEMU's SYN to the guest goes nowhere), so
        strictly sequential probing hides a ready guest for up to one
        ``request_timeout_ms`` (measured: ~500 ms lost of a ~550 ms boot).
        """
        probe = self.manifest.probe
        deadline = self.started + (deadline_s if deadline_s is not None else probe.boot_timeout_s)
        attempt_timeout = probe.request_timeout_ms / 1000
        request = f"GET {probe.path} HTTP/1.0\r\nHost: {self.host}\r\n\r\n".encode()
        selector = selectors.DefaultSelector()
        next_attempt = time.monotonic()
        try:
            while (now := time.monotonic()) < deadline and self.process.poll() is None:
                if now >= next_attempt and len(selector.get_map()) < 64:
                    _start_attempt(selector, self.host, self.port, now)
                    next_attempt = now + interval_s
                for key in list(selector.get_map().values()):
                    if now - key.data.started > attempt_timeout:
                        _close(selector, key.fileobj)
                wait = max(0.0, min(next_attempt, deadline) - time.monotonic())
                for key, _ in selector.select(wait):
                    status = _advance(selector, key, request)
                    if status == probe.expect_status:
                        return time.monotonic() - self.started
            return None
        finally:
            for key in list(selector.get_map().values()):
                _close(selector, key.fileobj)
            selector.close()

    def stop(self) -> None:
        if self.process.poll() is None:
            # Own session, so the signal also reaches anything QEMU spawned.
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.process.wait()

    def qemu_errors(self) -> str:
        self.stderr.seek(0)
        return self.stderr.read().decode(errors="replace")

    def console(self) -> str:
        return self.serial_log.read_text(errors="replace") if self.serial_log and self.serial_log.exists() else ""

    def __enter__(self) -> RawVM:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
        self.stderr.close()
