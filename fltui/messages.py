"""Requests that screens post up to the app: messages up, attributes down.

A screen never reaches into the app. It is handed what it draws (the
store, the clock, the :class:`~fltui.session.Session`) and posts one of
these when something is to be done that only the app can do: send a
command over the link, reconnect it, open the wizard. The app handles them
with ``@on`` handlers; tests can post them too.
"""

from __future__ import annotations

from collections.abc import Callable

from textual.message import Message

from fltui.keyhold import KeyHold


class RunCommand(Message):
    """Send a command line (the app asks first where something would stop); ``keys`` holds
    the keys typed since the line was finished, for its reply (none: nothing is held)."""

    def __init__(self, line: str, keys: KeyHold | None = None) -> None:
        super().__init__()
        self.line = line
        self.keys = keys or KeyHold(None)


class ShowValidation(Message):
    """Run ``validate all`` and show the matrix; ``release`` hands on the keys typed after
    ``v``, held for the matrix, once it has the focus (or at once when there is none)."""

    def __init__(self, release: Callable[[], None]) -> None:
        super().__init__()
        self.release = release


class OpenWizard(Message):
    """Open the provisioning wizard; ``release`` hands on the keys typed after ``p``, held
    for it, once it has the focus."""

    def __init__(self, release: Callable[[], None]) -> None:
        super().__init__()
        self.release = release


class KeyHandled(Message):
    """Posted behind a key the app passed on to a widget: it bubbles up the same way, so it
    reaches the app once the key has been handled (``laps`` times round: what the key's
    bindings post goes up after it), and ``release`` hands on the keys after."""

    def __init__(self, release: Callable[[], None], laps: int = 2) -> None:
        super().__init__()
        self.release = release
        self.laps = laps


class Reconnect(Message):
    """Try the server again now (after a shutdown, or without waiting for the countdown)."""
