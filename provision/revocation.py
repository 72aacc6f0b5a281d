"""Revoking certificates: ``flprovision revoke``, ``flprovision crl`` and the revocation a
re-issue does.

Every CRL is signed from ``state/revoked.json``, the record of every serial
ever revoked in the workspace, with a CRL number one higher than the last,
so the newest ``crl.pem`` is all a server needs and an older one can be told
apart (see :mod:`flcore.crl`). The CA key is used where it lies, in
``state/``; only the public CRL leaves.

A participant is found by name in ``audit.json`` (every certificate ever
issued here), so a site already removed from project.yml can still be
revoked, and every certificate it ever held (a ``--force`` run issues new
ones without revoking the old) is revoked together. The server's
certificate cannot be revoked: clients and admins check the server against
the CA and its host name, not against a CRL, so revoking it would only
pretend to protect; a leaked server key needs a new CA.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from flcore.identity import KIND_SERVER
from provision.errors import ProvisionError
from provision.pki import CertifiedKey, ca_summary
from provision.workspace import Entry, IssuedRecord, RevokedCert, RevokedList, Workspace

logger = logging.getLogger(__name__)

CRL_DAYS = 90
"""Default days until a CRL's next update; ``flprovision crl`` signs a fresh one before then."""
MAX_CRL_DAYS = 3650
REASONS: dict[str, x509.ReasonFlags] = {
    "unspecified": x509.ReasonFlags.unspecified,
    "key-compromise": x509.ReasonFlags.key_compromise,
    "affiliation-changed": x509.ReasonFlags.affiliation_changed,
    "superseded": x509.ReasonFlags.superseded,
    "cessation-of-operation": x509.ReasonFlags.cessation_of_operation,
    "privilege-withdrawn": x509.ReasonFlags.privilege_withdrawn,
}
"""The CRL reason codes a person picks from, by the words ``--reason`` takes."""
REISSUE_REASON = "superseded"


@dataclass(frozen=True)
class CrlWritten:
    """The CRL a revocation (or a refresh) wrote."""

    path: Path
    number: int
    next_update: datetime | None
    """None when nothing was signed (the name was revoked already)."""
    revoked: tuple[RevokedCert, ...]
    """What this step revoked (empty for a refresh, or for a name revoked already)."""
    listed: int
    """How many serials the CRL lists in all."""


def check_days(days: int) -> None:
    """Refuse a CRL lifetime outside 1..MAX_CRL_DAYS days."""
    if not 1 <= days <= MAX_CRL_DAYS:
        raise ProvisionError(f"--days must be between 1 and {MAX_CRL_DAYS}, got {days}")


def sign_crl(
    ca: CertifiedKey, revoked: list[RevokedCert], number: int, now: datetime, days: int
) -> bytes:
    """The PEM CRL listing ``revoked``, signed with the CA key."""
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca.cert.subject)
        .last_update(now)
        .next_update(now + timedelta(days=days))
        .add_extension(x509.CRLNumber(number), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()),
            critical=False,
        )
    )
    for entry in revoked:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder()
            .serial_number(int(entry.serial, 16))
            .revocation_date(datetime.fromisoformat(entry.revoked_at))
            .add_extension(x509.CRLReason(REASONS[entry.reason]), critical=False)
            .build()
        )
    crl = builder.sign(ca.key, hashes.SHA256())
    return crl.public_bytes(serialization.Encoding.PEM)


def _certificates_of(ws: Workspace, name: str) -> list[Entry]:
    """Every certificate issued here to ``name``."""
    return [entry for entry in ws.certificates() if entry.get("name") == name]


def publish(
    ws: Workspace, ca: CertifiedKey, new: list[RevokedCert], now: datetime, days: int
) -> CrlWritten:
    """Record ``new`` revocations and sign a CRL of every revocation so far.

    revoked.json is saved before crl.pem: a run cut short between the two
    leaves a record the next ``flprovision crl`` signs, never a CRL that
    knows more than the record.
    """
    record = ws.load_revoked()
    number = record.crl_number + 1
    everything = [*record.revoked, *new]
    ws.save_revoked(RevokedList(number, tuple(everything)))
    ws.write_crl(sign_crl(ca, everything, number, now, days))
    logger.info("wrote %s: CRL number %d, %d revoked", ws.crl_path, number, len(everything))
    return CrlWritten(ws.crl_path, number, now + timedelta(days=days), tuple(new), len(everything))


def revoke_certificates(
    ws: Workspace, ca: CertifiedKey, name: str, reason: str, now: datetime, days: int
) -> CrlWritten:
    """Revoke every certificate ever issued to ``name`` that is not revoked yet (lock held).

    Raises:
        ProvisionError: nothing was issued to ``name`` here, or it is the server.
    """
    if reason not in REASONS:
        raise ProvisionError(f"unknown reason {reason!r}; use one of {', '.join(REASONS)}")
    certificates = _certificates_of(ws, name)
    if not certificates:
        raise ProvisionError(
            f"{ws.root}: no certificate was issued to {name!r} here (names are case-sensitive; "
            "audit.json lists every certificate issued)"
        )
    if any(entry.get("kind") == KIND_SERVER for entry in certificates):
        raise ProvisionError(
            f"{name!r} is the server: its certificate cannot be revoked, since clients and "
            "admins check the server by the project CA and its host name, not by a CRL. If its "
            "key leaked, provision the project into a new workspace (a new CA) and replace "
            "every kit; if only its kit was lost, re-issue every kit with --force"
        )
    return revoke_issued(ws, ca, [name], reason, now, days)


def revoke_issued(
    ws: Workspace, ca: CertifiedKey, names: list[str], reason: str, now: datetime, days: int
) -> CrlWritten:
    """Revoke, in one CRL, every certificate issued to ``names`` that is not revoked yet
    (lock held; the names are known participants, none of them the server)."""
    revoked = ws.load_revoked()
    done = {entry.serial for entry in revoked.revoked}
    when = now.isoformat()
    new = [
        RevokedCert(str(entry["serial"]), name, str(entry.get("kind", "")), reason, when)
        for name in names
        for entry in _certificates_of(ws, name)
        if entry["serial"] not in done
    ]
    if not new:
        return CrlWritten(ws.crl_path, revoked.crl_number, None, (), len(done))
    written = publish(ws, ca, new, now, days)
    record = ws.load_issued() or IssuedRecord(None)
    for holder in record.participants.values():
        if holder.get("name") in names:
            holder["revoked"] = True
    ws.save_issued(record)
    ws.append_audit(record.project or "", ca_summary(ca), [], new)
    for entry in new:
        logger.info("revoked %s %s (serial %s, %s)", entry.kind, entry.name, entry.serial, reason)
    return written


def revoke(
    workspace: Path,
    name: str,
    reason: str = "unspecified",
    days: int = CRL_DAYS,
    now: datetime | None = None,
) -> CrlWritten:
    """``flprovision revoke``: revoke ``name``'s certificates and write a new crl.pem.

    Revoking a name revoked already changes nothing and says so (``revoked``
    is empty); ``flprovision crl`` signs the list again when that is wanted.

    Raises:
        ProvisionError: no project here, nothing issued to ``name``, or it is the server.
    """
    check_days(days)
    ws = Workspace(workspace)
    with ws.lock():
        ca = ws.require_ca()
        return revoke_certificates(ws, ca, name, reason, now or datetime.now(UTC), days)


def refresh_crl(workspace: Path, days: int = CRL_DAYS, now: datetime | None = None) -> CrlWritten:
    """``flprovision crl``: sign the list again with a new number and next update.

    The first call of a project writes an empty CRL, which a server may load
    from day one.
    """
    check_days(days)
    ws = Workspace(workspace)
    with ws.lock():
        ca = ws.require_ca()
        return publish(ws, ca, [], now or datetime.now(UTC), days)
