"""Per-service state machine, single-flight boots and capacity.

States::

    stopped ──query──▶ booting ──probe ok──▶ ready ──idle──▶ stopping ──▶ stopped
       ▲                  │                    │  ▲                 └──▶ suspended ──query──▶ ready
       └──back-off── failed ◀─deadline/error───┘  └──────── resume ───────────┘

Every query that finds a service not ready becomes a *waiter* on the one boot
(or resume) in progress: N queries, retransmissions included, cause one boot
and get N answers.  A boot that misses its deadline fails all its waiters
(SERVFAIL), destroys the domain and sets an exponential retry back-off, so a
broken image cannot boot-loop; the log line carries libvirt's error, the QEMU
log tail, the console tail and the probe's last error.

Everything here runs on the reactor thread; libvirt work goes through the
backend's worker thread.  ``invalidate_cache`` is called whenever a service
stops being ready, because the wire layer replays cached warm answers without
asking this module.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger

from summoner.backoff import delay_after
from summoner.vm import metrics
from summoner.vm.config import OnDemandConfig
from summoner.vm.domxml import NetworkSettings, domain_xml, metadata_xml
from summoner.vm.hosts import OnDemandHost
from summoner.vm.kvmcheck import KvmBootCheck
from summoner.vm.libvirt_backend import BackendError, LibvirtBackend
from summoner.vm.phases import Phase, PhaseTimer
from summoner.vm.probe import Probe, ProbeCancelledError, ProbeTimeoutError
from summoner.vm.spec import VMSpec, build_spec, missing_artifacts

log = Logger(namespace="summoner.vm.service")


class State(enum.Enum):
    STOPPED = "stopped"
    BOOTING = "booting"
    READY = "ready"
    SUSPENDED = "suspended"
    STOPPING = "stopping"
    FAILED = "failed"


# States in which a VM exists and holds host memory.
_HOLDING = (State.READY, State.SUSPENDED, State.STOPPING)


@dataclass(eq=False)
class Service:
    host: OnDemandHost
    spec: VMSpec
    clock: Callable[[], float]
    state: State = State.STOPPED
    waiters: list[defer.Deferred] = field(default_factory=list)
    boot_count: int = 0
    failures: int = 0
    retry_at: float = 0.0
    last_error: str | None = None
    started_at: float | None = None     # when it became ready (uptime)
    last_demand: float = 0.0            # last DNS query (on_hit)
    last_activity: float = 0.0          # last guest traffic change seen
    traffic_token: Any = None
    reserved: bool = False              # booting and counted against capacity
    probe: Probe | None = None
    boot_abort: str | None = None       # the domain died before the probe started
    domain_uuid: str | None = None      # the running instance (transient domains get a new one per boot)
    early_events: list[tuple[str, str]] = field(default_factory=list)  # (uuid, why) seen while creating
    first_wait: float | None = None     # first query of the current wait (latency metric)
    stop_event: defer.Deferred | None = None
    generation: int = 0                 # bumped when the service is replaced or removed
    standby: bool = False               # a paused, never-run domain of this spec is waiting
    preparing: defer.Deferred | None = None  # standby creation in flight

    @property
    def name(self) -> str:
        return self.host.name

    def touch(self) -> None:
        """Demand seen (a DNS query, cached replays included)."""
        self.last_demand = self.clock()

    def hit(self) -> bool:
        self.touch()
        return self.state is State.READY

    def last_used(self) -> float:
        return max(self.last_demand, self.last_activity, self.started_at or 0.0)

    def holds_resources(self) -> bool:
        return self.state in _HOLDING or (self.state is State.BOOTING and self.reserved)


class Fleet:
    """All on-demand services and the rules between them."""

    def __init__(self, config: OnDemandConfig, reactor: Any, backend: LibvirtBackend,
                 invalidate_cache: Callable[[], None]) -> None:
        self.config = config
        self.reactor = reactor
        self.backend = backend
        self.invalidate_cache = invalidate_cache
        self.services: dict[str, Service] = {}
        self.by_domain: dict[str, Service] = {}
        self.net = NetworkSettings(config.network, config.bridge, config.bridge_gateway, config.bridge_netmask)
        self.virt_type = "qemu" if config.virt_type == "qemu" else "kvm"
        # Boots wait on this until the virt type is known (auto: after the
        # KVM boot check at start).
        self.virt_decided: defer.Deferred = defer.succeed(None)
        self.kvm_check_pending = False  # auto, but no image was built at start
        self.kvm_check = KvmBootCheck(reactor, backend, config.domain_prefix)
        self._boot_slots = defer.DeferredSemaphore(config.max_concurrent_boots)
        self._reconciling: defer.Deferred | None = None

    # -- configuration ---------------------------------------------------------

    def now(self) -> float:
        return self.reactor.seconds()

    def set_hosts(self, hosts: list[OnDemandHost], images: Mapping[str, Any]) -> None:
        """Apply a (re)loaded set of hosts: add new ones, stop the VMs of removed
        ones, and of changed ones whose VM would differ (config hash)."""
        wanted = {h.name: h for h in hosts}
        for name in list(self.services):
            if name not in wanted:
                self._retire(self.services[name], "removed")
        for name, host in wanted.items():
            spec = build_spec(host, images[host.image], self.config)
            svc = self.services.get(name)
            if svc is not None and svc.spec.config_hash != spec.config_hash:
                self._retire(svc, "changed")
                svc = None
            if svc is None:
                svc = Service(host, spec, self.now)
                self.services[name] = svc
                self.by_domain[spec.domain_name] = svc
            else:
                svc.host, svc.spec = host, spec  # same VM; answers or timeouts may differ
        self.invalidate_cache()
        self._update_gauge()

    def _retire(self, svc: Service, reason: str) -> None:
        svc.generation += 1
        del self.services[svc.name]
        self.by_domain.pop(svc.spec.domain_name, None)
        self._finish(svc, False, f"service {reason}")
        if svc.probe is not None:
            svc.probe.cancel(f"service {reason}")
        if svc.standby or (svc.state is not State.STOPPED and svc.state is not State.FAILED):
            if not svc.standby:
                metrics.REAPS.labels(reason).inc()
            log.info("{service}: {reason} in the zone; destroying its VM", service=svc.name, reason=reason)
            self.backend.destroy(svc.spec.domain_name).addErrback(
                lambda f: log.warn("{service}: destroy failed: {err}", service=svc.name, err=f.getErrorMessage()))
        svc.state = State.STOPPED

    # -- the query path ------------------------------------------------------

    def ensure_ready(self, svc: Service) -> bool | defer.Deferred:
        """True if ready now; otherwise a Deferred firing True/False when the
        boot or resume this query waits on ends (False: answer SERVFAIL)."""
        state = svc.state
        if state is State.READY:
            return True
        now = self.now()
        if state in (State.STOPPED, State.FAILED) and now < svc.retry_at:
            metrics.BOOTS.labels(svc.name, "backoff").inc()
            return False
        d: defer.Deferred = defer.Deferred()
        svc.waiters.append(d)
        metrics.WAITERS.inc()
        if svc.first_wait is None:
            svc.first_wait = now
        if state in (State.STOPPED, State.FAILED):
            defer.Deferred.fromCoroutine(self._boot(svc))
        elif state is State.SUSPENDED:
            defer.Deferred.fromCoroutine(self._resume(svc))
        # BOOTING: join it.  STOPPING: _stop restarts it when done.
        return d

    def _finish(self, svc: Service, ok: bool, error: str | None = None) -> None:
        waiters, svc.waiters = svc.waiters, []
        svc.first_wait = None
        metrics.WAITERS.dec(len(waiters))
        for d in waiters:
            d.callback(ok)

    def _set_state(self, svc: Service, state: State) -> None:
        was_ready = svc.state is State.READY
        svc.state = state
        if was_ready and state is not State.READY:
            self.invalidate_cache()
        self._update_gauge()

    def _update_gauge(self) -> None:
        counts = dict.fromkeys(metrics.STATES, 0)
        for s in self.services.values():
            counts[s.state.value] += 1
        for state, n in counts.items():
            metrics.VMS.labels(state).set(n)

    # -- boot ------------------------------------------------------------------

    async def _boot(self, svc: Service) -> None:
        try:
            await self._boot_steps(svc)
        except Exception:
            # A bug must not leave queries waiting forever.
            log.failure("{service}: boot failed unexpectedly", service=svc.name)
            if svc.waiters or svc.state is State.BOOTING:
                self._mark_failed(svc, "error", "internal error (see log)")

    async def _boot_steps(self, svc: Service) -> None:
        gen = svc.generation
        spec = svc.spec
        timer = PhaseTimer(self.now)
        timer.enter(Phase.SLOT)
        self._set_state(svc, State.BOOTING)
        svc.reserved = False
        missing = missing_artifacts(spec)
        if missing:
            await self._boot_failed(svc, gen, "error", f"image {spec.image} is not built: missing "
                                    + ", ".join(missing))
            return
        await self._boot_slots.acquire()
        try:
            if self.kvm_check_pending:
                self.kvm_check_pending = False
                decided: defer.Deferred = defer.Deferred()
                self.virt_decided = decided
                try:
                    await self.decide_kvm(spec)
                finally:
                    decided.callback(None)
            elif not self.virt_decided.called:
                await _wait(self.virt_decided)
            if gen != svc.generation:
                return
            if not await self._make_room(svc):
                metrics.CAPACITY_REFUSALS.inc()
                metrics.BOOTS.labels(svc.name, "capacity").inc()
                msg = self._refusal(svc)
                log.warn("{service}: boot refused: {msg}", service=svc.name, msg=msg)
                svc.last_error = msg
                self._set_state(svc, State.STOPPED)
                self._finish(svc, False, msg)
                return
            svc.reserved = True
            start = self.now()
            deadline = start + spec.boot_timeout
            if not self.backend.connected:
                # libvirtd restarting: reconnection takes well under a second,
                # so wait for it (within the deadline) rather than fail.
                if not await _first(self.reactor, _wait(self.backend.when_connected()), spec.boot_timeout):
                    msg = f"libvirt unreachable at {self.config.libvirt_uri}"
                    log.warn("{service}: boot refused: {msg}", service=svc.name, msg=msg)
                    svc.last_error = msg
                    svc.reserved = False
                    metrics.BOOTS.labels(svc.name, "error").inc()
                    self._set_state(svc, State.STOPPED)  # no back-off: the image is not at fault
                    self._finish(svc, False, msg)
                    return
                start = self.now()
                deadline = start + spec.boot_timeout
            if svc.preparing is not None:
                await _wait(svc.preparing)
            # Cleared only now: until this instance starts, late events of the
            # previous one (or of a standby being created) must not abort it.
            svc.boot_abort = None
            timer.enter(Phase.LIBVIRT)
            if svc.standby and await self._use_standby(svc):
                xml = ""
            else:
                xml = domain_xml(spec, self.virt_type, self.net, spec.machine)
                svc.domain_uuid = None
            svc.early_events = []
            try:
                if xml:
                    svc.domain_uuid = await self._create(xml, spec.domain_name, deadline)
            except defer.TimeoutError:
                # The domain may still appear: the destroy in _boot_failed runs
                # on the libvirt thread after the create and removes it.
                await self._boot_failed(svc, gen, "timeout", timer.overran(spec.boot_timeout)
                                        + "; see summoner doctor", timer)
                return
            except BackendError as exc:
                await self._boot_failed(svc, gen, "error", f"libvirt: {exc}", timer)
                return
            timer.enter(Phase.GUEST)
            for uuid, why in svc.early_events:
                if uuid == svc.domain_uuid:
                    svc.boot_abort = why
            svc.early_events = []
            if gen != svc.generation:
                # Retired while creating: destroy this instance only, never a
                # replacement that may already use the same domain name.
                await self._quiet_destroy(spec.domain_name, svc.domain_uuid)
                return
            svc.boot_count += 1
            probe = Probe(self.reactor, spec.address, spec.port, spec.probe_path,
                          expect_status=spec.expect_status, interval=spec.probe_interval, kind=spec.probe_kind,
                          request_timeout=spec.request_timeout, deadline=deadline)
            svc.probe = probe
            if svc.boot_abort:
                probe.cancel(svc.boot_abort)
            try:
                attempts = await probe.run()
            except ProbeTimeoutError as exc:
                await self._boot_failed(svc, gen, "timeout",
                                        f"{timer.overran(spec.boot_timeout)}; last probe error: "
                                        f"{exc.last_error or 'no attempt got an answer'}", timer)
                return
            except ProbeCancelledError as exc:
                await self._boot_failed(svc, gen, "error", f"{exc}; last probe error: {probe.last_error}", timer)
                return
            finally:
                svc.probe = None
            if gen != svc.generation:
                return
            now = self.now()
            svc.failures = 0
            svc.retry_at = 0.0
            svc.last_error = None
            svc.started_at = now
            svc.last_demand = max(svc.last_demand, now)
            svc.last_activity = now
            svc.traffic_token = None
            svc.reserved = False
            timer.end()
            self._set_state(svc, State.READY)
            if not xml:  # was a standby: it is a running VM now
                self.backend.set_metadata(spec.domain_name, metadata_xml(spec)).addErrback(lambda f: None)
            metrics.BOOTS.labels(svc.name, "success").inc()
            if svc.first_wait is not None:
                metrics.QUERY_TO_READY.labels("boot").observe(now - svc.first_wait)
            log.info("{service}: ready in {ms:.0f} ms ({phases}; {attempts} probe attempts, virt type {virt})",
                     service=svc.name, ms=(now - start) * 1000, phases=timer.summary(), attempts=attempts,
                     virt=self.virt_type)
            self._finish(svc, True)
        finally:
            self._boot_slots.release()

    async def _use_standby(self, svc: Service) -> bool:
        """Start the guest of the waiting paused domain; False if that fails
        (the caller then creates a domain as usual)."""
        svc.standby = False
        try:
            await self.backend.resume(svc.spec.domain_name)
            return True
        except BackendError as exc:
            log.warn("{service}: standby domain unusable ({err}); creating one", service=svc.name, err=exc)
            await self._quiet_destroy(svc.spec.domain_name)
            return False

    def prepare_standby(self, svc: Service) -> None:
        """Create the paused standby domain of a stopped service, if wanted."""
        if (not self.config.standby or svc.standby or svc.preparing is not None
                or svc.state is not State.STOPPED or not self.backend.connected
                or not self.virt_decided.called or missing_artifacts(svc.spec)):
            return
        gen = svc.generation
        spec = svc.spec
        xml = domain_xml(spec, self.virt_type, self.net, spec.machine, standby=True)

        def created(uuid: str) -> None:
            if gen != svc.generation:  # the service was removed or replaced meanwhile
                self.backend.destroy(spec.domain_name, uuid).addErrback(lambda f: None)
            elif svc.state in (State.STOPPED, State.BOOTING):  # a booting one waits for it and uses it
                svc.standby = True
                svc.domain_uuid = uuid

        def failed(failure: Any) -> None:
            log.warn("{service}: cannot prepare a standby domain: {err}", service=svc.name,
                     err=failure.getErrorMessage())

        def done(_: Any) -> None:
            svc.preparing = None
        d = self.backend.create(xml, paused=True)
        d.addCallbacks(created, failed).addBoth(done)
        svc.preparing = d

    def prepare_all_standby(self) -> None:
        for svc in self.services.values():
            self.prepare_standby(svc)

    async def _quiet_destroy(self, domain: str, uuid: str | None = None) -> None:
        try:
            await self.backend.destroy(domain, uuid)
        except BackendError as exc:
            log.warn("destroy of {domain} failed: {err}", domain=domain, err=exc)

    async def _create(self, xml: str, domain: str, deadline: float) -> str:
        """createXML within the boot deadline (``defer.TimeoutError`` past
        it); a leftover domain of ours (a failed destroy) is replaced."""
        try:
            return await self._within(self.backend.create(xml), deadline)
        except BackendError as exc:
            if "already exists" not in str(exc) and "already active" not in str(exc):
                raise
        await self._quiet_destroy(domain)
        return await self._within(self.backend.create(xml), deadline)

    def _within(self, d: defer.Deferred, deadline: float) -> defer.Deferred:
        # Cancelling a libvirt call's Deferred does not stop the call; its late
        # result is dropped.
        return d.addTimeout(max(0.0, deadline - self.now()), self.reactor)

    async def _boot_failed(self, svc: Service, gen: int, result: str, why: str,
                           timer: PhaseTimer | None = None) -> None:
        spec = svc.spec
        if timer is not None:
            timer.end()
        if gen == svc.generation:
            # Answer the waiters now (SERVFAIL within the deadline); the
            # destroy (a second or more for QEMU to exit) happens after.
            self._mark_failed(svc, result, why)
            await self._quiet_destroy(spec.domain_name)
        elif svc.domain_uuid:
            await self._quiet_destroy(spec.domain_name, svc.domain_uuid)  # not a replacement's domain
        try:
            qemu_tail, console_tail = await self.backend.logs(spec.domain_name)
        except Exception as exc:
            qemu_tail, console_tail = f"(cannot read: {exc})", ""
        svc.reserved = False
        if gen != svc.generation:
            return
        delay = svc.retry_at - self.now()
        log.error(
            "{service}: boot of image {image} failed ({result}): {why}; phases: {phases}; retry allowed in "
            "{delay:.1f}s (failure {n})\n--- QEMU log ({qlog}):\n{qemu}\n--- console:\n{console}",
            service=svc.name, image=spec.image, result=result, why=why, delay=max(0.0, delay), n=svc.failures,
            phases=timer.summary() if timer is not None else "none",
            qlog=f"/var/log/libvirt/qemu/{spec.domain_name}.log",
            qemu=qemu_tail.strip() or "(empty)", console=console_tail.strip() or "(empty)")

    def _mark_failed(self, svc: Service, result: str, why: str) -> None:
        svc.failures += 1
        delay = delay_after(svc.failures, self.config.retry_backoff, self.config.retry_backoff_max)
        svc.retry_at = self.now() + delay
        svc.last_error = why
        metrics.BOOTS.labels(svc.name, result).inc()
        self._set_state(svc, State.FAILED)
        self._finish(svc, False, why)

    async def _resume(self, svc: Service) -> None:
        gen = svc.generation
        timer = PhaseTimer(self.now)
        timer.enter(Phase.RESUME)
        self._set_state(svc, State.BOOTING)
        svc.reserved = True  # the suspended VM still exists: it counts against capacity while resuming
        try:
            await self.backend.resume(svc.spec.domain_name)
        except BackendError as exc:
            svc.reserved = False
            if gen != svc.generation:
                return
            # Gone or broken while suspended: boot afresh for the waiters.
            log.warn("{service}: resume failed ({err}); booting afresh", service=svc.name, err=exc)
            await self._quiet_destroy(svc.spec.domain_name)
            if gen != svc.generation:
                return  # removed or replaced meanwhile: nothing to boot for
            self._set_state(svc, State.STOPPED)
            await self._boot(svc)
            return
        svc.reserved = False
        if gen != svc.generation:
            return
        timer.end()
        now = self.now()
        svc.last_demand = max(svc.last_demand, now)
        svc.last_activity = now
        self._set_state(svc, State.READY)
        if svc.first_wait is not None:
            metrics.QUERY_TO_READY.labels("resume").observe(now - svc.first_wait)
            log.info("{service}: resumed in {ms:.1f} ms", service=svc.name, ms=(now - svc.first_wait) * 1000)
        self._finish(svc, True)

    # -- virt type ---------------------------------------------------------------

    async def decide_kvm(self, spec: VMSpec) -> None:
        """``--virt-type auto`` with KVM offered: test-boot ``spec`` under KVM
        (or reuse the verdict cached until the host reboots) and set the virt
        type accordingly."""
        verdict = await self.kvm_check.verdict(spec, timeout=min(8.0, spec.boot_timeout))
        if verdict.usable:
            self.virt_type = "kvm"
            log.info("virt type auto: KVM boot check passed ({why}); using kvm", why=verdict.why)
        else:
            self.virt_type = "qemu"
            log.warn("virt type auto: KVM unusable (a test boot of {image} under KVM failed: {why}); "
                     "falling back to TCG (virt type qemu)", image=spec.image, why=verdict.why)

    # -- capacity --------------------------------------------------------------

    def usage(self, exclude: Service | None = None) -> tuple[int, int]:
        count = mem = 0
        for s in self.services.values():
            if s is not exclude and s.holds_resources():
                count += 1
                mem += s.spec.memory_mib
        return count, mem

    def _refusal(self, svc: Service) -> str:
        """Why ``_make_room`` gave up: what is in use against the limits."""
        need, budget = svc.spec.memory_mib, self.config.memory_budget_mib
        if need > budget:
            return f"no capacity: needs {need} MiB, more than the whole memory budget ({budget} MiB)"
        count, mem = self.usage(exclude=svc)
        return (f"no capacity: needs {need} MiB; {count} of {self.config.max_vms} VMs and {mem} of {budget} MiB "
                f"in use, none idle for {self.config.evict_min_idle:g}s")

    async def _make_room(self, svc: Service) -> bool:
        need = svc.spec.memory_mib
        if need > self.config.memory_budget_mib:
            return False
        # Bounded like a boot: a victim whose destroy keeps failing (QEMU stuck
        # in the kernel) must not hold the waiters and a boot slot forever.
        give_up = self.now() + svc.spec.boot_timeout
        tried: set[str] = set()
        while True:
            count, mem = self.usage(exclude=svc)
            if count + 1 <= self.config.max_vms and mem + need <= self.config.memory_budget_mib:
                return True
            now = self.now()
            if now >= give_up:
                return False
            victims = [s for s in self.services.values()
                       if s is not svc and s.state in (State.READY, State.SUSPENDED) and s.name not in tried
                       and not s.waiters and now - s.last_used() >= self.config.evict_min_idle]
            if not victims:
                if any(s.state is State.STOPPING for s in self.services.values()):
                    # Room is being made already; wait for it rather than refuse.
                    await _sleep(self.reactor, 0.05)
                    continue
                return False
            victim = min(victims, key=Service.last_used)
            log.info("{service}: making room for {other} (idle {idle:.1f}s, least recently used)",
                     service=victim.name, other=svc.name, idle=now - victim.last_used())
            tried.add(victim.name)
            await self.stop_service(victim, "capacity", mode="destroy")

    # -- stopping ----------------------------------------------------------------

    def stop_service(self, svc: Service, reason: str, mode: str | None = None) -> defer.Deferred:
        """Stop a ready or suspended VM by ``mode`` (default: the image's stop
        mode).  Fires True if it stopped something."""
        if svc.state not in (State.READY, State.SUSPENDED):
            return defer.succeed(False)
        return defer.Deferred.fromCoroutine(self._stop(svc, reason, mode or svc.spec.stop_mode))

    async def _stop(self, svc: Service, reason: str, mode: str) -> bool:
        gen = svc.generation
        previous = svc.state
        self._set_state(svc, State.STOPPING)
        metrics.REAPS.labels(reason).inc()
        domain = svc.spec.domain_name
        uuid = svc.domain_uuid

        def this_instance() -> str | None:
            # By name while the service is current; once a zone reload retired
            # it, another domain may carry the same name: then by UUID only.
            return uuid if gen != svc.generation else None
        idle = self.now() - svc.last_used()
        final = State.STOPPED
        try:
            if mode == "suspend" and previous is State.READY:
                await self.backend.suspend(domain)
                final = State.SUSPENDED
            elif mode == "shutdown" and previous is State.READY:
                svc.stop_event = defer.Deferred()
                if await self.backend.shutdown(domain):
                    graceful = await _first(self.reactor, svc.stop_event, svc.spec.shutdown_grace)
                    if not graceful:
                        log.info("{service}: no shutdown within {grace:g}s; destroying",
                                 service=svc.name, grace=svc.spec.shutdown_grace)
                        await self.backend.destroy(domain, this_instance())
            else:
                await self.backend.destroy(domain, this_instance())
        except BackendError as exc:
            log.warn("{service}: {mode} failed: {err}", service=svc.name, mode=mode, err=exc)
            try:
                st = await self.backend.state(domain)
            except BackendError:
                st = "unknown"
            final = {"running": State.READY, "paused": State.SUSPENDED}.get(st, State.STOPPED)
        finally:
            svc.stop_event = None
        if gen != svc.generation:
            return False
        if final is State.STOPPED:
            svc.started_at = None
            self.reactor.callLater(0, self.prepare_standby, svc)
        log.info("{service}: {how} ({reason}, idle {idle:.1f}s)", service=svc.name,
                 how={State.SUSPENDED: "suspended", State.STOPPED: f"stopped by {mode}"}.get(final, "still running"),
                 reason=reason, idle=idle)
        self._set_state(svc, final)
        if svc.waiters:
            # Queries arrived while stopping: bring it back for them.
            if final is State.SUSPENDED:
                defer.Deferred.fromCoroutine(self._resume(svc))
            elif final is State.STOPPED:
                defer.Deferred.fromCoroutine(self._boot(svc))
            else:
                self._finish(svc, True)
        return final is not previous

    # -- libvirt events ----------------------------------------------------------

    def on_event(self, domain: str, event: str, detail: str, uuid: str = "") -> None:
        svc = self.by_domain.get(domain)
        if svc is None:
            if domain == self.kvm_check.domain_name:
                self.kvm_check.on_event(event, detail)
            return
        if svc.state is State.BOOTING and svc.domain_uuid is None and svc.reserved:
            # createXML has not returned yet: we cannot tell this instance's
            # events from its predecessor's until we know its UUID.
            if event in ("stopped", "crashed", "suspended"):
                svc.early_events.append((uuid, f"domain {event} during boot ({detail})"))
            return
        if uuid and svc.domain_uuid and uuid != svc.domain_uuid:
            return  # an earlier instance of this domain (destroyed before a re-boot)
        if event in ("stopped", "crashed"):
            if svc.standby:
                svc.standby = False  # the standby domain went away (virsh destroy?)
            if svc.stop_event is not None and not svc.stop_event.called:
                svc.stop_event.callback(True)
            if svc.state is State.BOOTING and svc.reserved:
                self._abort_boot(svc, f"domain {event} during boot ({detail})")
            elif svc.state in (State.READY, State.SUSPENDED):
                log.warn("{service}: VM {event} outside summoner ({detail}); next query boots it again",
                         service=svc.name, event=event, detail=detail)
                metrics.REAPS.labels("external").inc()
                svc.started_at = None
                self._set_state(svc, State.STOPPED)
                self.reactor.callLater(0, self.prepare_standby, svc)
        elif event == "suspended":
            if svc.state is State.BOOTING and svc.reserved:
                self._abort_if_still_paused(svc, detail)
            elif svc.state is State.READY:
                log.warn("{service}: VM paused outside summoner ({detail})", service=svc.name, detail=detail)
                self._set_state(svc, State.SUSPENDED)
        elif event == "resumed" and svc.state is State.SUSPENDED:
            self._set_state(svc, State.READY)

    def _abort_if_still_paused(self, svc: Service, detail: str) -> None:
        """A standby domain's own creation-time pause can be reported after
        the boot has resumed it; only a guest that is paused *now* fails the
        boot.  The state query runs on the libvirt thread behind the resume,
        so it sees the domain as it is after it."""
        gen = svc.generation

        def checked(state: str) -> None:
            if state == "paused" and gen == svc.generation and svc.state is State.BOOTING:
                self._abort_boot(svc, f"guest paused during boot ({detail})")
        self.backend.state(svc.spec.domain_name).addCallbacks(checked, lambda failure: None)

    def _abort_boot(self, svc: Service, why: str) -> None:
        if svc.probe is not None:
            svc.probe.cancel(why)
        else:
            svc.boot_abort = why

    # -- reconciliation ----------------------------------------------------------

    def reconcile(self) -> defer.Deferred:
        """Match libvirt's running domains with our services: adopt ours,
        destroy those whose service is gone or changed, and mark services
        whose VM vanished as stopped.  Called at start and after reconnects."""
        if self._reconciling is not None:
            return self._reconciling
        d = defer.Deferred.fromCoroutine(self._reconcile())

        def done(result: Any) -> Any:
            self._reconciling = None
            return result
        self._reconciling = d
        return d.addBoth(done)

    async def _reconcile(self) -> dict[str, int]:
        try:
            domains = await self.backend.list_ours()
        except BackendError as exc:
            log.warn("cannot list domains to reconcile: {err}", err=exc)
            return {}
        stats = {"adopted": 0, "destroyed": 0, "vanished": 0}
        seen: set[str] = set()
        adoptions = []
        # Destroys wait until the snapshot is fully applied: awaiting one here
        # (a second or more each) would let VMs change state behind the snapshot.
        orphans: list[tuple[str, str | None]] = []
        for info in domains:
            svc = self.by_domain.get(info.name)
            meta = info.metadata
            if svc is None or meta is None or meta.service != svc.name or meta.config_hash != svc.spec.config_hash:
                if info.state in ("shutoff", "crashed"):
                    continue
                why = "removed" if svc is None else "changed"
                log.info("domain {domain} ({service}) is ours but its service is {why}; destroying",
                         domain=info.name, service=meta.service if meta else "?", why=why)
                metrics.REAPS.labels(why).inc()
                stats["destroyed"] += 1
                orphans.append((info.name, info.uuid))
                continue
            seen.add(svc.name)
            if svc.state is State.STOPPED and info.state == "paused" and meta.standby:
                svc.standby = True
                svc.domain_uuid = info.uuid
            elif svc.state in (State.STOPPED, State.FAILED):
                if info.state == "paused":
                    svc.domain_uuid = info.uuid
                    svc.started_at = svc.started_at or self.now()
                    self._set_state(svc, State.SUSPENDED)
                    stats["adopted"] += 1
                elif info.state == "running":
                    svc.domain_uuid = info.uuid
                    adoptions.append(self._adopt(svc))
                    stats["adopted"] += 1
            elif svc.state is State.READY and info.state == "paused":
                self._set_state(svc, State.SUSPENDED)
            elif svc.state is State.SUSPENDED and info.state == "running":
                self._set_state(svc, State.READY)
        for svc in self.services.values():
            if svc.name not in seen and svc.standby:
                svc.standby = False
            if svc.name not in seen and svc.state in (State.READY, State.SUSPENDED):
                log.warn("{service}: its VM is gone (stopped while libvirt was unreachable?)", service=svc.name)
                metrics.REAPS.labels("external").inc()
                svc.started_at = None
                self._set_state(svc, State.STOPPED)
        for name, uuid in orphans:
            await self._quiet_destroy(name, uuid)  # that very domain, not a successor of the same name
        if adoptions:
            await defer.DeferredList(adoptions)
        if any(stats.values()):
            log.info("reconciled with libvirt: {adopted} adopted, {destroyed} destroyed, {vanished} vanished",
                     **stats)
        return stats

    def _adopt(self, svc: Service) -> defer.Deferred:
        """A running VM of ours found at start: ready after one successful probe
        (no boot counted); destroyed if it does not answer."""
        async def run() -> None:
            gen = svc.generation
            self._set_state(svc, State.BOOTING)
            svc.reserved = True
            spec = svc.spec
            probe = Probe(self.reactor, spec.address, spec.port, spec.probe_path,
                          expect_status=spec.expect_status, interval=spec.probe_interval, kind=spec.probe_kind,
                          request_timeout=spec.request_timeout, deadline=self.now() + spec.boot_timeout)
            svc.probe = probe
            try:
                await probe.run()
            except (ProbeTimeoutError, ProbeCancelledError) as exc:
                svc.probe = None
                if gen != svc.generation:
                    return
                log.warn("{service}: running VM found but not answering ({err}, {last}); destroying",
                         service=svc.name, err=exc, last=probe.last_error)
                svc.reserved = False
                await self._quiet_destroy(spec.domain_name)
                self._set_state(svc, State.STOPPED)
                if svc.waiters:
                    # Not awaited: start-up awaits every adoption before it lets
                    # boots proceed (virt_decided), so awaiting a boot here would
                    # wait on ourselves forever.
                    defer.Deferred.fromCoroutine(self._boot(svc))
                return
            svc.probe = None
            if gen != svc.generation:
                return
            now = self.now()
            svc.reserved = False
            svc.started_at = now
            svc.last_demand = max(svc.last_demand, now)
            svc.last_activity = now
            self._set_state(svc, State.READY)
            log.info("{service}: adopted running VM {domain}", service=svc.name, domain=spec.domain_name)
            self._finish(svc, True)
        return defer.Deferred.fromCoroutine(run())

    # -- status --------------------------------------------------------------------

    def status(self) -> list[dict[str, Any]]:
        now = self.now()
        rows = []
        for svc in sorted(self.services.values(), key=lambda s: s.name):
            up = svc.state in (State.READY, State.SUSPENDED, State.STOPPING) and svc.started_at is not None
            rows.append({
                "name": svc.name,
                "image": svc.spec.image,
                "state": svc.state.value,
                "address": svc.spec.address,
                "port": svc.spec.port,
                "domain": svc.spec.domain_name,
                "uptime": round(now - svc.started_at, 3) if up and svc.started_at else None,
                "idle": round(now - svc.last_used(), 3) if up else None,
                "boot_count": svc.boot_count,
                "waiters": len(svc.waiters),
                "last_error": svc.last_error,
                "retry_in": round(svc.retry_at - now, 3) if svc.retry_at > now else None,
                "memory_mib": svc.spec.memory_mib,
                "idle_timeout": svc.spec.idle_timeout,
                "stop_mode": svc.spec.stop_mode,
                "standby": svc.standby,
            })
        return rows


def _wait(d: defer.Deferred) -> defer.Deferred:
    """A Deferred firing when ``d`` does, without taking ``d``'s result."""
    out: defer.Deferred = defer.Deferred()
    d.addBoth(lambda result: (out.callback(None), result)[1])
    return out


def _sleep(reactor: Any, seconds: float) -> defer.Deferred:
    from twisted.internet import task
    return task.deferLater(reactor, seconds, lambda: None)


def _first(reactor: Any, d: defer.Deferred, timeout: float) -> defer.Deferred:
    """Fires True when ``d`` fires, False after ``timeout`` (``d`` untouched)."""
    out: defer.Deferred = defer.Deferred()
    timer = reactor.callLater(timeout, lambda: out.called or out.callback(False))

    def fired(_: Any) -> None:
        if timer.active():
            timer.cancel()
        if not out.called:
            out.callback(True)
    d.addBoth(fired)
    return out
