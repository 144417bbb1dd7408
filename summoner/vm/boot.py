"""Bringing a service up: a boot (slot → libvirt → guest), a resume, or the
adoption of a running VM found at start.

A boot waits for one of ``--max-concurrent-boots`` slots, for the virt type
to be known and for capacity, then gets its domain (restored from the
service's snapshot, its standby domain started, or a new domain created)
and probes the guest until it answers, all within the boot deadline.  A
boot that misses it fails all its waiters (SERVFAIL), destroys the domain
and sets an exponential retry back-off, so a broken image cannot boot-loop;
the log line carries libvirt's error, the QEMU log tail, the console tail
and the probe's last error.  Each boot is one Deferred, ``Service.task``:
cancelling it (the service was removed) stops it at whatever it awaits and
destroys the domain it made.  A snapshot libvirt cannot restore is removed
and the service boots afresh: the query is still answered.

Tests: tests/vm/test_boot.py
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Coroutine

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from summoner.backoff import delay_after
from summoner.deferreds import first_of, when_fired
from summoner.vm import metrics
from summoner.vm.attempt import Attempt, probe_for, run_probe
from summoner.vm.backend import Backend, BackendError, DomainEvent, DomainExistsError, DomainState, destroy_quietly
from summoner.vm.capacity import Capacity
from summoner.vm.config import OnDemandConfig
from summoner.vm.domxml import NetworkSettings, domain_xml, metadata_xml
from summoner.vm.lifecycle import Service, State
from summoner.vm.phases import Phase, PhaseTimer
from summoner.vm.probe import ProbeCancelledError, ProbeTimeoutError
from summoner.vm.snapshots import NoSnapshotError, SnapshotStore, save_guest
from summoner.vm.spec import missing_artifacts
from summoner.vm.standby import Standby
from summoner.vm.virt import VirtDecision

log = Logger(namespace="summoner.vm.boot")


class Start(enum.Enum):
    """How a boot got its domain."""

    CREATED = "created"
    STANDBY = "standby"
    RESTORED = "restored"    # from the service's snapshot (stop mode snapshot)
    GOLDEN = "golden"        # from the golden snapshot of the configuration's first boot


_KIND = {Start.CREATED: "boot", Start.STANDBY: "boot", Start.RESTORED: "restore", Start.GOLDEN: "golden"}
_HOW = {Start.CREATED: "", Start.STANDBY: "", Start.RESTORED: " (restored from its snapshot)",
        Start.GOLDEN: " (restored from its golden snapshot)"}


class BootFailedError(Exception):
    """A boot that cannot go on; ``result`` labels the boots metric."""

    def __init__(self, result: str, why: str) -> None:
        super().__init__(why)
        self.result = result
        self.why = why


class BootRefusedError(Exception):
    """No boot now, through no fault of the image (capacity, libvirt away)."""

    def __init__(self, result: str, why: str) -> None:
        super().__init__(why)
        self.result = result


class Booter:
    def __init__(self, config: OnDemandConfig, reactor: IReactorTime, backend: Backend, virt: VirtDecision,
                 capacity: Capacity, standby: Standby, snapshots: SnapshotStore, net: NetworkSettings) -> None:
        self.config = config
        self.reactor = reactor
        self.backend = backend
        self.virt = virt
        self.capacity = capacity
        self.standby = standby
        self.snapshots = snapshots
        self.net = net
        self._slots = defer.DeferredSemaphore(config.max_concurrent_boots)
        self._attempts: dict[Service, Attempt] = {}
        self._no_golden: set[str] = set()  # configurations whose golden snapshot could not be made

    # -- starting work ------------------------------------------------------------

    def _start(self, svc: Service, work: Coroutine[defer.Deferred[object], object, None]) -> None:
        task = defer.Deferred.fromCoroutine(self._guarded(svc, work))
        if not task.called:
            svc.task = task

            def ended(_: None) -> None:
                if svc.task is task:
                    svc.task = None
            task.addCallback(ended)

    async def _guarded(self, svc: Service, work: Coroutine[defer.Deferred[object], object, None]) -> None:
        try:
            await work
        except defer.CancelledError:
            pass  # retired: the canceller answered the waiters
        except Exception:
            # A bug must not leave queries waiting forever.
            log.failure("{service}: boot failed unexpectedly", service=svc.name)
            if svc.waiters or svc.state is State.BOOTING:
                svc.failed("internal error (see log)", self._backoff(svc))

    def boot(self, svc: Service) -> None:
        self._start(svc, self._boot(svc))

    def resume(self, svc: Service) -> None:
        self._start(svc, self._resume(svc))

    def adopt(self, svc: Service, uuid: str) -> defer.Deferred[None]:
        """A running VM of ours found at start: ready after one successful
        probe (no boot counted); destroyed if it does not answer."""
        svc.begin_adoption(uuid)
        self._start(svc, self._adopt(svc))
        return defer.succeed(None) if svc.task is None else when_fired(svc.task)

    # -- libvirt's events ------------------------------------------------------------

    def domain_event(self, svc: Service, event: DomainEvent, detail: str, uuid: str) -> bool:
        """An event of ``svc``'s domain while it boots; True if it was the boot's."""
        attempt = self._attempts.get(svc)
        if attempt is None or svc.state is not State.BOOTING or not svc.reserved:
            return False
        if attempt.creating:
            # We cannot tell this instance's events from its predecessor's
            # until createXML returns its UUID.
            if event.ends_domain or event is DomainEvent.SUSPENDED:
                attempt.early.append((uuid, event, detail))
            return True
        if uuid and svc.domain_uuid and uuid != svc.domain_uuid:
            return True  # an earlier instance (destroyed before this boot)
        self._check_event(svc, attempt, event, detail)
        return True

    def _check_event(self, svc: Service, attempt: Attempt, event: DomainEvent, detail: str) -> None:
        """Fail the boot if the event says the guest died or paused *and* the
        domain is so now.  A UUID does not tell instances apart once a
        snapshot was restored (libvirt keeps the saved UUID), and a standby's
        creation-time pause can be reported after the boot resumed it; the
        state query runs on the libvirt thread behind the boot's own calls,
        so it sees the domain as it is after them."""
        if not (event.ends_domain or event is DomainEvent.SUSPENDED):
            return

        def checked(state: DomainState) -> None:
            if self._attempts.get(svc) is not attempt:
                return
            if event.ends_domain and state.ended:
                attempt.abort(f"domain {event} during boot ({detail})")
            elif event is DomainEvent.SUSPENDED and state is DomainState.PAUSED:
                attempt.abort(f"guest paused during boot ({detail})")
        self.backend.state(svc.spec.domain_name).addCallbacks(checked, lambda failure: None)

    # -- a boot ------------------------------------------------------------------

    async def _boot(self, svc: Service) -> None:
        timer = PhaseTimer(self.reactor.seconds)
        timer.enter(Phase.SLOT)
        svc.begin_boot()
        attempt = self._attempts[svc] = Attempt()
        try:
            await self._boot_steps(svc, attempt, timer)
        finally:
            self._forget(svc, attempt)

    def _forget(self, svc: Service, attempt: Attempt) -> None:
        if self._attempts.get(svc) is attempt:
            del self._attempts[svc]

    async def _boot_steps(self, svc: Service, attempt: Attempt, timer: PhaseTimer) -> None:
        spec = svc.spec
        try:
            missing = missing_artifacts(spec)
            if missing:
                raise BootFailedError("error", f"image {spec.image} is not built: missing " + ", ".join(missing))
            await self._slots.acquire()
            try:
                await self._boot_in_slot(svc, attempt, timer)
            finally:
                self._slots.release()
        except BootRefusedError as refusal:
            metrics.BOOTS.labels(svc.name, refusal.result).inc()
            log.warn("{service}: boot refused: {msg}", service=svc.name, msg=str(refusal))
            svc.refused(str(refusal))
        except BootFailedError as failure:
            timer.end()
            await self._failed(svc, failure, timer)

    async def _libvirt_back(self, timeout: float) -> None:
        """libvirtd restarting: reconnection takes well under a second, so
        wait for it (within the deadline) rather than fail.  Down for longer
        than a boot may take, it is not restarting: refuse at once, so that
        each query does not wait out the deadline in turn."""
        uri = self.config.libvirt_uri
        down_since = self.backend.down_since
        if down_since is not None and self.reactor.seconds() - down_since >= timeout:
            down = self.reactor.seconds() - down_since
            raise BootRefusedError("error", f"libvirt unreachable at {uri} for {down:.0f}s; start libvirtd "
                                            "(scripts/start-libvirt.sh) or fix --libvirt-uri")
        if not await first_of(self.reactor, self.backend.when_connected(), timeout):
            raise BootRefusedError("error", f"libvirt unreachable at {uri}; start libvirtd "
                                            "(scripts/start-libvirt.sh) or fix --libvirt-uri")

    async def _boot_in_slot(self, svc: Service, attempt: Attempt, timer: PhaseTimer) -> None:
        spec = svc.spec
        await self.virt.ready_for(spec)
        if not await self.capacity.make_room(svc):
            metrics.CAPACITY_REFUSALS.inc()
            raise BootRefusedError("capacity", self.capacity.refusal(svc))
        svc.reserve()
        start = self.reactor.seconds()
        if not self.backend.connected:
            await self._libvirt_back(spec.boot_timeout)
            start = self.reactor.seconds()
        deadline = start + spec.boot_timeout
        await self.standby.settled(svc)
        timer.enter(Phase.LIBVIRT)
        started = await self._start_domain(svc, attempt, deadline, timer)
        timer.enter(Phase.GUEST)
        svc.boot_count += 1
        attempts = await self._probe(svc, attempt, deadline, timer)
        if started is Start.STANDBY:  # a running VM now, no longer a standby (golden snapshots included)
            try:
                await self.backend.set_metadata(spec.domain_name, metadata_xml(spec))
            except BackendError as exc:
                log.warn("{service}: cannot update its metadata: {err}", service=svc.name, err=exc)
        if spec.snapshot_boot and started in (Start.CREATED, Start.STANDBY):
            await self._take_golden(svc, attempt, timer)
        timer.end()
        # Measured and logged before the waiters get their answers: whoever
        # holds an answer can already see its boot in the log and metrics.
        waited = svc.waited()
        metrics.BOOTS.labels(svc.name, "success").inc()
        if waited is not None:
            metrics.QUERY_TO_READY.labels(_KIND[started]).observe(waited)
        log.info("{service}: ready in {ms:.0f} ms{how} ({phases}; {attempts} probe attempts, virt type {virt})",
                 service=svc.name, ms=(self.reactor.seconds() - start) * 1000, phases=timer.summary(),
                 how=_HOW[started], attempts=attempts, virt=self.virt.type_for(spec))
        svc.became_ready()

    async def _start_domain(self, svc: Service, attempt: Attempt, deadline: float, timer: PhaseTimer) -> Start:
        """Start the guest: from its snapshot, its standby domain, or a new domain."""
        spec = svc.spec
        snapshot, golden = self.snapshots.for_cold_start(spec)
        if snapshot is not None:
            if await self._started(svc, attempt, deadline, timer,
                                   lambda: self.backend.restore(spec.domain_name, str(snapshot.path)),
                                   fallible=True):
                self.snapshots.discard(spec)  # the guest moves on from it
                return Start.RESTORED
            self.snapshots.discard(spec, "it could not be restored")
        if golden is not None:
            if await self._started(svc, attempt, deadline, timer,
                                   lambda: self.backend.restore(spec.domain_name, str(golden.path)),
                                   fallible=True):
                return Start.GOLDEN  # kept: every cold start restores it
            self.snapshots.discard(spec, "it could not be restored", golden=True)
        if await self.standby.take(svc):
            return Start.STANDBY
        xml = domain_xml(spec, self.virt.type_for(spec), self.net, spec.machine)
        await self._started(svc, attempt, deadline, timer, lambda: self.backend.create(spec.domain_name, xml))
        return Start.CREATED

    async def _started(self, svc: Service, attempt: Attempt, deadline: float, timer: PhaseTimer,
                       start: Callable[[], defer.Deferred[str]], fallible: bool = False) -> bool:
        """Run ``start`` (a create or a restore) within the boot deadline;
        a leftover domain of ours (a failed destroy) is replaced.  With
        ``fallible`` (a restore), libvirt refusing it is logged and False:
        the caller boots afresh."""
        spec = svc.spec
        svc.domain_uuid = None
        attempt.creating = True
        try:
            try:
                svc.domain_uuid = await self._within(start(), deadline)
            except DomainExistsError:
                await destroy_quietly(self.backend, spec.domain_name)
                svc.domain_uuid = await self._within(start(), deadline)
        except defer.TimeoutError:
            # The domain may still appear: the destroy after the failure runs
            # on the libvirt thread after the call and removes it.
            raise BootFailedError("timeout", timer.overran(spec.boot_timeout) + "; see summoner doctor") from None
        except defer.CancelledError:
            await destroy_quietly(self.backend, spec.domain_name)  # queued behind the call: removes it
            raise
        except BackendError as exc:
            if not fallible:
                raise BootFailedError("error", f"libvirt: {exc}") from exc
            log.warn("{service}: cannot restore its snapshot ({err}); removing it and booting afresh",
                     service=svc.name, err=exc)
            await destroy_quietly(self.backend, spec.domain_name)
            return False
        finally:
            attempt.creating = False
        for uuid, event, detail in attempt.early:
            if uuid == svc.domain_uuid:
                self._check_event(svc, attempt, event, detail)
        return True

    def _within(self, d: defer.Deferred[str], deadline: float) -> defer.Deferred[str]:
        # Cancelling a libvirt call's Deferred does not stop the call; its late
        # result is dropped.
        return d.addTimeout(max(0.0, deadline - self.reactor.seconds()), self.reactor)

    async def _probe(self, svc: Service, attempt: Attempt, deadline: float, timer: PhaseTimer) -> int:
        spec = svc.spec
        probe = attempt.probe = probe_for(self.reactor, spec, deadline)
        if attempt.aborted:
            probe.cancel(attempt.aborted)
        try:
            return await run_probe(probe)
        except ProbeTimeoutError as exc:
            raise BootFailedError("timeout", f"{timer.overran(spec.boot_timeout)}; last probe error: "
                                         f"{exc.last_error or 'no attempt got an answer'}") from exc
        except ProbeCancelledError as exc:
            raise BootFailedError("error", f"{exc}; last probe error: "
                                           f"{probe.last_error or 'none (no attempt had ended)'}") from exc
        except defer.CancelledError:
            await destroy_quietly(self.backend, spec.domain_name, svc.domain_uuid)  # this instance only
            raise

    async def _take_golden(self, svc: Service, attempt: Attempt, timer: PhaseTimer) -> None:
        """The configuration's first boot has just answered its probe, before
        any client used it: save it as the golden snapshot, then restore it
        to answer.  Once per configuration: after a failure (no room, or a
        guest libvirt cannot save) this configuration boots, and the guest
        answers as it is if it still runs."""
        spec = svc.spec
        if spec.config_hash in self._no_golden:
            return
        started = self.reactor.seconds()
        try:
            golden = await save_guest(self.snapshots, self.backend, svc, golden=True)
        except NoSnapshotError as exc:
            self._no_golden.add(spec.config_hash)
            log.warn("{service}: no golden snapshot ({why}); its cold starts boot", service=svc.name, why=str(exc))
            try:
                state = await self.backend.state(spec.domain_name)
            except BackendError:
                state = DomainState.GONE
            if state.ended:
                raise BootFailedError("error", f"golden snapshot: {exc}; the guest ended with it") from exc
            return
        log.info("{service}: golden snapshot saved to {path} ({mib:.1f} MiB in {ms:.0f} ms)", service=svc.name,
                 path=str(golden.path), mib=golden.size / 2**20, ms=(self.reactor.seconds() - started) * 1000)
        deadline = self.reactor.seconds() + spec.boot_timeout
        if not await self._started(svc, attempt, deadline, timer,
                                   lambda: self.backend.restore(spec.domain_name, str(golden.path)), fallible=True):
            self._no_golden.add(spec.config_hash)
            self.snapshots.discard(spec, "it could not be restored", golden=True)
            raise BootFailedError("error", "the golden snapshot just saved could not be restored; the next "
                                           "boot boots without one")
        await self._probe(svc, attempt, deadline, timer)

    def _backoff(self, svc: Service) -> float:
        return delay_after(svc.failures + 1, self.config.retry_backoff, self.config.retry_backoff_max)

    async def _failed(self, svc: Service, failure: BootFailedError, timer: PhaseTimer) -> None:
        """Answer the waiters now (SERVFAIL within the deadline); the destroy
        (a second or more for QEMU to exit) and the log line come after."""
        spec = svc.spec
        metrics.BOOTS.labels(svc.name, failure.result).inc()
        delay = self._backoff(svc)
        svc.failed(failure.why, delay)
        await destroy_quietly(self.backend, spec.domain_name)
        try:
            qemu_tail, console_tail = await self.backend.logs(spec.domain_name)
        except BackendError as exc:
            qemu_tail, console_tail = f"(cannot read: {exc})", ""
        log.error(
            "{service}: boot of image {image} failed ({result}): {why}; phases: {phases}; retry allowed in "
            "{delay:.1f}s (failure {n})\n--- QEMU log ({qlog}):\n{qemu}\n--- console:\n{console}",
            service=svc.name, image=spec.image, result=failure.result, why=failure.why,
            delay=max(0.0, svc.retry_at - self.reactor.seconds()), n=svc.failures, phases=timer.summary(),
            qlog=f"/var/log/libvirt/qemu/{spec.domain_name}.log",
            qemu=qemu_tail.strip() or "(empty)", console=console_tail.strip() or "(empty)")

    # -- resume and adoption --------------------------------------------------------

    async def _resume(self, svc: Service) -> None:
        timer = PhaseTimer(self.reactor.seconds)
        timer.enter(Phase.RESUME)
        svc.begin_resume()
        try:
            await self.backend.resume(svc.spec.domain_name)
        except BackendError as exc:
            # Gone or broken while suspended: boot afresh for the waiters.
            log.warn("{service}: resume failed ({err}); booting afresh", service=svc.name, err=exc)
            await destroy_quietly(self.backend, svc.spec.domain_name)
            svc.gave_up()
            await self._boot(svc)
            return
        timer.end()
        waited = svc.waited()
        if waited is not None:
            metrics.QUERY_TO_READY.labels("resume").observe(waited)
            log.info("{service}: resumed in {ms:.1f} ms", service=svc.name, ms=waited * 1000)
        svc.became_ready(counted_boot=False)

    async def _adopt(self, svc: Service) -> None:
        spec = svc.spec
        attempt = self._attempts[svc] = Attempt()
        probe = attempt.probe = probe_for(self.reactor, spec, self.reactor.seconds() + spec.boot_timeout)
        try:
            await run_probe(probe)
        except (ProbeTimeoutError, ProbeCancelledError) as exc:
            log.warn("{service}: running VM found but not answering ({err}, {last}); destroying",
                     service=svc.name, err=exc, last=probe.last_error)
            await destroy_quietly(self.backend, spec.domain_name, svc.domain_uuid)
            svc.gave_up()
            if svc.waiters:
                # Not awaited: start-up awaits every adoption before it lets
                # boots proceed, so awaiting a boot here would wait on itself.
                self.boot(svc)
            return
        finally:
            self._forget(svc, attempt)
        svc.became_ready(counted_boot=False)
        log.info("{service}: adopted running VM {domain}", service=svc.name, domain=spec.domain_name)

