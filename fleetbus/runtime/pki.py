"""A fleet's certificate authority and its sites' TLS certificates (`fleetbus pki init`).

The CA's key signs the certificate of each site; each site's TLS key is generated in the
site's own directory, like its nkey, and never copied. A site's certificate serves both ends
of a leaf link: the accepting server presents it and verifies the remote's (`verify: true`),
the remote presents it and verifies the server's against the same CA and the host it dialled.
ECDSA P-256: what every TLS stack in every client language accepts.
"""

import datetime as dt
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fleetbus.errors import ConfigError

CA_CERT = "ca.pem"
CA_KEY = "ca-key.pem"
CA_DAYS = 3650
SITE_DAYS = 397  # what public CAs may issue at most; rotation: docs/security.md#tls


@dataclass(frozen=True)
class CertFiles:
    """A certificate, its key and the CA that verifies its peers."""

    cert: Path
    key: Path
    ca: Path


def _write_private(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(data)


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def ensure_ca(directory: Path, fleet: str = "fleetbus dev fleet") -> Path:
    """The CA certificate in `directory`, created (with its key, mode 0600) on first use."""
    cert_path, key_path = directory / CA_CERT, directory / CA_KEY
    if cert_path.exists() and key_path.exists():
        return cert_path
    key = _new_key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{fleet} CA")])
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        # Key identifiers: verifiers in strict X.509 mode (Python 3.13's default) require them.
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    _write_private(key_path, _pem(key))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert_path


def _load_ca(ca_cert: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    try:
        cert = x509.load_pem_x509_certificate(ca_cert.read_bytes())
        key = serialization.load_pem_private_key((ca_cert.parent / CA_KEY).read_bytes(), password=None)
    except (OSError, ValueError) as exc:
        msg = f"cannot read the fleet CA in {ca_cert.parent}: {exc}; create one with `fleetbus pki init`"
        raise ConfigError(msg) from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        msg = f"the fleet CA key in {ca_cert.parent} is not an ECDSA key"
        raise ConfigError(msg)
    return cert, key


def _issued_by(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    """Signed by this CA's key (two CAs may well share a name)."""
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _identified(cert: x509.Certificate) -> bool:
    """Carries the authority key identifier strict verification looks for."""
    try:
        cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier)
    except x509.ExtensionNotFound:
        return False
    return True


def _general(hosts: tuple[str, ...]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return names


def _names(cert: x509.Certificate) -> set[x509.GeneralName]:
    """The names `cert` is valid for (its subject alternative names)."""
    try:
        return set(cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value)
    except x509.ExtensionNotFound:
        return set()


def ensure_site_cert(ca_cert: Path, directory: Path, site: str, hosts: tuple[str, ...]) -> CertFiles:
    """`site`'s certificate for `hosts` (IP addresses or DNS names), its key generated in
    `directory`; issued again when missing, expiring within 30 days, from another CA, not
    naming every host, or without the key identifiers strict X.509 verification requires
    (issued before they were)."""
    files = CertFiles(directory / "tls.pem", directory / "tls-key.pem", ca_cert)
    ca, ca_key = _load_ca(ca_cert)
    if files.cert.exists() and files.key.exists():
        current = x509.load_pem_x509_certificate(files.cert.read_bytes())
        remaining = current.not_valid_after_utc - _now()
        fresh = remaining > dt.timedelta(days=30)
        if (
            _issued_by(current, ca)
            and fresh
            and _identified(current)
            and _names(current) >= set(_general(hosts))
        ):
            return files
    key = _new_key()
    names = _general(hosts)
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, site)]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=SITE_DAYS))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    _write_private(files.key, _pem(key))
    files.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return files
