"""Where the time of one boot (or resume) went.

Query-to-ready is split into named phases, measured on every boot, logged on
the ready line and on every failure, and exported as
``summoner_vm_boot_phase_seconds{phase}``.  When a boot misses its deadline
the phase that used it up is named, so "libvirt took 44 s to start the
domain" is told apart from "the guest never answered its probe".

Tests: tests/vm/test_phases.py
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field

from summoner.vm import metrics


class Phase(enum.Enum):
    SLOT = "slot"          # waiting for a boot slot, the virt-type decision, room, libvirtd
    LIBVIRT = "libvirt"    # libvirt starting the domain (createXML, or resuming a standby)
    GUEST = "guest"        # the guest's own start, up to its first successful probe
    RESUME = "resume"      # resuming a suspended VM


# Why a boot missed its deadline, by the phase it was in at the time.
_OVERRAN = {
    Phase.SLOT: "the boot waited {s:.1f} s for its turn",
    Phase.LIBVIRT: "libvirt had not started the domain after {s:.1f} s",
    Phase.GUEST: "the guest had not answered its probe {s:.1f} s after its domain started",
    Phase.RESUME: "libvirt had not resumed the domain after {s:.1f} s",
}


@dataclass
class PhaseTimer:
    """Phases of one boot, entered in order; each ends when the next starts."""

    clock: Callable[[], float]
    durations: dict[Phase, float] = field(default_factory=dict)
    current: Phase | None = None
    since: float = 0.0

    def enter(self, phase: Phase) -> None:
        now = self.clock()
        self._close(now)
        self.current, self.since = phase, now

    def end(self) -> None:
        """Close the current phase and export every phase's duration."""
        self._close(self.clock())
        self.current = None
        for phase, seconds in self.durations.items():
            metrics.BOOT_PHASES.labels(phase.value).observe(seconds)

    def _close(self, now: float) -> None:
        if self.current is not None:
            self.durations[self.current] = self.durations.get(self.current, 0.0) + now - self.since

    def summary(self) -> str:
        """``slot 0 ms, libvirt 412 ms, guest 380 ms``."""
        return ", ".join(f"{p.value} {s * 1000:.0f} ms" for p, s in self.durations.items())

    def overran(self, deadline: float) -> str:
        """Why a boot missed its ``deadline`` (seconds): the phase it was in,
        and how long that phase had run."""
        phase = self.current or next(reversed(self.durations), Phase.GUEST)
        seconds = self.durations.get(phase, 0.0) + (self.clock() - self.since if self.current else 0.0)
        spent = f"; {self.summary()}" if self.durations else ""
        return _OVERRAN[phase].format(s=seconds) + f" (boot deadline {deadline:g} s{spent})"
