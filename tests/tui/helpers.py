"""Helpers for driving the console in tests."""

from __future__ import annotations

from typing import Any, TypeVar

from textual.screen import Screen

from fldev.poll import wait_for

ScreenT = TypeVar("ScreenT", bound=Screen[Any])


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
