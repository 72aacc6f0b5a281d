"""The console's behaviour on a replayed feed: keys, dialogs, filters, reconnects, login.

No server here (see test_live.py for that): a ReplayLink plays a recorded
run and records the command lines the keys send.
"""

from __future__ import annotations

import asyncio
import math
import re
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from rich.style import Style
from textual.widgets import DataTable, Input

from fladmin.client import AdminError, CommandReply
from fladmin.link import AdminLink
from flcore.feed import ClientGone, ClientRow, FeedEvent, LogEntry, Snapshot
from flcore.proto.gen import flstack_admin_pb2 as admin_pb2
from flcore.proto.gen import flstack_common_pb2 as common_pb2
from fldev.poll import wait_for
from fldev.replay import ReplayLink, confirming, ok_reply
from fltui import store as store_module
from fltui.app import ConsoleApp
from fltui.connection import CONNECTED, DISCONNECTED, Connection
from fltui.screens.client import ClientScreen
from fltui.screens.dialogs import ChoiceScreen, ConfirmScreen, PromptScreen
from fltui.screens.help import HelpScreen
from fltui.screens.login import LoginScreen
from fltui.screens.validation import ValidationScreen
from fltui.widgets.clients import ClientsTable
from fltui.widgets.commandline import CommandLine
from fltui.widgets.logview import LogView
from fltui.wizard.screen import WizardScreen
from tests.tui.helpers import screen_lines, shown
from tests.tui.recorded import CLIENTS, LISTINGS, NOW, RUN, recorded_events

MATRIX = {
    "run_number": 1,
    "metric": "val_accuracy",
    "metric_modes": {"val_accuracy": "max"},
    "rows": ["global", "flclient1", "flclient2"],
    "columns": ["flclient1", "flclient2"],
    "cells": {
        "global": {
            "flclient1": {"metrics": {"val_accuracy": 0.97}, "error": ""},
            "flclient2": {"metrics": {"val_accuracy": 0.95}, "error": ""},
        },
        "flclient1": {"flclient2": {"metrics": {"val_accuracy": 0.91}, "error": ""}},
        "flclient2": {"flclient1": {"metrics": {}, "error": "model does not fit the data"}},
    },
    "notes": {"site-b": "does not take part (cross_validate is off)"},
}


def answers(line: str, confirmed: bool) -> CommandReply:
    """The server's answers: validate and the listings have data, the rest just succeeds."""
    if line == "validate all":
        return CommandReply(line, True, "Cross-site validation of run 1", MATRIX, 10, "")
    if line in LISTINGS:
        return CommandReply(line, True, f"{line}: the listing", LISTINGS[line], 10, "")
    return ok_reply(line, confirmed)


reply = confirming(CLIENTS, RUN, answers)
"""The server's answers, with its questions before an abort or a shutdown."""


def stopped_run() -> list[FeedEvent]:
    """The recorded run, then the server stops training (so a new run number may be set)."""
    events = recorded_events()
    stopped = replace(RUN, server_status="training stopped", awaited=(), wait_deadline=0.0)
    return [*events, FeedEvent(events[-1].seq + 1, NOW, stopped)]


def console(
    tmp_path: Path, events: list[FeedEvent] | None = None, **kwargs: Any
) -> tuple[ConsoleApp, ReplayLink]:
    """An app on the recorded run, with a transfer/ folder holding two apps."""
    transfer = tmp_path / "transfer"
    for app in ("digits_fedavg", "digits_custom"):
        (transfer / app / "config").mkdir(parents=True)
    feed = recorded_events() if events is None else events
    link = ReplayLink(feed, kwargs.pop("reply", reply), transfer_dir=transfer, **kwargs)
    return ConsoleApp(link, clock=lambda: NOW, flush_s=0.05), link


async def ready(pilot: Any) -> None:
    """Wait for the snapshot to be drawn."""
    app = pilot.app
    await wait_for(
        pilot, lambda: app.connected and app.dashboard.query_one(ClientsTable).row_count == 5
    )


async def choose(pilot: Any, label_part: str) -> None:
    """Pick the option whose label contains ``label_part`` in the open picker."""
    await wait_for(pilot, lambda: isinstance(pilot.app.screen, ChoiceScreen))
    options = pilot.app.screen.query_one("OptionList")
    for index in range(options.option_count):
        if label_part in str(options.get_option_at_index(index).prompt):
            options.highlighted = index
            break
    else:
        raise AssertionError(f"no option with {label_part!r}")
    await pilot.press("enter")


def sent(link: ReplayLink) -> list[str]:
    """Lines sent, confirmed ones marked with a trailing '!'."""
    return [line + ("!" if confirmed else "") for line, confirmed in link.sent]


def test_keys_send_their_commands(tmp_path: Path) -> None:
    async def scenario() -> None:
        app, link = console(tmp_path, stopped_run())
        async with app.run_test(size=(120, 36)) as pilot:
            await ready(pilot)
            await wait_for(pilot, lambda: app.store.run.server_status == "training stopped")
            await pilot.press("n")
            await shown(pilot, app, PromptScreen)
            await pilot.press("0")
            assert "a whole number" in str(app.screen.query_one("#prompt-hint").render())
            await pilot.press("backspace", "2", "enter")
            await pilot.press("u")
            await choose(pilot, "digits_fedavg")
            await pilot.press("d")
            await choose(pilot, "digits_custom")
            await choose(pilot, "the server")
            await pilot.press("d")
            await choose(pilot, "digits_custom")
            await choose(pilot, "all clients")
            await pilot.press("s")
            await choose(pilot, "the server")
            await pilot.press("t")
            await shown(pilot, app, PromptScreen)
            app.screen.query_one("Input", Input).value = "30"
            await pilot.press("enter")
            await wait_for(pilot, lambda: len(link.sent) == 8)
            assert sent(link) == [
                "set_run_number 2",
                "upload_folder digits_fedavg",
                "list_apps",  # d offers the apps the server has
                "deploy digits_custom server",
                "list_apps",
                "deploy digits_custom client",
                "start server",
                "set_timeout 30",
            ]
            logs = app.dashboard.query_one(LogView)
            await wait_for(pilot, lambda: any("> set_timeout 30" in e.message for e in logs._lines))

    asyncio.run(scenario())


def test_a_refused_list_of_apps_says_why_on_d(tmp_path: Path) -> None:
    """``d`` asks the server for its apps first; a refusal left the key doing nothing."""

    def answer(line: str, confirmed: bool) -> CommandReply:
        if line == "list_apps":
            return CommandReply(line, False, "unknown command 'list_apps'", {}, 10, "")
        return reply(line, confirmed)

    async def scenario() -> None:
        app, link = console(tmp_path, reply=answer)
        async with app.run_test(size=(120, 36)) as pilot:
            await ready(pilot)
            await pilot.press("d")
            status = app.dashboard.query_one("#status-line")
            await wait_for(pilot, lambda: status.display)
            assert str(status.render()) == "list_apps: unknown command 'list_apps'"
            assert app.screen is app.dashboard and sent(link) == ["list_apps"]

    asyncio.run(scenario())


def test_selected_and_marked_clients_are_offered(tmp_path: Path) -> None:
    async def scenario() -> None:
        app, link = console(tmp_path)
        async with app.run_test(size=(120, 36)) as pilot:
            await ready(pilot)
            table = app.dashboard.query_one(ClientsTable)
            await pilot.press("down", "space", "down", "down", "space")
            assert table.marked == {"flclient2", "flclient1_1"}
            await pilot.press("s")
            await choose(pilot, "selected: flclient2, flclient1_1")
            await wait_for(pilot, lambda: link.sent)
            assert sent(link) == ["start client flclient2 flclient1_1"]

    asyncio.run(scenario())


def test_abort_asks_with_cancel_focused_and_names_what_stops(tmp_path: Path) -> None:
    async def scenario() -> None:
        app, link = console(tmp_path)
        async with app.run_test(size=(120, 36)) as pilot:
            await ready(pilot)
            await pilot.press("a")
            await choose(pilot, "the server")
            await shown(pilot, app, ConfirmScreen)
            stops = str(app.screen.query_one("#confirm-stops").render())
            assert "Run 1 (digits_fedavg) on the server, at round 3 of 10" in stops
            assert app.screen.focused is app.screen.query_one("#confirm-cancel")
            await pilot.press("enter")  # Cancel: the server only asked, nothing is confirmed
            await wait_for(pilot, lambda: not isinstance(app.screen, ConfirmScreen))
            assert sent(link) == ["abort server"]
            await pilot.press("a")
            await choose(pilot, "all clients")
            await shown(pilot, app, ConfirmScreen)
            stops = str(app.screen.query_one("#confirm-stops").render())
            assert "flclient1: training started, round 3 (digits_fedavg)" in stops
            await pilot.press("tab", "enter")
            await wait_for(pilot, lambda: len(link.sent) == 3)
            assert sent(link) == ["abort server", "abort client", "abort client!"]

    asyncio.run(scenario())


def test_shutdown_shows_the_servers_warning_then_confirms(tmp_path: Path) -> None:
    async def scenario() -> None:
        app, link = console(tmp_path)
        async with app.run_test(size=(120, 36)) as pilot:
            await ready(pilot)
            await pilot.press("x")
            await choose(pilot, "the server")
            await shown(pilot, app, ConfirmScreen)
            warning = str(app.screen.query_one("#confirm-warning").render())
            assert "5 client(s) still registered (flclient1, flclient2, flclient3," in warning
            assert "Are you sure (Y/N)" not in warning
            await pilot.press("escape")
            await wait_for(pilot, lambda: not isinstance(app.screen, ConfirmScreen))
            await pilot.press("x")
            await choose(pilot, "all clients")
            await shown(pilot, app, ConfirmScreen)
            await pilot.click("#confirm-ok")
            await wait_for(pilot, lambda: len(link.sent) == 3)
            assert sent(link) == ["shutdown server", "shutdown client", "shutdown client!"]

    asyncio.run(scenario())


def test_member_sees_dangerous_keys_dimmed(tmp_path: Path) -> None:
    async def scenario() -> None:
        app, link = console(tmp_path, role="member", user="viewer@lead.org")
        async with app.run_test(size=(120, 36)) as pilot:
            await ready(pilot)
            screen = app.dashboard
            for action in ("upload", "deploy", "start", "abort", "shutdown"):
                assert screen.check_action(action, ()) is None, action
            for action in ("validate", "timeout", "help", "filter", "command_line"):
                assert screen.check_action(action, ()) is True, action
            await pilot.press("s", "a", "x", "n")
            status = screen.query_one("#status-line")
            await wait_for(pilot, lambda: "run_number needs the super role" in str(status.render()))
            assert app.screen is screen and link.sent == []
            footer = {k.key: k for k in app.screen.query("FooterKey")}  # type: ignore[attr-defined]
            assert footer["s"].has_class("-disabled") and not footer["v"].has_class("-disabled")

    asyncio.run(scenario())


def test_validation_matrix_and_the_empty_case(tmp_path: Path) -> None:
    async def scenario(data: dict[str, Any]) -> ValidationScreen:
        def answer(line: str, confirmed: bool) -> CommandReply:
            return CommandReply(line, True, "", data, 1, "")

        app, _ = console(tmp_path / str(len(data)), reply=answer)
        async with app.run_test(size=(120, 36)) as pilot:
            await ready(pilot)
            await pilot.press("v")
            await shown(pilot, app, ValidationScreen)
            screen = app.screen
            assert isinstance(screen, ValidationScreen)
            if data.get("cells"):
                table = screen.query_one("DataTable", DataTable)
                assert str(table.get_cell("global", "flclient1")) == "0.9700"
                assert "model does not fit" in str(table.get_cell("flclient2", "flclient1"))
                assert str(table.get_cell("flclient1", "flclient1")) == ""
                notes = str(screen.query_one("#validation-notes").render())
                assert "site-b: does not take part" in notes
            else:
                text = str(screen.query_one("#validation-empty").render())
                assert text == "No cross-site validation results for run 1."
            return screen

    asyncio.run(scenario(MATRIX))
    asyncio.run(scenario({"results": []}))


def test_the_matrix_is_coloured_the_way_the_app_says_is_better(tmp_path: Path) -> None:
    """A guess from the metric's name drew the best models of a val_mae red; the app's
    metric_mode says which way is better, and a metric it says nothing of is not coloured."""

    async def best_and_way(modes: dict[str, str] | None, size: tuple[int, int]) -> tuple[str, str]:
        data = {**MATRIX, "metric_modes": modes} if modes is not None else {**MATRIX}
        if modes is None:
            del data["metric_modes"]  # an older server's reply

        def answer(line: str, confirmed: bool) -> CommandReply:
            return CommandReply(line, True, "", data, 1, "")

        app, _ = console(tmp_path / f"{modes}{size}", reply=answer)
        async with app.run_test(size=size) as pilot:
            await ready(pilot)
            await pilot.press("v")
            screen = await shown(pilot, app, ValidationScreen)
            table = screen.query_one("DataTable", DataTable)
            cells = {
                (row, column): table.get_cell(row, column)
                for row, column in (("global", "flclient1"), ("global", "flclient2"))
            }
            cells[("flclient1", "flclient2")] = table.get_cell("flclient1", "flclient2")
            styles = {
                str(cell): cell.style if isinstance(cell.style, Style) else Style.parse(cell.style)
                for cell in cells.values()
            }
            bold = [text for text, style in styles.items() if style.bold]
            coloured = [text for text, style in styles.items() if style.color]
            way = str(screen.query_one("#validation-metric").render())
            return (",".join(bold) if coloured else "uncoloured"), way

    for size in ((120, 36), (80, 24)):
        assert asyncio.run(best_and_way({"val_accuracy": "max"}, size)) == (
            "0.9700",
            "metric val_accuracy  (higher is better)",
        )
        assert asyncio.run(best_and_way({"val_accuracy": "min"}, size)) == (
            "0.9100",
            "metric val_accuracy  (lower is better)",
        )
    assert asyncio.run(best_and_way(None, (120, 36))) == (
        "uncoloured",
        "metric val_accuracy  (not coloured: the app does not say which way is better)",
    )


def test_enter_shows_the_traceback_of_a_failed_site(tmp_path: Path) -> None:
    async def scenario() -> None:
        app, _ = console(tmp_path)
        async with app.run_test(size=(120, 36)) as pilot:
            await ready(pilot)
            table = app.dashboard.query_one(ClientsTable)
            table.move_cursor(row=table.get_row_index("flclient3"))
            detail = app.dashboard.query_one("#client-detail")
            await wait_for(pilot, lambda: "token e7f60b12" in str(detail.render()))
            await pilot.press("enter")
            await shown(pilot, app, ClientScreen)
            facts = str(app.screen.query_one("#client-facts").render())
            assert "RuntimeError: CUDA out of memory" in facts and "loss.backward()" in facts
            await pilot.press("escape")
            await pilot.press("question_mark")
            await shown(pilot, app, HelpScreen)

    asyncio.run(scenario())


def test_filters_on_the_focused_pane(tmp_path: Path) -> None:
    async def scenario() -> None:
        app, _ = console(tmp_path)
        async with app.run_test(size=(120, 36)) as pilot:
            await ready(pilot)
            table = app.dashboard.query_one(ClientsTable)
            await pilot.press("slash", *"stale", "enter")
            assert table.shown == ["flclient1_1"]
            assert "filter: stale" in str(app.dashboard.query_one("#clients-pane").border_title)
            await pilot.press("escape")
            assert len(table.shown) == 5
            logs = app.dashboard.query_one(LogView)
            await pilot.press("4", "slash", *"@server round 3", "enter")
            assert [e.source for e in logs._lines] == ["server", "server"]
            assert "filter: @server round 3" in str(logs.border_title)
            await pilot.press("slash", "escape")
            assert logs.line_count == 8

    asyncio.run(scenario())


def test_command_line_completes_and_remembers(tmp_path: Path) -> None:
    async def scenario() -> None:
        app, link = console(tmp_path)
        async with app.run_test(size=(120, 36)) as pilot:
            await ready(pilot)
            await pilot.press("colon", *"check_st")
            line = app.dashboard.query_one(CommandLine)
            await wait_for(pilot, lambda: line._suggestion == "check_status")
            await pilot.press("tab", "space", *"cl")
            await wait_for(pilot, lambda: line._suggestion == "check_status client")
            await pilot.press("tab", "space", *"flclient1_")
            await wait_for(pilot, lambda: line._suggestion == "check_status client flclient1_1")
            await pilot.press("tab", "enter")
            await wait_for(pilot, lambda: link.sent)
            assert sent(link) == ["check_status client flclient1_1"]
            await pilot.press("colon", "up")
            assert line.value == "check_status client flclient1_1"
            await pilot.press("escape")
            assert not line.display

    asyncio.run(scenario())


class FlakyLink(ReplayLink):
    """Loses the feed after the first snapshot, then serves a changed picture."""

    def __init__(self, events: list[FeedEvent]) -> None:
        super().__init__(events)
        self.logins = 0
        self.subscriptions = 0
        self.release = asyncio.Event()

    async def login(self) -> None:
        self.logins += 1
        if self.subscriptions == 1 and not self.release.is_set():
            raise AdminError("cannot connect to the server at fl.example.org:8003: refused")

    async def events(self) -> AsyncIterator[FeedEvent]:
        self.subscriptions += 1
        if self.subscriptions == 1:
            for event in self._events[:1]:
                yield event
            await self.release.wait()
            raise AdminError("cannot connect to the server at fl.example.org:8003: gone")
        async for event in super().events():
            yield event


def test_lost_connection_shows_a_banner_and_reconnects(tmp_path: Path) -> None:
    async def scenario() -> None:
        link = FlakyLink(recorded_events())
        app = ConsoleApp(link, clock=lambda: NOW, flush_s=0.05)
        async with app.run_test(size=(120, 36)) as pilot:
            await wait_for(pilot, lambda: app.link_look is CONNECTED)
            banner = app.dashboard.query_one("#banner")
            assert not banner.display
            link.release.set()
            await wait_for(pilot, lambda: app.link_look is DISCONNECTED and banner.display)
            assert "connection lost" in str(banner.render())
            assert app.dashboard.check_action("start", ()) is None
            await wait_for(pilot, lambda: app.link_look is CONNECTED, timeout=10)
            assert not banner.display and link.logins >= 2 and link.subscriptions == 2

    asyncio.run(scenario())


def test_without_a_kit_the_login_screen_asks(tmp_path: Path) -> None:
    async def scenario() -> None:
        app = ConsoleApp(user="", clock=lambda: NOW)
        async with app.run_test(size=(100, 30)) as pilot:
            await shown(pilot, app, LoginScreen)
            startup = app.screen.query_one("#login-startup", Input)
            assert app.focused is startup
            startup.value = str(tmp_path / "nothing")
            await pilot.press("enter")
            problem = app.screen.query_one("#login-problem")
            await wait_for(pilot, lambda: "nothing" in str(problem.render()))
            assert isinstance(app.screen, LoginScreen)

    asyncio.run(scenario())


def test_the_login_screen_is_ready_for_typing_as_soon_as_it_is_mounted(tmp_path: Path) -> None:
    """The field to type in is focused by the time the screen is up, not a message later:
    a test (or a person) that types then must reach the user field, whatever the machine."""

    async def log_in(startup: Path, user: str) -> str | None:
        return "refused"

    async def scenario() -> None:
        app = ConsoleApp(user="", clock=lambda: NOW)
        async with app.run_test(size=(100, 30)) as pilot:
            await shown(pilot, app, LoginScreen)
            await app.push_screen(LoginScreen(log_in, str(tmp_path), ""))
            assert getattr(app.focused, "id", "") == "login-user"
            await pilot.press(*"me@x.org")
            assert app.screen.query_one("#login-user", Input).value == "me@x.org"
            assert app.screen.query_one("#login-startup", Input).value == str(tmp_path)

    asyncio.run(scenario())


def test_unknown_event_kinds_are_skipped() -> None:
    from flcore.feedwire import event_from_proto

    assert event_from_proto(admin_pb2.Event(seq=3, time=1.0)) is None


def test_panes_logs_follow_and_the_wizard_key(tmp_path: Path) -> None:
    async def scenario() -> None:
        app, _ = console(tmp_path)
        app.workspace = tmp_path / "ws"
        async with app.run_test(size=(120, 36)) as pilot:
            await ready(pilot)
            logs = app.dashboard.query_one(LogView)
            for key, selector in (("2", "#round"), ("3", "#heartbeats"), ("4", "#logs")):
                await pilot.press(key)
                assert app.focused is app.dashboard.query_one(selector)
            for i in range(60):
                app.log_line("INFO", f"line {i}")
            await wait_for(pilot, lambda: logs.line_count == 68)
            await pilot.press("k")
            assert not logs.follow
            app.log_line("INFO", "one more")
            await wait_for(pilot, lambda: "paused, +1 new" in str(logs.border_title))
            await pilot.press("G")
            assert logs.follow and logs.is_vertical_scroll_end
            assert "following" in str(logs.border_title)
            await pilot.press("1", "p")
            await shown(pilot, app, WizardScreen)
            assert app.screen.query_one("#project-workspace").value == str(tmp_path / "ws")
            await pilot.press("escape")
            await wait_for(pilot, lambda: app.screen is app.dashboard)
            titles = [c.title for c in app.get_system_commands(app.dashboard)]
            assert "Upload an app from your transfer/ folder to the server" in titles

    asyncio.run(scenario())


def test_no_color_leaves_glyphs_and_words(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NO_COLOR", "1")

    async def scenario() -> str:
        app, _ = console(tmp_path)
        async with app.run_test(size=(120, 36)) as pilot:
            await ready(pilot)
            # The snapshot is drawn first; the heartbeats recorded after it (which move the
            # server's clock on, making a site stale) come with a later flush.
            await wait_for(pilot, lambda: any("◌ stale" in row for row in screen_lines(app)))
            return app.export_screenshot()

    svg = asyncio.run(scenario())
    colours = set(re.findall(r"-r\d+ \{ fill: #([0-9a-f]{6})", svg)) - {"c5c8c6"}  # Rich's frame
    assert colours and all(c[0:2] == c[2:4] == c[4:6] for c in colours), colours
    assert "◌ stale" in svg.replace("&#160;", " ") and "✖ failed" in svg.replace("&#160;", " ")


# --------------------------------------------------------------------------- outside text

ODD = "odd[/x]"
ODD_ROW = ClientRow(
    ODD,
    "odd",
    token_id="0f0f0f0f",
    org="[b]org",
    status="training failed",
    last_heartbeat=NOW - 1,
    run_number=1,
    round=2,
    device="regex [a-z]+",
    error="[/x] ValueError: regex [a-z]+ did not match",
    traceback="Traceback (most recent call last):\n[/x]",
    app="[red]app",
    hostname="[/x].example.org",
)


def with_odd_client() -> list[FeedEvent]:
    """The recorded run, then a client whose every string looks like markup."""
    events = recorded_events()
    return [*events, FeedEvent(events[-1].seq + 1, NOW, ODD_ROW)]


async def six_rows(pilot: Any) -> ClientsTable:
    app: ConsoleApp = pilot.app
    table = app.dashboard.query_one(ClientsTable)
    await wait_for(pilot, lambda: app.connected and table.row_count == 6)
    return table


def test_text_from_sites_and_the_server_is_never_markup(tmp_path: Path) -> None:
    def answer(line: str, confirmed: bool) -> CommandReply:
        if line == "validate all":
            return CommandReply(line, False, "[/x] validation failed: regex [a-z]+", {}, 1, "")
        if line.startswith("abort") and not confirmed:  # the server's words, as it sends them
            question = {
                "title": f"Abort training: {ODD}",
                "heading": "[b]This stops:",
                "lines": [f"{ODD}: [/x] still training"],
                "warning": "[/x] still training",
                "verb": "Abort",
            }
            prompt = "[/x] still training\nAre you sure (Y/N):"
            return CommandReply(line, False, "", {"confirm": question}, 0, "", prompt)
        return CommandReply(line, True, "[/x] done: regex [a-z]+", {}, 1, "")

    async def scenario() -> None:
        app, _ = console(tmp_path, with_odd_client(), reply=answer)
        async with app.run_test(size=(120, 36)) as pilot:
            table = await six_rows(pilot)
            table.move_cursor(row=table.get_row_index(ODD))
            detail = app.dashboard.query_one("#client-detail")
            await wait_for(pilot, lambda: "[/x].example.org" in str(detail.render()))
            assert "regex [a-z]+ · [red]app · ✖ [/x] ValueError" in str(detail.render())
            await pilot.press("enter")
            await shown(pilot, app, ClientScreen)
            assert str(app.screen.query_one(".dialog-title").render()) == f"Client {ODD}"
            await pilot.press("escape", "space", "a")
            await choose(pilot, f"selected: {ODD}")
            await shown(pilot, app, ConfirmScreen)
            stops = str(app.screen.query_one("#confirm-stops").render())
            assert stops == f"• {ODD}: [/x] still training"
            assert str(app.screen.query_one(".dialog-label").render()) == "[b]This stops:"
            warning = str(app.screen.query_one("#confirm-warning").render())
            assert warning == "⚠ [/x] still training"
            await pilot.press("escape")
            await pilot.press("colon", *"check_status server", "enter")
            await wait_for(pilot, lambda: any("[/x] done" in e.message for e in app.store.logs))
            await wait_for(pilot, lambda: any("[/x] done" in n.message for n in app._notifications))
            await pilot.pause()  # the notification is drawn (as it is, never as markup)
            await pilot.press("v")
            await shown(pilot, app, ValidationScreen)
            failure = str(app.screen.query_one("#validation-empty").render())
            assert failure == "[/x] validation failed: regex [a-z]+"
            await pilot.press("escape")
            app.publish(Connection(DISCONNECTED, NOW, "[/x] regex [a-z]+", NOW + 4, 1))
            banner = app.dashboard.query_one("#banner")
            assert str(banner.render()) == (
                "✖ connection lost since 15:06:40: [/x] regex [a-z]+ · reconnecting in 4s "
                "(attempt 1) · r now"
            )
            await wait_for(pilot, lambda: banner.display and banner.size.height)

    asyncio.run(scenario())


def test_validation_cells_and_notes_from_sites_are_never_markup(tmp_path: Path) -> None:
    """Also a site named like the matrix's own first column, which once clashed with it."""
    matrix = {
        **MATRIX,
        "columns": ["flclient1", "site[/x]", "model", "row"],
        "cells": {"global": {"site[/x]": {"metrics": {}, "error": "[/x] regex [a-z]+"}}},
        "notes": {"site-b": "[/x] cross_validate is off"},
    }

    def answer(line: str, confirmed: bool) -> CommandReply:
        return CommandReply(line, True, "", matrix, 1, "")

    async def scenario() -> None:
        app, _ = console(tmp_path, reply=answer)
        async with app.run_test(size=(120, 36)) as pilot:
            await ready(pilot)
            await pilot.press("v")
            await shown(pilot, app, ValidationScreen)
            notes = str(app.screen.query_one("#validation-notes").render())
            assert "model of global on site[/x]: [/x] regex [a-z]+" in notes
            assert "site-b: [/x] cross_validate is off" in notes
            table = app.screen.query_one("DataTable", DataTable)
            assert [str(c.label) for c in table.columns.values()][2:] == [
                "site[/x]",
                "model",
                "row",
            ]

    asyncio.run(scenario())


def test_the_login_screen_shows_a_reason_as_it_is(tmp_path: Path) -> None:
    async def scenario() -> None:
        app = ConsoleApp(
            startup=tmp_path, user="", problem="login refused: [/x]", clock=lambda: NOW
        )
        async with app.run_test(size=(100, 30)) as pilot:
            await shown(pilot, app, LoginScreen)
            problem = app.screen.query_one("#login-problem")
            assert str(problem.render()) == "login refused: [/x]"

    asyncio.run(scenario())


def test_escape_sequences_from_sites_never_reach_the_terminal(tmp_path: Path) -> None:
    from flcore.feedwire import event_from_proto

    esc = "\x1b[2J\x1b]0;pwned\x07"
    client = admin_pb2.ClientState(
        instance="evil",
        client_name="evil",
        status="training failed",
        device=f"cuda{esc}",
        hostname=f"host{esc}",
        error=f"boom{esc}",
        traceback=f"Traceback:\n  line{esc}",
        connected=True,
        last_heartbeat=NOW,
    )
    log = common_pb2.LogRecord(
        time=NOW, level=f"ERROR{esc}", logger="x", message=f"msg{esc}", source="evil"
    )
    events = recorded_events()
    seq = events[-1].seq
    for offset, message in enumerate(
        [admin_pb2.Event(seq=seq + 1, client=client), admin_pb2.Event(seq=seq + 2, log=log)], 1
    ):
        event = event_from_proto(message)
        assert event is not None and event.seq == seq + offset
        events.append(event)

    async def scenario() -> None:
        app, _ = console(tmp_path, events)
        async with app.run_test(size=(160, 40)) as pilot:
            table = await six_rows(pilot)
            logs = app.dashboard.query_one(LogView)
            await wait_for(pilot, lambda: logs.line_count == 9)
            drawn = "".join(
                segment.text for y in range(logs.size.height) for segment in logs.render_line(y)
            )
            assert "ERROR" in drawn and "msg" in drawn and "\x1b" not in drawn
            assert "\x1b" not in str(table.get_cell("evil", "device"))
            table.move_cursor(row=table.get_row_index("evil"))
            await pilot.press("enter")
            await shown(pilot, app, ClientScreen)
            facts = str(app.screen.query_one("#client-facts").render())
            assert "host" in facts and "Traceback:\n  line" in facts
            assert "\x1b" not in facts and "\x07" not in facts

    asyncio.run(scenario())


def test_a_log_line_dated_at_no_time_is_drawn_with_question_marks(tmp_path: Path) -> None:
    """The server dates such lines itself; a console must still not fall over one (a NaN
    time once took every console down, and every console opened after it)."""
    events = recorded_events()
    seq = events[-1].seq
    for offset, stamp in enumerate([math.nan, 1e18, -1e18], 1):
        events.append(FeedEvent(seq + offset, NOW, LogEntry(stamp, "INFO", "x", "odd", "evil")))

    async def scenario() -> None:
        app, _ = console(tmp_path, events)
        async with app.run_test(size=(120, 36)) as pilot:
            await ready(pilot)
            logs = app.dashboard.query_one(LogView)
            await wait_for(pilot, lambda: logs.line_count == 11)
            drawn = [
                "".join(segment.text for segment in logs.render_line(y))
                for y in range(logs.size.height)
            ]
            assert sum(line.startswith("??:??:?? evil") for line in drawn) == 3
            assert app.is_running

    asyncio.run(scenario())


def test_times_a_server_sends_that_are_no_time_are_drawn_as_unknown(tmp_path: Path) -> None:
    """A NaN or infinite heartbeat time made the age drawing raise: the console exited, and
    again at every start, since the snapshot repeats the row."""
    from flcore.feedwire import event_from_proto

    nan, inf = math.nan, math.inf
    odd = admin_pb2.ClientState(
        instance="odd",
        client_name="odd",
        status="training started",
        last_heartbeat=nan,
        connected_at=inf,
        connected=True,
    )
    events = recorded_events()
    seq = events[-1].seq
    messages = [
        admin_pb2.Event(seq=seq + 1, time=nan, client=odd),
        admin_pb2.Event(seq=seq + 2, heartbeat=admin_pb2.HeartbeatSeen(instance="odd", time=1e300)),
        admin_pb2.Event(seq=seq + 3, heartbeat=admin_pb2.HeartbeatSeen(instance="odd", time=-inf)),
    ]
    for message in messages:
        event = event_from_proto(message)
        assert event is not None
        events.append(event)

    async def scenario() -> None:
        app, _ = console(tmp_path, events)
        async with app.run_test(size=(120, 36)) as pilot:
            table = await six_rows(pilot)
            row = app.store.clients["odd"]
            assert (row.last_heartbeat, row.connected_at) == (0.0, 0.0)
            app.dashboard.tick()  # ages and heartbeat strips are drawn from these
            await pilot.pause()
            assert app.is_running and "odd" in table.shown

    asyncio.run(scenario())


# --------------------------------------------------------------------------- commands


class SlowLink(ReplayLink):
    """Holds the reply to ``start server`` until released."""

    def __init__(self, events: list[FeedEvent]) -> None:
        super().__init__(events)
        self.release = asyncio.Event()

    async def execute(self, line: str, confirmed: bool = False) -> CommandReply:
        self.sent.append((line, confirmed))
        if line == "start server":
            await self.release.wait()
        return ok_reply(line, confirmed)


def test_a_key_pressed_meanwhile_does_not_cancel_a_command(tmp_path: Path) -> None:
    async def scenario() -> None:
        link = SlowLink(recorded_events())
        app = ConsoleApp(link, clock=lambda: NOW, flush_s=0.05)
        async with app.run_test(size=(120, 36)) as pilot:
            await ready(pilot)
            await pilot.press("s")
            await choose(pilot, "the server")
            await wait_for(pilot, lambda: link.sent)
            await pilot.press("t")  # typed while the start is on its way: waits for its reply
            assert app.screen is app.dashboard
            link.release.set()
            await wait_for(
                pilot,
                lambda: any(e.message == "start server: done" for e in app.store.logs),
                timeout=5,
                what="the reply to start server",
            )
            await shown(pilot, app, PromptScreen)  # then the t opens its prompt
            await pilot.press("escape")

    asyncio.run(scenario())


def test_the_run_number_prompt_takes_only_ascii_digits(tmp_path: Path) -> None:
    async def scenario() -> None:
        app, link = console(tmp_path, stopped_run())
        async with app.run_test(size=(120, 36)) as pilot:
            await ready(pilot)
            await wait_for(pilot, lambda: app.store.run.server_status == "training stopped")
            await pilot.press("n")
            await shown(pilot, app, PromptScreen)
            await pilot.press("²")
            assert "a whole number" in str(app.screen.query_one("#prompt-hint").render())
            await pilot.press("enter")
            assert isinstance(app.screen, PromptScreen) and link.sent == []
            await pilot.press("backspace", "3", "enter")
            await wait_for(pilot, lambda: link.sent)
            assert sent(link) == ["set_run_number 3"]

    asyncio.run(scenario())


def test_a_quoted_abort_on_the_command_line_still_asks(tmp_path: Path) -> None:
    async def scenario() -> None:
        app, link = console(tmp_path)
        async with app.run_test(size=(120, 36)) as pilot:
            await ready(pilot)
            await pilot.press("colon", *'"abort" client', "enter")
            await shown(pilot, app, ConfirmScreen)  # the server read the words as abort
            await pilot.press("escape")
            await wait_for(pilot, lambda: any("cancelled" in e.message for e in app.store.logs))
            assert sent(link) == ['"abort" client']  # asked, never confirmed

    asyncio.run(scenario())


# --------------------------------------------------------------------------- marks


class SecondSnapshotLink(ReplayLink):
    """The recorded run; on release, a snapshot without flclient1_1 (it went away)."""

    def __init__(self) -> None:
        super().__init__(recorded_events())
        self.release = asyncio.Event()

    async def events(self) -> AsyncIterator[FeedEvent]:
        for event in self._events:
            yield event
        await self.release.wait()
        first = self._events[0].body
        assert isinstance(first, Snapshot)
        clients = tuple(c for c in first.clients if c.instance != "flclient1_1")
        yield FeedEvent(1000, NOW, replace(first, clients=clients))
        await asyncio.Event().wait()


def test_marks_follow_the_clients_and_count_behind_a_filter(tmp_path: Path) -> None:
    async def scenario() -> None:
        link = SecondSnapshotLink()
        app = ConsoleApp(link, clock=lambda: NOW, flush_s=0.05)
        async with app.run_test(size=(120, 36)) as pilot:
            await ready(pilot)
            table = app.dashboard.query_one(ClientsTable)
            pane = app.dashboard.query_one("#clients-pane")
            await pilot.press("down", "space", "down", "down", "space")
            assert table.marked == {"flclient2", "flclient1_1"}
            await pilot.press("slash", *"site-b", "enter")
            assert table.shown == ["site-b"]
            await pilot.press("s")
            await choose(pilot, "selected: flclient2, flclient1_1")
            await wait_for(pilot, lambda: link.sent)
            assert link.sent == [("start client flclient2 flclient1_1", False)]
            await pilot.press("slash", "escape")
            link.release.set()
            await wait_for(pilot, lambda: table.row_count == 4)
            assert table.marked == {"flclient2"}
            assert "1 marked" in str(pane.border_title)

    asyncio.run(scenario())


# --------------------------------------------------------------------------- start-up


def test_timeout_is_checked_and_reaches_a_login_made_on_screen(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fltui.cli import parse_args

    for bad in ("0", "-1", "nan", "3601", "soon"):
        with pytest.raises(SystemExit):
            parse_args(["--timeout", bad])
    assert parse_args(["--timeout", "30"]).timeout == 30.0

    class KitLink(ReplayLink):
        def __init__(self, startup: Path, user: str | None) -> None:
            super().__init__(recorded_events(), transfer_dir=startup.parent / "transfer")

    monkeypatch.setattr("fltui.app.AdminLink", KitLink)

    async def scenario() -> None:
        app = ConsoleApp(startup=tmp_path, user="", problem="no kit", timeout=30, clock=lambda: NOW)
        async with app.run_test(size=(100, 30)) as pilot:
            await shown(pilot, app, LoginScreen)
            assert app.timeout == 30
            await pilot.click("#login-go")
            await wait_for(pilot, lambda: app.link is not None and app.connected)
            assert app.link is not None and app.link.timeout == 30

    asyncio.run(scenario())


def test_an_unreadable_kit_is_an_error_not_a_crash(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from fltui.cli import main

    unreadable = tmp_path / ("k" * 300)  # too long a name: stat raises, as without permission
    assert main(["--startup", str(unreadable), "--cmd", "check_status server"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fltui: ") and "cannot read the admin kit" in err
    assert len(err.splitlines()) == 1
    with pytest.raises(AdminError, match="cannot read the admin kit"):
        AdminLink(unreadable)

    async def scenario() -> None:
        app = ConsoleApp(user="", clock=lambda: NOW)
        async with app.run_test(size=(100, 30)) as pilot:
            await shown(pilot, app, LoginScreen)
            app.screen.query_one("#login-startup", Input).value = str(unreadable)
            await pilot.press("enter")
            problem = app.screen.query_one("#login-problem")
            await wait_for(pilot, lambda: "cannot read the admin kit" in str(problem.render()))

    asyncio.run(scenario())


def test_the_oldest_dropped_rows_leave_the_table_beyond_the_bound(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(store_module, "KEPT_GONE", 1)

    async def scenario() -> None:
        app, link = console(tmp_path)
        async with app.run_test(size=(120, 36)) as pilot:
            await ready(pilot)
            table = app.dashboard.query_one(ClientsTable)
            link.push(ClientGone("flclient1", "no heartbeat for 31s"))
            await wait_for(pilot, lambda: str(table.get_cell("flclient1", "health")) == "✖ lost")
            link.push(ClientGone("flclient2", "no heartbeat for 31s"))
            await wait_for(pilot, lambda: "flclient1" not in table.shown)
            assert str(table.get_cell("flclient2", "health")) == "✖ lost"
            assert table.row_count == 4

    asyncio.run(scenario())
