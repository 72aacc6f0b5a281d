"""The project's certificate revocation list (CRL): read it, check it, ask it.

``flprovision revoke`` signs an X.509 CRL with the project CA and writes it
as ``<provisioning workspace>/crl.pem`` (:data:`CRL_FILE`); the server
loads it and refuses every peer certificate whose serial it lists. A CRL is
only as good as its signature, so :func:`parse_crl` accepts one only when the
project CA signed it, and :meth:`RevocationList.supersedes` lets the server
refuse an older list than the one it holds (a replayed CRL would un-revoke).

Every CRL flprovision writes lists every serial ever revoked in the project,
so the newest one is all a server needs. This module has no grpc and no
torch: the server calls it at every handshake, tests call it directly.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from flcore.configfile import read_bounded
from flcore.schema import ConfigError

CRL_FILE = "crl.pem"
MAX_CRL_BYTES = 4 * 1024 * 1024
"""About 100,000 revoked certificates; a project revokes a handful."""

_FIX = "use the crl.pem that 'flprovision revoke' or 'flprovision crl' wrote for this project"


class CrlError(Exception):
    """A CRL that cannot be used; the message says why and what to do."""


@dataclass(frozen=True)
class RevocationList:
    """A CRL the project CA signed: which serials it revokes, and how recent it is."""

    number: int
    """The CRL number: every CRL flprovision signs has a higher one than the last."""
    last_update: datetime
    next_update: datetime | None
    serials: frozenset[int]
    issuer: x509.Name
    pem: bytes
    """The CRL itself, PEM-encoded, for a server to store as it was signed."""

    def is_revoked(self, serial: int) -> bool:
        """Whether the certificate with this serial number is revoked."""
        return serial in self.serials

    def revokes(self, cert: x509.Certificate) -> bool:
        """Whether ``cert`` (a peer's, from the project CA) is revoked by this list."""
        return cert.issuer == self.issuer and cert.serial_number in self.serials

    def is_stale(self, now: datetime) -> bool:
        """Whether the list is past its next update: still valid as far as it goes, but old.

        A stale list still revokes what it lists; the server should keep it
        and say that lead IT ought to sign a fresh one (``flprovision crl``).
        """
        return self.next_update is not None and now > self.next_update

    def supersedes(self, other: RevocationList | None) -> bool:
        """Whether this list may replace ``other``: a higher number, or nothing held yet."""
        return other is None or self.number > other.number


def _load(data: bytes) -> x509.CertificateRevocationList:
    if data.lstrip().startswith(b"-----BEGIN"):
        return x509.load_pem_x509_crl(data)
    return x509.load_der_x509_crl(data)


def parse_crl(data: bytes, ca_cert: x509.Certificate, where: str) -> RevocationList:
    """Read a CRL (PEM or DER) and check that the project CA ``ca_cert`` signed it.

    Raises:
        CrlError: too large, not a CRL, issued or signed by another CA, or
            without a CRL number (which every list flprovision signs has).
    """
    if len(data) > MAX_CRL_BYTES:
        raise CrlError(f"{where}: {len(data):,} bytes is more than a CRL may hold; {_FIX}")
    try:
        crl = _load(data)
    except ValueError:
        raise CrlError(f"{where}: not a certificate revocation list (PEM or DER); {_FIX}") from None
    if crl.issuer != ca_cert.subject:
        raise CrlError(
            f"{where}: issued by {crl.issuer.rfc4514_string()!r}, not by this project's CA "
            f"{ca_cert.subject.rfc4514_string()!r}; {_FIX}"
        )
    public_key = ca_cert.public_key()
    if not isinstance(public_key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey) or not (
        crl.is_signature_valid(public_key)
    ):
        raise CrlError(f"{where}: not signed by this project's CA; {_FIX}")
    try:
        number = crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    except (x509.ExtensionNotFound, ValueError):
        raise CrlError(f"{where}: has no CRL number, so it cannot be ordered; {_FIX}") from None
    try:
        serials = frozenset(entry.serial_number for entry in crl)
    except ValueError:  # an entry the parser refuses only when it is reached
        raise CrlError(f"{where}: holds an unreadable entry; {_FIX}") from None
    return RevocationList(
        number=number,
        last_update=crl.last_update_utc,
        next_update=crl.next_update_utc,
        serials=serials,
        issuer=crl.issuer,
        pem=crl.public_bytes(serialization.Encoding.PEM),
    )


def read_crl(path: Path, ca_cert: x509.Certificate) -> RevocationList:
    """Read and check the CRL file at ``path`` (see :func:`parse_crl`).

    Raises:
        CrlError: the file cannot be read, or the CRL is not usable.
    """
    try:
        data = read_bounded(path, MAX_CRL_BYTES)
    except ConfigError as exc:
        raise CrlError(f"{exc}; {_FIX}") from None
    except OSError as exc:
        raise CrlError(f"{path}: cannot read it ({exc.strerror or exc})") from None
    return parse_crl(data, ca_cert, str(path))
