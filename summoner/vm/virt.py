"""The virtualization decision: KVM or TCG (libvirt domain type ``kvm`` or
``qemu``).

``--virt-type kvm`` and ``qemu`` are taken as given.  ``auto`` uses KVM only
when it is offered (``/dev/kvm`` usable, libvirt has kvm domains) *and* a
test boot of a real image under it answers its probe: on nested hosts KVM is
offered but guests die with "KVM internal error".  The test boot's verdict
is cached until the host reboots (``summoner.vm.kvmcheck``).  Boots wait on
``ready_for`` until the type is known.

Tests: tests/vm/test_virt.py
"""

from __future__ import annotations

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from summoner.deferreds import when_fired
from summoner.images import host_arch
from summoner.vm.backend import Backend, BackendError, DomainEvent
from summoner.vm.kvmcheck import KvmBootCheck
from summoner.vm.spec import VMSpec

log = Logger(namespace="summoner.vm.virt")


class VirtDecision:
    def __init__(self, configured: str, reactor: IReactorTime, backend: Backend, domain_prefix: str) -> None:
        self.configured = configured
        self.virt_type = "qemu" if configured == "qemu" else "kvm"
        self.check = KvmBootCheck(reactor, backend, domain_prefix)
        self._backend = backend
        self._decided: defer.Deferred[None] = defer.succeed(None)
        self._check_pending = False  # auto, but no image was built at start: the first boot checks

    def type_for(self, spec: VMSpec) -> str:
        """The domain type ``spec`` boots with: a guest of another architecture
        than the host's always runs under TCG (KVM runs only the host's)."""
        return self.virt_type if spec.arch == host_arch() else "qemu"

    @property
    def decided(self) -> bool:
        return self._decided.called and not self._check_pending

    def hold(self) -> defer.Deferred[None]:
        """Boots wait until the returned Deferred is fired (start-up fires it
        once running VMs are adopted and the type is known)."""
        self._decided = defer.Deferred()
        return self._decided

    async def ready_for(self, spec: VMSpec) -> None:
        """Returns once the virt type is known, running the pending KVM boot
        check with ``spec`` if this is the first boot."""
        if self._check_pending and spec.arch == host_arch():
            self._check_pending = False
            done = self.hold()
            try:
                await self.test_boot(spec)
            finally:
                done.callback(None)
        elif not self._decided.called:
            await when_fired(self._decided)

    def on_check_event(self, event: DomainEvent, detail: str) -> None:
        self.check.on_event(event, detail)

    def not_checkable(self) -> None:
        """libvirt unreachable at start: nothing can be checked."""
        if self.configured == "auto":
            self.virt_type = "qemu"
            log.warn("virt type auto: libvirt unreachable at start, cannot check KVM; using TCG")

    async def decide(self, specs: list[VMSpec]) -> None:
        """At start, once connected: the type for ``auto``, from libvirt's
        offer and a test boot of the smallest built image in ``specs``."""
        if self.configured != "auto":
            self.virt_type = self.configured
            return
        try:
            ok, why = await self._backend.kvm_usable()
        except BackendError as exc:  # libvirtd went away mid-start: decide, don't abort start-up
            ok, why = False, f"libvirt: {exc}"
        if not ok:
            self.virt_type = "qemu"
            log.warn("virt type auto: KVM unavailable ({why}); using TCG (virt type qemu)", why=why)
            return
        specs = [s for s in specs if s.arch == host_arch()]  # only the host's architecture can run under KVM
        if not specs:
            self._check_pending = True
            log.info("virt type auto: no built image yet; the first boot checks KVM")
            return
        await self.test_boot(min(specs, key=lambda s: s.memory_mib))

    async def test_boot(self, spec: VMSpec) -> None:
        """Test-boot ``spec`` under KVM (or reuse the cached verdict) and set
        the virt type accordingly."""
        verdict = await self.check.verdict(spec, timeout=min(8.0, spec.boot_timeout))
        if verdict.usable:
            self.virt_type = "kvm"
            log.info("virt type auto: KVM boot check passed ({why}); using kvm", why=verdict.why)
        else:
            self.virt_type = "qemu"
            log.warn("virt type auto: KVM unusable (a test boot of {image} under KVM failed: {why}); "
                     "falling back to TCG (virt type qemu)", image=spec.image, why=verdict.why)
