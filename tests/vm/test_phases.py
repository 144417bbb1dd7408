"""summoner.vm.phases: where a boot's time went, and which phase overran."""

from __future__ import annotations

from prometheus_client import REGISTRY

from summoner.vm.phases import Phase, PhaseTimer


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def phase_count(phase: str) -> float:
    return REGISTRY.get_sample_value("summoner_vm_boot_phase_seconds_count", {"phase": phase}) or 0.0


def test_each_phase_lasts_until_the_next_and_all_are_exported_at_the_end():
    clock = Clock()
    timer = PhaseTimer(clock)
    before = {p: phase_count(p) for p in ("slot", "libvirt", "guest")}
    timer.enter(Phase.SLOT)
    clock.now += 0.002
    timer.enter(Phase.LIBVIRT)
    clock.now += 0.412
    timer.enter(Phase.GUEST)
    clock.now += 0.380
    timer.end()
    assert timer.summary() == "slot 2 ms, libvirt 412 ms, guest 380 ms"
    assert {p: phase_count(p) - before[p] for p in before} == {"slot": 1, "libvirt": 1, "guest": 1}


def test_a_deadline_hit_in_the_libvirt_phase_names_libvirt():
    clock = Clock()
    timer = PhaseTimer(clock)
    timer.enter(Phase.SLOT)
    timer.enter(Phase.LIBVIRT)
    clock.now += 10.0
    why = timer.overran(10)
    assert why.startswith("libvirt had not started the domain after 10.0 s (boot deadline 10 s;"), why


def test_a_deadline_hit_in_the_guest_phase_names_the_guest_and_what_libvirt_took():
    clock = Clock()
    timer = PhaseTimer(clock)
    timer.enter(Phase.SLOT)
    timer.enter(Phase.LIBVIRT)
    clock.now += 0.5
    timer.enter(Phase.GUEST)
    clock.now += 9.5
    assert timer.overran(10) == ("the guest had not answered its probe 9.5 s after its domain started "
                                 "(boot deadline 10 s; slot 0 ms, libvirt 500 ms)")


def test_every_phase_is_exported_from_the_start():
    """Each phase's series exists before any boot (a dashboard shows 0, not "no data")."""
    for phase in Phase:
        assert REGISTRY.get_sample_value("summoner_vm_boot_phase_seconds_count", {"phase": phase.value}) is not None


def test_phases_entered_twice_add_up():
    clock = Clock()
    timer = PhaseTimer(clock)
    timer.enter(Phase.SLOT)
    clock.now += 0.1
    timer.enter(Phase.LIBVIRT)
    clock.now += 0.2
    timer.enter(Phase.SLOT)
    clock.now += 0.3
    timer.end()
    assert timer.summary() == "slot 400 ms, libvirt 200 ms"
    assert timer.current is None


def test_a_deadline_hit_after_the_end_names_the_last_phase():
    clock = Clock()
    timer = PhaseTimer(clock)
    timer.enter(Phase.RESUME)
    clock.now += 0.3
    timer.end()
    clock.now += 5
    assert timer.overran(1) == "libvirt had not resumed the domain after 0.3 s (boot deadline 1 s; resume 300 ms)"


def test_a_timer_never_started_blames_the_guest():
    assert PhaseTimer(Clock()).overran(3) == ("the guest had not answered its probe 0.0 s after its domain "
                                             "started (boot deadline 3 s)")
