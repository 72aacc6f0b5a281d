"""The console's look, pinned: dashboard, link states, site logs, confirmation, matrix, wizard.

Each snapshot is drawn from the recorded run (tests/tui/recorded.py) with
the clock frozen at its NOW, at 80x24, 120x36 and 200x50. The set-up waits
for what it needs to see (rows, a screen, a text), never for a fixed time.
Regenerate with ``pytest tests/tui/test_snapshots.py --snapshot-update``
after a deliberate change, and look at the SVGs before committing them.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from textual.widgets import DataTable, Input

from fladmin.client import CommandReply
from fldev.poll import wait_for
from fldev.replay import ReplayLink
from fltui.app import ConsoleApp
from fltui.connection import DISCONNECTED, SHUT_DOWN, Connection, Shutdown
from fltui.screens.dialogs import ChoiceScreen, ConfirmScreen
from fltui.screens.listings import RunScreen, RunsScreen
from fltui.screens.sitelogs import SiteLogScreen
from fltui.screens.validation import ValidationScreen
from fltui.widgets.clients import ClientsTable
from fltui.widgets.logview import LogView
from fltui.wizard.app import ProvisionApp
from fltui.wizard.screen import WizardScreen
from tests.tui.helpers import shown
from tests.tui.recorded import NOW, recorded_events
from tests.tui.test_console import MATRIX, reply

SIZES = [(80, 24), (120, 36), (200, 50)]
ids = [f"{w}x{h}" for w, h in SIZES]
Snap = Callable[..., bool]
WORKSPACE = Path("fl-workspace-snapshot")
"""Relative and never created: the wizard shows it, so it must not depend on tmp paths."""


def dashboard() -> ConsoleApp:
    """The console on the recorded run, clock frozen."""
    return ConsoleApp(ReplayLink(recorded_events(), reply), clock=lambda: NOW, flush_s=0.05)


async def drawn(pilot: Any) -> None:
    """Wait until the recorded run is on screen (the whole feed is drawn in one batch)."""
    app = pilot.app
    assert isinstance(app, ConsoleApp)
    table = app.dashboard.query_one(ClientsTable)
    await wait_for(pilot, lambda: app.connected and table.row_count == 5)
    await wait_for(pilot, lambda: app.dashboard.query_one(LogView).line_count == 8)


def opening(
    *keys: str, choose: str = "", until: type | None = None
) -> Callable[..., Awaitable[None]]:
    """Press keys, optionally pick an option, and wait for a screen."""

    async def run_before(pilot: Any) -> None:
        await drawn(pilot)
        await pilot.press(*keys)
        if choose:
            await wait_for(pilot, lambda: isinstance(pilot.app.screen, ChoiceScreen))
            options = pilot.app.screen.query_one("OptionList")
            labels = [
                str(options.get_option_at_index(i).prompt) for i in range(options.option_count)
            ]
            options.highlighted = next(i for i, label in enumerate(labels) if choose in label)
            await pilot.press("enter")
        if until is not None:
            await shown(pilot, pilot.app, until)

    return run_before


@pytest.mark.parametrize("size", SIZES, ids=ids)
def test_dashboard(snap_compare: Snap, size: tuple[int, int]) -> None:
    assert snap_compare(dashboard(), terminal_size=size, run_before=drawn)


async def link_lost(pilot: Any) -> None:
    """The console's own link is down: rows unknown, a countdown in the banner."""
    await drawn(pilot)
    app = pilot.app
    app.publish(Connection(DISCONNECTED, NOW, "cannot connect to the server", NOW + 3, 2))
    table = app.dashboard.query_one(ClientsTable)
    await wait_for(pilot, lambda: str(table.get_cell("flclient1", "health")) == "? unknown")


async def shut_down(pilot: Any) -> None:
    """Another admin shut the server down."""
    await drawn(pilot)
    app = pilot.app
    shutdown = Shutdown("lead@other.org", NOW - 2)
    app.publish(Connection(SHUT_DOWN, NOW - 1, "", 0.0, 0, "fl.example.org:8003", shutdown))
    await wait_for(pilot, lambda: app.dashboard.query_one("#banner").display)


@pytest.mark.parametrize("size", [(80, 24), (120, 36)], ids=["80x24", "120x36"])
def test_console_link_lost(snap_compare: Snap, size: tuple[int, int]) -> None:
    assert snap_compare(dashboard(), terminal_size=size, run_before=link_lost)


def test_server_shut_down(snap_compare: Snap) -> None:
    assert snap_compare(dashboard(), terminal_size=(120, 36), run_before=shut_down)


async def site_logs(pilot: Any) -> None:
    """flclient1's log view, searched for 'round 3'."""
    await drawn(pilot)
    await pilot.press("l")
    screen = await shown(pilot, pilot.app, SiteLogScreen)
    await pilot.press("slash", *"round 3", "enter")
    await wait_for(pilot, lambda: screen.query_one(LogView).search == "round 3")


@pytest.mark.parametrize("size", [(80, 24), (120, 36)], ids=["80x24", "120x36"])
def test_site_log_view(snap_compare: Snap, size: tuple[int, int]) -> None:
    assert snap_compare(dashboard(), terminal_size=size, run_before=site_logs)


@pytest.mark.parametrize("size", SIZES[:2], ids=ids[:2])
def test_shutdown_confirmation(snap_compare: Snap, size: tuple[int, int]) -> None:
    run_before = opening("x", choose="the server", until=ConfirmScreen)
    assert snap_compare(dashboard(), terminal_size=size, run_before=run_before)


async def runs_view(pilot: Any) -> None:
    """``:runs``: every run on the server, as the recorded server lists them."""
    await drawn(pilot)
    await pilot.press("colon", *"runs", "enter")
    screen = await shown(pilot, pilot.app, RunsScreen)
    await wait_for(pilot, lambda: screen.query_one(DataTable).row_count == 3)


async def run_rounds(pilot: Any) -> None:
    """``enter`` on run 1 in ``:runs``: its rounds, each site's result under its round."""
    await runs_view(pilot)
    pilot.app.screen.query_one(DataTable).move_cursor(row=2)
    await pilot.press("enter")
    screen = await shown(pilot, pilot.app, RunScreen)
    await wait_for(pilot, lambda: screen.query_one(DataTable).row_count == 9)


@pytest.mark.parametrize("size", SIZES[:2], ids=ids[:2])
def test_runs_view(snap_compare: Snap, size: tuple[int, int]) -> None:
    assert snap_compare(dashboard(), terminal_size=size, run_before=runs_view)


def test_run_rounds_view(snap_compare: Snap) -> None:
    assert snap_compare(dashboard(), terminal_size=(120, 36), run_before=run_rounds)


def test_validation_matrix(snap_compare: Snap) -> None:
    def answer(line: str, confirmed: bool) -> CommandReply:
        return CommandReply(line, True, "", MATRIX, 1, "")

    app = ConsoleApp(ReplayLink(recorded_events(), answer), clock=lambda: NOW, flush_s=0.05)
    assert snap_compare(
        app, terminal_size=(120, 36), run_before=opening("v", until=ValidationScreen)
    )


async def wizard_server_step(pilot: Any) -> None:
    """Name the project, go to the server step and give both services one port."""
    screen = pilot.app.screen
    assert isinstance(screen, WizardScreen)
    for box in screen.query(Input):
        box.cursor_blink = False
    screen.query_one("#project-name", Input).value = "hospitals"
    await pilot.press("ctrl+n")
    screen.query_one("#server-host", Input).value = "fl.example.org"
    screen.query_one("#server-admin_port", Input).value = "8002"
    screen.query_one("#server-org", Input).value = "lead"
    await pilot.pause(0.2)


@pytest.mark.parametrize("size", [(120, 36), (80, 24)], ids=lambda s: f"{s[0]}x{s[1]}")
def test_wizard(snap_compare: Snap, size: tuple[int, int]) -> None:
    assert not WORKSPACE.exists()
    assert snap_compare(ProvisionApp(WORKSPACE), terminal_size=size, run_before=wizard_server_step)
