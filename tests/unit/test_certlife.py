"""A kit's certificates end: said clearly at start, warned about a month before, daily, and by
the server when a site or an admin whose certificate ends soon logs in."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from fladmin.client import AdminError, kit_warnings, load_kit
from flcore.certlife import (
    DAY_S,
    CertLife,
    EndingPeers,
    check_lives,
    kit_lives,
    participant_renewal,
    watch_lives,
)
from flcore.federation import MachineInfo
from flcore.identity import KIND_ADMIN, KIND_CLIENT, Identity, identity_from_certificate
from flcore.kitsig import SIGNATURE_FILE, read_startup, sign_files
from flcore.schema import ConfigError
from flcore.startup import STARTUP_DIR, load_client, load_server
from flserverd.commands import ENDING_SHOWN, AdminCommands, Reply
from flserverd.server import FLServer
from provision import extract_kit, pki
from provision.workspace import Workspace
from tests.unit.test_exchange import on_server

END = datetime(2027, 12, 1, 12, 0, tzinfo=UTC)
OWN = CertLife(
    "this kit's certificate (site-a)", END - timedelta(days=360), END, participant_renewal("site-a")
)


def test_an_ended_certificate_says_when_and_who_makes_a_new_one() -> None:
    assert OWN.problem(END - timedelta(seconds=1)) is None
    assert OWN.problem(END) == (
        "this kit's certificate (site-a) expired on 2027-12-01 12:00 UTC: ask lead IT for a "
        "new kit (flprovision --reissue site-a; a site that makes its own key sends a new "
        "request) and extract it in place of this one"
    )


def test_a_certificate_not_valid_yet_blames_the_clock() -> None:
    early = END - timedelta(days=361)
    assert OWN.problem(early) == (
        "this kit's certificate (site-a) is valid from 2026-12-06 12:00 UTC only, and this "
        "machine's clock says 2026-12-05 12:00 UTC: set the clock right (NTP)"
    )


@pytest.mark.parametrize(
    ("before_end", "said"),
    [
        (timedelta(days=31), None),
        (timedelta(days=30), "in 30 days"),
        (timedelta(days=1, hours=2), "in 1 day:"),
        (timedelta(hours=3), "in less than a day"),
        (timedelta(0), None),
    ],
)
def test_the_end_is_warned_about_from_thirty_days_before(
    before_end: timedelta, said: str | None
) -> None:
    warning = OWN.warning(END - before_end)
    if said is None:
        assert warning is None
    else:
        assert warning is not None and said in warning
        assert warning.startswith("this kit's certificate (site-a) expires on 2027-12-01 12:00")
        assert warning.endswith("a new request) and extract it in place of this one before then")


def test_a_kits_lives_are_its_own_certificate_and_the_ca(
    provisioned_workspace: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The example project's certificates last 30 days: a start warns about them."""
    workspace = tmp_path / "site-a"
    extract_kit(
        provisioned_workspace.kit("site-a"), provisioned_workspace.password("site-a"), workspace
    )
    own, ca = kit_lives(workspace / STARTUP_DIR, load_client(workspace), "site-a")
    assert own.what == "this kit's certificate (site-a)" and ca.what == "the project CA"
    assert own.not_after - own.not_before == timedelta(days=30, minutes=5)  # 5 min of clock skew
    assert ca.not_after > own.not_after
    with caplog.at_level(logging.WARNING, "flcore.certlife"):
        check_lives([own, ca], datetime.now(UTC))
    [warning] = [r.getMessage() for r in caplog.records]
    assert warning.startswith("this kit's certificate (site-a) expires on ")
    with pytest.raises(ConfigError, match=r"^the project CA expired on .*: lead IT must provision"):
        check_lives([ca], ca.not_after)


def test_a_running_daemon_is_told_daily(caplog: pytest.LogCaptureFixture) -> None:
    days = iter([END - timedelta(days=40), END - timedelta(days=2), END + timedelta(days=1)])
    pauses: list[float] = []

    async def pause(seconds: float) -> None:
        pauses.append(seconds)
        if len(pauses) > 3:
            raise asyncio.CancelledError

    async def watch() -> None:
        with pytest.raises(asyncio.CancelledError):
            await watch_lives([OWN], lambda: next(days), pause)

    with caplog.at_level(logging.WARNING, "flcore.certlife"):
        asyncio.run(watch())
    assert pauses == [DAY_S] * 4
    said = [(r.levelname, r.getMessage().split(" UTC")[0]) for r in caplog.records]
    assert said == [
        ("WARNING", "this kit's certificate (site-a) expires on 2027-12-01 12:00"),
        ("ERROR", "this kit's certificate (site-a) expired on 2027-12-01 12:00"),
    ]


def test_the_server_warns_of_an_ending_peer_once_a_day(caplog: pytest.LogCaptureFixture) -> None:
    now = [END - timedelta(days=10)]
    peers = EndingPeers(lambda: now[0])
    ending = Identity("site-a", "hospital-a", KIND_CLIENT, valid_until=END)
    lasting = Identity("site-b", "hospital-b", KIND_CLIENT, valid_until=END + timedelta(days=90))
    with caplog.at_level(logging.WARNING, "flcore.certlife"):
        for identity in (ending, lasting, ending, Identity("x", "o", KIND_CLIENT)):
            peers.logged_in(identity)
        now[0] += timedelta(days=1)
        peers.logged_in(ending)
    said = [r.getMessage() for r in caplog.records]
    renew = (
        "lead IT must issue it a new kit (flprovision --reissue site-a, or sign its new request "
        "if it makes its own key) before then"
    )
    assert said == [
        f"the certificate of client site-a expires on 2027-12-01 12:00 UTC, in {days} days: {renew}"
        for days in (10, 9)
    ]


def ended_kit(
    provisioned: Any, name: str, subject: pki.Subject, into: Path, ago: timedelta = timedelta(40)
) -> datetime:
    """Extract ``name``'s kit into ``into`` with a 30-day certificate of the project's CA
    issued ``ago`` (one that ended, by default), sealed again by the CA as lead IT would
    have; returns when it ends."""
    extract_kit(provisioned.kit(name), provisioned.password(name), into)
    startup = into / STARTUP_DIR
    ca = Workspace(provisioned.root).require_ca()
    ended = pki.issue(ca, subject, "ecdsa-p256", 30, datetime.now(UTC) - ago)
    (startup / "client.crt").write_bytes(pki.cert_pem(ended.cert))
    (startup / "client.key").write_bytes(pki.key_pem(ended.key))
    files = {k: v for k, v in read_startup(startup).items() if k != SIGNATURE_FILE}
    (startup / SIGNATURE_FILE).write_bytes(sign_files(files, ca.key))
    return ended.cert.not_valid_after_utc


def test_a_daemon_whose_certificate_ended_refuses_to_start_and_says_why(
    provisioned_workspace: Any, tmp_path: Path
) -> None:
    """A kit of the project's CA, sealed by it, whose certificate ended: before, the daemon
    started and every handshake failed with gRPC's "handshake failed"."""
    workspace = tmp_path / "site-a"
    subject = pki.Subject("site-a", "hospital-a", KIND_CLIENT)
    end = ended_kit(provisioned_workspace, "site-a", subject, workspace)
    daemon = subprocess.run(
        [sys.executable, "-m", "flclientd", "--workspace", str(workspace)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert daemon.returncode == 2
    assert f"this kit's certificate (site-a) expired on {end:%Y-%m-%d %H:%M} UTC: ask lead IT" in (
        daemon.stderr
    )
    assert "Traceback" not in daemon.stderr


def test_a_daemon_whose_clock_is_behind_its_certificate_exits_to_be_started_again(
    provisioned_workspace: Any, tmp_path: Path
) -> None:
    """A host that boots with its clock wrong has it set by NTP soon after: exit 3, which
    systemd restarts, where exit 2 left the unit failed for good."""
    workspace = tmp_path / "site-a"
    subject = pki.Subject("site-a", "hospital-a", KIND_CLIENT)
    ended_kit(provisioned_workspace, "site-a", subject, workspace, -timedelta(days=1))
    daemon = subprocess.run(
        [sys.executable, "-m", "flclientd", "--workspace", str(workspace)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert daemon.returncode == 3
    assert "this kit's certificate (site-a) is valid from " in daemon.stderr
    assert "set the clock right (NTP); exiting to be started again" in daemon.stderr


def test_an_admin_kit_that_ended_is_refused_and_one_that_ends_soon_is_said(
    provisioned_workspace: Any, tmp_path: Path
) -> None:
    """The console would have shown the server's handshake failing, nothing about the kit."""
    admin = "lead@example.org"
    soon = tmp_path / "soon"
    extract_kit(provisioned_workspace.kit(admin), provisioned_workspace.password(admin), soon)
    kit = load_kit(soon / STARTUP_DIR)
    [warning] = kit_warnings(soon / STARTUP_DIR, kit)
    assert warning.startswith(f"this kit's certificate ({admin}) expires on ")  # 30-day kits
    ended = tmp_path / "ended"
    end = ended_kit(
        provisioned_workspace, admin, pki.Subject(admin, "lead", KIND_ADMIN, "super"), ended
    )
    with pytest.raises(AdminError) as refused:
        load_kit(ended / STARTUP_DIR)
    assert str(refused.value).startswith(
        f"this kit's certificate ({admin}) expired on {end:%Y-%m-%d %H:%M} UTC: ask lead IT"
    )


def test_a_site_and_an_admin_whose_certificates_end_soon_are_warned_of_at_login(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    now = datetime.now(UTC)
    ca = pki.create_ca("p", "org", "ecdsa-p256", 3650, now)
    site = pki.issue(ca, pki.Subject("site-a", "org", KIND_CLIENT), "ecdsa-p256", 20, now)
    admin = pki.issue(
        ca, pki.Subject("lead@org", "org", KIND_ADMIN, "super"), "ecdsa-p256", 20, now
    )

    lasting = pki.issue(ca, pki.Subject("site-b", "org", KIND_CLIENT), "ecdsa-p256", 300, now)
    shown: list[Reply] = []

    async def scenario(server: FLServer) -> None:
        server.login(identity_from_certificate(site.cert), "", MachineInfo())
        server.login(identity_from_certificate(lasting.cert), "", MachineInfo())
        server.admins.login(identity_from_certificate(admin.cert), "lead@org")
        commands = AdminCommands(server)
        shown.append(await commands.execute("lead@org", "super", "check_status server", 5, False))

    with caplog.at_level(logging.WARNING, "flcore.certlife"):
        on_server(tmp_path, scenario)
    said = [r.getMessage().split(" expires on ")[0] for r in caplog.records]
    assert said == ["the certificate of client site-a", "the certificate of admin lead@org"]
    # lead IT reads it in check_status server too, whenever it looks: the admin's as well
    end = site.cert.not_valid_after_utc
    [status] = shown
    assert (
        f"Certificates ending within 30 days: lead@org on {end:%Y-%m-%d}, site-a on {end:%Y-%m-%d}"
        in status.text
    )
    assert status.data["certificates_ending"] == {
        "lead@org": end.isoformat(),
        "site-a": end.isoformat(),
    }
    assert status.data["certificates_ending_count"] == 2


def test_check_status_server_names_the_kits_that_end_first_and_counts_the_rest(
    tmp_path: Path,
) -> None:
    """Kits issued together end together: a fleet's thousand made every status a thousand
    dates long, and 3 ms slower."""
    now = datetime.now(UTC)
    ca = pki.create_ca("p", "org", "ecdsa-p256", 3650, now)
    sites = [
        pki.issue(ca, pki.Subject(f"site-{i:02d}", "org", KIND_CLIENT), "ecdsa-p256", 29 - i, now)
        for i in range(ENDING_SHOWN + 2)
    ]
    admin = pki.issue(
        ca, pki.Subject("lead@org", "org", KIND_ADMIN, "super"), "ecdsa-p256", 300, now
    )
    shown: list[Reply] = []

    async def scenario(server: FLServer) -> None:
        for site in sites:
            server.login(identity_from_certificate(site.cert), "", MachineInfo())
        server.admins.login(identity_from_certificate(admin.cert), "lead@org")
        commands = AdminCommands(server)
        shown.append(await commands.execute("lead@org", "super", "check_status server", 5, False))

    on_server(tmp_path, scenario)
    [status] = shown
    first = sites[::-1][:ENDING_SHOWN]  # the shortest-lived end first
    names = [site.cert.subject.rfc4514_string().split("CN=")[1].split(",")[0] for site in first]
    assert list(status.data["certificates_ending"]) == names
    assert status.data["certificates_ending_count"] == ENDING_SHOWN + 2
    [line] = [line for line in status.text.splitlines() if line.startswith("Certificates ending")]
    assert line.startswith(f"Certificates ending within 30 days: {names[0]} on ")
    assert line.endswith(", and 2 more") and line.count(" on ") == ENDING_SHOWN


def test_the_servers_kit_is_renewed_with_all_the_others(
    provisioned_workspace: Any, tmp_path: Path
) -> None:
    """flprovision refuses to re-issue the server's kit alone: the advice is --force."""
    workspace = tmp_path / "server"
    extract_kit(
        provisioned_workspace.kit("server"), provisioned_workspace.password("server"), workspace
    )
    own, _ = kit_lives(workspace / STARTUP_DIR, load_server(workspace), "server")
    warning = own.warning(datetime.now(UTC))  # the example project's kits last 30 days
    assert warning is not None and "flprovision --force" in warning
    assert "--reissue" not in warning
