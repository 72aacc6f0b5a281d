"""The login screen: asks for whatever the command line left out (kit folder, user).

``fl_admin.sh`` passes both, so an admin normally never sees this screen;
it appears when fltui is started bare, or when the server refused the
login (then with the server's reason).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import ClassVar

from textual import work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.screen import Screen
from textual.widgets import Button, Footer, Input, Label, Static

from fltui.paths import typed_path
from fltui.workfaults import SaysWhenWorkFails

LogIn = Callable[[Path, str], Awaitable[str | None]]
"""Tries a login; returns why it failed, or None."""


class LoginScreen(Screen[None], SaysWhenWorkFails):
    """Startup folder and user name; the login is tried on ``enter`` or the button."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("ctrl+q", "app.quit", "Quit")]
    # The field to type in first is marked when composed and focused as the screen is
    # set up: the kit field when no kit is known, else the user field. Deciding it in
    # on_mount would focus one message later, after keys typed meanwhile went elsewhere.
    AUTO_FOCUS = "Input.-first"

    def __init__(self, log_in: LogIn, startup: str, user: str, problem: str = "") -> None:
        """Prefill what is known and show ``problem`` (why we are here) if any."""
        super().__init__()
        self._log_in = log_in
        self._startup = startup
        self._user = user
        self._problem = problem

    def compose(self) -> ComposeResult:
        """The two fields, the button, the reason of the last failure."""
        with Vertical(classes="dialog", id="login-dialog"):
            yield Static("fltui · log in to an flstack server", classes="dialog-title")
            yield Label("Admin kit: the startup/ folder of your kit")
            kit_known = bool(self._startup.strip())
            yield Input(
                self._startup,
                placeholder="~/fl/admin/startup",
                id="login-startup",
                classes="" if kit_known else "-first",
            )
            yield Label("User: your admin email (empty: the kit's)")
            yield Input(
                self._user,
                placeholder="you@example.org",
                id="login-user",
                classes="-first" if kit_known else "",
            )
            # The reason quotes paths and the server's words: never markup.
            yield Static(self._problem, id="login-problem", classes="-error", markup=False)
            with Horizontal(classes="dialog-buttons"):
                yield Button("Log in", id="login-go", variant="primary")
        yield Footer()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        """``enter`` in either field logs in."""
        self.attempt()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        """The button logs in."""
        self.attempt()

    @work(exclusive=True, exit_on_error=False, description="logging in")
    async def attempt(self) -> None:
        """Try the login; stay here with the reason if it fails."""
        startup = typed_path(self.query_one("#login-startup", Input).value)
        user = self.query_one("#login-user", Input).value.strip()
        problem = self.query_one("#login-problem", Static)
        problem.update("logging in…")
        reason = await self._log_in(startup, user)
        if reason is None:
            self.dismiss(None)
        else:
            problem.update(reason)
