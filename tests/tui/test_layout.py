"""Panes that show all they hold, at every size: re-layout, separators, logs, 80x24 to 200x50.

Issue 10, defects 2, 7 and 12: a widget that re-laid out only when its
number of lines changed cut text that wrapped or grew; fields separated by
spaces alone read as one word; the logs pane lost its end after a resize;
80x24 hid the columns an operator needs.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from rich.cells import cell_len
from textual.widget import Widget
from textual.widgets import Static

from flcore.feed import FeedEvent, LogEntry, Snapshot
from fldev.poll import wait_for
from fltui.connection import DISCONNECTED, Connection
from fltui.widgets.clients import ClientsTable
from fltui.widgets.logview import LogView
from tests.tui.helpers import reader_lines, screen_lines
from tests.tui.recorded import CLIENTS, NOW, RUN, SERVER, recorded_events
from tests.tui.test_console import console, ready

SIZES = [(80, 24), (120, 36), (200, 50)]
ids = [f"{w}x{h}" for w, h in SIZES]


def fits(widget: Static) -> bool:
    """Whether the widget got the height its text needs at its width (and the width, if auto)."""
    parent = widget.parent
    assert isinstance(parent, Widget)
    have = widget.content_size
    width = have.width
    if widget.styles.width is not None and widget.styles.width.is_auto:
        width = widget.get_content_width(parent.size, widget.app.size)
        if width != have.width:
            return False
    return widget.get_content_height(parent.size, widget.app.size, width) == have.height


def with_events(*bodies: Any) -> list[FeedEvent]:
    events = recorded_events()
    seq = events[-1].seq
    return [*events, *(FeedEvent(seq + i, NOW, body) for i, body in enumerate(bodies, 1))]


@pytest.mark.parametrize("size", SIZES, ids=ids)
def test_a_pane_whose_text_wraps_longer_gets_the_room(
    tmp_path: Path, size: tuple[int, int]
) -> None:
    """More awaited clients wrap onto another line with the same newline count: all show."""
    awaited = ("flclient2", "flclient1_1", "site-b", "flclient3", "flclient9")
    longer = replace(RUN, awaited=awaited)

    async def scenario() -> None:
        app, link = console(tmp_path)
        async with app.run_test(size=size) as pilot:
            await ready(pilot)
            await pilot.pause()
            link.push(longer)
            await wait_for(pilot, lambda: app.store.run.awaited == awaited)
            updates = app.dashboard.query_one("#round-updates", Static)
            await wait_for(pilot, lambda: "flclient9" in str(updates.render()))
            await pilot.pause()
            assert fits(updates), (updates.content_size, str(updates.render()))

    asyncio.run(scenario())


@pytest.mark.parametrize("size", SIZES, ids=ids)
def test_the_header_shows_the_whole_link_state(tmp_path: Path, size: tuple[int, int]) -> None:
    """``● connected`` to ``✖ disconnected`` is the same line count but needs more room."""

    async def scenario() -> None:
        app, _ = console(tmp_path)
        async with app.run_test(size=size) as pilot:
            await ready(pilot)
            link = app.dashboard.query_one("#header-link", Static)
            assert cell_len(str(link.render())) == len("● connected")
            app.publish(Connection(DISCONNECTED, NOW, "gone", NOW + 4, 1))
            await wait_for(pilot, lambda: str(link.render()) == "✖ disconnected")
            await pilot.pause()
            assert fits(link)
            assert screen_lines(app)[0].rstrip().endswith("✖ disconnected")

    asyncio.run(scenario())


@pytest.mark.parametrize("size", SIZES, ids=ids)
def test_the_banner_is_never_cut(tmp_path: Path, size: tuple[int, int]) -> None:
    """A long reason wraps the banner onto more lines; each of them shows."""
    reason = "cannot connect to the server at fl.example.org:8003: " + "no route to host " * 6

    async def scenario() -> None:
        app, _ = console(tmp_path)
        async with app.run_test(size=size) as pilot:
            await ready(pilot)
            app.publish(Connection(DISCONNECTED, NOW, "refused", NOW + 4, 1))
            banner = app.dashboard.query_one("#banner", Static)
            await wait_for(pilot, lambda: banner.display)
            await pilot.pause()
            app.publish(Connection(DISCONNECTED, NOW, reason, NOW + 8, 2))
            await wait_for(pilot, lambda: "(attempt 2)" in str(banner.render()))
            await pilot.pause()
            assert fits(banner)
            shown = " ".join(line.strip("│ ") for line in screen_lines(app))
            assert "(attempt 2) · r now" in shown

    asyncio.run(scenario())


def test_fields_never_run_together_when_read_back(tmp_path: Path) -> None:
    """Every field is separated by a glyph: a reader that drops leading spaces still sees words."""
    run = replace(RUN, app="digits_slow", current_round=8, num_rounds=12)
    events = recorded_events()
    snapshot = events[0].body
    assert isinstance(snapshot, Snapshot)
    events[0] = FeedEvent(events[0].seq, events[0].time, replace(snapshot, run=run))

    async def scenario() -> str:
        app, _ = console(tmp_path, events, project="tui_review", target="localhost:38387")
        async with app.run_test(size=(120, 36)) as pilot:
            await ready(pilot)
            await wait_for(
                pilot,
                lambda: "digits_slow" in str(app.dashboard.query_one("#round-title").render()),
            )
            return app.export_screenshot()

    text = "\n".join(reader_lines(asyncio.run(scenario())))
    for glued in ("hospitalslocalhost", "localhost:38387admin", "startedround", "12digits_slow"):
        assert glued not in text, glued
    assert "round 8/12" in text and "digits_slow" in text


def test_the_logs_keep_their_end_after_a_resize_and_g_goes_there(tmp_path: Path) -> None:
    """Issue 10, defect 7: a following pane stays at the end through resizes; G always goes."""

    async def scenario() -> None:
        app, _ = console(tmp_path)
        async with app.run_test(size=(120, 36)) as pilot:
            await ready(pilot)
            logs = app.dashboard.query_one(LogView)
            for i in range(80):
                app.log_line("INFO", f"line {i}")
            await wait_for(pilot, lambda: logs.line_count == 88)
            await pilot.press("4")
            for size in ((120, 24), (120, 50), (90, 30)):
                await pilot.resize_terminal(*size)
                await wait_for(pilot, lambda: app.size == size)  # noqa: B023
                await pilot.pause()
                assert logs.follow and logs.is_vertical_scroll_end, size
                assert any("line 79" in line for line in screen_lines(app)), size
            logs.scroll_to(y=0, animate=False, immediate=True)
            logs.follow = True  # as a pane whose title says following but which shows old lines
            await pilot.press("G")
            assert logs.is_vertical_scroll_end
            logs.scroll_to(y=0, animate=False, immediate=True)
            logs.follow = True
            await pilot.press("end")
            assert logs.is_vertical_scroll_end

    asyncio.run(scenario())


def test_log_lines_are_drawn_in_time_order(tmp_path: Path) -> None:
    """Sites forward their lines late, each with its own time: each goes where it belongs."""
    late = LogEntry(NOW - 27, "INFO", "flclientd.agent", "a late line", "flclient2")

    async def scenario() -> None:
        app, link = console(tmp_path)
        async with app.run_test(size=(120, 36)) as pilot:
            await ready(pilot)
            await pilot.pause()
            link.push(late)
            logs = app.dashboard.query_one(LogView)
            await wait_for(pilot, lambda: logs.line_count == 9)
            times = [entry.time for entry in logs.entries]
            assert times == sorted(times)
            assert logs.entries[2].message == "a late line"

    asyncio.run(scenario())


@pytest.mark.parametrize("size", SIZES, ids=ids)
def test_every_size_keeps_what_operating_needs(tmp_path: Path, size: tuple[int, int]) -> None:
    """Issue 10, defect 12: the columns and keys an operator needs, and the room used well."""

    async def scenario() -> None:
        app, _ = console(tmp_path)
        async with app.run_test(size=size) as pilot:
            await ready(pilot)
            table = app.dashboard.query_one(ClientsTable)
            shown = table.columns_shown
            assert {"instance", "health", "training", "beat", "round"} <= set(shown), shown
            assert sum(column.width for column in table.columns.values()) <= table.size.width
            footer = screen_lines(app)[-1]
            for key in (": Command", "/ Filter", "? Help", "q Quit"):
                assert key in footer, footer
            logs = app.dashboard.query_one(LogView)
            assert logs.size.width >= app.size.width - 2  # log messages get the whole width
            if size[0] >= 200:
                assert {"app", "org"} <= set(shown)
                assert app.dashboard.query_one("#right").size.width > 50
            drawn = "\n".join(screen_lines(app))
            for instance in ("flclient1", "flclient2", "flclient3", "flclient1_1", "site-b"):
                assert instance in drawn

    asyncio.run(scenario())


def test_z_maximises_the_focused_pane_and_a_hidden_pane_opens_maximised(tmp_path: Path) -> None:
    async def scenario() -> None:
        app, _ = console(tmp_path)
        async with app.run_test(size=(80, 24)) as pilot:
            await ready(pilot)
            screen = app.dashboard
            await pilot.press("z")
            assert screen.maximized is screen.query_one("#clients-pane")
            await pilot.press("z")
            assert screen.maximized is None
            heartbeats = screen.query_one("#heartbeats")
            assert not heartbeats.display  # 24 rows leave no room for it
            await pilot.press("3")
            assert screen.maximized is heartbeats and heartbeats.display
            assert any("flclient1_1" in line for line in screen_lines(app))
            await pilot.press("escape")
            assert screen.maximized is None and not heartbeats.display
            await pilot.press("4", "z")
            assert screen.maximized is screen.query_one(LogView)

    asyncio.run(scenario())


@pytest.mark.parametrize("size", [(80, 24), (200, 50)], ids=["80x24", "200x50"])
def test_site_names_too_long_to_show_keep_the_end_that_tells_them_apart(
    tmp_path: Path, size: tuple[int, int]
) -> None:
    """``hospital-ab`` and ``hospital-ab_1`` both read ``hospital-ab`` in the logs, and longer
    names lost their instance number in the heartbeats and the clients table: a cut name
    keeps its end, and a mark says it was cut."""
    names = ("hospital-ab", "hospital-ab_1", "hospital-north_1", "hospital-north_2")
    rows = tuple(replace(CLIENTS[0], instance=name, client_name=name) for name in names)
    logs = tuple(LogEntry(NOW - 1, "INFO", "agent", f"hello from {name}", name) for name in names)
    events = [FeedEvent(100, NOW - 1, Snapshot(SERVER, RUN, rows, logs))]

    async def scenario() -> None:
        app, _ = console(tmp_path, events)
        async with app.run_test(size=size) as pilot:
            table = app.dashboard.query_one(ClientsTable)
            await wait_for(pilot, lambda: app.connected and table.row_count == len(names))
            cells = {name: str(table.get_cell(name, "instance")) for name in names}
            if size[0] >= 200:  # room to spare widens the column: the names show whole
                whole = {name: f"  {name}" for name in names}

                def shown_whole() -> bool:
                    return all(str(table.get_cell(n, "instance")) == whole[n] for n in names)

                await wait_for(pilot, shown_whole)
            else:
                assert cells == {
                    "hospital-ab": "  hospital-ab",
                    "hospital-ab_1": "  hosp…l-ab_1",
                    "hospital-north_1": "  hosp…orth_1",
                    "hospital-north_2": "  hosp…orth_2",
                }
            await pilot.press("3")  # hidden below 30 rows: 3 opens it maximised
            if app.dashboard.maximized is None:
                await pilot.press("z")
            lanes = [line.strip("│ ").split(" ")[0] for line in screen_lines(app)]
            for shown in ("hospital-ab", "hospital-ab_1", "hospit…orth_1", "hospit…orth_2"):
                assert shown in lanes
            await pilot.press("escape", "4", "z")
            lines = screen_lines(app)
            for name, source in zip(
                names, ("hospital-ab", "hospi…-ab_1", "hospi…rth_1", "hospi…rth_2"), strict=True
            ):
                assert any(f"{source} INFO" in ln and f"from {name}" in ln for ln in lines)

    asyncio.run(scenario())
