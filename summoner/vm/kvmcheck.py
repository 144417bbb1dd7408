"""Does KVM really run guests on this host?

``/dev/kvm`` can exist, and libvirt can offer ``kvm`` domains, while guests
hang or die under it (nested hosts whose CPU hides VMX: "KVM internal error
... emulation failure").  Only a real boot shows it, so the check boots the
smallest built image once under KVM on a private port and probes it.

A conclusive verdict is cached in ``/run`` (cleared when the host reboots),
so restarts of summoner, and ``summoner doctor``, do not test-boot again.
Used by the fleet (``--virt-type auto``) and by ``summoner doctor``.

Tests: tests/vm/test_kvmcheck.py
"""

from __future__ import annotations

import dataclasses
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import cast

from twisted.internet.interfaces import IReactorTCP, IReactorTime
from twisted.logger import Logger

from summoner.vm.backend import Backend, BackendError, DomainEvent, destroy_quietly
from summoner.vm.domxml import NetworkSettings, domain_xml
from summoner.vm.probe import Probe, ProbeCancelledError, ProbeTimeoutError
from summoner.vm.spec import VMSpec

log = Logger(namespace="summoner.vm.kvmcheck")

VERDICT_PATH = Path("/run/summoner/kvm-boot-check")
CHECK_SERVICE = "kvm-boot-check"


@dataclass(frozen=True)
class KvmVerdict:
    usable: bool
    why: str
    # False when the check proved nothing about KVM (a libvirt error while
    # libvirtd restarts, summoner stopping): such a verdict holds for this
    # run only and is never cached.
    conclusive: bool = True
    cached: bool = False


def read_verdict(path: Path | None = None) -> KvmVerdict | None:
    path = path or VERDICT_PATH
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    verdict, _, why = text.partition(" ")
    if verdict not in ("kvm", "qemu"):
        return None
    return KvmVerdict(verdict == "kvm", why or verdict, cached=True)


def write_verdict(verdict: KvmVerdict, path: Path | None = None) -> None:
    path = path or VERDICT_PATH
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"{'kvm' if verdict.usable else 'qemu'} {verdict.why}\n")
    except OSError as exc:
        log.warn("cannot cache the KVM verdict in {path}: {err}", path=path, err=exc)


class KvmBootCheck:
    """One test boot at a time, under the domain ``<prefix>kvm-boot-check``.

    ``clock``: the probe's timers (default ``reactor``); ``verdict_path``:
    where the verdict is cached (default ``VERDICT_PATH``, read at each use).
    """

    def __init__(self, reactor: IReactorTCP, backend: Backend, domain_prefix: str, *,
                 clock: IReactorTime | None = None, verdict_path: Path | None = None) -> None:
        self.reactor = reactor
        self.clock: IReactorTime = clock if clock is not None else cast(IReactorTime, reactor)
        self.backend = backend
        self.domain_name = domain_prefix + CHECK_SERVICE
        self.verdict_path = verdict_path
        self._probe: Probe | None = None

    def on_event(self, event: DomainEvent, detail: str) -> None:
        """A lifecycle event of the check domain: a dead guest ends the
        check at once instead of at its deadline."""
        if self._probe is not None and (event.ends_domain or event is DomainEvent.SUSPENDED):
            self._probe.cancel(f"check domain {event} ({detail})")

    async def verdict(self, spec: VMSpec, timeout: float) -> KvmVerdict:
        """The cached verdict, or a test boot (cached when conclusive)."""
        path = self.verdict_path or VERDICT_PATH
        cached = read_verdict(path)
        if cached is not None:
            return dataclasses.replace(cached, why=f"{cached.why} (cached in {path})")
        result = await self.run(spec, timeout)
        if result.conclusive:
            write_verdict(result, path)
        return result

    async def run(self, spec: VMSpec, timeout: float) -> KvmVerdict:
        """Boot ``spec``'s image once under KVM and probe it."""
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        check = dataclasses.replace(spec, service=CHECK_SERVICE, domain_name=self.domain_name,
                                    address="127.0.0.1", config_hash="check")
        xml = domain_xml(check, "kvm", NetworkSettings("user"), spec.machine, host_port=port)
        try:
            await destroy_quietly(self.backend, self.domain_name)
            await self.backend.create(self.domain_name, xml, autodestroy=True)
        except BackendError as exc:
            return KvmVerdict(False, f"libvirt: {exc}", conclusive=False)
        probe = Probe(self.reactor, "127.0.0.1", port, spec.probe_path, expect_status=spec.expect_status,
                      interval=spec.probe_interval, request_timeout=spec.request_timeout,
                      deadline=self.clock.seconds() + timeout, clock=self.clock)
        self._probe = probe
        try:
            await probe.run()
            return KvmVerdict(True, "ok")
        except (ProbeTimeoutError, ProbeCancelledError) as exc:
            qemu_tail, _console = await self.backend.logs(self.domain_name)
            last = qemu_tail.strip().splitlines()[-1:] or [""]
            # a cancelled check (summoner stopping) proves nothing either way
            return KvmVerdict(False, f"{exc}; last probe error: {probe.last_error}; QEMU: {last[0]}",
                              conclusive=isinstance(exc, ProbeTimeoutError))
        finally:
            self._probe = None
            await destroy_quietly(self.backend, self.domain_name)
