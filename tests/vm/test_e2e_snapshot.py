"""Stop mode snapshot end to end: real DNS client → ``summoner serve`` →
libvirtd → QEMU (TCG), the ``tasks`` guest's own state across a save and a
restore.  Marked ``vm``."""

from __future__ import annotations

import subprocess
import sys
import time

import dns.rcode
import pytest

from tests.vm.conftest import our_domains
from tests.vm.test_e2e import addresses, http

pytestmark = [pytest.mark.vm, pytest.mark.slow]

TASKS = "tasks.od.test"
API = "http://127.0.0.21:8080/todo/api/v1.0/tasks"


def qemu_running(domain: str) -> bool:
    return subprocess.run(["pgrep", "-f", f"guest={domain}"], capture_output=True).returncode == 0


def stop(server, name: str, *mode: str) -> None:
    out = subprocess.run([sys.executable, "-m", "summoner", "stop", name, *mode, "--admin",
                          f"127.0.0.1:{server.admin_port}"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


def test_a_task_posted_before_the_reap_is_listed_after_the_restore(od_server):
    server = od_server(tasks='"stop=snapshot" "idle=3"')
    assert addresses(server.query(TASKS, "A", timeout=20)) == ["127.0.0.21"]
    status, created = http("POST", API, {"title": "survive", "description": "a snapshot"})
    assert status == 201, created
    server.wait_state(TASKS, "stopped", timeout=30)  # reaped: by its stop mode, snapshot
    assert "summoner-tasks.od.test" not in our_domains() and not qemu_running("summoner-tasks.od.test")
    [saved] = list((server.zones.parent / "state").glob("*.save"))
    row = server.status()[TASKS]
    assert row["snapshot_bytes"] == saved.stat().st_size > 1_000_000, row
    assert server.metric("summoner_vm_snapshots", kind="stopped") == 1
    assert server.metric("summoner_vm_snapshots", kind="golden") == 1  # tasks has snapshot_boot = true
    started = time.monotonic()
    assert addresses(server.query(TASKS, "A", timeout=20)) == ["127.0.0.21"]
    restore_s = time.monotonic() - started
    status, listing = http("GET", API)
    assert status == 200 and any(t["id"] == created["task"]["id"] for t in listing["tasks"]), listing
    assert server.metric("summoner_vm_query_to_ready_seconds_count", kind="restore") == 1
    assert "restored from its snapshot" in server.log()
    assert not saved.exists() and server.metric("summoner_vm_snapshots", kind="stopped") == 0
    print(f"restore query-to-answer {restore_s:.2f}s")


def test_a_truncated_snapshot_still_gets_an_answer_and_is_removed(od_server):
    server = od_server()
    assert addresses(server.query("hello.od.test", "A", timeout=20)) == ["127.0.0.20"]
    stop(server, "hello", "--mode", "snapshot")
    [saved] = list((server.zones.parent / "state").glob("*.save"))
    with saved.open("r+b") as f:
        f.truncate(4096)
    reply = server.query("hello.od.test", "A", timeout=30)
    assert reply.rcode() == dns.rcode.NOERROR and addresses(reply) == ["127.0.0.20"]
    assert not saved.exists()
    log = server.log()
    assert "cannot restore its snapshot" in log and "removing it and booting afresh" in log, log[-2000:]
    assert http("GET", "http://127.0.0.20:8080/")[0] == 200


def test_a_restarted_summoner_restores_instead_of_booting(od_server, tmp_path):
    state = str(tmp_path / "shared-state")
    first = od_server("--state-dir", state, tasks='"stop=snapshot"')
    first.query(TASKS, "A", timeout=20)
    status, created = http("POST", API, {"title": "across restarts"})
    assert status == 201, created
    stop(first, "tasks")
    first.stop()
    second = od_server("--state-dir", state, tasks='"stop=snapshot"')
    assert addresses(second.query(TASKS, "A", timeout=20)) == ["127.0.0.21"]
    status, listing = http("GET", API)
    assert any(t["id"] == created["task"]["id"] for t in listing["tasks"]), listing
    assert second.metric("summoner_vm_query_to_ready_seconds_count", kind="restore") == 1
