"""The console app: owns the link, the store, the feed worker and the command runner.

One exclusive worker follows the server's event feed and folds it into the
store; a 250 ms timer hands the accumulated changes to the dashboard, and a
one-second timer ticks the ages. When the feed breaks, a banner says so and
the worker logs in again and takes a fresh snapshot, with a growing pause
between attempts. Commands run in workers too, so a slow server never
freezes the screen; their replies become notifications and log lines.
"""

from __future__ import annotations

import asyncio
import shlex
import time
from collections.abc import Callable, Iterable
from functools import partial
from pathlib import Path

from textual import work
from textual.app import App, SystemCommand
from textual.notifications import SeverityLevel
from textual.screen import Screen

from fladmin.client import DEFAULT_TIMEOUT_S, AdminError, CommandReply
from fladmin.link import AdminLink, Link
from flcore.feed import LogEntry, Snapshot
from fltui.screens.dashboard import DashboardScreen
from fltui.screens.dialogs import ConfirmScreen
from fltui.screens.login import LoginScreen
from fltui.status import Look
from fltui.store import Store
from fltui.targets import describe_stop
from fltui.widgets.header import CONNECTED, CONNECTING, DISCONNECTED, Who
from fltui.wizard.screen import WizardScreen

FLUSH_S = 0.25
RETRY_MAX_S = 10.0
NOTIFY_LINES = 8
CONFIRM_QUESTION = "Are you sure (Y/N):"
CONFIRMED_VERBS = {"abort": ("Abort training", "Abort"), "shutdown": ("Shut down", "Shut down")}
CONSOLE = "console"


def command_words(line: str) -> list[str]:
    """The words of a command line as the server reads them (shell quoting).

    Splitting on spaces would take ``"abort" client`` for another command and
    skip the confirmation; an unbalanced quote falls back to plain words, and
    the server then refuses the line itself.
    """
    try:
        return shlex.split(line)
    except ValueError:
        return line.split()


class ConsoleApp(App[None]):
    """fltui's full-screen console."""

    CSS_PATH = "console.tcss"
    TITLE = "fltui"

    def __init__(
        self,
        link: Link | None = None,
        *,
        startup: Path | None = None,
        user: str = "",
        problem: str = "",
        workspace: Path | None = None,
        timeout: float | None = None,
        clock: Callable[[], float] = time.time,
        flush_s: float = FLUSH_S,
    ) -> None:
        """Open with ``link`` or, without one, the login screen (showing ``problem``).

        Args:
            link: a session to follow (its login happens once the app runs).
            startup: the admin kit folder to prefill on the login screen.
            user: the user name to prefill on the login screen.
            problem: why the login screen is shown.
            workspace: provisioning workspace the wizard opens first.
            timeout: the command timeout (``--timeout``), for this link and any
                the login screen makes; None keeps the default.
            clock: the time source of ages and countdowns (tests freeze it).
            flush_s: how often queued changes are drawn.
        """
        super().__init__()
        self._timeout = DEFAULT_TIMEOUT_S if timeout is None else timeout
        if link is not None and timeout is not None:
            link.timeout = timeout
        self.link = link
        self.store = Store()
        self.clock = clock
        self.workspace = workspace or Path("fl-workspace")
        self.link_look: Look = CONNECTING
        self.link_problem = ""
        self._startup = startup
        self._user = user
        self._problem = problem
        self.flush_s = flush_s
        self._ever_connected = False
        self.dashboard = DashboardScreen()

    # ------------------------------------------------------------------ facts

    @property
    def connected(self) -> bool:
        """Whether the feed is live (commands may be sent)."""
        return self.link_look is CONNECTED

    @property
    def role(self) -> str:
        """``super`` or ``member``."""
        return self.link.role if self.link else ""

    @property
    def timeout(self) -> float:
        """The command timeout (``set_timeout``, or ``--timeout`` before any login)."""
        return self.link.timeout if self.link else self._timeout

    @property
    def transfer_dir(self) -> Path | None:
        """The admin's ``transfer/`` folder."""
        return self.link.transfer_dir if self.link else None

    def who(self) -> Who:
        """Project, server, admin and role, for the header."""
        link = self.link
        server = self.store.server
        if link is None:
            return Who(server.project if server else "", "", "not logged in", "")
        project = server.project if server else link.project
        return Who(project, link.target, link.user, link.role)

    def app_names(self) -> list[str]:
        """App folders in the admin's ``transfer/``, plus the run's app."""
        names = set()
        folder = self.transfer_dir
        try:
            if folder is not None and folder.is_dir():
                names = {
                    p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")
                }
        except OSError:  # an unreadable transfer/ offers no apps (the pickers then say so)
            names = set()
        if self.store.run.app:
            names.add(self.store.run.app)
        return sorted(names)

    # ------------------------------------------------------------------ lifecycle

    async def on_mount(self) -> None:
        """Show the dashboard, start the timers, then log in or ask how to."""
        await self.push_screen(self.dashboard)
        if self.link is None:
            self.ask_login(self._problem)
        else:
            self.follow_feed()

    async def on_unmount(self) -> None:
        """Close the connection."""
        if self.link is not None:
            await self.link.close()

    def flush(self) -> None:
        """Draw what the feed changed since the last flush, in one batch.

        While a dialog covers the dashboard, changes keep piling up in the
        store instead: redrawing a dimmed background costs as much as the
        dashboard itself, and the dialog has to answer keys quickly.
        """
        if self.screen is not self.dashboard:
            return
        changes = self.store.take_changes()
        if changes:
            with self.batch_update():
                self.dashboard.render_changes(changes)

    def ask_login(self, problem: str) -> None:
        """Show the login screen, filled in with what the link or the command line gave."""
        startup = self.link.startup if self.link else self._startup
        user = self.link.user if self.link else self._user
        self.push_screen(LoginScreen(self.log_in, str(startup or ""), user, problem))

    async def log_in(self, startup: Path, user: str) -> str | None:
        """Try a login from the login screen; on success follow the feed of that server."""
        try:
            link = AdminLink(startup, user or None)
        except AdminError as exc:
            return str(exc)
        link.timeout = self.timeout
        try:
            await link.login()
        except AdminError as exc:
            await link.close()
            return str(exc)
        if self.link is not None:
            await self.link.close()
        self.link = link
        self.follow_feed(logged_in=True)
        return None

    def set_link(self, look: Look, problem: str = "") -> None:
        """Record the connection state and redraw header, banner and keys."""
        self.link_look, self.link_problem = look, problem
        self.dashboard.show_link()

    @work(exclusive=True, exit_on_error=False, group="feed")
    async def follow_feed(self, logged_in: bool = False) -> None:
        """Follow the feed for as long as the app runs, reconnecting when it breaks."""
        link = self.link
        assert link is not None
        attempt = 0
        while True:
            try:
                if not logged_in:
                    await link.login()
                logged_in = False
                problem = "the server ended the event stream"
                async for event in link.events():
                    if not self.store.apply(event):
                        problem = "events were missed; fetching a fresh snapshot"
                        break
                    if isinstance(event.body, Snapshot):
                        attempt = 0
                        self._connected()
            except AdminError as exc:
                if exc.refused and not self._ever_connected:
                    self.set_link(DISCONNECTED, str(exc))
                    self.ask_login(str(exc))
                    return
                problem = str(exc)
            attempt += 1
            delay = min(2.0 ** (attempt - 1), RETRY_MAX_S)
            if self.connected:
                self.notify(
                    problem, title="connection lost", severity="error", timeout=8, markup=False
                )
            self.set_link(
                DISCONNECTED,
                f"connection lost: {problem} · reconnecting in {delay:g}s (attempt {attempt})",
            )
            self.log_line("WARNING", f"connection lost: {problem}")
            await asyncio.sleep(delay)
            self.set_link(CONNECTING, f"reconnecting to {link.target} (attempt {attempt})…")

    def _connected(self) -> None:
        if self._ever_connected and not self.connected:
            self.notify("reconnected: showing a fresh snapshot", title="connection")
            self.log_line("INFO", "reconnected")
        self._ever_connected = True
        self.set_link(CONNECTED)

    # ------------------------------------------------------------------ commands

    async def run_command(self, line: str, quiet: bool = False) -> CommandReply | None:
        """Run a command line, confirming what is dangerous; report the reply.

        Must run in a worker (the confirmation is a modal screen awaited here).

        Args:
            line: the command, as typed.
            quiet: log the reply but notify only failures (the caller shows it).

        Returns:
            The reply, or None when cancelled or the server could not be reached.
        """
        words = command_words(line)
        if not words or self.link is None:
            return None
        asks_first = words[0] == "abort" and len(words) > 1 and words[1] in ("server", "client")
        if asks_first and not await self.confirm(words, ""):
            self.log_line("INFO", f"{line}: cancelled")
            return None
        try:
            outcome = await self.link.execute(line)
            if outcome.confirm_prompt:
                if not await self.confirm(words, outcome.confirm_prompt):
                    self.log_line("INFO", f"{line}: cancelled")
                    return None
                outcome = await self.link.execute(line, confirmed=True)
        except AdminError as exc:
            self.problem(f"{line}: {exc}")
            return None
        self.report(outcome, quiet)
        return outcome

    async def confirm(self, words: list[str], prompt: str) -> bool:
        """Ask in a modal, naming what will stop and showing the server's warning."""
        title, verb = CONFIRMED_VERBS.get(words[0], (words[0], words[0]))
        target = " ".join(words[1:])
        warning = prompt.replace(CONFIRM_QUESTION, "").strip()
        stops = describe_stop(self.store, words)
        answer: bool = await self.push_screen_wait(
            ConfirmScreen(f"{title}: {target}", stops, warning, verb)
        )
        return answer

    def report(self, outcome: CommandReply, quiet: bool = False) -> None:
        """A reply becomes log lines and (unless quiet and fine) a notification."""
        level = "INFO" if outcome.ok else "ERROR"
        lines = outcome.text.rstrip("\n").splitlines() or ["(no reply text)"]
        self.log_line(level, f"> {outcome.line}")
        self.log_lines(level, lines)
        if not outcome.ok or not quiet:
            body = "\n".join(lines[:NOTIFY_LINES]) + ("\n…" if len(lines) > NOTIFY_LINES else "")
            severity: SeverityLevel = "information" if outcome.ok else "error"
            self.notify(
                body,
                title=outcome.line,
                severity=severity,
                timeout=6 if outcome.ok else 12,
                markup=False,
            )

    def problem(self, message: str) -> None:
        """Something went wrong on our side: an error notification and a log line."""
        self.log_line("ERROR", message)
        self.notify(message, severity="error", timeout=12, markup=False)

    def log_line(self, level: str, message: str) -> None:
        """Write one line of the console's own to the logs pane."""
        self.log_lines(level, [message])

    def log_lines(self, level: str, messages: Iterable[str]) -> None:
        """Write lines of the console's own to the logs pane."""
        now = self.clock()
        for message in messages:
            self.store.add_log(LogEntry(now, level, "fltui", message, CONSOLE))

    # ------------------------------------------------------------------ screens

    def open_wizard(self) -> None:
        """Push the provisioning wizard over the dashboard."""
        self.push_screen(WizardScreen(self.workspace))

    def get_system_commands(self, screen: Screen[object]) -> Iterable[SystemCommand]:
        """The palette offers the dashboard's actions too."""
        yield from super().get_system_commands(screen)
        if isinstance(screen, DashboardScreen):
            for key, action, text in screen.key_help():
                if screen.check_action(action, ()) is True:
                    yield SystemCommand(
                        text.capitalize(), f"key: {key}", partial(screen.run_action, action)
                    )
