"""Mutual TLS for the Arrowhead core systems: summoner's key material (PEM
pair or PKCS#12 keystore, and a truststore) and Twisted's HTTPS policy built
from it: the chain is always checked, the host name unless switched off, and
every refusal is logged in words an operator can act on.

TLS is configured from in-memory key material, so a PKCS#12 keystore never
has to be unpacked into a temporary PEM file holding a private key.

Tests: tests/test_arrowhead_secure.py.
"""

from __future__ import annotations

import base64
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import NameOID
from OpenSSL import SSL, crypto
from service_identity import CertificateError, VerificationError
from service_identity.hazmat import DNS_ID, IPAddress_ID, verify_service_identity
from service_identity.pyopenssl import extract_patterns
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
from twisted.logger import Logger
from twisted.web.iweb import IPolicyForHTTPS
from zope.interface import implementer

log = Logger(namespace="summoner.arrowhead")

# X509_V_ERR_* codes worth a human explanation in the log.
_VERIFY_ERRORS = {
    2: "unable to get issuer certificate",
    9: "certificate is not yet valid",
    10: "certificate has expired",
    18: "self-signed certificate",
    19: "self-signed certificate in chain",
    20: "unable to get local issuer certificate (not signed by a CA in the truststore)",
    21: "unable to verify the first certificate",
}


class TLSConfigError(ValueError):
    """Key material that cannot be used; the message is meant for the operator."""


@dataclass(frozen=True)
class TLSMaterial:
    """summoner's client identity and the trust anchors for the core systems."""

    key: PrivateKeyTypes
    certificate: x509.Certificate
    chain: tuple[x509.Certificate, ...]
    trusted: tuple[x509.Certificate, ...]
    check_hostname: bool = True

    @property
    def common_name(self) -> str:
        names = self.certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        return str(names[0].value) if names else ""

    @property
    def system_name(self) -> str:
        """Arrowhead's rule: the system name is the first CN label."""
        return self.common_name.split(".", 1)[0]

    @property
    def authentication_info(self) -> str:
        """Base64 of the DER SubjectPublicKeyInfo, as Java's ``getEncoded()``."""
        der = self.certificate.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        return base64.b64encode(der).decode("ascii")


def load_tls(*, cert: str | None = None, key: str | None = None, pkcs12_path: str | None = None,
             password: str | None = None, truststore: str | None = None,
             truststore_password: str | None = None, check_hostname: bool = True) -> TLSMaterial:
    """Load a PEM pair or a PKCS#12 keystore (legacy RC2/3DES encryption too),
    and a truststore (PEM bundle or PKCS#12)."""
    secret = password.encode() if password is not None else None
    if pkcs12_path:
        if cert or key:
            raise TLSConfigError("give either --arrowhead-pkcs12 or --arrowhead-cert/--arrowhead-key, not both")
        try:
            private_key, certificate, extra = pkcs12.load_key_and_certificates(
                Path(pkcs12_path).read_bytes(), secret)
        except (OSError, ValueError) as exc:
            raise TLSConfigError(f"cannot read PKCS#12 keystore {pkcs12_path}: {exc}") from exc
        if private_key is None or certificate is None:
            raise TLSConfigError(f"PKCS#12 keystore {pkcs12_path} holds no key and certificate")
        chain = tuple(extra)
    elif cert and key:
        try:
            certs = x509.load_pem_x509_certificates(Path(cert).read_bytes())
            private_key = serialization.load_pem_private_key(Path(key).read_bytes(), secret)
        except (OSError, ValueError, TypeError) as exc:
            raise TLSConfigError(f"cannot read certificate {cert} / key {key}: {exc}") from exc
        certificate, chain = certs[0], tuple(certs[1:])
    else:
        raise TLSConfigError("secure mode needs --arrowhead-cert and --arrowhead-key, or --arrowhead-pkcs12")
    if certificate.public_key().public_numbers() != private_key.public_key().public_numbers():
        raise TLSConfigError("the private key does not belong to the client certificate")
    if not truststore:
        raise TLSConfigError("secure mode needs --arrowhead-truststore (the cloud certificate)")
    trusted = _load_truststore(truststore, truststore_password if truststore_password is not None else password)
    return TLSMaterial(private_key, certificate, chain, trusted, check_hostname)


def _load_truststore(path: str, password: str | None) -> tuple[x509.Certificate, ...]:
    data = Path(path).read_bytes()
    if b"-----BEGIN CERTIFICATE-----" in data:
        return tuple(x509.load_pem_x509_certificates(data))
    try:
        bundle = pkcs12.load_pkcs12(data, password.encode() if password is not None else None)
    except ValueError as exc:
        raise TLSConfigError(f"cannot read truststore {path}: {exc}") from exc
    found = [entry.certificate for entry in bundle.additional_certs]
    if bundle.cert is not None:
        found.append(bundle.cert.certificate)
    if not found:
        raise TLSConfigError(f"truststore {path} holds no certificate")
    return tuple(found)


def _openssl_context(material: TLSMaterial) -> SSL.Context:
    context = SSL.Context(SSL.TLS_CLIENT_METHOD)
    context.set_min_proto_version(SSL.TLS1_2_VERSION)
    context.use_certificate(material.certificate)
    context.use_privatekey(material.key)
    for extra in material.chain:
        context.add_extra_chain_cert(extra)
    context.check_privatekey()
    store = context.get_cert_store()
    assert store is not None
    for anchor in material.trusted:
        store.add_cert(crypto.X509.from_cryptography(anchor))
    # Arrowhead truststores hold the *cloud* certificate, which is not
    # self-signed; Java accepts any trust anchor, OpenSSL only with this flag.
    store.set_flags(crypto.X509StoreFlags.PARTIAL_CHAIN)
    return context


@implementer(IOpenSSLClientConnectionCreator)
class _Connector:
    """One TLS client connection to ``host``: chain check always, hostname
    check (SAN DNS name or IP) unless switched off, failures logged plainly."""

    def __init__(self, context: SSL.Context, host: str, port: int, check_hostname: bool) -> None:
        self._context = context
        self._host = host
        self._where = f"{host}:{port}"
        self._check_hostname = check_hostname
        try:
            ipaddress.ip_address(host)
            self._identity: IPAddress_ID | DNS_ID = IPAddress_ID(host)
            self._sni: bytes | None = None
        except ValueError:
            self._identity = DNS_ID(host)
            self._sni = host.encode("idna")

    def clientConnectionForTLS(self, tls_protocol: object) -> SSL.Connection:  # noqa: N802 - Twisted interface
        connection = SSL.Connection(self._context, None)
        if self._sni:
            connection.set_tlsext_host_name(self._sni)
        connection.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT, self._verify)
        return connection

    def _verify(self, connection: SSL.Connection, cert: crypto.X509, errno: int, depth: int, ok: int) -> bool:
        names = cert.to_cryptography().subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        subject = names[0].value if names else "?"
        if not ok:
            log.error("TLS: rejecting certificate CN={cn} of {where} at chain depth {depth}: {why}; "
                      "is --arrowhead-truststore the certificate of this Arrowhead cloud?",
                      cn=subject, where=self._where, depth=depth,
                      why=_VERIFY_ERRORS.get(errno, f"X509 error {errno}"))
            return False
        if depth == 0 and self._check_hostname:
            try:
                verify_service_identity(extract_patterns(cert), [self._identity], [])
            except (VerificationError, CertificateError):  # CertificateError: no subjectAltName at all
                log.error("TLS: hostname mismatch: the certificate CN={cn} of {where} is not valid for {host} "
                          "({names}); use a URL with a name the certificate holds, issue the core system a "
                          "certificate whose subjectAltName includes {host}, or pass --arrowhead-no-hostname-check "
                          "(the chain of trust is still checked)",
                          cn=subject, where=self._where, host=self._host, names=_subject_alt_names(cert))
                return False
        return True


def _subject_alt_names(cert: crypto.X509) -> str:
    try:
        sans = cert.to_cryptography().extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return "it has no subjectAltName"
    names = ([f"DNS:{name}" for name in sans.get_values_for_type(x509.DNSName)]
             + [f"IP:{address}" for address in sans.get_values_for_type(x509.IPAddress)])
    return "its subjectAltName holds " + (", ".join(names) or "no DNS name or IP address")


@implementer(IPolicyForHTTPS)
class TLSPolicy:
    """Twisted's HTTPS policy from summoner's key material: one context, a connector per host."""

    def __init__(self, material: TLSMaterial) -> None:
        self._material = material
        self._context = _openssl_context(material)

    def creatorForNetloc(self, hostname: bytes, port: int) -> _Connector:  # noqa: N802 - Twisted interface
        return _Connector(self._context, hostname.decode("ascii"), port, self._material.check_hostname)


def ssl_reason(error: SSL.Error) -> str:
    """A failed handshake's OpenSSL reasons, with who refused whom."""
    texts = [part[2] for part in error.args[0] if isinstance(part, tuple) and len(part) == 3] \
        if error.args and isinstance(error.args[0], list) else [str(error)]
    joined = ", ".join(t for t in texts if t) or str(error)
    if "certificate verify failed" in joined:
        return joined + " (summoner refused the server's certificate; the TLS: line logged before says why)"
    if "alert" in joined:
        return joined + " (the server refused our client certificate)"
    return joined
