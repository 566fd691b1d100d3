"""A throwaway PKI and a mosquitto that requires TLS with a client certificate and a password."""

from __future__ import annotations

import datetime as dt
import ipaddress
import subprocess
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.support.broker import MosquittoBroker


def _cert(subject: str, key: ec.EllipticCurvePrivateKey, issuer_key: ec.EllipticCurvePrivateKey,
          issuer: str, *, ca: bool = False, san: bool = False) -> x509.Certificate:
    now = dt.datetime.now(dt.timezone.utc)
    builder = (x509.CertificateBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
               .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if san:
        builder = builder.add_extension(x509.SubjectAlternativeName(
            [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _write(path: Path, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey | None = None) -> None:
    path.with_suffix(".crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    if key is not None:
        path.with_suffix(".key").write_bytes(key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))


@dataclass(frozen=True)
class TlsBroker:
    broker: MosquittoBroker
    ca: Path
    cert: Path  # the client's certificate ...
    key: Path  # ... and key
    username: str
    password: str


def tls_broker(workdir: Path, username: str = "gw-7", password: str = "s3cret-pw") -> TlsBroker:
    """A started mosquitto on a loopback port that requires TLS (its CA signs the client certificate
    `cert`/`key`), a client certificate and the password of `username`."""
    pki = workdir / "pki"
    pki.mkdir(parents=True)
    ca_key, server_key, client_key = (ec.generate_private_key(ec.SECP256R1()) for _ in range(3))
    _write(pki / "ca", _cert("test-ca", ca_key, ca_key, "test-ca", ca=True))
    _write(pki / "server", _cert("localhost", server_key, ca_key, "test-ca", san=True), server_key)
    _write(pki / "client", _cert(username, client_key, ca_key, "test-ca"), client_key)
    passwd = workdir / "passwd"
    subprocess.run(["mosquitto_passwd", "-c", "-b", str(passwd), username, password], check=True)
    broker = MosquittoBroker(workdir / "mosquitto", extra_config=(
        f"user root\ncafile {pki / 'ca.crt'}\ncertfile {pki / 'server.crt'}\nkeyfile {pki / 'server.key'}\n"
        f"require_certificate true\npassword_file {passwd}\nallow_anonymous false\n"))
    broker.start()
    return TlsBroker(broker, pki / "ca.crt", pki / "client.crt", pki / "client.key", username, password)
