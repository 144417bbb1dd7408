"""One service's states and named transitions (summoner.vm.lifecycle), on a
``task.Clock``: no libvirt, no sleeps."""

from __future__ import annotations

import pytest
from twisted.internet import defer, task

from summoner.vm.config import OnDemandConfig
from summoner.vm.lifecycle import Service, State, TransitionError
from summoner.vm.spec import build_spec
from tests.vm.fakes import host, manifest


def service(clock: task.Clock, seen: list | None = None) -> Service:
    h = host("hello", "127.0.0.1", "hello")
    observer = (lambda svc, previous: seen.append((previous, svc.state))) if seen is not None else None
    svc = Service(h, build_spec(h, manifest("hello"), OnDemandConfig()), clock.seconds)
    if observer is not None:
        svc.observer = observer
    return svc


def results(waiters: list[defer.Deferred]) -> list:
    out = []
    for d in waiters:
        d.addBoth(out.append)
    return out


def test_a_boot_answers_every_waiter_once_ready_and_says_how_long_the_first_waited():
    clock = task.Clock()
    seen: list = []
    svc = service(clock, seen)
    first = svc.wait()
    clock.advance(0.3)
    second = svc.wait()
    svc.begin_boot()
    assert not first.called and svc.state is State.BOOTING
    clock.advance(0.2)
    assert svc.waited() == pytest.approx(0.5)  # the first query's wait, for the metric
    svc.became_ready()
    assert svc.waited() is None
    assert results([first, second]) == [True, True]
    assert svc.waiters == [] and svc.started_at == 0.5 and svc.last_used() == 0.5
    assert seen == [(State.STOPPED, State.BOOTING), (State.BOOTING, State.READY)]


def test_a_failure_answers_false_and_sets_the_back_off():
    clock = task.Clock()
    svc = service(clock)
    waiter = svc.wait()
    svc.begin_boot()
    clock.advance(1)
    svc.failed("probe timed out", retry_after=5)
    assert results([waiter]) == [False]
    assert (svc.state, svc.failures, svc.last_error) == (State.FAILED, 1, "probe timed out")
    assert svc.in_backoff(clock.seconds())
    clock.advance(4.9)
    assert svc.in_backoff(clock.seconds())
    clock.advance(0.2)
    assert not svc.in_backoff(clock.seconds())
    svc.begin_boot()  # a failed service boots again after its back-off
    svc.became_ready()
    assert (svc.failures, svc.retry_at, svc.last_error) == (0, 0.0, None)


def test_a_refusal_has_no_back_off():
    svc = service(task.Clock())
    waiter = svc.wait()
    svc.begin_boot()
    svc.refused("no capacity")
    assert results([waiter]) == [False]
    assert svc.state is State.STOPPED and not svc.in_backoff(0.0) and svc.failures == 0


def test_transitions_from_the_wrong_state_are_bugs_not_silent():
    svc = service(task.Clock())
    with pytest.raises(TransitionError, match="became_ready from stopped"):
        svc.became_ready()
    with pytest.raises(TransitionError, match="begin_stop from stopped"):
        svc.begin_stop("idle")
    svc.begin_boot()
    with pytest.raises(TransitionError, match="begin_boot from booting"):
        svc.begin_boot()


def test_a_cached_answer_holds_only_while_ready_and_every_hit_counts_as_demand():
    clock = task.Clock()
    svc = service(clock)
    svc.begin_boot()
    svc.became_ready()
    clock.advance(7)
    assert svc.hit() is True and svc.last_demand == 7
    svc.begin_stop("idle")
    clock.advance(1)
    assert svc.hit() is False and svc.last_demand == 8
    svc.stopped_as(State.STOPPED)
    assert svc.hit() is False and svc.started_at is None


def test_suspend_keeps_memory_and_uptime_and_resume_is_not_a_boot():
    clock = task.Clock()
    svc = service(clock)
    svc.begin_boot()
    svc.became_ready()
    svc.boot_count = 1
    clock.advance(10)
    svc.begin_stop("idle")
    svc.stopped_as(State.SUSPENDED)
    assert svc.holds_resources() and svc.is_up()
    clock.advance(5)
    svc.begin_resume()
    assert svc.holds_resources()  # still in memory while resuming
    svc.became_ready(counted_boot=False)
    assert svc.started_at == 0 and svc.state is State.READY


def test_a_stop_that_leaves_the_vm_running_answers_who_queried_meanwhile():
    svc = service(task.Clock())
    svc.begin_boot()
    svc.became_ready()
    svc.begin_stop("admin")
    waiter = svc.wait()
    svc.stopped_as(State.READY)
    assert results([waiter]) == [True]


def test_retire_cancels_the_work_in_flight_and_answers_the_waiters():
    svc = service(task.Clock())
    cancelled: list = []
    work: defer.Deferred = defer.Deferred(lambda d: cancelled.append(True))
    work.addErrback(lambda f: f.trap(defer.CancelledError))
    svc.task = work
    waiter = svc.wait()
    svc.begin_boot()
    svc.reserve()
    assert svc.holds_resources()
    assert svc.retire() is True  # a VM may exist: the caller destroys it
    assert cancelled == [True] and results([waiter]) == [False]
    assert svc.retired and svc.state is State.STOPPED and not svc.holds_resources() and svc.task is None


def test_vanished_outside_summoner_counts_as_an_external_reap():
    from prometheus_client import REGISTRY
    svc = service(task.Clock())
    svc.begin_boot()
    svc.became_ready()
    before = REGISTRY.get_sample_value("summoner_vm_reaps_total", {"reason": "external"}) or 0.0
    svc.vanished()
    assert svc.state is State.STOPPED and svc.started_at is None
    assert REGISTRY.get_sample_value("summoner_vm_reaps_total", {"reason": "external"}) == before + 1
