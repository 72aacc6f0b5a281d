"""A thousand clients and a busy log: the console keeps up and its keys still work.

The feed (:mod:`fldev.busyfeed`) registers 1,000 clients, then keeps every
one heartbeating once a second and writes 200 log lines a second. This test
checks behaviour only: every client is one row, updated in place, the log
pane takes the lines, and keys act while that goes on. How fast they act
is measured by ``bench/console_keys.py`` (docs/benchmarks.md), not here.
"""

from __future__ import annotations

import asyncio

import pytest

from fldev.busyfeed import CLIENTS, BusyLink, instance
from fldev.poll import wait_for
from fltui.app import ConsoleApp
from fltui.screens.help import HelpScreen
from fltui.widgets.clients import ClientsTable
from fltui.widgets.logview import LogView
from tests.tui.helpers import shown


@pytest.mark.timeout(120)
def test_a_thousand_clients_and_a_busy_log_keep_rows_in_place_and_keys_working() -> None:
    async def scenario() -> None:
        link = BusyLink()
        app = ConsoleApp(link)
        async with app.run_test(size=(120, 36)) as pilot:
            table = app.dashboard.query_one(ClientsTable)
            logs = app.dashboard.query_one(LogView)
            await wait_for(pilot, lambda: table.row_count == CLIENTS, 30)
            first_beat = app.store.clients[instance(0)].last_heartbeat
            await wait_for(pilot, lambda: logs.line_count > 400 and link.events_sent > 5_000, 30)
            await wait_for(
                pilot, lambda: app.store.clients[instance(0)].last_heartbeat > first_beat, 10
            )
            for _ in range(3):
                await pilot.press("question_mark")
                await shown(pilot, app, HelpScreen)
                await pilot.press("escape")
                await wait_for(pilot, lambda: app.screen is app.dashboard)
                row = table.cursor_row
                await pilot.press("down")
                await wait_for(pilot, lambda: table.cursor_row == row + 1)  # noqa: B023
            assert table.row_count == CLIENTS  # heartbeats updated rows, never added any

    asyncio.run(scenario())
