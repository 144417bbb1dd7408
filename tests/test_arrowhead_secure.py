"""Secure mode: mutual TLS against the double's HTTPS listener, key material in
the forms Arrowhead ships, and the startup checks of the configuration."""

from __future__ import annotations

import argparse
import base64
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from dnslib import QTYPE, RCODE
from prometheus_client import REGISTRY
from twisted.internet import defer, reactor, task
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial import unittest

from summoner.answer import Query
from summoner.arrowhead import ArrowheadConfigError, add_cli_arguments, build, config_from_args
from tests.arrowhead_double import SUMMONER, DoubleProcess


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_cli_arguments(parser)
    return parser.parse_args(list(argv))


def secure_args(double: DoubleProcess, pki: Path, *extra: str) -> list[str]:
    return ["--arrowhead-orchestrator", double.https, "--arrowhead-registry", double.https,
            "--arrowhead-domain", "ah.test", "--arrowhead-deadline", "2", *extra]


def pem_args(pki: Path) -> list[str]:
    return ["--arrowhead-cert", str(pki / "summoner.pem"), "--arrowhead-key", str(pki / "summoner.key"),
            "--arrowhead-truststore", str(pki / "truststore.pem")]


def lookups(result: str) -> float:
    """summoner_arrowhead_lookups_total{result=...} of this process."""
    return REGISTRY.get_sample_value("summoner_arrowhead_lookups_total", {"result": result}) or 0.0


# DER-encoded OIDs of the PKCS#12 PBE algorithms of a legacy keystore
# (RFC 7292 appendix C): RC2-40 for the certificate bag, 3DES for the key bag.
PBE_SHA1_RC2_40 = bytes.fromhex("060a2a864886f70d010c0106")
PBE_SHA1_3DES = bytes.fromhex("060a2a864886f70d010c0103")


@defer.inlineCallbacks
def eventually(predicate, timeout: float = 10.0):
    waited = 0.0
    while not predicate():
        if waited > timeout:
            raise AssertionError("condition not reached in time")
        yield task.deferLater(reactor, 0.05, lambda: None)
        waited += 0.05


class SecureModeTest(unittest.TestCase):
    @pytest.fixture(autouse=True)
    def _double(self, arrowhead_double, arrowhead_pki, foreign_pki):
        self.double, self.pki, self.foreign = arrowhead_double, arrowhead_pki, foreign_pki
        # Before summoner's system exists: its rule is added once it registered.
        self.double.register_provider("temperature", "10.1.2.3", 8080, authorize=None)

    def setUp(self) -> None:
        self.lines: list[str] = []
        observer = lambda event: self.lines.append(formatEvent(event))  # noqa: E731
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)

    @defer.inlineCallbacks
    def resolve_with(self, *argv: str, double: DoubleProcess | None = None):
        """Start the Arrowhead part; once its system registered in ``double``
        (default: this test's), authorize it for temperature; then resolve."""
        arrowhead = build(config_from_args(parse(*argv)), reactor)
        self.addCleanup(arrowhead.stop)
        yield arrowhead.start()
        yield eventually(lambda: arrowhead.publisher.system_state != "pending")
        if arrowhead.publisher.system_state == "registered":
            (double or self.double).authorize(SUMMONER, ("provider", "10.1.2.3", 8080), "temperature")
        answer = yield defer.maybeDeferred(arrowhead.stage.resolve, Query.of("temperature.ah.test", "A"))
        return arrowhead, answer

    @defer.inlineCallbacks
    def test_pem_identity_resolves_and_registers_with_its_public_key(self):
        arrowhead, answer = yield self.resolve_with(*secure_args(self.double, self.pki), *pem_args(self.pki))
        assert answer.rcode == RCODE.NOERROR
        assert [str(rr.rdata) for rr in answer.answer if rr.rtype == QTYPE.A] == ["10.1.2.3"]
        systems = {s["systemName"]: s for s in self.double.control("state")["systems"]}
        certificate = x509.load_pem_x509_certificate((self.pki / "summoner.pem").read_bytes())
        expected = base64.b64encode(certificate.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)).decode()
        assert systems["summoner"]["authenticationInfo"] == expected
        assert arrowhead.status()["registry"]["connected"] is True

    @defer.inlineCallbacks
    def test_legacy_pkcs12_keystore_and_truststore_as_arrowhead_ships_them(self):
        # Written by the openssl tool: without a working one the PKI fixture
        # fails with openssl's error (an error, never a skip).
        keystore = self.pki / "summoner-legacy.p12"
        data = keystore.read_bytes()
        assert PBE_SHA1_RC2_40 in data and PBE_SHA1_3DES in data, "not a legacy RC2-40/3DES keystore"
        _, answer = yield self.resolve_with(
            *secure_args(self.double, self.pki), "--arrowhead-pkcs12", str(keystore),
            "--arrowhead-pkcs12-password", "123456", "--arrowhead-truststore", str(self.pki / "truststore.p12"))
        assert [str(rr.rdata) for rr in answer.answer] == ["10.1.2.3"]

    @defer.inlineCallbacks
    def test_hostname_is_checked_against_the_certificate_san(self):
        # The double's certificate names localhost and 127.0.0.1 (like Arrowhead's).
        args = secure_args(self.double, self.pki)
        args[1] = args[3] = f"https://localhost:{self.double.https_port}"
        _, answer = yield self.resolve_with(*args, *pem_args(self.pki))
        assert answer.rcode == RCODE.NOERROR

    def misnamed_double(self, names: tuple[str, ...] = ("orchestrator.invalid",)) -> tuple[DoubleProcess, Path]:
        """A double of this test's own cloud whose certificate names ``names``
        only (none: no subjectAltName at all), not the 127.0.0.1 or localhost
        summoner dials; and that cloud's PKI."""
        import shutil
        import tempfile

        from tests.arrowhead_double import pki
        directory = Path(tempfile.mkdtemp(prefix="misnamed-pki-"))
        self.addCleanup(shutil.rmtree, directory, True)
        misnamed_pki = pki.generate(directory, ["orchestrator", "summoner"], names=names)
        double = DoubleProcess(misnamed_pki).start()
        self.addCleanup(double.stop)
        double.register_provider("temperature", "10.1.2.3", 8080, authorize=None)
        return double, misnamed_pki

    @staticmethod
    def own_cloud_args(double: DoubleProcess, pki: Path, host: str = "127.0.0.1") -> list[str]:
        args = secure_args(double, pki, *pem_args(pki))
        args[1] = args[3] = f"https://{host}:{double.https_port}"
        return args

    @defer.inlineCallbacks
    def assert_refused_for_hostname(self, double: DoubleProcess, args: list[str], host: str, names: str):
        errors = lookups("error")
        del self.lines[:]
        _, answer = yield self.resolve_with(*args)
        assert answer.rcode == RCODE.SERVFAIL
        assert lookups("error") == errors + 1
        text = "\n".join(self.lines)
        assert (f"TLS: hostname mismatch: the certificate CN=orchestrator.testcloud.aitia.arrowhead.eu of "
                f"{host}:{double.https_port} is not valid for {host} ({names}); use a URL with a name the "
                f"certificate holds, issue the core system a certificate whose subjectAltName includes {host}, "
                "or pass --arrowhead-no-hostname-check (the chain of trust is still checked)") in text, text
        assert "TLS handshake failed" in text
        assert "not signed by a CA" not in text  # the chain itself was fine
        assert double.counters().get("orchestration", 0) == 0

    @defer.inlineCallbacks
    def test_a_server_certificate_for_another_host_is_refused_with_the_fix_in_the_log(self):
        double, pki = self.misnamed_double()
        for host in ("127.0.0.1", "localhost"):  # an IP-address and a DNS-name identity
            yield self.assert_refused_for_hostname(double, self.own_cloud_args(double, pki, host), host,
                                                   "its subjectAltName holds DNS:orchestrator.invalid")

    @defer.inlineCallbacks
    def test_a_server_certificate_without_subject_alt_name_is_refused_with_the_fix_in_the_log(self):
        double, pki = self.misnamed_double(names=())
        yield self.assert_refused_for_hostname(double, self.own_cloud_args(double, pki), "127.0.0.1",
                                               "it has no subjectAltName")

    @defer.inlineCallbacks
    def test_no_hostname_check_reaches_a_server_certificate_for_another_host(self):
        for names in (("orchestrator.invalid",), ()):
            double, pki = self.misnamed_double(names)
            answers = lookups("answer")
            del self.lines[:]
            _, answer = yield self.resolve_with(*self.own_cloud_args(double, pki), "--arrowhead-no-hostname-check",
                                                double=double)
            assert answer.rcode == RCODE.NOERROR, "\n".join(self.lines)
            assert [str(rr.rdata) for rr in answer.answer if rr.rtype == QTYPE.A] == ["10.1.2.3"]
            assert lookups("answer") == answers + 1
            assert double.counters()["orchestration"] == 1
            assert "hostname mismatch" not in "\n".join(self.lines)

    @defer.inlineCallbacks
    def test_no_hostname_check_still_checks_the_chain_of_trust(self):
        # The misnamed server that --arrowhead-no-hostname-check reaches above,
        # with a truststore of another cloud: its certificate is refused.
        double, pki = self.misnamed_double()
        args = [*secure_args(double, pki), "--arrowhead-cert", str(pki / "summoner.pem"),
                "--arrowhead-key", str(pki / "summoner.key"),
                "--arrowhead-truststore", str(self.foreign / "truststore.pem"), "--arrowhead-no-hostname-check"]
        errors = lookups("error")
        _, answer = yield self.resolve_with(*args)
        assert answer.rcode == RCODE.SERVFAIL
        assert lookups("error") == errors + 1
        text = "\n".join(self.lines)
        assert "TLS: rejecting certificate CN=testcloud.aitia.arrowhead.eu" in text, text
        assert "not signed by a CA in the truststore" in text
        assert double.counters().get("orchestration", 0) == 0

    @defer.inlineCallbacks
    def test_untrusted_server_is_refused_with_a_clear_log_line(self):
        args = secure_args(self.double, self.pki, "--arrowhead-cert", str(self.pki / "summoner.pem"),
                           "--arrowhead-key", str(self.pki / "summoner.key"),
                           "--arrowhead-truststore", str(self.foreign / "truststore.pem"))
        _, answer = yield self.resolve_with(*args)
        assert answer.rcode == RCODE.SERVFAIL
        text = "\n".join(self.lines)
        assert "TLS: rejecting certificate CN=testcloud.aitia.arrowhead.eu" in text
        assert "not signed by a CA in the truststore" in text
        assert "TLS handshake failed" in text
        assert self.double.counters().get("orchestration", 0) == 0

    @defer.inlineCallbacks
    def test_client_certificate_of_another_cloud_is_refused_by_the_server(self):
        args = secure_args(self.double, self.pki, "--arrowhead-cert", str(self.foreign / "summoner.pem"),
                           "--arrowhead-key", str(self.foreign / "summoner.key"),
                           "--arrowhead-truststore", str(self.pki / "truststore.pem"))
        _, answer = yield self.resolve_with(*args)
        assert answer.rcode == RCODE.SERVFAIL
        assert "the server refused our client certificate" in "\n".join(self.lines)
        assert self.double.counters().get("orchestration", 0) == 0


def test_system_name_comes_from_the_certificate(arrowhead_pki):
    config = config_from_args(parse("--arrowhead-orchestrator", "https://127.0.0.1:8441", *pem_args(arrowhead_pki)))
    assert config.system_name == "summoner" and config.secure


def test_system_name_that_contradicts_the_certificate_is_a_startup_error(arrowhead_pki):
    with pytest.raises(ArrowheadConfigError, match="does not match the client certificate"):
        config_from_args(parse("--arrowhead-orchestrator", "https://127.0.0.1:8441",
                               "--arrowhead-system-name", "consumer", *pem_args(arrowhead_pki)))


@pytest.mark.parametrize("argv, message", [
    (["--arrowhead-orchestrator", "https://h:1"], "needs --arrowhead-cert"),
    (["--arrowhead-orchestrator", "http://h:1", "--arrowhead-cert", "x.pem"], "drop the certificate flags"),
    (["--arrowhead-orchestrator", "http://h:1", "--arrowhead-registry", "https://h:2"], "both be http or both https"),
    (["--arrowhead-orchestrator", "http://h:1", "--arrowhead-system-name", "my_system"], "no underscores"),
    (["--arrowhead-orchestrator", "http://h:1", "--arrowhead-interface", "http-json"], "is not PROTOCOL"),
    (["--arrowhead-orchestrator", "http://h:1", "--arrowhead-map", "x.test", "colour=red"], "unknown key"),
])
def test_bad_configuration_is_refused_with_a_reason(argv, message):
    with pytest.raises(ArrowheadConfigError, match=message):
        config_from_args(parse(*argv))


def test_wrong_keystore_password_is_a_startup_error(arrowhead_pki):
    with pytest.raises(ArrowheadConfigError, match="cannot read PKCS#12 keystore"):
        config_from_args(parse("--arrowhead-orchestrator", "https://h:1", "--arrowhead-pkcs12",
                               str(arrowhead_pki / "summoner.p12"), "--arrowhead-pkcs12-password", "wrong",
                               "--arrowhead-truststore", str(arrowhead_pki / "truststore.pem")))


def test_arrowhead_is_off_without_urls():
    assert config_from_args(parse()) is None
