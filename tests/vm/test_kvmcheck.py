"""summoner.vm.kvmcheck without libvirt: the verdict file, and the check's
decision from a backend double whose "domain" is an HTTP server on the port
the check forwards (the port is read from the domain XML it was given)."""

from __future__ import annotations

import re
import shutil
import tempfile
from pathlib import Path

from twisted.internet import defer, reactor
from twisted.trial import unittest
from twisted.web import resource, server

from summoner.vm import kvmcheck
from summoner.vm.backend import BackendError, DomainEvent
from summoner.vm.kvmcheck import KvmBootCheck, KvmVerdict, read_verdict, write_verdict
from summoner.vm.spec import VMSpec

SPEC = VMSpec(
    service="hello.example.org", domain_name="summoner-hello.example.org", image="hello",
    boot_kind="kernel", kernel=Path("/images/hello/vmlinux"), initrd=None, cmdline="console=ttyS0",
    disk=None, disk_format="qcow2", memory_mib=64, vcpus=1, address="127.0.0.10", port=8080,
    probe_path="/", expect_status=200, probe_interval=0.02, request_timeout=0.1,
    boot_timeout=2.0, idle_timeout=300.0, stop_mode="destroy", shutdown_grace=1.0, config_hash="abc",
)

# -- the verdict file -------------------------------------------------------------


def test_a_verdict_round_trips_through_its_file(tmp_path):
    path = tmp_path / "run" / "kvm-boot-check"
    write_verdict(KvmVerdict(False, "probe timed out"), path)
    assert path.read_text() == "qemu probe timed out\n"
    assert read_verdict(path) == KvmVerdict(False, "probe timed out", cached=True)
    write_verdict(KvmVerdict(True, "ok"), path)
    assert read_verdict(path) == KvmVerdict(True, "ok", cached=True)


def test_a_missing_or_foreign_file_is_no_verdict(tmp_path):
    path = tmp_path / "verdict"
    assert read_verdict(path) is None
    path.write_text("maybe later\n")
    assert read_verdict(path) is None
    path.write_text("kvm\n")
    assert read_verdict(path) == KvmVerdict(True, "kvm", cached=True)  # a bare word is its own why


def test_an_unwritable_cache_is_only_a_warning(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    write_verdict(KvmVerdict(True, "ok"), blocker / "sub" / "verdict")  # parent is a file: OSError
    assert not (blocker / "sub").exists()


def test_the_default_path_is_read_at_each_use(tmp_path, monkeypatch):
    monkeypatch.setattr(kvmcheck, "VERDICT_PATH", tmp_path / "v")
    write_verdict(KvmVerdict(True, "ok"))
    assert read_verdict() == KvmVerdict(True, "ok", cached=True)


# -- the check, against a backend double ------------------------------------------


class _Ok(resource.Resource):
    isLeaf = True  # noqa: N815 (Twisted's name)

    def render_GET(self, request):  # noqa: N802
        return b"ok"


class Backend:
    """The part of ``summoner.vm.backend.Backend`` the check uses.
    create() "boots" the check domain: with ``serve``, an HTTP server on
    the host port of the XML's hostfwd."""

    def __init__(self, serve: bool = True, fail_create: str | None = None) -> None:
        self.serve = serve
        self.fail_create = fail_create
        self.calls: list[tuple[str, str]] = []
        self.xml = ""
        self.listening: list = []

    def create(self, name, xml, *, paused=False, autodestroy=False):
        self.calls.append(("create", str(autodestroy)))
        assert f"<name>{name}</name>" in xml
        self.xml = xml
        if self.fail_create:
            return defer.fail(BackendError(self.fail_create))
        if self.serve:
            port = int(re.search(r"hostfwd=tcp:127\.0\.0\.1:(\d+)-:8080", xml).group(1))
            site = server.Site(_Ok())
            site.noisy = False
            self.listening.append(reactor.listenTCP(port, site, interface="127.0.0.1"))
        return defer.succeed("uuid-1")

    def destroy(self, name, uuid=None):
        self.calls.append(("destroy", name))
        for port in self.listening:
            port.stopListening()
        self.listening = []
        return defer.succeed(True)

    def logs(self, domain_name, lines=15):
        return defer.succeed(("qemu: starting\nKVM internal error. Suberror: 1\n", "console"))


class KvmBootCheckTest(unittest.TestCase):
    timeout = 5

    def check(self, backend: Backend) -> tuple[KvmBootCheck, Path]:
        directory = Path(tempfile.mkdtemp(prefix="kvmcheck-"))  # not trial's mktemp: that writes under cwd
        self.addCleanup(shutil.rmtree, directory, True)
        path = directory / "verdict"
        return KvmBootCheck(reactor, backend, "summoner-", verdict_path=path), path

    @defer.inlineCallbacks
    def test_a_guest_that_answers_is_usable_and_cached(self):
        backend = Backend()
        check, path = self.check(backend)
        verdict = yield defer.ensureDeferred(check.verdict(SPEC, 1.0))
        self.assertEqual(verdict, KvmVerdict(True, "ok"))
        self.assertEqual(path.read_text(), "kvm ok\n")
        # the check domain: its own name, kvm, autodestroy, destroyed before and after
        self.assertIn('type="kvm"', backend.xml)
        self.assertIn("<name>summoner-kvm-boot-check</name>", backend.xml)
        self.assertEqual(backend.calls, [("destroy", "summoner-kvm-boot-check"), ("create", "True"),
                                         ("destroy", "summoner-kvm-boot-check")])

    @defer.inlineCallbacks
    def test_a_cached_verdict_boots_nothing(self):
        backend = Backend()
        check, path = self.check(backend)
        write_verdict(KvmVerdict(False, "probe timed out"), path)
        verdict = yield defer.ensureDeferred(check.verdict(SPEC, 1.0))
        self.assertEqual(verdict, KvmVerdict(False, f"probe timed out (cached in {path})", cached=True))
        self.assertEqual(backend.calls, [])

    @defer.inlineCallbacks
    def test_a_guest_that_never_answers_is_a_conclusive_no(self):
        backend = Backend(serve=False)
        check, path = self.check(backend)
        verdict = yield defer.ensureDeferred(check.verdict(SPEC, 0.2))
        self.assertFalse(verdict.usable)
        self.assertTrue(verdict.conclusive)
        self.assertIn("did not succeed in time", verdict.why)
        self.assertIn("last probe error: connect failed", verdict.why)
        self.assertTrue(verdict.why.endswith("QEMU: KVM internal error. Suberror: 1"), verdict.why)
        self.assertTrue(path.read_text().startswith("qemu probe of http://127.0.0.1:"))

    @defer.inlineCallbacks
    def test_a_libvirt_error_proves_nothing_and_is_not_cached(self):
        check, path = self.check(Backend(fail_create="libvirtd restarting"))
        verdict = yield defer.ensureDeferred(check.verdict(SPEC, 1.0))
        self.assertEqual(verdict, KvmVerdict(False, "libvirt: libvirtd restarting", conclusive=False))
        self.assertFalse(path.exists())

    @defer.inlineCallbacks
    def test_a_crashed_check_domain_ends_the_check_at_once(self):
        check, path = self.check(Backend(serve=False))
        started = reactor.seconds()
        d = defer.ensureDeferred(check.verdict(SPEC, 3.0))
        reactor.callLater(0.05, check.on_event, DomainEvent.CRASHED, "panicked")
        verdict = yield d
        self.assertLess(reactor.seconds() - started, 1.0)
        self.assertFalse(verdict.usable)
        self.assertFalse(verdict.conclusive)
        self.assertTrue(verdict.why.startswith("check domain crashed (panicked); last probe error:"), verdict.why)
        self.assertFalse(path.exists())

    def test_events_without_a_check_running_are_ignored(self):
        check, _path = self.check(Backend())
        check.on_event(DomainEvent.CRASHED, "x")
