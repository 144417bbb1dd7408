"""End to end: real DNS client → ``summoner serve`` → libvirtd → QEMU (TCG)
guests built from images/, probed over HTTP.  Marked ``vm``: they need
libvirtd (scripts/start-libvirt.sh) and take a couple of seconds per boot."""

from __future__ import annotations

import json
import subprocess
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import dns.rcode
import pytest

from tests.vm.conftest import URI, our_domains, restart_libvirtd

pytestmark = [pytest.mark.vm, pytest.mark.slow]


def addresses(reply) -> list[str]:
    return [item.address for rrset in reply.answer for item in rrset]


def http(method: str, url: str, body: dict | None = None) -> tuple[int, object]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method,
                                 headers={"Content-Type": "application/json"} if data else {})
    try:
        with urllib.request.urlopen(req, timeout=5) as reply:
            raw = reply.read()
            return reply.status, json.loads(raw) if raw.strip().startswith((b"{", b"[")) else raw
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def test_cold_query_boots_hello_and_http_works(od_server):
    server = od_server()
    started = time.monotonic()
    reply = server.query("hello.od.test", "A", timeout=20)
    elapsed = time.monotonic() - started
    assert reply.rcode() == dns.rcode.NOERROR
    assert addresses(reply) == ["127.0.0.20"]
    assert reply.answer[0].ttl == 10
    # The answer came only after the probe: the service answers at once.
    status, body = http("GET", "http://127.0.0.20:8080/")
    assert status == 200 and body
    assert server.status()["hello.od.test"]["state"] == "ready"
    assert server.metric("summoner_vm_boots_total", service="hello.od.test", result="success") == 1
    assert server.metric("summoner_vm_probe_attempts_total", result="ok") >= 1
    # Every phase of the boot was measured once, and the ready line tells them.
    for phase in ("slot", "libvirt", "guest"):
        assert server.metric("summoner_vm_boot_phase_seconds_count", phase=phase) == 1, phase
    libvirt_s = server.metric("summoner_vm_boot_phase_seconds_sum", phase="libvirt")
    guest_s = server.metric("summoner_vm_boot_phase_seconds_sum", phase="guest")
    assert 0 < libvirt_s < elapsed and 0 < guest_s < elapsed and libvirt_s + guest_s <= elapsed
    ready_line = next(line for line in server.log().splitlines() if "hello.od.test: ready in" in line)
    assert f"libvirt {libvirt_s * 1000:.0f} ms, guest {guest_s * 1000:.0f} ms" in ready_line, ready_line
    print(f"cold query-to-answer {elapsed:.2f}s")
    # Warm: from the answer cache, same speed as static data.
    started = time.monotonic()
    assert addresses(server.query("hello.od.test", "A")) == ["127.0.0.20"]
    assert time.monotonic() - started < 0.1
    # Other types of the host: NODATA with the SOA, no boot.
    nodata = server.query("hello.od.test", "MX")
    assert nodata.rcode() == dns.rcode.NOERROR and not nodata.answer and nodata.authority
    # The virsh view: our metadata is visible.
    xml = subprocess.run(["virsh", "-c", URI, "dumpxml", "summoner-hello.od.test"], capture_output=True,
                         text=True, check=True).stdout
    assert 'service="hello.od.test"' in xml and 'image="hello"' in xml


def test_tasks_round_trip_and_fifty_concurrent_queries_one_boot(od_server):
    server = od_server()
    reply = server.query("tasks.od.test", "A", timeout=20)
    base = f"http://{addresses(reply)[0]}:8080/todo/api/v1.0/tasks"
    status, created = http("POST", base, {"title": "summon", "description": "a unikernel"})
    assert status == 201, created
    task_id = created["task"]["id"]
    status, listing = http("GET", base)
    assert status == 200 and any(t["id"] == task_id for t in listing["tasks"])
    assert http("DELETE", f"{base}/{task_id}")[0] == 200
    assert http("GET", f"{base}/{task_id}")[0] == 404
    assert http("POST", base.replace("tasks", "tasks"), None)[0] in (400, 415)

    # 50 queries at once for a cold name: one boot, 50 answers.
    with ThreadPoolExecutor(50) as pool:
        replies = list(pool.map(lambda _: server.query("crowd.od.test", "A", timeout=20), range(50)))
    assert all(addresses(r) == ["127.0.0.22"] for r in replies)
    assert server.metric("summoner_vm_boots_total", service="crowd.od.test") == 1
    assert server.status()["crowd.od.test"]["boot_count"] == 1


def test_silent_image_servfails_within_deadline_then_backs_off(od_server):
    server = od_server()
    started = time.monotonic()
    reply = server.query("silent.od.test", "A", timeout=20)
    elapsed = time.monotonic() - started
    assert reply.rcode() == dns.rcode.SERVFAIL
    assert 2.5 < elapsed < 3.0 + 1.0, elapsed  # boot_timeout=3
    started = time.monotonic()
    assert server.query("silent.od.test", "A").rcode() == dns.rcode.SERVFAIL  # back-off: no second boot
    assert time.monotonic() - started < 0.2
    row = server.status()["silent.od.test"]
    assert row["state"] == "failed" and row["boot_count"] == 1 and row["retry_in"] > 0
    assert server.metric("summoner_vm_boots_total", service="silent.od.test", result="timeout") == 1
    assert server.metric("summoner_vm_boots_total", service="silent.od.test", result="backoff") == 1
    deadline = time.monotonic() + 10
    while "summoner-silent.od.test" in our_domains() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "summoner-silent.od.test" not in our_domains()  # destroyed
    log = server.wait_log("boot of image silent failed (timeout)")
    assert "last probe error" in log and "QEMU log" in log


def test_a_deadline_shorter_than_the_domain_start_is_blamed_on_libvirt(od_server):
    # libvirt takes 0.4-0.8 s to start a domain here; the deadline is 0.1 s.
    server = od_server(hello='"boot_timeout=0.1"')
    started = time.monotonic()
    reply = server.query("hello.od.test", "A", timeout=20)
    elapsed = time.monotonic() - started
    assert reply.rcode() == dns.rcode.SERVFAIL
    assert elapsed < 0.1 + 0.5, elapsed  # answered at the deadline, not when libvirt finished
    row = server.status()["hello.od.test"]
    assert row["last_error"].startswith("libvirt had not started the domain after 0.1 s (boot deadline 0.1 s"), row
    assert server.metric("summoner_vm_boots_total", service="hello.od.test", result="timeout") == 1
    assert server.metric("summoner_vm_boot_phase_seconds_count", phase="libvirt") == 1
    assert server.metric("summoner_vm_boot_phase_seconds_count", phase="guest") == 0
    # The domain that libvirt finished starting after the deadline is destroyed:
    # the failure is logged once that destroy (queued behind the start) is done.
    log = server.wait_log("boot of image hello failed (timeout)")
    assert "phases: slot " in log and "last probe error: None" not in log
    assert "summoner-hello.od.test" not in our_domains()


def test_idle_reap_reboots_and_suspend_resumes_fast(od_server):
    server = od_server(hello='"idle=2"', tasks='"idle=2" "stop=suspend"')
    assert addresses(server.query("hello.od.test", "A", timeout=20)) == ["127.0.0.20"]
    assert addresses(server.query("tasks.od.test", "A", timeout=20)) == ["127.0.0.21"]
    server.wait_state("hello.od.test", "stopped", timeout=15)
    server.wait_state("tasks.od.test", "suspended", timeout=15)
    assert server.metric("summoner_vm_reaps_total", reason="idle") >= 2
    # Reaped → the next query boots again.
    assert addresses(server.query("hello.od.test", "A", timeout=20)) == ["127.0.0.20"]
    assert server.status()["hello.od.test"]["boot_count"] == 2
    # Suspended → the next query resumes, in milliseconds, without a boot.
    started = time.monotonic()
    assert addresses(server.query("tasks.od.test", "A", timeout=20)) == ["127.0.0.21"]
    resume = time.monotonic() - started
    assert resume < 0.5, resume
    assert http("GET", "http://127.0.0.21:8080/todo/api/v1.0/tasks")[0] == 200
    assert server.status()["tasks.od.test"]["boot_count"] == 1
    print(f"resume query-to-answer {resume * 1000:.1f} ms")


def test_traffic_without_queries_keeps_a_vm_alive(od_server):
    server = od_server(hello='"idle=2"')
    server.query("hello.od.test", "A", timeout=20)
    for _ in range(8):  # 4 s of HTTP, no DNS
        assert http("GET", "http://127.0.0.20:8080/")[0] == 200
        time.sleep(0.5)
    assert server.status()["hello.od.test"]["state"] == "ready"
    server.wait_state("hello.od.test", "stopped", timeout=15)


def test_virsh_destroy_is_noticed(od_server):
    server = od_server()
    server.query("hello.od.test", "A", timeout=20)
    subprocess.run(["virsh", "-c", URI, "destroy", "summoner-hello.od.test"], check=True, capture_output=True)
    server.wait_state("hello.od.test", "stopped", timeout=10)
    assert "stopped outside summoner" in server.log()
    assert addresses(server.query("hello.od.test", "A", timeout=20)) == ["127.0.0.20"]
    assert server.status()["hello.od.test"]["boot_count"] == 2


def test_restart_readopts_without_booting(od_server):
    first = od_server()
    first.query("hello.od.test", "A", timeout=20)
    first.stop()
    assert "summoner-hello.od.test" in our_domains()  # VMs outlive summoner
    second = od_server()
    second.wait_state("hello.od.test", "ready", timeout=10)
    started = time.monotonic()
    assert addresses(second.query("hello.od.test", "A")) == ["127.0.0.20"]
    assert time.monotonic() - started < 0.5
    assert second.status()["hello.od.test"]["boot_count"] == 0
    assert second.metric("summoner_vm_boots_total") == 0
    assert "adopted running VM" in second.log()


def test_removed_service_is_stopped_on_reload(od_server):
    server = od_server()
    server.query("crowd.od.test", "A", timeout=20)
    zone = server.zones / "od.test.zone"
    zone.write_text("\n".join(line for line in zone.read_text().splitlines() if "crowd" not in line) + "\n")
    deadline = time.monotonic() + 15
    while "summoner-crowd.od.test" in our_domains() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert "summoner-crowd.od.test" not in our_domains()
    assert "crowd.od.test" not in server.status()


def test_libvirtd_restart_reconnects(od_server):
    server = od_server()
    server.query("hello.od.test", "A", timeout=20)
    restart_libvirtd()
    deadline = time.monotonic() + 20
    while server.metric("summoner_libvirt_reconnects_total") < 1 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert server.metric("summoner_libvirt_reconnects_total") >= 1
    assert addresses(server.query("hello.od.test", "A")) == ["127.0.0.20"]  # still serving, no reboot
    assert server.status()["hello.od.test"]["boot_count"] == 1
    # Events flow on the new connection: a destroy behind our back is noticed.
    subprocess.run(["virsh", "-c", URI, "destroy", "summoner-hello.od.test"], check=True, capture_output=True)
    server.wait_state("hello.od.test", "stopped", timeout=10)
    assert addresses(server.query("tasks.od.test", "A", timeout=20)) == ["127.0.0.21"]


def test_capacity_reaps_least_recently_used(od_server):
    server = od_server("--max-vms", "2", "--evict-min-idle", "0")
    server.query("hello.od.test", "A", timeout=20)
    server.query("tasks.od.test", "A", timeout=20)
    time.sleep(0.3)
    server.query("hello.od.test", "A")  # hello is now more recently used than tasks
    assert addresses(server.query("crowd.od.test", "A", timeout=20)) == ["127.0.0.22"]
    states = {name: row["state"] for name, row in server.status().items()}
    assert states["tasks.od.test"] == "stopped", states
    assert states["hello.od.test"] == "ready" and states["crowd.od.test"] == "ready"
    assert server.metric("summoner_vm_reaps_total", reason="capacity") == 1


def test_capacity_refusal(od_server):
    server = od_server("--max-vms", "1", "--evict-min-idle", "600")
    server.query("hello.od.test", "A", timeout=20)
    assert server.query("tasks.od.test", "A", timeout=20).rcode() == dns.rcode.SERVFAIL
    assert server.metric("summoner_vm_capacity_refusals_total") == 1


def test_admin_cli(od_server):
    import sys
    server = od_server()
    url = f"127.0.0.1:{server.admin_port}"
    run = [sys.executable, "-m", "summoner"]
    out = subprocess.run(run + ["summon", "hello", "--admin", url], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    out = subprocess.run(run + ["status", "--admin", url], capture_output=True, text=True, timeout=30)
    assert "hello.od.test" in out.stdout and "ready" in out.stdout
    out = subprocess.run(run + ["stop", "hello", "--admin", url], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert server.status()["hello.od.test"]["state"] == "stopped"
    out = subprocess.run(run + ["stop", "nope", "--admin", url], capture_output=True, text=True, timeout=30)
    assert out.returncode == 1 and "no on-demand service" in out.stderr


def test_bad_declaration_on_reload_keeps_the_last_good_zones(od_server):
    server = od_server()
    zone = server.zones / "od.test.zone"
    zone.write_text(zone.read_text().replace('"image=tasks"', '"image=tasks" "colour=blue"'))
    log = server.wait_log("zone reload rejected", timeout=10)
    assert "unknown key 'colour'" in log
    assert "od.test.zone:9:" in log
    assert set(server.status()) == {"hello.od.test", "tasks.od.test", "crowd.od.test", "silent.od.test"}


def test_standby_domain_serves_the_cold_query(od_server):
    server = od_server("--standby")
    deadline = time.monotonic() + 20
    while not server.status()["hello.od.test"]["standby"] and time.monotonic() < deadline:
        time.sleep(0.1)
    assert server.status()["hello.od.test"]["standby"]
    state = subprocess.run(["virsh", "-c", URI, "domstate", "summoner-hello.od.test"], capture_output=True,
                           text=True).stdout.strip()
    assert state == "paused"
    assert addresses(server.query("hello.od.test", "A", timeout=20)) == ["127.0.0.20"]
    assert http("GET", "http://127.0.0.20:8080/")[0] == 200
    row = server.status()["hello.od.test"]
    assert row["state"] == "ready" and row["boot_count"] == 1 and not row["standby"]


def domain_xml_of(name: str) -> str:
    return subprocess.run(["virsh", "-c", URI, "dumpxml", name], capture_output=True, text=True, check=True).stdout


def domain_identity(name: str) -> tuple[str, str]:
    """(uuid, summoner's configuration hash) of a running domain."""
    import re
    xml = domain_xml_of(name)
    return re.search(r"<uuid>([^<]+)</uuid>", xml).group(1), re.search(r' hash="([^"]+)"', xml).group(1)


def assert_replaced_not_adopted(server, old: tuple[str, str]) -> None:
    """A restarted summoner found the VM of a configuration that changed: it
    destroys it at start (no adoption, no boot), and the next query boots one
    of the new configuration."""
    deadline = time.monotonic() + 15
    while "summoner-hello.od.test" in our_domains() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "summoner-hello.od.test" not in our_domains(), server.log()[-3000:]
    row = server.status()["hello.od.test"]
    assert row["state"] == "stopped" and row["boot_count"] == 0, row
    assert server.metric("summoner_vm_reaps_total", reason="changed") == 1
    log = server.log()
    assert "summoner-hello.od.test (hello.od.test) is ours but its service is changed; destroying" in log
    assert "adopted running VM" not in log
    assert server.metric("summoner_vm_boots_total") == 0
    assert addresses(server.query("hello.od.test", "A", timeout=20)) == ["127.0.0.20"]
    assert server.status()["hello.od.test"]["boot_count"] == 1
    assert server.metric("summoner_vm_boots_total", service="hello.od.test", result="success") == 1
    uuid, config_hash = domain_identity("summoner-hello.od.test")
    assert uuid != old[0] and config_hash != old[1]


def test_restart_after_the_declaration_changed_replaces_the_vm(od_server):
    first = od_server()
    first.query("hello.od.test", "A", timeout=20)
    old = domain_identity("summoner-hello.od.test")
    first.stop()
    assert "summoner-hello.od.test" in our_domains()  # VMs outlive summoner
    second = od_server(hello='"memory=96"')  # the zone was edited while summoner was down
    assert_replaced_not_adopted(second, old)
    assert "<memory unit='KiB'>98304</memory>" in domain_xml_of("summoner-hello.od.test")


def test_restart_after_the_image_changed_replaces_the_vm(od_server, tmp_path):
    from tests.conftest import ROOT
    first = od_server()
    first.query("hello.od.test", "A", timeout=20)
    old = domain_identity("summoner-hello.od.test")
    first.stop()
    # The image's manifest was edited while summoner was down (a copy, found
    # before the shipped one; it boots the same built files).
    shipped = ROOT / "images" / "hello"
    changed = tmp_path / "images" / "hello"
    changed.mkdir(parents=True)
    text = (shipped / "image.toml").read_text()
    text = text.replace('"../kernel/build/vmlinux"', f'"{shipped.parent / "kernel" / "build" / "vmlinux"}"')
    text = text.replace('"build/initrd.cpio.gz"', f'"{shipped / "build" / "initrd.cpio.gz"}"')
    text = text.replace("request_timeout_ms = 500", "request_timeout_ms = 400")
    (changed / "image.toml").write_text(text)
    second = od_server(images_first=(str(changed.parent),))
    assert_replaced_not_adopted(second, old)


# hello-acpi keeps ACPI on and powers off on the power button; the shipped
# hello boots with acpi=off and ignores it.
SHUTDOWN_ZONE = """down   IN A 127.0.0.24
_summoner.down IN TXT "image=hello-acpi" "stop=shutdown" "idle=2"
"""


def stop_times(server, name: str, timeout: float = 30.0) -> tuple[float, float]:
    """Seconds from now until ``name`` is stopping, and from then until stopped."""
    started = time.monotonic()
    server.wait_state(name, "stopping", timeout=timeout)
    stopping = time.monotonic()
    server.wait_state(name, "stopped", timeout=timeout)
    return stopping - started, time.monotonic() - stopping


def test_shutdown_mode_a_guest_that_powers_off_and_one_that_ignores_the_button(od_server):
    server = od_server(hello='"stop=shutdown" "idle=2"', zone_extra=SHUTDOWN_ZONE)
    assert addresses(server.query("down.od.test", "A", timeout=20)) == ["127.0.0.24"]
    # idle 2 s, then the power button: the guest powers itself off well within
    # the grace (5 s); libvirt reports the domain stopped about 2 s later.
    _, stopping = stop_times(server, "down.od.test")
    assert stopping < 5.0, stopping
    log = server.log()
    assert "down.od.test: stopped by shutdown (idle" in log
    assert "down.od.test: no shutdown within" not in log  # no destroy fallback
    console = Path("/var/log/libvirt/qemu/summoner-down.od.test.console.log").read_text(errors="replace")
    assert "power button: powering off" in console and "reboot: Power down" in console, console[-2000:]
    # The documented fallback, honestly: hello (acpi=off) ignores the button and
    # is destroyed once the grace is over.
    assert addresses(server.query("hello.od.test", "A", timeout=20)) == ["127.0.0.20"]
    _, stopping = stop_times(server, "hello.od.test")
    assert 5.0 <= stopping < 5.0 + 3.0, stopping
    log = server.log()
    assert "hello.od.test: no shutdown within 5s; destroying" in log
    assert "hello.od.test: stopped by shutdown (idle" in log
    console = Path("/var/log/libvirt/qemu/summoner-hello.od.test.console.log").read_text(errors="replace")
    assert "power button" not in console
    assert server.metric("summoner_vm_reaps_total", reason="idle") == 2
