"""Helpers for driving the console in tests."""

from __future__ import annotations

import html
import io
import re
from typing import Any, TypeVar

from rich.console import Console
from textual import events
from textual.keys import _character_to_key
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


def burst(app: Any, *keys: str) -> None:
    """Queue key events all at once, as a paste or keys bunched over SSH arrive.

    ``pilot.press`` waits for the app to be idle after each key, which a
    person typing fast or a paste never does: every key here is queued
    before the app handles the first. A string is typed character by
    character; a name of :data:`KEY_NAMES` (``enter``) is that one key.
    """
    queue(app, typed(*keys))


def typed(*keys: str) -> list[events.Key]:
    """The key events of ``keys`` (as :func:`burst` reads them), stamped with the time now.

    A key is stamped when the terminal's bytes are read; :func:`queue` them
    later to have the app handle keys that waited in its queue meanwhile.
    """
    return [events.Key(key, char) for item in keys for key, char in _keys(item)]


def queue(app: Any, keys: list[events.Key]) -> None:
    """Put key events in the app's queue, in order, as its driver does."""
    for event in keys:
        event.set_sender(app)
        app._driver.send_message(event)


KEY_NAMES = {
    "enter": "\r",
    "escape": "\x1b",
    "tab": "\t",
    "backspace": "\x7f",
    "up": None,
    "down": None,
}


def _keys(item: str) -> list[tuple[str, str | None]]:
    if item in KEY_NAMES:
        return [(item, KEY_NAMES[item])]
    return [(ch if ch.isalnum() else _character_to_key(ch), ch) for ch in item]


def screen_lines(app: Any) -> list[str]:
    """What the terminal shows now, one string per row (as a person reads it)."""
    width, height = app.size
    console = Console(
        width=width,
        height=height,
        file=io.StringIO(),
        force_terminal=True,
        color_system=None,
        record=True,
        legacy_windows=False,
        safe_box=False,
    )
    console.print(app.screen._compositor.render_update(full=True))
    return console.export_text().splitlines()


SVG_TEXT = r'<text class="[^"]*" x="[^"]*" y="([^"]*)"[^>]*>([^<]*)</text>'


def reader_lines(svg: str) -> list[str]:
    """An SVG screenshot's rows as a reader that drops each span's leading spaces sees them.

    Text tools that read screenshots (and some that copy from them) drop
    the spaces at the start of each differently-styled span; a screen that
    separates words by spaces alone reads as ``hospitalsfl.example.org``.
    """
    rows: dict[float, list[str]] = {}
    for y, text in re.findall(
        r'<text class="[^"]*" x="[^"]*" y="([^"]*)"[^>]*>([^<]*)</text>', svg
    ):
        rows.setdefault(float(y), []).append(html.unescape(text).replace("\xa0", " ").lstrip())
    return ["".join(parts) for _, parts in sorted(rows.items())]


class Clock:
    """A clock the test moves by hand."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def console_errors(app: Any) -> list[str]:
    """The ERROR lines the console wrote about itself (not the sites' or the server's)."""
    return [e.message for e in app.store.logs if e.level == "ERROR" and e.source == "console"]
