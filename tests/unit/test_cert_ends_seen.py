"""The ends of the certificates the server has seen: said once in its log when one passes
(the handshake it then refuses leaves gRPC nothing to log), and shown by check_status
server for every participant, not only the clients connected now, and for the server's own
kit."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from flcore import status as st
from flcore.certlife import PEER_ENDS_CHECK_S, EndingPeers, watch_peer_ends
from flcore.federation import MachineInfo
from flcore.identity import KIND_ADMIN, KIND_CLIENT, Identity, identity_from_certificate
from flcore.startup import STARTUP_DIR
from flserverd.commands import AdminCommands, Reply
from flserverd.server import FLServer
from flserverd.statedb import StateDB
from provision import pki
from tests.unit.serverparts import server_startup
from tests.unit.test_exchange import on_server

END = datetime(2027, 12, 1, 12, 0, tzinfo=UTC)


def test_the_server_says_once_that_a_participant_s_certificate_ended(
    caplog: pytest.LogCaptureFixture,
) -> None:
    renewed = END + timedelta(days=360)
    ends = [("site-a", KIND_CLIENT, END.timestamp())]
    clock = iter([END - timedelta(hours=1), END, END + timedelta(hours=1), renewed])
    pauses: list[float] = []

    async def pause(seconds: float) -> None:
        pauses.append(seconds)
        if len(pauses) == 2:  # site-a came back with a renewed kit
            ends[0] = ("site-a", KIND_CLIENT, renewed.timestamp())
        if len(pauses) == 4:
            raise asyncio.CancelledError

    async def watch() -> None:
        with pytest.raises(asyncio.CancelledError):
            await watch_peer_ends(lambda: ends, lambda: next(clock), pause)

    with caplog.at_level(logging.WARNING, "flcore.certlife"):
        asyncio.run(watch())
    assert pauses == [PEER_ENDS_CHECK_S] * 4
    assert [r.getMessage() for r in caplog.records] == [
        f"the certificate of client site-a expired on {end:%Y-%m-%d %H:%M} UTC: it can no "
        "longer connect until lead IT issues it a renewed kit (flprovision --reissue site-a, "
        "or signs its new request if it makes its own key)"
        for end in (END, renewed)
    ]


def test_a_replacement_kit_that_ends_sooner_is_warned_of_the_same_day(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Keyed by name, the replacement's nearer end went unsaid until the next day."""
    peers = EndingPeers(lambda: END - timedelta(days=20))
    first = Identity("site-a", "o", KIND_CLIENT, serial=1, valid_until=END)
    replacement = Identity("site-a", "o", KIND_CLIENT, serial=2, valid_until=END - timedelta(10))
    with caplog.at_level(logging.WARNING, "flcore.certlife"):
        for identity in (first, replacement, replacement):
            peers.logged_in(identity)
    assert [r.getMessage().split(", in ")[1].split(":")[0] for r in caplog.records] == [
        "20 days",
        "10 days",
    ]


def test_check_status_server_shows_every_certificate_seen_and_its_own_and_the_ended(
    tmp_path: Path,
) -> None:
    """Before, only the clients registered now were looked at: not the server's own kit, not
    the admins, not a site gone, and an ended one was called ending."""
    now = datetime.now(UTC)
    ca = pki.create_ca("p", "org", "ecdsa-p256", 3650, now - timedelta(days=400))
    startup = server_startup()
    own = pki.issue(ca, pki.Subject("server", "org", "server"), "ecdsa-p256", 20, now)
    (tmp_path / STARTUP_DIR).mkdir()
    (tmp_path / STARTUP_DIR / startup.ssl_cert).write_bytes(pki.cert_pem(own.cert))
    (tmp_path / STARTUP_DIR / startup.ssl_root_cert).write_bytes(pki.cert_pem(ca.cert))
    gone = pki.issue(ca, pki.Subject("site-gone", "org", KIND_CLIENT), "ecdsa-p256", 25, now)
    ended = pki.issue(
        ca, pki.Subject("site-ended", "org", KIND_CLIENT), "ecdsa-p256", 30, now - timedelta(40)
    )
    admin = pki.issue(ca, pki.Subject("lead@org", "org", KIND_ADMIN, "super"), "ecdsa-p256", 5, now)
    shown: list[Reply] = []

    async def scenario(server: FLServer) -> None:
        for site in (gone, ended):
            login = server.login(identity_from_certificate(site.cert), "", MachineInfo())
            server.drop(login.client, st.LOGGED_OUT)
        server.admins.login(identity_from_certificate(admin.cert), "lead@org")
        shown.append(
            await AdminCommands(server).execute(
                "lead@org", "super", "check_status server", 5, False
            )
        )

    on_server(tmp_path, scenario)
    [status] = shown
    dates = [c.cert.not_valid_after_utc for c in (ended, admin, own, gone)]
    assert (
        f"Certificates ending within 30 days: site-ended ended on {dates[0]:%Y-%m-%d}, "
        f"lead@org on {dates[1]:%Y-%m-%d}, server on {dates[2]:%Y-%m-%d}, "
        f"site-gone on {dates[3]:%Y-%m-%d}"
    ) in status.text
    assert status.data["certificates_ending_count"] == 4


def test_a_state_database_without_certificate_ends_gets_them_at_the_next_login(
    tmp_path: Path,
) -> None:
    path = tmp_path / "flserverd.sqlite3"
    old = sqlite3.connect(path)
    old.execute(
        "CREATE TABLE certificates (serial TEXT PRIMARY KEY, name TEXT NOT NULL,"
        " kind TEXT NOT NULL, first_seen REAL NOT NULL)"
    )
    old.execute("INSERT INTO certificates VALUES ('1f', 'site-a', 'client', 1.0)")
    old.commit()
    old.close()
    db = StateDB(path)
    try:
        assert db.certificate_ends() == []
        db.record_certificate(0x1F, "site-a", KIND_CLIENT, END.timestamp())
        assert db.certificate_ends() == [("site-a", KIND_CLIENT, END.timestamp())]
        assert db.certificates_of("site-a") == [0x1F]
    finally:
        db.close()
