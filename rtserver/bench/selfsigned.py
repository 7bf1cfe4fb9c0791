"""Throw-away TLS material: a CA and a server certificate for 127.0.0.1 and localhost.

Used by :mod:`rtserver.bench.tls_cost` and by the tests (never for production:
the CA key is discarded, the certificates live one day).
"""

from __future__ import annotations

import datetime
import ipaddress
import ssl
from pathlib import Path

import msgspec
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

__all__ = ["TlsFiles", "make_tls_files"]


class TlsFiles(msgspec.Struct, frozen=True):
    """PEM paths: the server's certificate chain and key, and the CA that signed it."""

    certfile: str
    keyfile: str
    cafile: str

    def client_context(self) -> ssl.SSLContext:
        """A client context that trusts only the test CA (hostname checked)."""
        return ssl.create_default_context(cafile=self.cafile)


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def make_tls_files(directory: Path) -> TlsFiles:
    """Write ``ca.pem``, ``server.pem`` and ``server.key`` into ``directory``."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "rtserver test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(minutes=5))
          .not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False,
                                       data_encipherment=False, key_agreement=False,
                                       encipher_only=False, decipher_only=False), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
            .issuer_name(ca_name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([
                x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(ca_key, hashes.SHA256()))
    files = TlsFiles(certfile=str(directory / "server.pem"), keyfile=str(directory / "server.key"),
                     cafile=str(directory / "ca.pem"))
    Path(files.cafile).write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    Path(files.certfile).write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path = Path(files.keyfile)
    key_path.write_bytes(_pem_key(key))
    key_path.chmod(0o600)
    return files
