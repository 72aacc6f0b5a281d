"""Keys typed after a command's ``⏎``, against the real server, fast and slow.

Issue 14: the keys typed after a command line's ``⏎`` (or a picker's) reached
the dashboard while the server's reply was on its way, and the confirmation
that came then dropped the ones it saw; what a paste did depended on how
fast the server answered. Now the keys after ``⏎`` wait for the reply: a
plain one lets them go on to the dashboard, a confirmation drops them all
(they were typed before the question was shown) and takes only the keys
typed once it shows. The slow server here is the real one whose reply the
test holds back until the keys have been read.

The cluster is shared with test_live.py (see conftest.py): nothing here
shuts anything down; every question is cancelled.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from textual.screen import Screen
from textual.widgets import Button

from fladmin.client import CommandReply
from fldev.cluster import ADMIN, Cluster
from fldev.poll import wait_for
from fltui.app import ConsoleApp
from fltui.screens.dashboard import DashboardScreen
from fltui.screens.dialogs import ChoiceScreen, ConfirmScreen
from fltui.widgets.clients import ClientsTable
from tests.tui.helpers import burst, screen_lines, shown
from tests.tui.test_live import RecordingLink

pytestmark = [
    pytest.mark.integration,
    pytest.mark.timeout(180),
    pytest.mark.xdist_group("tui-live-cluster"),
]

SIZES = [(80, 24), (200, 50)]
IDS = [f"{w}x{h}" for w, h in SIZES]


class WatchedLink(RecordingLink):
    """The real link; ``slow`` names a line whose reply the test holds back (the server has
    answered, the console has not heard yet) until :attr:`let_go` is set."""

    def __init__(self, startup: Path, user: str, slow: str = "") -> None:
        super().__init__(startup, user)
        self.slow = slow
        self.held_back = asyncio.Event()
        self.let_go = asyncio.Event()

    async def execute(self, line: str, confirmed: bool = False) -> CommandReply:
        reply = await super().execute(line, confirmed)
        if line == self.slow:
            self.held_back.set()
            await self.let_go.wait()
        return reply


def opened(
    cluster: Cluster, size: tuple[int, int], slow: str = ""
) -> tuple[ConsoleApp, WatchedLink, Any]:
    """The console on the shared cluster, both sites shown, the cursor on the first."""
    link = WatchedLink(cluster.kit(ADMIN), ADMIN, slow)
    app = ConsoleApp(link, flush_s=0.1)
    return app, link, app.run_test(size=size)


async def both_rows(pilot: Any, app: ConsoleApp) -> tuple[str, str]:
    table = app.dashboard.query_one(ClientsTable)
    await wait_for(pilot, lambda: app.connected and table.row_count == 2, what="both rows")
    first, second = table.shown
    assert table.selected == first
    return first, second


def reported(app: ConsoleApp, line: str) -> bool:
    """Whether the console has written the reply to ``line`` in its logs."""
    return any(e.message == f"> {line}" for e in app.store.logs)


def screens_shown(app: ConsoleApp) -> list[Screen[Any]]:
    seen: list[Screen[Any]] = []
    app.screen_change_signal.subscribe(app, seen.append)
    return seen


@pytest.mark.parametrize("size", SIZES, ids=IDS)
def test_keys_after_enter_wait_for_a_slow_reply(live: Cluster, size: tuple[int, int]) -> None:
    """``:check_status server⏎↓`` at once, the server's reply held back until the keys have
    all been read: the ``↓`` moved the cursor while the reply was on its way. It waits for
    the reply to be shown, then moves it."""

    async def scenario() -> None:
        app, link, running = opened(live, size, slow="check_status server")
        async with running as pilot:
            first, second = await both_rows(pilot, app)
            table = app.dashboard.query_one(ClientsTable)
            burst(app, ":check_status server", "enter", "down")
            await wait_for(pilot, link.held_back.is_set, what="the server's reply")
            await pilot.pause()  # every key queued has been read
            assert table.selected == first and not reported(app, "check_status server")
            link.let_go.set()
            await wait_for(pilot, lambda: table.selected == second, what="the cursor")
            assert reported(app, "check_status server")

    asyncio.run(scenario())


def asks_afresh(app: ConsoleApp, confirm: ConfirmScreen, dropped: int) -> None:
    """The question shows untouched, Cancel focused, and says on the screen how many keys
    typed before it were dropped."""
    assert confirm.focused is confirm.query_one("#confirm-cancel", Button)
    said = f"Are you sure? · {dropped} key(s) typed before this question were ignored"
    assert str(confirm.query_one("#confirm-question").render()) == said
    assert any(said in row for row in screen_lines(app))


@pytest.mark.parametrize("size", SIZES, ids=IDS)
@pytest.mark.parametrize("slow", [False, True], ids=["fast", "slow"])
def test_keys_typed_before_a_confirmation_never_reach_it_or_the_dashboard(
    live: Cluster, size: tuple[int, int], slow: bool
) -> None:
    """``:shutdown client⏎⇥⏎y↓`` at once: the keys after ``⏎`` moved the focus, copied a
    token and moved the cursor on the dashboard while the question was on its way (or,
    had it come first, would have met it). Now they are dropped, whatever the server's
    speed, and the question says so; keys typed once it shows answer it."""
    line = "shutdown client"

    async def scenario() -> None:
        app, link, running = opened(live, size, slow=line if slow else "")
        async with running as pilot:
            first, second = await both_rows(pilot, app)
            table = app.dashboard.query_one(ClientsTable)
            seen = screens_shown(app)
            burst(app, f":{line}", "enter", "tab", "enter", "y", "down")
            if slow:
                await wait_for(pilot, link.held_back.is_set, what="the server's question")
                await pilot.pause()  # every key queued has been read
                assert app.screen is app.dashboard and table.selected == first
                link.let_go.set()
            confirm = await shown(pilot, app, ConfirmScreen)
            await pilot.pause()  # the keys handed to it have been read
            asks_afresh(app, confirm, 4)
            assert [type(s) for s in seen] == [ConfirmScreen]
            assert app.dashboard.focused is table and table.selected == first
            burst(app, "escape", "down")  # typed once the question shows
            await wait_for(pilot, lambda: table.selected == second, what="the cursor")
            assert app.screen is app.dashboard
            assert [(r.line, r.confirm_prompt != "") for r in link.replies] == [(line, True)]
            assert not [n for n in app._notifications if n.title == "copied"]
            assert sorted(app.store.clients) == sorted([first, second])

    asyncio.run(scenario())


@pytest.mark.parametrize("size", SIZES, ids=IDS)
def test_keys_after_a_pickers_enter_wait_for_its_question(
    live: Cluster, size: tuple[int, int]
) -> None:
    """``x↓⏎⇥⏎`` at once: the picker's ``⏎`` sends ``shutdown client <row>``, and the
    ``⇥⏎`` after it reached the dashboard before the question came. They are dropped too."""

    async def scenario() -> None:
        app, link, running = opened(live, size)
        async with running as pilot:
            first, _ = await both_rows(pilot, app)
            table = app.dashboard.query_one(ClientsTable)
            seen = screens_shown(app)
            burst(app, "x", "down", "enter", "tab", "enter")
            confirm = await shown(pilot, app, ConfirmScreen)
            await pilot.pause()  # the keys handed to it have been read
            asks_afresh(app, confirm, 2)
            assert [type(s) for s in seen] == [ChoiceScreen, DashboardScreen, ConfirmScreen]
            assert link.replies[0].line == f"shutdown client {first}"
            await pilot.press("escape")
            await wait_for(pilot, lambda: app.screen is app.dashboard)
            assert app.dashboard.focused is table and len(link.replies) == 1

    asyncio.run(scenario())
