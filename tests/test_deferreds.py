"""The VM part's Deferred combinators (summoner.vm.deferreds), on a task.Clock."""

from __future__ import annotations

from twisted.internet import defer, task

from summoner.deferreds import first_of, when_fired


def fired(d: defer.Deferred) -> list:
    out: list = []
    d.addBoth(out.append)
    return out


def test_first_of_is_true_when_the_deferred_fires_in_time_and_leaves_its_result_alone():
    clock = task.Clock()
    d: defer.Deferred = defer.Deferred()
    seen = fired(first_of(clock, d, 5.0))
    clock.advance(4.9)
    assert seen == []
    d.callback("result")
    assert seen == [True]
    assert fired(d) == ["result"]
    assert clock.getDelayedCalls() == []  # the timer went with it


def test_first_of_is_false_at_the_timeout_and_a_late_fire_changes_nothing():
    clock = task.Clock()
    d: defer.Deferred = defer.Deferred()
    seen = fired(first_of(clock, d, 2.0))
    clock.advance(2.0)
    assert seen == [False]
    d.callback(None)
    assert seen == [False]


def test_cancelling_first_of_cancels_its_timer_not_the_deferred():
    clock = task.Clock()
    d: defer.Deferred = defer.Deferred()
    waiting = first_of(clock, d, 2.0)
    waiting.addErrback(lambda f: f.trap(defer.CancelledError))
    waiting.cancel()
    assert clock.getDelayedCalls() == [] and not d.called


def test_when_fired_fires_on_success_and_failure_and_passes_the_result_on():
    ok: defer.Deferred = defer.Deferred()
    bad: defer.Deferred = defer.Deferred()
    seen_ok, seen_bad = fired(when_fired(ok)), fired(when_fired(bad))
    ok.callback(7)
    bad.errback(ValueError("x"))
    assert seen_ok == [None] and seen_bad == [None]
    assert fired(ok) == [7]
    failures = fired(bad)
    assert failures[0].check(ValueError)


def test_run_alone_returns_the_job_s_result():
    """In a process of its own: the reactor it starts cannot run again."""
    import subprocess
    import sys
    program = (
        "from twisted.internet import task, reactor\n"
        "from summoner.deferreds import run_alone\n"
        "async def job():\n"
        "    await task.deferLater(reactor, 0.01, lambda: None)\n"
        "    return 42\n"
        "print(run_alone(job))\n")
    out = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "42"


def test_run_alone_raises_what_the_job_raised():
    import subprocess
    import sys
    program = (
        "from summoner.deferreds import run_alone\n"
        "async def job():\n"
        "    raise ValueError('broken host')\n"
        "try:\n"
        "    run_alone(job)\n"
        "except ValueError as exc:\n"
        "    print('raised', exc)\n")
    out = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=30)
    assert out.stdout.strip() == "raised broken host", out.stdout + out.stderr
