"""flserverd.revocation: the CRL a server holds and the names revoked at its console.

CRLs are signed here with a real project CA (provision's own signer), and
read back the way the server reads them.
"""

from __future__ import annotations

import logging
import re
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from flcore.identity import KIND_ADMIN, KIND_CLIENT, Identity
from flcore.schema import ConfigError
from flserverd.revocation import CLOCK_SLACK_S, RevocationError, Revocations, minute_after
from flserverd.statedb import StateDB
from provision.pki import CertifiedKey, create_ca
from provision.revocation import sign_crl
from provision.workspace import RevokedCert

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
ISSUED = NOW - timedelta(days=30)
SITE = Identity("site-a", "hospital-a", KIND_CLIENT, serial=0x51, issued=ISSUED)
SITE_NEW = Identity("site-a", "hospital-a", KIND_CLIENT, serial=0x52, issued=ISSUED)
OTHER = Identity("site-b", "hospital-b", KIND_CLIENT, serial=0x61, issued=ISSUED)
ADMIN = Identity("it@lead.org", "lead", KIND_ADMIN, "super", serial=0x71, issued=ISSUED)


class Clock:
    def __init__(self, moment: datetime) -> None:
        self.now = moment.timestamp()

    def __call__(self) -> float:
        return self.now


def _ca(tmp_path: Path, name: str = "proj") -> tuple[CertifiedKey, Path]:
    ca = create_ca(name, "lead", "ecdsa-p256", 365, NOW)
    path = tmp_path / f"{name}-rootCA.pem"
    path.write_bytes(ca.cert.public_bytes(serialization.Encoding.PEM))
    return ca, path


def _crl(ca: CertifiedKey, serials: list[int], number: int, signed: datetime = NOW) -> bytes:
    revoked = [
        RevokedCert(f"{s:x}", f"n{s}", KIND_CLIENT, "key-compromise", signed.isoformat())
        for s in serials
    ]
    return sign_crl(ca, revoked, number, signed, 30)


@pytest.fixture
def db(tmp_path: Path) -> StateDB:
    return StateDB(tmp_path / "state.sqlite3")


def _revocations(db: StateDB, tmp_path: Path, ca_path: Path, clock: Clock) -> Revocations:
    return Revocations(db, tmp_path / "crl.pem", ca_path, "server", clock=clock)


def refused(revocations: Revocations, who: Identity) -> str | None:
    return revocations.refusal(who.name, who.serial, who.issued)


def test_a_loaded_crl_refuses_what_it_lists_and_survives_a_restart(
    db: StateDB, tmp_path: Path
) -> None:
    ca, ca_path = _ca(tmp_path)
    clock = Clock(NOW)
    revocations = _revocations(db, tmp_path, ca_path, clock)
    revocations.open()
    assert revocations.crl is None and refused(revocations, SITE) is None

    loaded = revocations.load(_crl(ca, [SITE.serial], 1))
    assert loaded.previous is None and loaded.crl.number == 1
    reason = refused(revocations, SITE)
    assert reason is not None and "serial 51" in reason and "number 1" in reason
    assert "ask lead IT for a new one" in reason
    assert refused(revocations, OTHER) is None
    assert (tmp_path / "crl.pem").read_bytes() == loaded.crl.pem

    restarted = _revocations(db, tmp_path, ca_path, clock)
    restarted.open()
    assert restarted.crl is not None and restarted.crl.number == 1
    assert refused(restarted, SITE) is not None


def test_an_older_a_replayed_or_a_foreign_crl_is_refused_and_changes_nothing(
    db: StateDB, tmp_path: Path
) -> None:
    ca, ca_path = _ca(tmp_path)
    foreign, _ = _ca(tmp_path, "other")
    revocations = _revocations(db, tmp_path, ca_path, Clock(NOW))
    revocations.load(_crl(ca, [SITE.serial], 2))
    kept = (tmp_path / "crl.pem").read_bytes()
    for data, words in (
        (_crl(ca, [], 2), "number 2, and this server holds number 2"),
        (_crl(ca, [], 1), "older or equal list cannot replace it"),
        (_crl(foreign, [], 9), "not by this project's CA"),
        (b"not a crl", "not a certificate revocation list"),
    ):
        with pytest.raises(RevocationError, match=words):
            revocations.load(data)
    assert (tmp_path / "crl.pem").read_bytes() == kept
    assert refused(revocations, SITE) is not None


def test_a_damaged_stored_crl_stops_the_server_from_starting(db: StateDB, tmp_path: Path) -> None:
    _, ca_path = _ca(tmp_path)
    (tmp_path / "crl.pem").write_bytes(b"-----BEGIN X509 CRL-----\ngarbage\n")
    with pytest.raises(ConfigError, match="will not start without it"):
        _revocations(db, tmp_path, ca_path, Clock(NOW)).open()


def test_revoke_refuses_every_certificate_of_a_name_issued_before_it_for_good(
    db: StateDB, tmp_path: Path
) -> None:
    ca, ca_path = _ca(tmp_path)
    clock = Clock(NOW)
    revocations = _revocations(db, tmp_path, ca_path, clock)
    revocations.seen(SITE)
    revocations.seen(ADMIN)
    assert revocations.revoke(SITE.name, ADMIN.name) is not None
    assert revocations.revoke(SITE.name, ADMIN.name) is None  # once is enough
    for who in (SITE, SITE_NEW):  # whatever the serial: the name is refused
        reason = refused(revocations, who)
        assert reason is not None and f"revoked on this server by {ADMIN.name}" in reason
    # Kept across a restart (the state database).
    assert [n.name for n in _revocations(db, tmp_path, ca_path, clock).names()] == [SITE.name]

    # Lead IT's lists come, with its serial or without: the CRL refuses what it lists, and
    # the console's refusal stays (a list cannot show that it carries every kit of a name).
    for number, serials in ((1, [OTHER.serial]), (2, [OTHER.serial, SITE.serial])):
        clock.now += 60
        revocations.load(_crl(ca, serials, number, NOW + timedelta(seconds=60 * number)))
        assert [n.name for n in revocations.names()] == [SITE.name]
        assert refused(revocations, SITE) is not None and refused(revocations, SITE_NEW) is not None
    assert refused(revocations, OTHER) is not None  # by the list


def test_a_kit_issued_after_the_revocation_works_at_once(db: StateDB, tmp_path: Path) -> None:
    """Only the CA's holder issues kits, so one issued after ``revoke`` is the replacement:
    it need not wait for lead IT's list. Lead IT's clock may be ahead of the server's, so one
    that says it was issued within CLOCK_SLACK_S after the revocation is refused too."""
    _, ca_path = _ca(tmp_path)
    revocations = _revocations(db, tmp_path, ca_path, Clock(NOW))
    revocations.seen(SITE)
    revoked = revocations.revoke(SITE.name, ADMIN.name)
    assert revoked is not None and revoked.works_from == NOW.timestamp() + CLOCK_SLACK_S
    works_from = datetime.fromtimestamp(revoked.works_from, UTC)
    reissued = replace(SITE, serial=0x53, issued=works_from + timedelta(seconds=1))
    for issued in (None, NOW, works_from - timedelta(seconds=1), works_from):
        reason = refused(revocations, replace(reissued, issued=issued))
        assert (
            reason is not None and f"one issued after {minute_after(revoked.works_from)}" in reason
        )
    assert refused(revocations, reissued) is None


def test_a_kit_revoked_before_its_first_use_stays_out_whatever_list_comes(
    db: StateDB, tmp_path: Path
) -> None:
    """A kit stolen before its first use and revoked at the console: the server never saw its
    serial, so no list can show that it revokes it. Lifting the console's refusal with the
    next, newer list (one signed for another site) let the stolen kit in."""
    ca, ca_path = _ca(tmp_path)
    clock = Clock(NOW)
    revocations = _revocations(db, tmp_path, ca_path, clock)
    revocations.seen(SITE)
    stolen = replace(OTHER, serial=0x62)
    revocations.revoke(stolen.name, ADMIN.name)
    clock.now += 3600
    revocations.seen(SITE_NEW)  # another site's kit logs in; the stolen one never did
    for number in (1, 2):
        revocations.load(_crl(ca, [SITE.serial], number, NOW + timedelta(hours=number)))
        assert refused(revocations, stolen) is not None
    restarted = _revocations(db, tmp_path, ca_path, clock)
    restarted.open()
    assert refused(restarted, stolen) is not None
    # Lead IT issues the site a new kit: it works; the stolen one never does.
    assert refused(restarted, replace(stolen, serial=0x63, issued=NOW + timedelta(hours=3))) is None


@pytest.mark.parametrize(
    ("name", "words"),
    [("server", "cannot be revoked"), ("../etc", "is not a client name"), ("", "is not a client")],
)
def test_the_server_and_names_no_kit_can_have_cannot_be_revoked(
    db: StateDB, tmp_path: Path, name: str, words: str
) -> None:
    _, ca_path = _ca(tmp_path)
    revocations = _revocations(db, tmp_path, ca_path, Clock(NOW))
    with pytest.raises(RevocationError, match=words):
        revocations.revoke(name, ADMIN.name)
    assert revocations.names() == []


@pytest.mark.parametrize(
    ("typed", "meant"),
    [("Site-A", "site-a"), ("site-a_1", "site-a"), ("IT@lead.org", "it@lead.org")],
)
def test_a_name_that_only_looks_like_a_kit_that_logged_in_is_refused_with_the_kit(
    db: StateDB, tmp_path: Path, typed: str, meant: str
) -> None:
    """The console shows instance names (site-a_1) and people type emails in any case:
    revoking those answered "revoked" while the kit went on working."""
    _, ca_path = _ca(tmp_path)
    revocations = _revocations(db, tmp_path, ca_path, Clock(NOW))
    for identity in (SITE, ADMIN):
        revocations.seen(identity)
    with pytest.raises(RevocationError, match=f"but '{re.escape(meant)}' did: revoke"):
        revocations.revoke(typed, "boss@lead.org")
    assert revocations.names() == []
    # A name no certificate used yet (a kit stolen before its first use) is revoked as typed,
    # and a kit whose own name ends like an instance's is itself.
    revocations.seen(Identity("site-a_7", "hospital-a", KIND_CLIENT, serial=0x99))
    assert revocations.revoke("site-c", "boss@lead.org") is not None
    assert revocations.revoke("site-a_7", "boss@lead.org") is not None


def test_a_stale_crl_keeps_revoking_and_warns_once(
    db: StateDB, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ca, ca_path = _ca(tmp_path)
    clock = Clock(NOW)
    revocations = _revocations(db, tmp_path, ca_path, clock)
    revocations.load(_crl(ca, [SITE.serial], 1))
    assert revocations.stale_warning() == ""
    clock.now += 31 * 86400  # past its next update (30 days)
    with caplog.at_level(logging.WARNING, "flserverd.revocation"):
        revocations.check_stale()
        revocations.check_stale()
    warnings = [r.getMessage() for r in caplog.records if "stale" in r.getMessage()]
    assert len(warnings) == 1 and "flprovision crl" in warnings[0]
    assert "stale" in revocations.stale_warning()
    assert refused(revocations, SITE) is not None


def test_a_list_that_revokes_the_server_itself_is_refused(db: StateDB, tmp_path: Path) -> None:
    ca, ca_path = _ca(tmp_path)
    # Any certificate serves as "the server's" here: the CA's own is at hand.
    revocations = Revocations(db, tmp_path / "crl.pem", ca_path, "server", server_cert=ca_path)
    with pytest.raises(RevocationError, match="revokes this server's own certificate"):
        revocations.load(_crl(ca, [SITE.serial, ca.cert.serial_number], 1))
    assert revocations.crl is None and not (tmp_path / "crl.pem").exists()
    assert revocations.load(_crl(ca, [SITE.serial], 1)).crl.number == 1
