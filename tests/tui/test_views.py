"""The site log view, and what the smaller screens owe an operator.

A site's own lines with wrap, search, save and follow (``l``); the client
screen kept current; every screen saying how to close it; the validation
matrix explaining its empty diagonal; the palette listing Quit once; a
screenshot that needs no ``~/Downloads`` (issue 10, defect 11).
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path

import pytest
from textual.widgets import Input

from flcore.feed import LogEntry
from fldev.poll import wait_for
from fltui.screens.client import ClientScreen
from fltui.screens.help import HelpScreen
from fltui.screens.sitelogs import SiteLogScreen
from fltui.screens.validation import ValidationScreen
from fltui.widgets.logview import LogView
from tests.tui.helpers import burst, screen_lines, shown
from tests.tui.recorded import NOW
from tests.tui.test_console import console, ready

LONG = "epoch 3: " + " ".join(f"loss={i / 10:.2f}" for i in range(40))


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
            await wait_for(pilot, lambda: "(aborted by admin)" in str(header.render()))
            assert "■ training stopped (aborted by admin)" in str(header.render())
            assert str(updates.render()) == "Stopped: aborted by admin\nFailed: flclient3"
            link.push(replace(stopped, reason="finished", failed_sites=()))
            await wait_for(pilot, lambda: str(updates.render()) == "Finished all rounds")

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
