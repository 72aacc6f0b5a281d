"""The console's look, pinned: dashboard, confirmation, validation matrix and wizard.

Each snapshot is drawn from the recorded run (tests/tui/recorded.py) with
the clock frozen at its NOW, at 120x36 and at 80x24. Regenerate with
``pytest tests/tui/test_snapshots.py --snapshot-update`` after a deliberate
change, and look at the SVGs before committing them.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from fldev.poll import wait_for
from fldev.replay import ReplayLink
from fltui.adminclient import Outcome
from fltui.app import ConsoleApp
from fltui.screens.dialogs import ChoiceScreen, ConfirmScreen
from fltui.screens.validation import ValidationScreen
from fltui.widgets.clients import ClientsTable
from fltui.wizard.app import ProvisionApp
from fltui.wizard.screen import WizardScreen
from tests.tui.recorded import NOW, recorded_events
from tests.tui.test_console import MATRIX, reply

SIZES = [(120, 36), (80, 24)]
Snap = Callable[..., bool]
WORKSPACE = Path("fl-workspace-snapshot")
"""Relative and never created: the wizard shows it, so it must not depend on tmp paths."""


def dashboard() -> ConsoleApp:
    """The console on the recorded run, clock frozen."""
    return ConsoleApp(ReplayLink(recorded_events(), reply), clock=lambda: NOW, flush_s=0.05)


async def drawn(pilot: Any) -> None:
    """Wait until the recorded snapshot is on screen."""
    app = pilot.app
    assert isinstance(app, ConsoleApp)
    await wait_for(pilot, lambda: app.connected and app.dashboard.query_one(ClientsTable).row_count)
    await pilot.pause(0.2)


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
            await wait_for(pilot, lambda: isinstance(pilot.app.screen, until))
        await pilot.pause(0.2)

    return run_before


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_dashboard(snap_compare: Snap, size: tuple[int, int]) -> None:
    assert snap_compare(dashboard(), terminal_size=size, run_before=drawn)


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_shutdown_confirmation(snap_compare: Snap, size: tuple[int, int]) -> None:
    run_before = opening("x", choose="the server", until=ConfirmScreen)
    assert snap_compare(dashboard(), terminal_size=size, run_before=run_before)


def test_validation_matrix(snap_compare: Snap) -> None:
    def answer(line: str, confirmed: bool) -> Outcome:
        return Outcome(line, True, "", MATRIX, 1, "")

    app = ConsoleApp(ReplayLink(recorded_events(), answer), clock=lambda: NOW, flush_s=0.05)
    assert snap_compare(
        app, terminal_size=(120, 36), run_before=opening("v", until=ValidationScreen)
    )


async def wizard_server_step(pilot: Any) -> None:
    """Name the project, go to the server step and give both services one port."""
    screen = pilot.app.screen
    assert isinstance(screen, WizardScreen)
    for box in screen.query("Input"):
        box.cursor_blink = False
    screen.query_one("#project-name").value = "hospitals"
    await pilot.press("ctrl+n")
    screen.query_one("#server-host").value = "fl.example.org"
    screen.query_one("#server-admin_port").value = "8002"
    screen.query_one("#server-org").value = "lead"
    await pilot.pause(0.2)


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_wizard(snap_compare: Snap, size: tuple[int, int]) -> None:
    assert not WORKSPACE.exists()
    assert snap_compare(ProvisionApp(WORKSPACE), terminal_size=size, run_before=wizard_server_step)
