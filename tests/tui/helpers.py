"""Helpers for driving the console in tests."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from fltui.screens.login import LoginScreen


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


async def login_ready(pilot: Any, app: Any) -> LoginScreen:
    """The login screen once it is set up: pushed is not yet mounted.

    It is ready when it has put the cursor in one of its fields (its
    ``on_mount``), so queries and keys then reach a composed screen.
    """
    await wait_for(
        pilot,
        lambda: isinstance(app.screen, LoginScreen) and app.focused is not None,
        what="the login screen",
    )
    screen: LoginScreen = app.screen
    return screen
