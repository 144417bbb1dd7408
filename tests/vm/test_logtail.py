"""The QEMU log and console tails of failure messages (summoner.vm.logtail)."""

from __future__ import annotations

from summoner.vm.logtail import tail_file


def test_tail_skips_old_runs_and_argv(tmp_path):
    log = tmp_path / "x.log"
    log.write_text("2026 starting up libvirt version: 9\nold failure\n"
                   "2026 starting up libvirt version: 9\nLC_ALL=C \\\n-kernel /k \\\n-m 64\nnew failure\n")
    assert tail_file(str(log), skip_argv=True) == "2026 starting up libvirt version: 9\nnew failure"
