"""Keys typed after a confirmation's yes, and keys that wait long, on a replayed feed.

The keys typed after a command's ``⏎`` wait for its reply (test_keys_after_enter.py
checks that against the real server); the yes that confirms it is such a
``⏎`` too: the keys typed after it wait for the reply to the confirmed
command, and a question asked again drops them as the first did. A key that
has waited a while says why it does not act.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from fladmin.client import CommandReply
from flcore.feed import FeedEvent
from fldev.poll import wait_for
from fldev.replay import ReplayLink, Reply
from fltui.app import WAIT_TOLD_S, ConsoleApp
from fltui.screens.dialogs import ConfirmScreen
from fltui.widgets.clients import ClientsTable
from tests.tui.helpers import Clock, burst, shown
from tests.tui.recorded import NOW, recorded_events
from tests.tui.test_console import ready, reply, sent

SIZES = [(80, 24), (200, 50)]
IDS = [f"{w}x{h}" for w, h in SIZES]


class HeldBack(ReplayLink):
    """The recorded run; the reply to ``slow`` (confirmed or not, as ``confirmed`` says) is
    held back until the test lets it go."""

    def __init__(self, events: list[FeedEvent], answer: Reply, slow: str, confirmed: bool) -> None:
        super().__init__(events, answer)
        self.slow = (slow, confirmed)
        self.held_back = asyncio.Event()
        self.let_go = asyncio.Event()

    async def execute(self, line: str, confirmed: bool = False) -> CommandReply:
        answer = await super().execute(line, confirmed)
        if (line, confirmed) == self.slow:
            self.held_back.set()
            await self.let_go.wait()
        return answer


def reported(app: ConsoleApp, text: str) -> bool:
    return any(e.message == text for e in app.store.logs)


@pytest.mark.parametrize("size", SIZES, ids=IDS)
def test_keys_typed_after_yes_wait_for_the_confirmed_reply(
    tmp_path: Path, size: tuple[int, int]
) -> None:
    """``⇥⏎↓`` in the question at once: the ``↓`` moved the cursor while the confirmed
    shutdown was on its way. It waits for that reply, then moves it."""

    async def scenario() -> None:
        link = HeldBack(recorded_events(), reply, "shutdown client", confirmed=True)
        app = ConsoleApp(link, clock=lambda: NOW, flush_s=0.05)
        async with app.run_test(size=size) as pilot:
            await ready(pilot)
            table = app.dashboard.query_one(ClientsTable)
            burst(app, ":shutdown client", "enter")
            await shown(pilot, app, ConfirmScreen)
            burst(app, "tab", "enter", "down")  # typed once the question shows
            await wait_for(pilot, link.held_back.is_set, what="the confirmed shutdown")
            await pilot.pause()  # every key queued has been read
            assert table.selected == "flclient1" and app.screen is app.dashboard
            link.let_go.set()
            await wait_for(pilot, lambda: table.selected == "flclient2", what="the cursor")
            assert reported(app, "shutdown client: done")
            assert sent(link) == ["shutdown client", "shutdown client!"]

    asyncio.run(scenario())


def test_a_key_that_waits_long_for_a_reply_says_why(tmp_path: Path) -> None:
    """A key typed a while after a command was sent, its reply not in, did nothing and
    said nothing: the console looked frozen. The status line says what it waits for; a
    paste's keys, typed right after the command, are not told."""

    async def scenario() -> None:
        clock = Clock(NOW)
        link = HeldBack(recorded_events(), reply, "check_status client", confirmed=False)
        app = ConsoleApp(link, clock=clock, flush_s=0.05)
        async with app.run_test(size=(80, 24)) as pilot:
            await ready(pilot)
            status = app.dashboard.query_one("#status-line")
            burst(app, ":check_status client", "enter", "down")
            await wait_for(pilot, link.held_back.is_set, what="the command")
            await pilot.pause()
            assert not status.display
            clock.now += WAIT_TOLD_S
            await pilot.press("down")
            await wait_for(pilot, lambda: status.display, what="the status line")
            assert str(status.render()).startswith("waiting for the reply to check_status client")
            table = app.dashboard.query_one(ClientsTable)
            assert table.selected == table.shown[0]
            link.let_go.set()
            await wait_for(pilot, lambda: table.selected == table.shown[2], what="the cursor")

    asyncio.run(scenario())
