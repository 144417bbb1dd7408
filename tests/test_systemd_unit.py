"""deploy/summoner.service passes systemd-analyze verify (systemd need not run).

systemd-analyze refuses units whose programs do not exist, so the unit is
checked as installed here: its /opt/summoner paths rewritten to this checkout.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import ROOT

UNIT = ROOT / "deploy" / "summoner.service"


def verify(text: str, tmp_path: Path) -> subprocess.CompletedProcess:
    if not shutil.which("systemd-analyze"):
        pytest.fail("systemd-analyze is missing: run scripts/install.sh")
    unit = tmp_path / "summoner.service"
    unit.write_text(text.replace("/opt/summoner", str(ROOT)))
    return subprocess.run(["systemd-analyze", "verify", "--man=no", str(unit)], capture_output=True, text=True,
                          timeout=60)


def test_the_unit_verifies(tmp_path):
    done = verify(UNIT.read_text(), tmp_path)
    assert done.returncode == 0 and "summoner.service" not in done.stdout + done.stderr, done.stderr


def test_verify_catches_a_broken_unit(tmp_path):
    done = verify(UNIT.read_text().replace("Restart=on-failure", "Restart=sometimes"), tmp_path)
    # systemd only warns about a bad value (and exits 0): the output is what tells
    assert "Failed to parse service restart specifier, ignoring: sometimes" in done.stderr, done.stderr


def test_the_unit_runs_serve_from_the_config_file_and_reloads_with_sighup():
    text = UNIT.read_text()
    assert "ExecStart=/opt/summoner/.venv/bin/summoner serve --config /etc/summoner/summoner.toml" in text
    assert "ExecReload=/bin/kill -HUP $MAINPID" in text and "After=network-online.target libvirtd.service" in text
