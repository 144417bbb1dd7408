"""Capacity: how many VMs and how much memory may run at once, and which
idle VM makes room when a boot needs it (least recently used first).

Tests: tests/vm/test_capacity.py
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from summoner.deferreds import first_of, when_fired
from summoner.vm.lifecycle import Service, State

log = Logger(namespace="summoner.vm.capacity")

# Stops one VM (service, reason, mode); fires True if it stopped something.
StopFunction = Callable[[Service, str, str], "defer.Deferred[bool]"]


@dataclass(frozen=True)
class Limits:
    max_vms: int
    memory_budget_mib: int
    evict_min_idle: float   # seconds a VM must have been idle to be evicted


class Capacity:
    def __init__(self, limits: Limits, reactor: IReactorTime, services: Callable[[], Iterable[Service]],
                 stop: StopFunction, stopping: Callable[[], list[defer.Deferred[bool]]]) -> None:
        self.limits = limits
        self.reactor = reactor
        self._services = services
        self._stop = stop
        self._stopping = stopping  # the stops in flight

    def usage(self, exclude: Service | None = None) -> tuple[int, int]:
        """(VMs, MiB) held now, leaving out ``exclude``."""
        count = mem = 0
        for s in self._services():
            if s is not exclude and s.holds_resources():
                count += 1
                mem += s.spec.memory_mib
        return count, mem

    def fits(self, svc: Service) -> bool:
        count, mem = self.usage(exclude=svc)
        return count + 1 <= self.limits.max_vms and mem + svc.spec.memory_mib <= self.limits.memory_budget_mib

    def refusal(self, svc: Service) -> str:
        """Why ``make_room`` gave up: what is in use against the limits."""
        need, budget = svc.spec.memory_mib, self.limits.memory_budget_mib
        if need > budget:
            return f"no capacity: needs {need} MiB, more than the whole memory budget ({budget} MiB)"
        count, mem = self.usage(exclude=svc)
        return (f"no capacity: needs {need} MiB; {count} of {self.limits.max_vms} VMs and {mem} of {budget} MiB "
                f"in use, none idle for {self.limits.evict_min_idle:g}s")

    def victims(self, svc: Service, tried: set[str]) -> list[Service]:
        """VMs that may be stopped to make room for ``svc``: up, idle long
        enough, nobody waiting on them."""
        now = self.reactor.seconds()
        return [s for s in self._services()
                if s is not svc and s.state in (State.READY, State.SUSPENDED) and s.name not in tried
                and not s.waiters and now - s.last_used() >= self.limits.evict_min_idle]

    async def make_room(self, svc: Service) -> bool:
        """True once ``svc`` fits, stopping idle VMs as needed; False if it
        cannot within its boot timeout."""
        if svc.spec.memory_mib > self.limits.memory_budget_mib:
            return False
        # Bounded like a boot: a victim whose destroy keeps failing (QEMU stuck
        # in the kernel) must not hold the waiters and a boot slot forever.
        give_up = self.reactor.seconds() + svc.spec.boot_timeout
        tried: set[str] = set()
        while not self.fits(svc):
            left = give_up - self.reactor.seconds()
            if left <= 0:
                return False
            victims = self.victims(svc, tried)
            if victims:
                victim = min(victims, key=Service.last_used)
                log.info("{service}: making room for {other} (idle {idle:.1f}s, least recently used)",
                         service=victim.name, other=svc.name,
                         idle=self.reactor.seconds() - victim.last_used())
                tried.add(victim.name)
                # when_fired: cancelling this boot must not cancel the victim's stop
                await when_fired(self._stop(victim, "capacity", "destroy"))
                continue
            stopping = self._stopping()
            if not stopping:
                return False
            # Room is being made already: wait for it rather than refuse.
            await first_of(self.reactor, defer.DeferredList(stopping, consumeErrors=True), left)
        return True
