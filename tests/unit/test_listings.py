"""The read-only listings (list_runs, show_run, list_apps, list_admins) on a real FLServer
without gRPC: what they show, and that every page stays bounded."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from flcore import status as st
from flcore.appreview import review_app
from flcore.feed import RunInfo
from flcore.identity import KIND_ADMIN, Identity
from flserverd import listings
from flserverd.admins import AdminLogins
from flserverd.commands import AdminCommands, Reply
from flserverd.listings import PageError, page_of
from flserverd.server import FLServer
from flserverd.statedb import RoundSummary, RunRecord
from tests.unit.test_exchange import on_server

ADMIN = "lead@example.org"


async def execute(server: FLServer, line: str, role: str = "member") -> Reply:
    return await AdminCommands(server).execute(ADMIN, role, line, 5.0, False)


def record(number: int, **changes: object) -> RunRecord:
    base = RunRecord(number, st.STOPPED, "", "digits", 0, 10, 10, 9, 0.91, [], "finished")
    for key, value in changes.items():
        setattr(base, key, value)
    return base


def test_list_runs_pages_newest_first_and_names_runs_never_started(tmp_path: Path) -> None:
    async def scenario(server: FLServer) -> None:
        for number in range(1, 121):
            server.db.save_run(record(number, metric="val_accuracy", started_at=1.0e9))
        server.store.create_run(121)  # set, never started
        first = await execute(server, "list_runs")
        assert first.ok and first.data["pages"] == 3 and first.data["total"] == 121
        assert [r["run_number"] for r in first.data["runs"]][:2] == [121, 120]
        assert first.data["runs"][0]["status"] == st.NOT_STARTED
        lines = first.text.splitlines()
        assert lines[0].split() == ["run", "app", "rounds", "status", "best", "started", "ended"]
        assert re.split(r"  +", lines[2])[:5] == [
            "120",
            "digits",
            "10/10",
            "training stopped (finished)",
            "val_accuracy=0.9100 (round 9)",
        ]
        assert lines[-1] == "runs 1-50 of 121 (page 1 of 3; list_runs 2 for the next)"
        last = await execute(server, "list_runs 3")
        assert [r["run_number"] for r in last.data["runs"]] == list(range(21, 0, -1))
        assert last.text.splitlines()[-1] == "runs 101-121 of 121 (page 3 of 3)"
        for bad in ("list_runs 4", "list_runs 0", "list_runs x", "list_runs 1 2"):
            refused = await execute(server, bad)
            assert not refused.ok, bad
            assert "page must be" in refused.text or "usage: list_runs" in refused.text

    on_server(tmp_path, scenario)


def test_list_runs_says_why_the_current_run_is_paused() -> None:
    """A run paused by the server's disk reads as the header does, with the fault."""
    paused = record(4, status=st.STARTED, reason="", next_round=3, ended_at=5.0)
    view = RunInfo(4, st.PAUSED, "digits", fault="server disk full: state database")
    line = listings.run_line(4, paused, view, "digits")
    assert (line.status, line.ending) == (st.PAUSED, "server disk full: state database")
    assert line.ended_at == 0.0  # it has not ended
    text = listings.runs_text([line], page_of(None, 1, listings.PAGE))
    assert "training paused (server disk full: state database)" in text


def test_show_run_gives_each_sites_metrics_per_round_in_bounded_pages(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sites = ["site-a", "site-b", "site-c"]
    monkeypatch.setattr(listings, "MAX_CELLS", 6)  # two rounds of three sites to a page

    async def scenario(server: FLServer) -> None:
        server.store.create_run(2)
        done = record(2, num_rounds=5, next_round=5, best_round=5, metric="acc")
        for r in range(5):
            summary = RoundSummary(2, r, 1.0e9 + r, sites, {"acc": r / 5}, 1.5, 30)
            server.db.complete_round(record(2, next_round=r + 1), summary)
            for site in sites:
                noisy = {f"m{i:02d}": float(i) for i in range(40)}  # more than are shown
                server.db.record_folded(2, r, site, 10, noisy)
        server.db.complete_round(done, RoundSummary(2, 5, 2.0e9, sites, {"acc": 0.99}, final=True))
        reply = await execute(server, "show_run 2")
        assert reply.ok and reply.data["pages"] == 3 and reply.data["total"] == 6
        rounds = reply.data["rounds"]
        assert [r["round"] for r in rounds] == [0, 1]
        assert sorted(rounds[0]["sites"]) == sites
        assert rounds[0]["sites"]["site-a"]["samples"] == 10
        assert list(rounds[0]["sites"]["site-a"]["metrics"]) == [f"m{i:02d}" for i in range(16)]
        lines = reply.text.splitlines()
        assert lines[0] == "Run 2 · digits · training stopped (finished)"
        assert lines[1] == "Best global model: acc=0.9100 (final model)"
        assert lines[2] == "round 0: acc=0.0000 · 1.5s"
        assert lines[3].startswith("  site-a: 10 samples m00=0.0000 m01=1.0000")
        assert lines[-1] == "rounds 1-2 of 6 (page 1 of 3; show_run 2 2 for the next)"
        middle = await execute(server, "show_run 2 2")
        assert [r["round"] for r in middle.data["rounds"]] == [2, 3]
        assert sorted(middle.data["rounds"][1]["sites"]) == sites
        last = await execute(server, "show_run 2 3")
        assert last.data["rounds"][-1]["final"] is True
        assert "final validation: acc=0.9900" in last.text
        # The final model is validated on each site's validation data, its metrics weighed
        # by the site's training samples: not a count of samples validated.
        server.db.record_folded(2, 5, "site-a", 10, {"acc": 0.99})
        final = (await execute(server, "show_run 2 3")).text.splitlines()
        assert final[-2] == "  site-a: weight 10 acc=0.9900"
        missing = await execute(server, "show_run 9")
        assert not missing.ok
        assert missing.text == "there is no run 9 on this server (list_runs lists them)"
        assert not (await execute(server, "show_run")).ok
        assert not (await execute(server, "show_run 2 4")).ok

    on_server(tmp_path, scenario)


def test_a_long_failure_is_clipped_in_list_runs_and_whole_in_show_run(tmp_path: Path) -> None:
    """One run's long failure must not widen every row of list_runs."""
    why = "server error: " + "the checkpoint folder could not be written, " * 12

    async def scenario(server: FLServer) -> None:
        server.db.save_run(record(1, started_at=1.0e9))
        server.db.save_run(record(2, status=st.STOPPED, reason=why, started_at=1.0e9))
        listed = (await execute(server, "list_runs")).text.splitlines()
        assert max(len(line) for line in listed[:-1]) < 200
        assert listed[1].startswith("2  ") and "…" in listed[1]
        shown = await execute(server, "show_run 2")
        assert shown.text.splitlines()[0] == f"Run 2 · digits · training stopped (failed: {why})"

    on_server(tmp_path, scenario)


def test_a_page_of_show_run_stays_far_below_the_message_limit() -> None:
    """However many sites: at most MAX_CELLS results of MAX_METRICS bounded names."""
    for sites in (1, 7, 300, 5000, 100_000):
        per_page = listings.rounds_per_page(sites)
        assert per_page >= 1 and (per_page * sites <= listings.MAX_CELLS or per_page == 1)
    metrics = {f"{i:03d}" + "m" * 500: 1.0 for i in range(100)}
    shown = listings.bounded_metrics(metrics)
    assert len(shown) == listings.MAX_METRICS
    assert all(len(name) <= listings.MAX_NAME for name in shown)


def test_list_apps_gives_size_and_the_digest_sites_approve(tmp_path: Path) -> None:
    apps = Path(__file__).resolve().parents[2] / "examples" / "apps"
    local = tmp_path / "digits_custom"
    shutil.copytree(apps / "digits_custom", local)
    (local / "resources" / "a name with spaces.txt").write_text("notes")
    (local / "resources" / "__pycache__").mkdir()  # never uploaded, so never hashed
    (local / "resources" / "__pycache__" / "x.pyc").write_bytes(b"\0")

    async def scenario(server: FLServer) -> None:
        folder = server.store.transfer / "digits_custom"
        shutil.copytree(local, folder, ignore=shutil.ignore_patterns("__pycache__"))
        (server.store.transfer / ".upload-123").mkdir()  # an upload in progress is no app
        reply = await execute(server, "list_apps")
        assert reply.ok and [a["name"] for a in reply.data["apps"]] == ["digits_custom"]
        app = reply.data["apps"][0]
        assert app["size"] == sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
        assert reply.text.splitlines()[1].startswith("digits_custom  ")
        assert app["sha256"] in reply.text
        # The digest a site approves, and the documented command on the admin's copy.
        assert app["sha256"] == review_app(folder, "digits_custom").digest
        done = subprocess.run(
            [sys.executable, "-m", "flcore.appreview", str(local)],
            capture_output=True,
            text=True,
            check=True,
        )
        assert done.stdout == f"sha256:{app['sha256']}  {local}\n"
        (folder / "config" / "extra.json").write_text("{}")
        assert review_app(folder, "digits_custom").digest != app["sha256"]

    on_server(tmp_path, scenario)


def test_list_admins_says_who_is_logged_in_and_what_they_ran_last() -> None:
    now = [1000.0]
    logins = AdminLogins(clock=lambda: now[0], ticks=lambda: now[0])
    lead = Identity(ADMIN, "lead", KIND_ADMIN, "super")
    viewer = Identity("viewer@example.org", "lead", KIND_ADMIN, "member")
    logins.login(lead, ADMIN)
    logins.login(lead, ADMIN)  # fltui --cmd logs in each time
    logins.login(viewer, "viewer@example.org")
    logins.ran(ADMIN, "start server", True)
    with logins.watching(ADMIN):
        assert logins.users() == [ADMIN, "viewer@example.org"]
        seen = logins.seen(ADMIN)
        assert (seen.role, seen.logins, seen.consoles) == ("super", 2, 1)
        assert (seen.last_command, seen.last_ok) == ("start server", True)
    assert logins.seen(ADMIN).consoles == 0
    now[0] += 13 * 3600  # idle logins are forgotten
    assert logins.users() == []


def test_page_numbers() -> None:
    assert page_of(None, 0, 50).pages == 1
    assert page_of("2", 51, 50).start == 50
    with pytest.raises(PageError, match="from 1 to 2"):
        page_of("3", 51, 50)
