"""Certificates: chains verify against the CA, subjects follow flcore.identity."""

from __future__ import annotations

import ipaddress
from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from flcore.identity import KIND_ADMIN, KIND_CLIENT, KIND_SERVER, identity_from_certificate
from provision import ProvisionError
from provision.pki import CertifiedKey, Subject, create_ca, fingerprint, issue, key_pem, load_key

NOW = datetime(2025, 1, 1, tzinfo=UTC)


@pytest.fixture(scope="module")
def ca() -> CertifiedKey:
    return create_ca("demo", "lead", "ecdsa-p256", 360, NOW)


def _eku(cert: x509.Certificate) -> list[x509.ObjectIdentifier]:
    return list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)


def test_ca_is_a_self_signed_ca(ca: CertifiedKey) -> None:
    cert = ca.cert
    assert cert.subject.rfc4514_string() == "O=lead,CN=demo root CA"
    assert cert.issuer == cert.subject
    cert.verify_directly_issued_by(cert)
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.key_cert_sign and usage.crl_sign
    assert cert.not_valid_after_utc - NOW == timedelta(days=3650)


def test_ca_outlives_long_certificates() -> None:
    ca = create_ca("demo", "lead", "ecdsa-p256", 3000, NOW)
    assert ca.cert.not_valid_after_utc - NOW == timedelta(days=6000)


@pytest.mark.parametrize("host", ["localhost", "fl.example.org"])
def test_server_certificate_names_its_host_as_dns(ca: CertifiedKey, host: str) -> None:
    cert = issue(ca, Subject(host, "lead", KIND_SERVER), "ecdsa-p256", 30, NOW).cert
    cert.verify_directly_issued_by(ca.cert)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == [host]
    assert _eku(cert) == [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
    identity = identity_from_certificate(cert)
    assert (identity.name, identity.org, identity.kind) == (host, "lead", KIND_SERVER)


@pytest.mark.parametrize("host", ["10.0.0.5", "::1"])
def test_server_certificate_names_an_ip_host_as_ip(ca: CertifiedKey, host: str) -> None:
    cert = issue(ca, Subject(host, "lead", KIND_SERVER), "ecdsa-p256", 30, NOW).cert
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address(host)]
    assert san.get_values_for_type(x509.DNSName) == []


def test_client_certificate(ca: CertifiedKey) -> None:
    cert = issue(ca, Subject("site-a", "hospital-a", KIND_CLIENT), "ecdsa-p256", 30, NOW).cert
    cert.verify_directly_issued_by(ca.cert)
    assert _eku(cert) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    with pytest.raises(x509.ExtensionNotFound):
        cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert cert.subject.get_attributes_for_oid(NameOID.TITLE) == []
    assert cert.not_valid_after_utc - NOW == timedelta(days=30)
    # Backdated for a peer whose clock is behind; the server reads when it was issued (a
    # console revocation refuses what was issued before it).
    assert cert.not_valid_before_utc < NOW
    assert identity_from_certificate(cert).issued == NOW


def test_admin_certificate_carries_its_role(ca: CertifiedKey) -> None:
    subject = Subject("lead@example.org", "lead", KIND_ADMIN, "super")
    cert = issue(ca, subject, "ecdsa-p256", 30, NOW).cert
    identity = identity_from_certificate(cert)
    assert (identity.name, identity.kind, identity.role) == ("lead@example.org", "admin", "super")
    assert _eku(cert) == [ExtendedKeyUsageOID.CLIENT_AUTH]


@pytest.mark.parametrize(
    ("key_type", "kind", "size"),
    [
        ("ecdsa-p256", ec.EllipticCurvePrivateKey, 256),
        ("ecdsa-p384", ec.EllipticCurvePrivateKey, 384),
        ("rsa-3072", rsa.RSAPrivateKey, 3072),
    ],
)
def test_key_types(ca: CertifiedKey, key_type: str, kind: type, size: int) -> None:
    issued = issue(ca, Subject("site-a", "h", KIND_CLIENT), key_type, 30, NOW)
    assert isinstance(issued.key, kind)
    assert issued.key.key_size == size
    assert key_pem(issued.key).startswith(b"-----BEGIN PRIVATE KEY-----")
    assert load_key(key_pem(issued.key)).public_key() == issued.key.public_key()


def test_rsa_ca_issues_certificates() -> None:
    ca = create_ca("demo", "lead", "rsa-3072", 30, NOW)
    cert = issue(ca, Subject("site-a", "h", KIND_CLIENT), "ecdsa-p256", 30, NOW).cert
    cert.verify_directly_issued_by(ca.cert)


def test_certificate_never_outlives_its_ca(ca: CertifiedKey) -> None:
    later = NOW + timedelta(days=3600)
    cert = issue(ca, Subject("site-a", "h", KIND_CLIENT), "ecdsa-p256", 360, later).cert
    assert cert.not_valid_after_utc == ca.cert.not_valid_after_utc


def test_expired_ca_issues_nothing(ca: CertifiedKey) -> None:
    with pytest.raises(ProvisionError, match="project CA expired"):
        issue(ca, Subject("site-a", "h", KIND_CLIENT), "ecdsa-p256", 30, NOW + timedelta(days=4000))


def test_fingerprint_is_sha256_hex(ca: CertifiedKey) -> None:
    value = fingerprint(ca.cert)
    assert len(value) == 64
    assert int(value, 16) >= 0
