"""Draw the dashboard of the recorded run into docs/images/ (``python -m tests.tui.screenshot``).

The same feed and frozen clock as the snapshot tests, at 120x36, saved with
Textual's ``save_screenshot``.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

from fldev.poll import wait_for
from fldev.replay import ReplayLink
from fltui.app import ConsoleApp
from fltui.widgets.clients import ClientsTable
from tests.tui.recorded import NOW, recorded_events

TARGET = Path(__file__).resolve().parents[2] / "docs" / "images" / "console-dashboard.svg"


async def draw(target: Path) -> None:
    """Run the console on the recorded feed and save what it shows."""
    app = ConsoleApp(ReplayLink(recorded_events()), clock=lambda: NOW, flush_s=0.05)
    async with app.run_test(size=(120, 36)) as pilot:
        table = app.dashboard.query_one(ClientsTable)
        await wait_for(pilot, lambda: app.connected and table.row_count == 5)
        await pilot.pause(0.3)
        app.save_screenshot(target.name, str(target.parent))


if __name__ == "__main__":
    os.environ["TZ"] = "UTC"
    time.tzset()
    asyncio.run(draw(TARGET))
    print(f"wrote {TARGET}")
