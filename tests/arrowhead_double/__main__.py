"""Run the Arrowhead double: ``python -m tests.arrowhead_double --http-port P
--https-port Q --pki DIR``; prints ``{"http": P, "https": Q}`` once listening."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID
from OpenSSL import crypto
from twisted.internet import reactor, ssl
from twisted.logger import globalLogBeginner, textFileLogObserver
from twisted.web import server

from tests.arrowhead_double import pki
from tests.arrowhead_double.listener import Listener
from tests.arrowhead_double.server import Double

SYSTEMS = ["orchestrator", "serviceregistry", "summoner", "provider", "sysop"]


def tls_options(directory: Path) -> tuple[ssl.CertificateOptions, str]:
    """Server options requiring a client certificate, and the cloud suffix."""
    if not (directory / "orchestrator.pem").exists():
        pki.generate(directory, SYSTEMS)
    leaf, *_ = x509.load_pem_x509_certificates((directory / "orchestrator.pem").read_bytes())
    cloud = x509.load_pem_x509_certificate((directory / "cloud.pem").read_bytes())
    key = serialization.load_pem_private_key((directory / "orchestrator.key").read_bytes(), None)
    cloud_x509 = crypto.X509.from_cryptography(cloud)
    options = ssl.CertificateOptions(
        privateKey=crypto.PKey.from_cryptography_key(key), certificate=crypto.X509.from_cryptography(leaf),
        extraCertChain=[cloud_x509], verify=True, caCerts=[cloud_x509], requireCertificate=True)
    # Arrowhead's truststore holds the cloud certificate only (not self-signed).
    options.getContext().get_cert_store().set_flags(crypto.X509StoreFlags.PARTIAL_CHAIN)
    suffix = cloud.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    return options, str(suffix)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--http-port", type=int, default=0)
    parser.add_argument("--https-port", type=int, default=0)
    parser.add_argument("--pki", type=Path, required=True, help="PKI directory (generated if empty)")
    parser.add_argument("--host", default="127.0.0.1")
    args = parser.parse_args()
    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stderr)], redirectStandardIO=False)
    options, cloud_suffix = tls_options(args.pki)
    double = Double(reactor, reactor, cloud_suffix)
    plain = reactor.listenTCP(args.http_port, server.Site(Listener(double, secure=False)), interface=args.host)
    secure = reactor.listenSSL(args.https_port, server.Site(Listener(double, secure=True)), options,
                               interface=args.host)
    print(json.dumps({"http": plain.getHost().port, "https": secure.getHost().port}), flush=True)
    reactor.run()


if __name__ == "__main__":
    main()
