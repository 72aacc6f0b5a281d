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


class RunCommand(Message):
    """Send a command line (the app asks first where something would stop)."""

    def __init__(self, line: str) -> None:
        super().__init__()
        self.line = line


class ShowValidation(Message):
    """Run ``validate all`` and show the matrix; ``release`` hands on the keys typed after
    ``v``, held for the matrix, once it has the focus (or at once when there is none)."""

    def __init__(self, release: Callable[[], None]) -> None:
        super().__init__()
        self.release = release


class OpenWizard(Message):
    """Open the provisioning wizard."""


class Reconnect(Message):
    """Try the server again now (after a shutdown, or without waiting for the countdown)."""
