"""Former home of ``summoner doctor``, which now lives in the on-demand part
(``summoner.vm.doctor``): its checks are about summoning VMs.  These names
stay until ``summoner.vm.app`` imports ``summoner.vm.doctor`` itself; then
this module goes.

Tests: tests/test_doctor.py.
"""

from __future__ import annotations

from summoner.vm.doctor import (
    Finding,
    Level,
    Plan,
    add_doctor_command,
    can_open,
    diagnose,
    host_checks,
    run,
    run_doctor,
)

__all__ = ["Finding", "Level", "Plan", "add_doctor_command", "can_open", "diagnose", "host_checks", "run",
           "run_doctor"]
