"""The fleet CA and site certificates (`fleetbus pki init`); their use on real leaf links is
in tests/test_security.py."""

import ipaddress
import stat

import pytest
from cryptography import x509

from fleetbus.errors import ConfigError
from fleetbus.runtime import pki
from tests.helpers import run_cli


def test_a_site_certificate_is_issued_by_the_fleet_ca_for_the_hosts_it_is_dialled_at(tmp_path):
    ca = pki.ensure_ca(tmp_path / "pki")
    assert stat.S_IMODE((tmp_path / "pki" / pki.CA_KEY).stat().st_mode) == 0o600
    files = pki.ensure_site_cert(ca, tmp_path / "r1", "r1", ("127.0.0.1", "localhost", "r1"))
    assert stat.S_IMODE(files.key.stat().st_mode) == 0o600
    cert = x509.load_pem_x509_certificate(files.cert.read_bytes())
    issuer = x509.load_pem_x509_certificate(ca.read_bytes())
    cert.verify_directly_issued_by(issuer)  # raises if not
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    assert names.get_values_for_type(x509.DNSName) == ["localhost", "r1"]
    # Kept while valid and from this CA; issued again (new key) once the CA is another.
    assert (
        pki.ensure_site_cert(ca, tmp_path / "r1", "r1", ("127.0.0.1",)).cert.read_bytes()
        == files.cert.read_bytes()
    )
    # Issued again for a host it does not name (a cluster's node added), naming them all.
    wider = pki.ensure_site_cert(ca, tmp_path / "r1", "r1", ("127.0.0.1", "nats-hub-n2"))
    names = x509.load_pem_x509_certificate(wider.cert.read_bytes()).extensions.get_extension_for_class(
        x509.SubjectAlternativeName
    )
    assert names.value.get_values_for_type(x509.DNSName) == ["nats-hub-n2"]
    other = pki.ensure_ca(tmp_path / "other")
    again = pki.ensure_site_cert(other, tmp_path / "r1", "r1", ("127.0.0.1",))
    x509.load_pem_x509_certificate(again.cert.read_bytes()).verify_directly_issued_by(
        x509.load_pem_x509_certificate(other.read_bytes())
    )


def test_a_broken_ca_is_named_with_the_fix(tmp_path):
    ca = pki.ensure_ca(tmp_path / "pki")
    (tmp_path / "pki" / pki.CA_KEY).write_text("not a key")
    with pytest.raises(ConfigError, match="fleetbus pki init"):
        pki.ensure_site_cert(ca, tmp_path / "r1", "r1", ("127.0.0.1",))


def test_pki_init_creates_once_and_keeps(tmp_path):
    first = run_cli("pki", "init", "--dir", str(tmp_path / "ca"))
    assert first.returncode == 0, first.stderr
    assert "created the fleet CA" in first.stdout
    before = (tmp_path / "ca" / pki.CA_CERT).read_bytes()
    second = run_cli("pki", "init", "--dir", str(tmp_path / "ca"))
    assert "kept the fleet CA" in second.stdout
    assert (tmp_path / "ca" / pki.CA_CERT).read_bytes() == before
