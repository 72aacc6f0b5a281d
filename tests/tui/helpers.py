"""Helpers for driving the console in tests."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

from textual.screen import Screen

ScreenT = TypeVar("ScreenT", bound=Screen[Any])


async def wait_for(
    pilot: Any, predicate: Callable[[], Any], timeout: float = 30.0, what: str = ""
) -> Any:
    """Let the app run until ``predicate`` is truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what or predicate}")
        await pilot.pause(0.05)


async def shown(pilot: Any, app: Any, screen_type: type[ScreenT]) -> ScreenT:
    """The app's screen once it is a ``screen_type`` and set up.

    A pushed screen is composed and mounted a little later; until then its
    widgets cannot be queried, and a key may reach it before its
    ``on_mount`` ran. ``is_mounted`` turns true after both.
    """
    await wait_for(
        pilot,
        lambda: isinstance(app.screen, screen_type) and app.screen.is_mounted,
        what=f"the {screen_type.__name__}",
    )
    screen: ScreenT = app.screen
    return screen
