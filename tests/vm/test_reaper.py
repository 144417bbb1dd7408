"""Idle reaping by DNS demand and guest traffic (summoner.vm.reaper),
against a fake libvirt whose "VMs" are local HTTP listeners, in the three
orders libvirt may deliver events in (tests/vm/fleetcase.py)."""

from __future__ import annotations

from twisted.internet import defer, task

from summoner.answer import Query
from summoner.vm.config import OnDemandConfig
from summoner.vm.lifecycle import Service, State
from summoner.vm.reaper import Reaper
from summoner.vm.spec import build_spec
from tests.vm.fakes import host, manifest
from tests.vm.fleetcase import FleetCase, event_orders, sleep


class ReaperTest(FleetCase):
    @defer.inlineCallbacks
    def test_idle_reap_then_reboot(self):
        od = self.make([host("hello", "127.0.0.47", "hello", idle=0.3)], {"hello": manifest("hello")})
        yield od.start()
        answer = yield od.stage.resolve(Query.of("hello.example.org", "A"))
        # Queries (on_hit) keep it alive past the idle timeout.
        for _ in range(5):
            yield sleep(0.1)
            answer.on_hit()
        self.assertEqual(self.svc("hello.example.org").state, State.READY)
        yield sleep(0.6)
        self.assertEqual(self.svc("hello.example.org").state, State.STOPPED)
        self.assertEqual(self.backend.domains, {})
        yield od.stage.resolve(Query.of("hello.example.org", "A"))
        self.assertEqual(self.backend.creates, 2)

    @defer.inlineCallbacks
    def test_guest_traffic_keeps_it_alive(self):
        od = self.make([host("hello", "127.0.0.48", "hello", idle=0.3)], {"hello": manifest("hello")})
        yield od.start()
        yield od.stage.resolve(Query.of("hello.example.org", "A"))
        dom = "summoner-hello.example.org"
        for i in range(8):  # counters change every tick: traffic, no DNS
            self.backend.traffic_tokens[dom] = (f"TCP[TIME_WAIT] {i}",)
            yield sleep(0.1)
        self.assertEqual(self.svc("hello.example.org").state, State.READY)
        self.backend.traffic_tokens[dom] = ()
        yield sleep(0.7)
        self.assertEqual(self.svc("hello.example.org").state, State.STOPPED)


ReaperTestEventsBefore, ReaperTestEventsAfter = event_orders(ReaperTest)


class _Traffic:
    """The part of the Backend the reaper reads: connected, and traffic tokens."""

    connected = True

    def __init__(self) -> None:
        self.tokens: dict[str, tuple] = {}

    def traffic(self, names: dict[str, str]) -> defer.Deferred:
        return defer.succeed({n: self.tokens[n] for n in names if n in self.tokens})


def _ready_service(clock: task.Clock, idle: float) -> Service:
    h = host("hello", "127.0.0.1", "hello", idle=idle)
    svc = Service(h, build_spec(h, manifest("hello"), OnDemandConfig()), clock.seconds)
    svc.begin_boot()
    svc.became_ready()
    return svc


def test_on_a_clock_demand_and_traffic_each_keep_a_vm_and_idleness_reaps_it():
    clock, traffic = task.Clock(), _Traffic()
    svc = _ready_service(clock, idle=10.0)
    stopped: list[tuple[str, str]] = []

    def stop(service: Service, reason: str) -> defer.Deferred:
        stopped.append((service.name, reason))
        return defer.succeed(True)
    reaper = Reaper(clock, traffic, lambda: [svc] if svc.state is State.READY else [], stop, "bridge", 1.0)
    reaper.start()
    domain = svc.spec.domain_name
    for second in range(1, 30):  # counters move every second: in use, no DNS at all
        traffic.tokens[domain] = (second, second, second, second)
        clock.advance(1)
    assert stopped == []
    clock.advance(5)  # counters still: idle for 5 s
    svc.hit()  # a DNS query (a cached replay)
    clock.advance(9)
    assert stopped == []  # 9 s since that query
    clock.advance(1)
    assert stopped == [("hello.example.org", "idle")]
    reaper.stop()
