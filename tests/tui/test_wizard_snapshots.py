"""The wizard's question before it leaves unsaved passwords, pinned as a snapshot.

Passwords are made deterministic and the workspace is a relative path in a
temporary folder, so the screen is the same on every machine. Regenerate
with ``pytest tests/tui/test_wizard_snapshots.py --snapshot-update`` after a
deliberate change, and look at the SVG before committing it.
"""

from __future__ import annotations

from collections.abc import Callable
from itertools import count
from pathlib import Path
from typing import Any

import pytest
from textual.widgets import ContentSwitcher, Input

import fltui.wizard.kits
import provision.engine
from fldev.poll import wait_for
from fltui.wizard.app import ProvisionApp
from fltui.wizard.question import Question
from tests.tui.helpers import shown
from tests.tui.test_wizard_steps import to_review

Snap = Callable[..., bool]


async def leaving_the_kits_step(pilot: Any) -> None:
    """Provision a new project, then press escape on the Kits step."""
    await wait_for(pilot, lambda: pilot.app.focused is not None)  # the first step is set up
    screen = await to_review(pilot, "hospitals")
    await pilot.click("#review-go")
    switcher = screen.query_one(ContentSwitcher)
    await wait_for(pilot, lambda: switcher.current == "step-kits", 60)
    for box in screen.query(Input):
        box.cursor_blink = False
    pilot.app.clear_notifications()
    await pilot.press("escape")
    await shown(pilot, pilot.app, Question)
    await pilot.pause(0.2)


def test_leaving_the_kits_step_asks(
    snap_compare: Snap, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    numbers = count(1)
    monkeypatch.setattr(
        provision.engine, "new_password", lambda: f"SnapshotPassword{next(numbers):04d}"
    )
    # Each run makes a new CA: the snapshot shows a fixed stand-in for its fingerprint.
    monkeypatch.setattr(fltui.wizard.kits, "colon_hex", lambda _: ":".join(["AB"] * 32))
    app = ProvisionApp(Path("fl-workspace"))
    assert snap_compare(app, terminal_size=(100, 30), run_before=leaving_the_kits_step)
