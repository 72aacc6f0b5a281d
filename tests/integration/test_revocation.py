"""Revocation that bites, between real daemons over mutual TLS: load_crl, revoke, and what
a revoked site or admin can still do (nothing)."""

from __future__ import annotations

import asyncio
import re
import shutil
import signal
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest

from fladmin.client import AdminClient, AdminError, load_kit
from flcore import status as st
from flcore.feedwire import events_from_proto
from fldev.cluster import ADMIN, MEMBER, SERVER_READY, Cluster, Daemon
from fldev.poll import wait_until, wait_until_async
from flserverd.revocation import CLOCK_SLACK_S
from provision import extract_kit, provision_workspace
from provision.revocation import revoke
from tests.flprovision import flprovision
from tests.integration.test_admin import fltui

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

EXIT_REFUSED = 2
STAMP = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ", re.MULTILINE)


def _logged_at(daemon: Daemon, pattern: str) -> datetime:
    """When a daemon logged the line matching ``pattern`` (its log's own time stamp)."""
    line = daemon.wait_log(rf"(?m)^.*{pattern}.*$").group(0)
    stamp = STAMP.match(line)
    assert stamp is not None, line
    return datetime.strptime(stamp.group(1), "%Y-%m-%d %H:%M:%S,%f")


def _provisioning(cluster: Cluster) -> Path:
    return cluster.root / "provision"


def test_a_revoked_site_is_dropped_within_a_heartbeat_and_cannot_log_in_again(
    cluster: Cluster,
) -> None:
    server = cluster.server()
    one = cluster.client("flclient1")
    two = cluster.client("flclient2")
    interval = cluster.settings["heartbeat_interval"]
    revoked = flprovision(
        "revoke",
        "flclient1",
        "-w",
        str(_provisioning(cluster)),
        "--reason",
        "key-compromise",
        cwd=cluster.root,
    )
    assert revoked.returncode == 0, revoked.stderr
    crl = _provisioning(cluster) / "crl.pem"

    async def watch_the_feed() -> list[object]:
        """What a console sees while lead IT loads the list."""
        startup = cluster.kit()
        console = AdminClient(startup, load_kit(startup), ADMIN)
        await console.login()
        seen: list[object] = []

        async def follow() -> None:
            async for message in console.events():
                seen.extend(event.body for event in events_from_proto(message))

        feed = asyncio.ensure_future(follow())
        try:
            await wait_until_async(lambda: seen, 30, "the snapshot")
            loaded = await asyncio.to_thread(fltui, cluster, "--cmd", f"load_crl {crl}")
            assert loaded.returncode == 0, loaded.stdout + loaded.stderr
            assert "Loaded revocation list number 1: 1 certificate(s) revoked" in loaded.stdout
            assert "Disconnected and removed: flclient1" in loaded.stdout
            await wait_until_async(
                lambda: any(getattr(b, "reason", "") == st.REVOKED for b in seen),
                10,
                "the console to hear that flclient1 is gone",
            )
        finally:
            feed.cancel()
            await console.close()
        return seen

    seen = asyncio.run(watch_the_feed())
    rows = [b for b in seen if getattr(b, "instance", "") == "flclient1"]
    assert getattr(rows[-2], "status", "") == st.REVOKED  # its last row, then it is gone
    loaded_at = _logged_at(server, "revocation list number 1 loaded")
    dropped_at = _logged_at(one, "the server ended this client's registration: certificate revoked")
    assert dropped_at - loaded_at < timedelta(seconds=interval)

    # Its login is refused with the reason, and the daemon stops (systemd must not loop it).
    assert one.wait(30) == EXIT_REFUSED
    assert re.search(
        r"the server refused this client: the certificate of flclient1 \(serial [0-9a-f]+\) "
        r"is revoked by the project's revocation list \(number 1\)",
        one.log(),
    )
    offset = len(one.log())
    one.start()
    assert one.wait(30) == EXIT_REFUSED
    assert "the server refused this client" in one.log()[offset:]

    state = cluster.status()
    assert [c["instance"] for c in state["clients"]] == ["flclient2"]
    assert state["revocation"]["crl_number"] == 1 and state["revocation"]["crl_revoked"] == 1
    assert two.alive() and server.alive()

    # The list is kept: a restarted server refuses the kit just the same.
    server.signal(15)
    assert server.wait(30) == 0
    server.restart(SERVER_READY)
    one.start()
    assert one.wait(30) == EXIT_REFUSED
    assert "Revocation list: number 1, 1 revoked" in cluster.ok("check_status server").text


def test_a_revoked_admin_is_logged_out_and_refused(cluster: Cluster) -> None:
    server = cluster.server()

    async def member_feed_ends() -> grpc.aio.AioRpcError | AdminError:
        startup = cluster.kit(MEMBER)
        console = AdminClient(startup, load_kit(startup), MEMBER)
        await console.login()
        try:
            events = console.events()
            await anext(events)  # the snapshot: the feed is live
            revoked = await asyncio.to_thread(fltui, cluster, "--yes", "--cmd", f"revoke {MEMBER}")
            assert revoked.returncode == 0, revoked.stdout
            assert f"{MEMBER} is revoked on this server" in revoked.stdout
            assert f"Admins logged out: {MEMBER}" in revoked.stdout  # said, not only done
            assert f"flprovision revoke {MEMBER}" in revoked.stdout
            try:
                async for _ in events:
                    pass
            except AdminError as exc:
                return exc
            raise AssertionError("the revoked admin's feed went on")
        finally:
            await console.close()

    ended = asyncio.run(member_feed_ends())
    assert f"{MEMBER} was revoked on this server by {ADMIN}" in str(ended)

    refused = fltui(cluster, "--cmd", "check_status server", user=MEMBER)
    assert refused.returncode == 2
    assert f"login refused: {MEMBER} was revoked on this server" in refused.stderr

    # Nobody revokes the server, nor the kit they are logged in with.
    for line, words in (
        ("revoke server", "'server' is this server: its certificate cannot be revoked"),
        (f"revoke {ADMIN}", "another super admin must do it"),
        ("revoke ../../x", "is not a client name or an admin's email"),
    ):
        (outcome,) = cluster.admin(line, confirmed=True)
        assert not outcome.ok and words in outcome.text, outcome.text
    (asked,) = cluster.admin("revoke flclient1")
    assert not asked.ok and "Are you sure (Y/N):" in asked.confirm_prompt
    assert cluster.status()["revocation"]["revoked_here"] == [MEMBER]

    # Lead IT's list catches up: it revokes the certificate too; the console's refusal stays.
    done = flprovision("revoke", MEMBER, "-w", str(_provisioning(cluster)), cwd=cluster.root)
    assert done.returncode == 0, done.stderr
    cluster.ok(f"load_crl {_provisioning(cluster) / 'crl.pem'}")
    assert cluster.status()["revocation"]["revoked_here"] == [MEMBER]
    refused = fltui(cluster, "--cmd", "check_status server", user=MEMBER)
    assert refused.returncode == 2 and "revocation list (number 1)" in refused.stderr
    assert server.alive()


def test_a_kit_revoked_before_its_first_use_stays_out_and_its_replacement_works(
    cluster: Cluster,
) -> None:
    """A site's kit is stolen before the site first connected, and an admin revokes it at the
    console. The server never saw its serial, so the next list lead IT signs (for another
    kit) must not let it in, as it did; a kit issued to the site after the revocation works
    without waiting for any list, and one issued within minutes after it does not (lead IT's
    clock may be ahead of the server's)."""
    server = cluster.server()
    (revoked,) = cluster.admin("revoke flclient2", confirmed=True)
    assert revoked.ok, revoked.text
    revoked_at = time.time()
    done = flprovision("revoke", "flclient1", "-w", str(_provisioning(cluster)), cwd=cluster.root)
    assert done.returncode == 0, done.stderr
    cluster.ok(f"load_crl {_provisioning(cluster) / 'crl.pem'}")
    stolen = cluster.client("flclient2", wait=False)
    assert stolen.wait(30) == EXIT_REFUSED
    assert "flclient2 was revoked on this server by" in stolen.log()

    workspace = cluster.root / "flclient2"
    (workspace / "startup").rename(workspace / "startup.stolen")

    def reissue(now: datetime) -> None:
        renewal = provision_workspace(
            cluster.project, _provisioning(cluster), now=now, reissue="flclient2"
        )
        [kit] = renewal.written
        assert kit.password is not None
        shutil.rmtree(workspace / "startup", ignore_errors=True)
        extract_kit(kit.zip_path, kit.password, workspace)

    reissue(datetime.now(UTC))  # within the server's allowance for lead IT's clock
    early = cluster.client("flclient2", wait=False)
    assert early.wait(30) == EXIT_REFUSED
    assert "one issued after" in early.log()
    # Issued a full allowance after the revocation (its certificate starts 5 minutes before
    # its issue, so it is valid now): the replacement. Times have whole seconds.
    wait_until(lambda: time.time() > revoked_at + 3, 10, "3 s after the revocation")
    reissue(datetime.now(UTC) + timedelta(seconds=CLOCK_SLACK_S - 2))
    cluster.client("flclient2")
    loaded = cluster.ok(f"load_crl {_provisioning(cluster) / 'crl.pem'}")  # the re-issues'
    assert "Disconnected and removed" not in loaded.text
    status = cluster.ok("check_status server clients")
    assert status.data["revocation"]["revoked_here"] == ["flclient2"]
    assert re.search(r"Revoked on this server: flclient2 \(by .*; a kit issued after", status.text)
    assert [c["instance"] for c in status.data["clients"]] == ["flclient2"]
    assert server.alive()


def test_a_stale_list_is_still_enforced_with_a_warning_and_an_older_one_is_refused(
    cluster: Cluster,
) -> None:
    server = cluster.server()
    workspace = _provisioning(cluster)
    # Signed three days ago with a next update one day later: stale on arrival.
    stale = revoke(workspace, "flclient1", days=1, now=datetime.now(UTC) - timedelta(days=3))
    kept = workspace / "crl-3-days-old.pem"
    kept.write_bytes(stale.path.read_bytes())
    loaded = cluster.ok(f"load_crl {kept}")
    assert "Warning: the revocation list is stale" in loaded.text
    assert "flprovision crl" in loaded.text and loaded.data["stale"] is True
    server.wait_log("WARNING flserverd.revocation: the revocation list is stale")
    client = cluster.client("flclient1", wait=False)
    assert client.wait(30) == EXIT_REFUSED
    assert "is revoked by the project's revocation list (number 1)" in client.log()
    status = cluster.ok("check_status server")
    assert "Warning: the revocation list is stale" in status.text
    assert status.data["revocation"]["stale"] is True

    fresh = flprovision("crl", "-w", str(workspace), cwd=cluster.root)
    assert fresh.returncode == 0, fresh.stderr
    assert "stale" not in cluster.ok(f"load_crl {workspace / 'crl.pem'}").text
    (older,) = cluster.admin(f"load_crl {kept}")
    assert not older.ok
    assert "number 1, and this server holds number 2" in older.text
    (foreign,) = cluster.admin(f"load_crl {cluster.kit() / 'client.crt'}")
    assert not foreign.ok and "is not a revocation list" in foreign.text
    # A mistyped path beside crl.pem: the kit's key never leaves the admin's machine.
    (key,) = cluster.admin(f"load_crl {cluster.kit() / 'client.key'}")
    assert not key.ok and "is not a revocation list (crl.pem" in key.text
    (missing,) = cluster.admin(f"load_crl {workspace / 'nope.pem'}")
    assert not missing.ok and "cannot read" in missing.text
    assert cluster.status()["revocation"]["crl_number"] == 2
    assert server.alive()


def test_a_site_renews_its_kit_mid_run_as_the_guide_says_and_the_old_one_is_revoked(
    cluster: Cluster,
) -> None:
    """docs/operations.md, "Certificates end": lead IT re-issues the kit, the site moves
    startup/ away, extracts the new kit into the same workspace and restarts; lead IT loads
    the list that revokes the old certificate. The site keeps its registration and its run."""
    cluster.server()
    one = cluster.client("flclient1")
    cluster.client("flclient2")
    cluster.configure("config_fed_client.json", local_epochs=1)
    cluster.prepare_run(1, num_rounds=6, min_num_clients=2, wait_after_min_clients=30)
    cluster.ok("start server")
    cluster.ok("start client")
    wait_until(lambda: len(cluster.metrics()) >= 1, 120, "a first round")
    renewal = provision_workspace(cluster.project, _provisioning(cluster), reissue="flclient1")
    [kit] = renewal.written
    assert kit.password is not None
    one.signal(signal.SIGTERM)
    assert one.wait(30) == 0
    workspace = cluster.root / "flclient1"
    (workspace / "startup").rename(workspace / "startup.old")
    extract_kit(kit.zip_path, kit.password, workspace)
    one.restart("Resumed registration as flclient1")
    loaded = fltui(cluster, "--cmd", f"load_crl {_provisioning(cluster) / 'crl.pem'}")
    assert loaded.returncode == 0, loaded.stdout + loaded.stderr
    assert "1 certificate(s) revoked" in loaded.stdout
    assert "Disconnected and removed" not in loaded.stdout  # no one holds the old one now
    wait_until(
        lambda: cluster.run_state()["server_status"] == "training stopped", 180, "the run to end"
    )
    assert cluster.run_state()["reason"] == "finished"
    rows = [r for r in cluster.metrics() if not r.get("final")]
    assert [r["round"] for r in rows] == list(range(6))
    assert all(r["clients"] == ["flclient1", "flclient2"] for r in rows)
    assert one.alive()
