"""The project CA and the certificates it issues.

Subjects follow :mod:`flcore.identity` (CN=name, O=org, OU=kind, TITLE=role
for admins) because the server reads identity from the peer certificate and
nowhere else. The CA outlives the participant certificates (ten years, or
twice their validity when that is longer) so participants added in later
runs can still be issued certificates under the same CA; a certificate never
ends after its CA.
"""

from __future__ import annotations

import hashlib
import ipaddress
from dataclasses import dataclass
from datetime import datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from flcore.identity import BACKDATED, KIND_SERVER
from flcore.kitsig import PublicKey, SigningKey, public_key_sha256
from provision.errors import ProvisionError

PrivateKey = SigningKey
"""Participant keys come in the same types a CA key may have."""

CA_MIN_VALIDITY_DAYS = 3650
CA_NAME_SUFFIX = " root CA"
"""The CA is called ``<project><suffix>``; the project name's cap leaves room for it."""


@dataclass(frozen=True)
class CertifiedKey:
    """A private key with its certificate."""

    key: PrivateKey
    cert: x509.Certificate


@dataclass(frozen=True)
class Subject:
    """Who a participant certificate names (see flcore.identity)."""

    common_name: str
    org: str
    kind: str
    role: str = ""


def generate_key(key_type: str) -> PrivateKey:
    """Make a private key of one of :data:`provision.project.KEY_TYPES`."""
    if key_type == "ecdsa-p256":
        return ec.generate_private_key(ec.SECP256R1())
    if key_type == "ecdsa-p384":
        return ec.generate_private_key(ec.SECP384R1())
    if key_type == "rsa-3072":
        return rsa.generate_private_key(public_exponent=65537, key_size=3072)
    raise ValueError(f"unknown key type {key_type!r}")


def create_ca(
    project: str, org: str, key_type: str, validity_days: int, now: datetime
) -> CertifiedKey:
    """Make the self-signed project root CA."""
    key = generate_key(key_type)
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, f"{project}{CA_NAME_SUFFIX}"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, org),
        ]
    )
    days = max(CA_MIN_VALIDITY_DAYS, 2 * validity_days)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATED)
        .not_valid_after(now + timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return CertifiedKey(key, cert)


def _san(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def issue(
    ca: CertifiedKey, subject: Subject, key_type: str, validity_days: int, now: datetime
) -> CertifiedKey:
    """Make a key and a certificate for one participant, signed by ``ca``.

    Raises:
        ProvisionError: the CA has expired, so nothing it signs would be trusted.
    """
    key = generate_key(key_type)
    return CertifiedKey(key, certify(ca, subject, key.public_key(), validity_days, now))


def certify(
    ca: CertifiedKey, subject: Subject, key: PublicKey, validity_days: int, now: datetime
) -> x509.Certificate:
    """A certificate binding ``subject`` to a public ``key``, signed by ``ca``.

    The key is a new one (:func:`issue`) or one a site made itself and sent
    in a certificate request. A server certificate carries its host as
    subjectAltName (DNS name or IP address) and may act as client too;
    others are for client auth only.

    Raises:
        ProvisionError: the CA has expired, so nothing it signs would be trusted.
    """
    ca_end = ca.cert.not_valid_after_utc
    if ca_end <= now:
        raise ProvisionError(
            f"the project CA expired on {ca_end:%Y-%m-%d}; provision into a new workspace"
        )
    attributes = [
        x509.NameAttribute(NameOID.COMMON_NAME, subject.common_name),
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, subject.org),
        x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, subject.kind),
    ]
    if subject.role:
        attributes.append(x509.NameAttribute(NameOID.TITLE, subject.role))
    usages = [ExtendedKeyUsageOID.CLIENT_AUTH]
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name(attributes))
        .issuer_name(ca.cert.subject)
        .public_key(key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATED)
        .not_valid_after(min(now + timedelta(days=validity_days), ca_end))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=isinstance(key, rsa.RSAPublicKey),
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()),
            critical=False,
        )
    )
    if subject.kind == KIND_SERVER:
        usages.insert(0, ExtendedKeyUsageOID.SERVER_AUTH)
        builder = builder.add_extension(
            x509.SubjectAlternativeName([_san(subject.common_name)]), critical=False
        )
    builder = builder.add_extension(x509.ExtendedKeyUsage(usages), critical=False)
    return builder.sign(ca.key, hashes.SHA256())


def key_pem(key: PrivateKey) -> bytes:
    """PKCS8 PEM without encryption: the daemons load it unattended; file modes guard it."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def public_pem(key: PublicKey) -> str:
    """A public key as SubjectPublicKeyInfo PEM text (issued.json keeps those sites sent)."""
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()


def cert_pem(cert: x509.Certificate) -> bytes:
    """PEM encoding of a certificate."""
    return cert.public_bytes(serialization.Encoding.PEM)


def load_key(pem: bytes) -> PrivateKey:
    """Load an unencrypted PEM private key of a supported type."""
    key = serialization.load_pem_private_key(pem, password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise ValueError(f"unsupported key type {type(key).__name__}")
    return key


def fingerprint(cert: x509.Certificate) -> str:
    """SHA-256 of the DER encoding as lowercase hex, to compare with what a site sees."""
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def serial_hex(cert: x509.Certificate) -> str:
    """The serial number as lowercase hex (too large for a JSON number)."""
    return f"{cert.serial_number:x}"


def cert_facts(cert: x509.Certificate) -> dict[str, str]:
    """What issued.json and audit.json say of a certificate: serial, fingerprint, validity,
    and its public key's SHA-256, by which a request bringing that key again is known."""
    key = cert.public_key()
    assert isinstance(key, PublicKey)  # the CA certifies only keys of our types
    return {
        "serial": serial_hex(cert),
        "sha256": fingerprint(cert),
        "public_key_sha256": public_key_sha256(key),
        "not_before": cert.not_valid_before_utc.isoformat(),
        "not_after": cert.not_valid_after_utc.isoformat(),
    }


def ca_summary(ca: CertifiedKey) -> dict[str, str]:
    """How audit.json describes the project CA."""
    return {"subject": ca.cert.subject.rfc4514_string(), **cert_facts(ca.cert)}
