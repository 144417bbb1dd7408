"""Image manifests (summoner.images) and the real guest images booted in QEMU.

The manifest tests are pure Python.  The boot tests build the images with the
shipped recipe (cached: seconds when already built, minutes for a first kernel
build) and boot them with plain QEMU under TCG, as summoner would, then talk
HTTP to them through a forwarded loopback port.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from summoner.images import (
    ImageBuildError,
    ImageManifest,
    ManifestError,
    build_image,
    discover_images,
    kernel_arch,
    load_manifest,
)
from summoner.rawqemu import RawVM, http_get

ROOT = Path(__file__).resolve().parent.parent
IMAGES = ROOT / "images"
SILENT = ROOT / "tests" / "images" / "silent" / "image.toml"
HELLO_ACPI = ROOT / "tests" / "images" / "hello-acpi" / "image.toml"
API = "/todo/api/v1.0/tasks"
# Generous: TCG on a shared 2-core CI machine; the manifests promise 10 s.
BOOT_DEADLINE_S = 30.0

GOOD = """\
name = "demo"
description = "test image"

[boot]
kind = "kernel"
kernel = "k/vmlinux"
initrd = "build/initrd.cpio.gz"
cmdline = "console=ttyS0 quiet"

[resources]
memory_mib = 128
vcpus = 2

[service]
port = 8081

[probe]
path = "/health"
expect_status = 204
interval_ms = 50
boot_timeout_s = 2.5
request_timeout_ms = 300

[network]
ip_config = "kernel-cmdline"

[reap]
idle_timeout_s = 60
stop_mode = "shutdown"
shutdown_grace_s = 1

[build]
recipe = "make -C images demo"
"""

MINIMAL_KERNEL = """\
name = "mini"
[boot]
kind = "kernel"
kernel = "vmlinux"
[service]
port = 80
"""

MINIMAL_DISK = """\
name = "disky"
[boot]
kind = "disk"
disk = "build/disk.qcow2"
format = "qcow2"
[service]
port = 80
"""


def write(tmp_path: Path, text: str, folder: str = "img") -> Path:
    path = tmp_path / folder / "image.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


# ---- manifests ------------------------------------------------------------------


def test_good_manifest_loads_with_absolute_paths(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD)
    m = load_manifest(path)
    assert m.name == "demo" and m.description == "test image"
    assert m.path == path.resolve() and m.directory == path.parent.resolve()
    assert m.boot.kind == "kernel" and m.boot.machine is None  # not named: the server's --machine decides
    assert m.boot.kernel == (path.parent / "k" / "vmlinux").resolve()
    assert m.boot.initrd == (path.parent / "build" / "initrd.cpio.gz").resolve()
    assert m.boot.cmdline == "console=ttyS0 quiet"
    assert (m.resources.memory_mib, m.resources.vcpus) == (128, 2)
    assert m.service.port == 8081
    assert (m.probe.path, m.probe.expect_status, m.probe.interval_ms) == ("/health", 204, 50)
    assert (m.probe.boot_timeout_s, m.probe.request_timeout_ms) == (2.5, 300)
    assert m.network.ip_config == "kernel-cmdline"
    assert (m.reap.idle_timeout_s, m.reap.stop_mode, m.reap.shutdown_grace_s) == (60.0, "shutdown", 1.0)
    assert m.build.recipe == "make -C images demo"


def test_defaults_fill_optional_keys(tmp_path: Path) -> None:
    m = load_manifest(write(tmp_path, MINIMAL_KERNEL))
    assert m.boot.initrd is None and m.boot.cmdline == "console=ttyS0 quiet panic=-1"
    assert (m.resources.memory_mib, m.resources.vcpus) == (64, 1)
    assert (m.probe.path, m.probe.expect_status, m.probe.boot_timeout_s) == ("/", 200, 10.0)
    assert (m.reap.stop_mode, m.reap.idle_timeout_s) == ("destroy", 300.0)
    assert m.network.ip_config == "kernel-cmdline"


def test_disk_manifest(tmp_path: Path) -> None:
    m = load_manifest(write(tmp_path, MINIMAL_DISK))
    assert m.boot.kind == "disk" and m.boot.format == "qcow2" and m.boot.kernel is None
    assert m.boot.disk == (tmp_path / "img" / "build" / "disk.qcow2").resolve()
    assert m.network.ip_config == "dhcp"  # a disk image has no kernel command line


@pytest.mark.parametrize("path", [IMAGES / "hello" / "image.toml", IMAGES / "tasks" / "image.toml", SILENT,
                                  HELLO_ACPI], ids=["hello", "tasks", "silent", "hello-acpi"])
def test_shipped_manifests_are_valid(path: Path) -> None:
    m = load_manifest(path)
    assert m.name == path.parent.name
    assert m.boot.kernel == (IMAGES / "kernel" / "build" / "vmlinux").resolve()
    assert m.service.port == 8080 and m.probe.path == "/"


def _replace(old: str, new: str, base: str = GOOD) -> str:
    assert old in base, old
    return base.replace(old, new, 1)


BROKEN = {
    "invalid toml": ("name = ", "invalid TOML"),
    "missing name": (_replace('name = "demo"\n', ""), "name: required key is missing"),
    "bad name": (_replace('name = "demo"', 'name = "Demo_1"'), "name: must be one DNS label"),
    "name not a string": (_replace('name = "demo"', "name = 3"), "name: expected str, got int 3"),
    "unknown top-level key": (_replace('[boot]', 'colour = "red"\n[boot]'), "colour: unknown key"),
    "boot not a table": (MINIMAL_KERNEL.replace('[boot]\nkind = "kernel"\nkernel = "vmlinux"\n', 'boot = 1\n'),
                         "boot: expected a table, got int"),
    "missing boot.kind": (_replace('kind = "kernel"\n', ""), "boot.kind: required key is missing"),
    "unknown boot.kind": (_replace('kind = "kernel"', 'kind = "iso"'), "boot.kind: must be one of kernel, disk"),
    "unknown machine": (_replace('kind = "kernel"', 'kind = "kernel"\nmachine = "isapc"'), "boot.machine: must be"),
    "kernel kind without kernel": (_replace('kernel = "k/vmlinux"\n', ""), "boot.kernel: required key is missing"),
    "empty kernel path": (_replace('kernel = "k/vmlinux"', 'kernel = " "'), "boot.kernel: must not be empty"),
    "disk key on kernel kind": (_replace('cmdline =', 'disk = "d"\ncmdline ='), 'boot.disk: only for kind = "disk"'),
    "disk kind without disk": (MINIMAL_DISK.replace('disk = "build/disk.qcow2"\n', ""), "boot.disk: required key"),
    "disk kind without format": (MINIMAL_DISK.replace('format = "qcow2"\n', ""), "boot.format: required key"),
    "bad disk format": (MINIMAL_DISK.replace('"qcow2"\n', '"vmdk"\n'), "boot.format: must be one of qcow2, raw"),
    "kernel key on disk kind": (MINIMAL_DISK.replace('format', 'kernel = "v"\nformat'),
                                'boot.kernel: only for kind = "kernel"'),
    "ip= in cmdline": (_replace('cmdline = "console=ttyS0 quiet"', 'cmdline = "quiet ip=dhcp"'),
                       "boot.cmdline: must not contain ip="),
    "memory as string": (_replace("memory_mib = 128", 'memory_mib = "128"'),
                         "resources.memory_mib: expected int, got str '128'"),
    "memory too small": (_replace("memory_mib = 128", "memory_mib = 8"), "resources.memory_mib: must be between"),
    "port as bool": (_replace("port = 8081", "port = true"), "service.port: expected int, got bool True"),
    "port out of range": (_replace("port = 8081", "port = 70000"), "service.port: must be between 1 and 65535"),
    "missing port": (_replace("port = 8081\n", ""), "service.port: required key is missing"),
    "relative probe path": (_replace('path = "/health"', 'path = "health"'), "probe.path: must start with '/'"),
    "zero boot timeout": (_replace("boot_timeout_s = 2.5", "boot_timeout_s = 0"), "boot_timeout_s: must be positive"),
    "status out of range": (_replace("expect_status = 204", "expect_status = 99"), "probe.expect_status: must be"),
    "unknown stop mode": (_replace('stop_mode = "shutdown"', 'stop_mode = "pause"'),
                          "reap.stop_mode: must be one of destroy, shutdown, suspend, snapshot; got 'pause'"),
    "negative grace": (_replace("shutdown_grace_s = 1", "shutdown_grace_s = -1"), "reap.shutdown_grace_s: must not be"),
    "typo in reap": (_replace("idle_timeout_s = 60", "idle_timeout = 60"), "reap.idle_timeout: unknown key (typo?)"),
    "unknown ip_config": (_replace('ip_config = "kernel-cmdline"', 'ip_config = "x"'), "network.ip_config: must be"),
    "cmdline network on disk": (MINIMAL_DISK + '[network]\nip_config = "kernel-cmdline"\n',
                                'network.ip_config: "kernel-cmdline" needs boot.kind = "kernel"'),
    "cmdline ipv6 on disk": (MINIMAL_DISK + '[network]\nip_config = "dhcp"\nipv6_config = "kernel-cmdline"\n',
                             'network.ipv6_config: "kernel-cmdline" needs boot.kind = "kernel"'),
    "unknown arch": (_replace('kind = "kernel"', 'kind = "kernel"\narch = "riscv64"'),
                     "boot.arch: must be one of x86_64, aarch64; got 'riscv64'"),
    "x86 machine for aarch64": (_replace('kind = "kernel"', 'kind = "kernel"\narch = "aarch64"\nmachine = "pc"'),
                                "boot.machine: must be one of virt; got 'pc'"),
}


@pytest.mark.parametrize("arch,kernel", [("aarch64", "kernel/build/vmlinux"), ("x86_64", "kernel/build-arm64/Image")])
def test_a_kernel_of_another_architecture_is_refused(tmp_path: Path, arch: str, kernel: str) -> None:
    """The kernel file's own header says what it is built for (an x86 ELF, an arm64 Image)."""
    other = "x86_64" if arch == "aarch64" else "aarch64"
    build_image("kernel" if other == "x86_64" else "kernel-arm64", IMAGES)
    text = _replace('kernel = "k/vmlinux"', f'kernel = "{IMAGES / kernel}"\narch = "{arch}"')
    path = write(tmp_path, text.replace('initrd = "build/initrd.cpio.gz"\n', ""))
    with pytest.raises(ManifestError) as info:
        load_manifest(path)
    assert str(info.value) == (f"{path}: boot.arch: {arch!r}, but {IMAGES / kernel} is an {other} kernel; set "
                               f"arch = {other!r} or point kernel at an {arch} build")


def test_the_shipped_kernels_are_recognised() -> None:
    build_image("kernel", IMAGES)
    build_image("kernel-arm64", IMAGES)
    assert kernel_arch(IMAGES / "kernel" / "build" / "vmlinux") == "x86_64"
    assert kernel_arch(IMAGES / "kernel" / "build-arm64" / "Image") == "aarch64"
    assert kernel_arch(IMAGES / "hello" / "image.toml") is None
    assert load_manifest(IMAGES / "hello-aarch64" / "image.toml").boot.machine == "virt"


@pytest.mark.parametrize("text,expected", BROKEN.values(), ids=BROKEN.keys())
def test_broken_manifest_gives_clear_error(tmp_path: Path, text: str, expected: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ManifestError) as info:
        load_manifest(path)
    message = str(info.value)
    assert message.startswith(f"{path}: "), message  # always names the file...
    assert expected in message, message  # ...and the key


def test_unreadable_manifest(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="cannot read"):
        load_manifest(tmp_path / "nope" / "image.toml")


def test_discover_skips_broken_and_duplicate_manifests(tmp_path: Path) -> None:
    write(tmp_path, GOOD, "a")
    write(tmp_path, "name = [", "b")
    write(tmp_path, GOOD, "c")  # same name as a
    write(tmp_path, MINIMAL_DISK, "d")
    (tmp_path / "not-an-image").mkdir()
    errors: list[ManifestError] = []
    found = discover_images(tmp_path, errors)
    assert sorted(found) == ["demo", "disky"]
    assert found["demo"].path == (tmp_path / "a" / "image.toml").resolve()
    assert len(errors) == 2
    assert "b/image.toml: invalid TOML" in str(errors[0])
    assert "'demo' is already used" in str(errors[1])


def test_discover_shipped_images() -> None:
    assert {"hello", "tasks"} <= set(discover_images(IMAGES))


def test_missing_artifacts(tmp_path: Path) -> None:
    m = load_manifest(write(tmp_path, GOOD))
    assert m.missing_artifacts() == [m.boot.kernel, m.boot.initrd]
    for artifact in m.artifacts():
        artifact.parent.mkdir(parents=True, exist_ok=True)
        artifact.write_bytes(b"x")
    assert m.missing_artifacts() == []


def test_config_hash_tracks_content_and_artifacts(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD)
    first = load_manifest(path).config_hash()
    assert first == load_manifest(path).config_hash()  # stable
    # Comments and layout are not content.
    path.write_text("# a comment\n" + GOOD.replace("vcpus = 2", "vcpus   =   2"))
    assert load_manifest(path).config_hash() == first
    path.write_text(GOOD.replace("vcpus = 2", "vcpus = 1"))
    changed = load_manifest(path).config_hash()
    assert changed != first
    # A rebuilt artifact (new size/mtime) changes the hash of the same manifest.
    m = load_manifest(path)
    assert m.boot.initrd is not None
    m.boot.initrd.parent.mkdir(parents=True)
    m.boot.initrd.write_bytes(b"old")
    built = m.config_hash()
    assert built != changed
    os.utime(m.boot.initrd, ns=(1, 1))
    assert m.config_hash() != built


def test_build_unknown_image_is_refused() -> None:
    with pytest.raises(ImageBuildError, match="unknown image 'nope'"):
        build_image("nope", IMAGES)


def image_build(*args: str) -> subprocess.CompletedProcess:
    import sys
    return subprocess.run([sys.executable, "-m", "summoner", "image", "build", *args, "--images", str(IMAGES)],
                          capture_output=True, text=True, timeout=900)


def test_image_build_arch_builds_the_image_for_that_architecture() -> None:
    done = image_build("hello", "--arch", "aarch64")
    assert done.returncode == 0, done.stderr
    # make ran the aarch64 recipe (the arm64 kernel), not hello's x86 one
    assert "./kernel/build.sh arm64" in done.stdout and "./kernel/build.sh\n" not in done.stdout
    assert kernel_arch(IMAGES / "kernel" / "build-arm64" / "Image") == "aarch64"
    assert (IMAGES / "hello-aarch64" / "build" / "initrd.cpio.gz").is_file()
    refused = image_build("silent", "--arch", "aarch64")
    assert refused.returncode == 1
    assert refused.stderr.strip() == (f"summoner image build: image 'silent' has no aarch64 build: neither silent "
                                      f"nor silent-aarch64 is an aarch64 image under {IMAGES}")


# ---- real images in QEMU ----------------------------------------------------------

needs_tools = pytest.mark.skipif(
    not all(shutil.which(tool) for tool in ("qemu-system-x86_64", "musl-gcc", "make"))
    or not Path("/usr/src/linux-source-6.1.tar.xz").exists(),
    reason="needs qemu-system-x86, musl-tools, make and linux-source-6.1 (scripts/install.sh)",
)


# The first boot test may build the kernel (minutes on 2 cores) inside its
# fixture, which pytest-timeout counts against that test.
boot_test = pytest.mark.timeout(1200)


@pytest.fixture(scope="session")
def built_images() -> None:
    # One build for the whole session; make's up-to-date checks and the
    # kernel's input hash make it a no-op when nothing changed.
    build_image("all", IMAGES)


def _boot(manifest: ImageManifest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RawVM]:
    console = tmp_path_factory.mktemp(manifest.name) / "console.log"
    with RawVM.start(manifest, serial_log=console) as vm:
        elapsed = vm.wait_ready(BOOT_DEADLINE_S)
        if elapsed is None:
            pytest.fail(f"{manifest.name} did not answer within {BOOT_DEADLINE_S} s\n"
                        f"console:\n{vm.console()[-3000:]}\nqemu: {vm.qemu_errors()}")
        print(f"{manifest.name}: first {manifest.probe.expect_status} after {elapsed:.2f} s")
        yield vm
    # Leaving the with block killed QEMU; make sure nothing outlived it.
    assert vm.process.poll() is not None


@pytest.fixture(scope="module")
def hello_vm(built_images: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RawVM]:
    yield from _boot(load_manifest(IMAGES / "hello" / "image.toml"), tmp_path_factory)


@pytest.fixture(scope="module")
def tasks_vm(built_images: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RawVM]:
    yield from _boot(load_manifest(IMAGES / "tasks" / "image.toml"), tmp_path_factory)


def get(vm: RawVM, path: str, method: str = "GET", body: bytes | None = None) -> tuple[int, bytes]:
    result = http_get(vm.host, vm.port, path, method=method, body=body, timeout=5)
    assert result is not None, f"no HTTP answer to {method} {path}"
    return result


def send_raw(vm: RawVM, data: bytes, read: bool = True) -> bytes:
    with socket.create_connection((vm.host, vm.port), timeout=5) as s:
        s.sendall(data)
        if not read:
            return b""
        chunks = []
        try:
            while chunk := s.recv(65536):
                chunks.append(chunk)
        except ConnectionResetError:
            pass
        return b"".join(chunks)


@pytest.mark.slow
@boot_test
@needs_tools
class TestHello:
    def test_root_answers_200(self, hello_vm: RawVM) -> None:
        assert get(hello_vm, "/") == (200, b"hello from summoner\n")

    def test_head_has_no_body(self, hello_vm: RawVM) -> None:
        response = send_raw(hello_vm, b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert response.startswith(b"HTTP/1.1 200")
        assert response.endswith(b"Content-Length: 20\r\nConnection: close\r\n\r\n")

    def test_other_paths_404(self, hello_vm: RawVM) -> None:
        assert get(hello_vm, "/missing")[0] == 404
        assert get(hello_vm, "/?q=1")[0] == 200  # the query string is not part of the path

    def test_survives_garbage(self, hello_vm: RawVM) -> None:
        junk = bytes(range(256)) * 40
        assert send_raw(hello_vm, junk).startswith(b"HTTP/1.1 4")  # answered, not crashed
        send_raw(hello_vm, b"\x00\xff\r\n\r\n")
        send_raw(hello_vm, b"GET / HTTP/1.1\r\nContent-Length: -1\r\n\r\n")
        send_raw(hello_vm, b"GET / HTTP/1.1\r\n", read=False)  # hang up mid-request
        assert send_raw(hello_vm, b"GET /" + b"a" * 5000 + b" HTTP/1.1\r\n\r\n").startswith(b"HTTP/1.1 414")
        assert get(hello_vm, "/") == (200, b"hello from summoner\n")

    def test_concurrent_clients(self, hello_vm: RawVM) -> None:
        with ThreadPoolExecutor(max_workers=16) as pool:
            results = list(pool.map(lambda _: get(hello_vm, "/"), range(96)))
        assert results == [(200, b"hello from summoner\n")] * 96

    def test_stalled_clients_do_not_block_others(self, hello_vm: RawVM) -> None:
        # Half-sent requests hold connections open; the single-threaded
        # server must still answer a new client promptly.
        stalled = [socket.create_connection((hello_vm.host, hello_vm.port), timeout=5) for _ in range(20)]
        try:
            for s in stalled:
                s.sendall(b"GET / HT")
            started = time.monotonic()
            assert get(hello_vm, "/")[0] == 200
            assert time.monotonic() - started < 2.0
        finally:
            for s in stalled:
                s.close()


@pytest.mark.slow
@boot_test
@needs_tools
class TestTasks:
    def test_probe_path(self, tasks_vm: RawVM) -> None:
        assert get(tasks_vm, "/")[0] == 200

    def test_round_trip(self, tasks_vm: RawVM) -> None:
        status, body = get(tasks_vm, API)
        assert status == 200
        listed = json.loads(body)["tasks"]
        # The thesis' sample data is there (unless another test deleted it).
        assert {"id", "title", "description", "done"} <= set(listed[0])

        new = {"title": 'Buy "milk" \\ ünïcödé 😀', "description": "line1\nline2\t\u0001"}
        status, body = get(tasks_vm, API, "POST", json.dumps(new).encode())
        assert status == 201, body
        task = json.loads(body)["task"]
        assert task["title"] == new["title"] and task["description"] == new["description"]
        assert task["done"] is False and task["uri"] == f"{API}/{task['id']}"

        status, body = get(tasks_vm, f"{API}/{task['id']}")
        assert status == 200 and json.loads(body) == {"task": task}
        assert task in json.loads(get(tasks_vm, API)[1])["tasks"]

        status, body = get(tasks_vm, f"{API}/{task['id']}", "DELETE")
        assert status == 200 and json.loads(body) == {"result": True}
        assert get(tasks_vm, f"{API}/{task['id']}")[0] == 404
        assert get(tasks_vm, f"{API}/{task['id']}", "DELETE")[0] == 404

    def test_done_flag_and_update(self, tasks_vm: RawVM) -> None:
        status, body = get(tasks_vm, API, "POST", b'{"title": "t", "done": true}')
        assert status == 201
        task = json.loads(body)["task"]
        assert task["done"] is True and task["description"] == ""
        status, body = get(tasks_vm, f"{API}/{task['id']}", "PUT", b'{"done": false, "title": "u"}')
        assert status == 200 and json.loads(body)["task"] | {"done": False} == task | {"done": False, "title": "u"}
        get(tasks_vm, f"{API}/{task['id']}", "DELETE")

    @pytest.mark.parametrize("body", [
        b"", b"{", b"not json", b"[]", b'{"title": 1}', b'{"description": "no title"}',
        b'{"title": "x",}', b'{"title": "x"} trailing', b'{"title": "\\ud800"}', b'{"title": "\xff"}',
        b'{"title": "x", "done": "yes"}', b"[" * 1000 + b"]" * 1000,
    ], ids=lambda b: repr(b[:20]))
    def test_bad_body_is_400(self, tasks_vm: RawVM, body: bytes) -> None:
        status, payload = get(tasks_vm, API, "POST", body)
        assert status == 400, payload
        assert "error" in json.loads(payload)

    def test_unknown_ids_404(self, tasks_vm: RawVM) -> None:
        for suffix in ("999999", "0", "-1", "abc", "1x", "99999999999999999999"):
            assert get(tasks_vm, f"{API}/{suffix}")[0] == 404, suffix
        assert get(tasks_vm, "/todo/api/v2.0/tasks")[0] == 404

    def test_body_limits(self, tasks_vm: RawVM) -> None:
        huge = json.dumps({"title": "x" * 20000}).encode()
        assert get(tasks_vm, API, "POST", huge)[0] == 413
        long_title = json.dumps({"title": "x" * 300}).encode()  # fits the body cap, not the field cap
        assert get(tasks_vm, API, "POST", long_title)[0] == 400

    def test_task_limit(self, tasks_vm: RawVM) -> None:
        created = []
        try:
            for _ in range(200):
                status, body = get(tasks_vm, API, "POST", b'{"title": "filler"}')
                if status != 201:
                    break
                created.append(json.loads(body)["task"]["id"])
            assert status == 507 and "limit" in json.loads(body)["error"]
            assert len(json.loads(get(tasks_vm, API)[1])["tasks"]) == 128
        finally:
            for task_id in created:
                get(tasks_vm, f"{API}/{task_id}", "DELETE")
        assert get(tasks_vm, API, "POST", b'{"title": "room again"}')[0] == 201

    def test_body_split_across_segments(self, tasks_vm: RawVM) -> None:
        body = json.dumps({"title": "slow", "description": "d" * 500}).encode()
        request = f"POST {API} HTTP/1.1\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body
        with socket.create_connection((tasks_vm.host, tasks_vm.port), timeout=5) as s:
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            for i in range(0, len(request), 100):
                s.sendall(request[i:i + 100])
                time.sleep(0.02)
            response = b""
            while chunk := s.recv(65536):
                response += chunk
        assert response.startswith(b"HTTP/1.1 201"), response[:200]
        task = json.loads(response.partition(b"\r\n\r\n")[2])["task"]
        get(tasks_vm, f"{API}/{task['id']}", "DELETE")

    def test_survives_garbage(self, tasks_vm: RawVM) -> None:
        # A TLS ClientHello-like start can never become HTTP: answered at once.
        assert send_raw(tasks_vm, b"\x16\x03\x01" + os.urandom(3000)).startswith(b"HTTP/1.1 400")
        send_raw(tasks_vm, b"POST " + API.encode() + b" HTTP/1.1\r\nContent-Length: 100\r\n\r\n{", read=False)
        send_raw(tasks_vm, b"POST " + API.encode() + b" HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
        assert get(tasks_vm, API)[0] == 200


@pytest.mark.slow
@boot_test
@needs_tools
def test_silent_image_never_answers(built_images: None, tmp_path: Path) -> None:
    manifest = load_manifest(SILENT)
    console = tmp_path / "console.log"
    with RawVM.start(manifest, serial_log=console) as vm:
        assert vm.wait_ready(deadline_s=6.0) is None
        # Still running: "never answers" must not be "crashed and exited".
        assert vm.process.poll() is None, vm.qemu_errors()
    assert "silent: booted" in console.read_text(errors="replace")


@pytest.mark.slow
@boot_test
@needs_tools
@pytest.mark.parametrize("path, powers_off", [(HELLO_ACPI, True), (IMAGES / "hello" / "image.toml", False)],
                         ids=["hello-acpi", "hello-acpi-off"])
def test_acpi_power_button(built_images: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, path: Path,
                           powers_off: bool) -> None:
    """QEMU's system_powerdown presses the ACPI power button, as libvirt's
    shutdown does: a guest with ACPI powers itself off at once; one booted
    with acpi=off (the shipped images) does not notice."""
    import summoner.rawqemu as rawqemu
    monitor = tmp_path / "monitor.sock"
    command = rawqemu.qemu_command
    monkeypatch.setattr(rawqemu, "qemu_command", lambda *a, **kw: command(*a, **kw) + [
        "-monitor", f"unix:{monitor},server,nowait"])
    console = tmp_path / "console.log"
    with RawVM.start(load_manifest(path), serial_log=console) as vm:
        assert vm.wait_ready(BOOT_DEADLINE_S) is not None, vm.console()[-3000:]
        with socket.socket(socket.AF_UNIX) as mon:
            mon.connect(str(monitor))
            mon.recv(4096)  # the monitor's banner
            mon.sendall(b"system_powerdown\n")
            pressed = time.monotonic()
            try:
                vm.process.wait(timeout=5 if powers_off else 3)
                took: float | None = time.monotonic() - pressed
            except subprocess.TimeoutExpired:
                took = None
    text = console.read_text(errors="replace")
    if powers_off:
        assert took is not None and took < 2.0, (took, text[-2000:])
        assert vm.process.returncode == 0  # QEMU ends because the guest powered off
        assert "power button: powering off" in text and "reboot: Power down" in text, text[-2000:]
    else:
        assert took is None, "an acpi=off guest powered off"
        assert "power button" not in text
