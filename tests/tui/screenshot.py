"""Draw the console's views into docs/images/ (``python -m tests.tui.screenshot``).

The same recorded feed, frozen clock and set-ups as the snapshot tests
(tests/tui/test_snapshots.py), saved with Textual's ``save_screenshot``,
so the pictures in docs/console.md show the console as it is.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from fladmin.client import CommandReply
from fldev.replay import ReplayLink
from fltui.app import ConsoleApp
from fltui.screens.dialogs import ConfirmScreen
from fltui.screens.help import HelpScreen
from fltui.screens.validation import ValidationScreen
from tests.tui.recorded import NOW, recorded_events
from tests.tui.test_console import MATRIX
from tests.tui.test_snapshots import (
    dashboard,
    drawn,
    link_lost,
    opening,
    run_rounds,
    runs_view,
    shut_down,
    site_logs,
)

IMAGES = Path(__file__).resolve().parents[2] / "docs" / "images"
SetUp = Callable[[Any], Awaitable[None]]


def matrix_console() -> ConsoleApp:
    """The console whose ``validate all`` answers with a matrix."""

    def answer(line: str, confirmed: bool) -> CommandReply:
        return CommandReply(line, True, "", MATRIX, 1, "")

    return ConsoleApp(ReplayLink(recorded_events(), answer), clock=lambda: NOW, flush_s=0.05)


async def help_screen(pilot: Any) -> None:
    """``?`` over the dashboard."""
    await opening("question_mark", until=HelpScreen)(pilot)


VIEWS: dict[str, tuple[Callable[[], ConsoleApp], SetUp, tuple[int, int]]] = {
    "console-dashboard": (dashboard, drawn, (120, 36)),
    "console-80x24": (dashboard, drawn, (80, 24)),
    "console-200x50": (dashboard, drawn, (200, 50)),
    "console-link-lost": (dashboard, link_lost, (120, 36)),
    "console-shut-down": (dashboard, shut_down, (120, 36)),
    "console-site-logs": (dashboard, site_logs, (120, 36)),
    "console-confirm": (
        dashboard,
        opening("x", choose="the server", until=ConfirmScreen),
        (120, 36),
    ),
    "console-validation": (matrix_console, opening("v", until=ValidationScreen), (120, 36)),
    "console-help": (dashboard, help_screen, (120, 36)),
    "console-runs": (dashboard, runs_view, (120, 36)),
    "console-run": (dashboard, run_rounds, (120, 36)),
}


async def draw(name: str, folder: Path) -> Path:
    """Run one view's set-up and save what the console shows."""
    make, set_up, size = VIEWS[name]
    app = make()
    async with app.run_test(size=size) as pilot:
        await set_up(pilot)
        await pilot.pause()
        await pilot.wait_for_scheduled_animations()
        app.save_screenshot(f"{name}.svg", str(folder))
    return folder / f"{name}.svg"


async def draw_all(folder: Path) -> list[Path]:
    """Every view, one after the other."""
    return [await draw(name, folder) for name in VIEWS]


if __name__ == "__main__":
    os.environ["TZ"] = "UTC"
    time.tzset()
    for path in asyncio.run(draw_all(IMAGES)):
        print(f"wrote {path}")
