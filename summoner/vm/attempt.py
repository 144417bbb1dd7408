"""One boot or adoption in flight as libvirt's events see it, and the probe
that ends it.

Tests: tests/vm/test_boot.py
"""

from __future__ import annotations

from dataclasses import dataclass, field

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure

from summoner.vm.backend import DomainEvent
from summoner.vm.probe import Probe
from summoner.vm.spec import VMSpec


@dataclass
class Attempt:
    """One boot or adoption in flight, as libvirt's events see it."""

    creating: bool = False                 # createXML has not returned: the new UUID is unknown
    early: list[tuple[str, DomainEvent, str]] = field(default_factory=list)  # (uuid, event, detail) while creating
    aborted: str | None = None             # the domain died before the probe started
    probe: Probe | None = None

    def abort(self, why: str) -> None:
        if self.probe is not None:
            self.probe.cancel(why)
        else:
            self.aborted = why


def probe_for(reactor: IReactorTime, spec: VMSpec, deadline: float) -> Probe:
    return Probe(reactor, spec.address, spec.port, spec.probe_path, expect_status=spec.expect_status,
                 interval=spec.probe_interval, request_timeout=spec.request_timeout, deadline=deadline)


def run_probe(probe: Probe) -> defer.Deferred[int]:
    """``probe.run()``, cancellable: cancelling it cancels the probe and
    fails with ``CancelledError`` (not the probe's own ProbeCancelledError,
    which means the guest died)."""
    def cancel(d: defer.Deferred[int]) -> None:
        d.errback(defer.CancelledError())
        probe.cancel("boot cancelled")
    out: defer.Deferred[int] = defer.Deferred(cancel)

    def ended(result: int | Failure) -> None:
        if out.called:
            return  # cancelled first
        if isinstance(result, Failure):
            out.errback(result)
        else:
            out.callback(result)
    probe.run().addBoth(ended)
    return out
