"""A test PKI shaped like Arrowhead 4.x's.

Arrowhead chains three levels: the master ``arrowhead.eu``, a cloud
certificate ``<cloud>.<operator>.arrowhead.eu`` and one certificate per system,
``<system>.<cloud>.<operator>.arrowhead.eu``; the system name is the first CN
label.  Its truststores hold only the cloud certificate, so a client must accept
a trust anchor that is not self-signed -- the generated files reproduce that,
which is what makes them useful for testing summoner's TLS set-up.

Output per system: ``<name>.pem`` (certificate then cloud certificate),
``<name>.key`` (PKCS#8 PEM), ``<name>.p12`` (modern encryption) and
``<name>-legacy.p12`` (RC2-40, as the bundled Arrowhead keystores are; written
by the ``openssl`` tool, so generating fails, with openssl's error, without a
working one).  Plus ``master.pem``, ``cloud.pem`` and ``truststore.pem`` /
``truststore.p12`` (cloud certificate only).
"""

from __future__ import annotations

import argparse
import datetime
import ipaddress
import shutil
import subprocess
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import NameOID

PASSWORD = b"123456"  # Arrowhead's shipped keystore password


def _key() -> rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey:
    # EC keys are fast to generate (tests build PKIs often); Arrowhead's own are
    # RSA-2048, which the client code handles the same way.
    return ec.generate_private_key(ec.SECP256R1())


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _cert(subject_cn: str, subject_key, issuer_cn: str, issuer_key, *, ca: bool,
          path_length: int | None = None, sans: list[x509.GeneralName] | None = None) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject_cn))
        .issuer_name(_name(issuer_cn))
        .public_key(subject_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=path_length), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(subject_key.public_key()), critical=False)
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                          data_encipherment=False, key_agreement=False, key_cert_sign=True,
                          crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _san(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def generate(directory: Path | str, systems: list[str], cloud: str = "testcloud",
             operator: str = "aitia", master: str = "arrowhead.eu",
             names: tuple[str, ...] = ("localhost", "127.0.0.1")) -> Path:
    """Write a master, a cloud and one certificate per system into ``directory``;
    every certificate names ``names`` (DNS names or IP addresses) as SANs."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    cloud_cn = f"{cloud}.{operator}.{master}"
    master_key = _key()
    master_cert = _cert(master, master_key, master, master_key, ca=True)
    cloud_key = _key()
    cloud_cert = _cert(cloud_cn, cloud_key, master, master_key, ca=True, path_length=0)
    (out / "master.pem").write_bytes(_pem(master_cert))
    (out / "cloud.pem").write_bytes(_pem(cloud_cert))
    (out / "truststore.pem").write_bytes(_pem(cloud_cert))
    (out / "truststore.p12").write_bytes(pkcs12.serialize_java_truststore(
        [pkcs12.PKCS12Certificate(cloud_cert, cloud_cn.encode())],
        serialization.BestAvailableEncryption(PASSWORD)))
    # The default names are exactly those of the bundled Arrowhead certificates.
    sans = [_san(name) for name in names]
    for system in systems:
        key = _key()
        cert = _cert(f"{system}.{cloud_cn}", key, cloud_cn, cloud_key, ca=False, sans=sans)
        (out / f"{system}.pem").write_bytes(_pem(cert) + _pem(cloud_cert))
        (out / f"{system}.key").write_bytes(key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
        (out / f"{system}.p12").write_bytes(pkcs12.serialize_key_and_certificates(
            system.encode(), key, cert, [cloud_cert], serialization.BestAvailableEncryption(PASSWORD)))
        _legacy_p12(out, system)
    return out


def _legacy_p12(out: Path, system: str) -> None:
    # cryptography cannot *write* RC2-40 PKCS#12; the openssl tool can, and that
    # is the format Arrowhead ships (scripts/install.sh installs openssl).
    tool = shutil.which("openssl")
    if tool is None:
        raise RuntimeError("openssl is missing: run scripts/install.sh (the legacy keystore needs it)")
    command = [tool, "pkcs12", "-export", "-legacy", "-in", str(out / f"{system}.pem"),
               "-inkey", str(out / f"{system}.key"), "-name", system,
               "-out", str(out / f"{system}-legacy.p12"), "-passout", "pass:" + PASSWORD.decode()]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        # A failure here must fail the tests that need the keystore, with
        # openssl's own words (a bare CalledProcessError would hide them).
        raise RuntimeError(f"openssl could not write the legacy (RC2-40) keystore {system}-legacy.p12: "
                           f"{' '.join(command[:4])} ... exited with {done.returncode}: "
                           f"{(done.stderr or done.stdout).strip() or 'no output'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("directory")
    parser.add_argument("--cloud", default="testcloud")
    parser.add_argument("--operator", default="aitia")
    parser.add_argument("systems", nargs="*", default=["serviceregistry", "orchestrator", "summoner"])
    args = parser.parse_args()
    generate(args.directory, args.systems, args.cloud, args.operator)


if __name__ == "__main__":
    main()
