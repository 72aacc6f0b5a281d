"""The console app: owns the link, the store, the feed worker and the command runner.

One exclusive worker follows the server's event feed and folds it into the
store; the dashboard, handed the store, draws what changed on its own
timers. Attributes go down, messages come up: the app hands its screens a
:class:`~fltui.state.ConsoleState` whenever the login or the link changes,
and they post :mod:`fltui.messages` for what only the app can do (send a
command, reconnect, open the wizard).

When the feed breaks, the console says that *its* link is down (the sites
are not), retries with a growing pause and a ticking countdown, logs in
again and takes a fresh snapshot. When the server went away because an
admin shut it down (the feed's audit, or our own reply, says who), that is
no outage: the console says so and waits for ``r`` or ``q``. Commands run
in workers too, so a slow server never freezes the screen; their replies
become notifications and log lines, and the keys typed after a command
wait for its reply (:meth:`ConsoleApp.send`), as a shell's do.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

from textual import events, on, work
from textual.app import App, SystemCommand
from textual.notifications import SeverityLevel
from textual.screen import Screen
from textual.widget import Widget

from fladmin.client import DEFAULT_TIMEOUT_S, AdminError, CommandReply
from fladmin.link import AdminLink, Link
from flcore.feed import LogEntry, Snapshot, Tick
from flcore.listingrecords import apps_page
from fltui.connection import (
    CONNECTED,
    CONNECTING,
    DISCONNECTED,
    REFRESHING,
    SHUT_DOWN,
    SILENT,
    SILENT_S,
    Connection,
)
from fltui.keyhold import KeyHold, show_holding
from fltui.messages import KeyHandled, OpenWizard, Reconnect, RunCommand, ShowValidation
from fltui.privatefiles import deliver_privately
from fltui.screens.dashboard import DashboardScreen
from fltui.screens.dialogs import ConfirmScreen
from fltui.screens.login import LoginScreen
from fltui.screens.validation import ValidationScreen
from fltui.serverclock import TOLD_OFFSET_S, ServerClock
from fltui.state import ConsoleState, Who
from fltui.status import Look, age, clock_time
from fltui.store import Store
from fltui.vocabulary import command_words, refusal
from fltui.wizard.app import guard_quit
from fltui.wizard.screen import WizardScreen
from fltui.workfaults import SaysWhenWorkFails, console_fault

FLUSH_S = 0.25
BEHIND_S = 5.0
"""An event older than this when the console handles it (on the server's clock) means the
console fell behind its feed: it refreshes rather than show an old picture as live."""
TELL_BEHIND_S = 60.0
"""A console that keeps falling behind notifies once in this long (each refresh is logged)."""
WATCH_S = 1.0
"""How often the console checks that the server still talks."""
RETRY_MAX_S = 10.0
NOTIFY_LINES = 8
CONSOLE = "console"
COMMANDS = "commands"
"""Worker group of commands on their way: never cancelled by another key."""
LOCAL_COMMANDS = frozenset({"set_timeout"})
"""Commands the admin client answers itself: the server never audits them."""
WAIT_TOLD_S = 1.0
"""A key typed this long after a command was sent, its reply not in yet, is told why it waits."""


@dataclass
class Awaited:
    """A command on its way: the keys typed after it wait for its reply ``since`` then
    (None while its question is shown: they answer that)."""

    line: str
    since: float | None
    told: bool = False


class ConsoleApp(App[None], SaysWhenWorkFails):
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
        retry_first_s: float = 1.0,
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
            clock: this computer's clock (tests freeze it); ages and countdowns use the
                server's, this one moved by the offset the feed shows (fltui.serverclock).
            flush_s: how often queued changes are drawn.
            retry_first_s: the pause before the first reconnection attempt; it
                doubles with each failed attempt, up to ten seconds (or this).
        """
        super().__init__()
        self._timeout = DEFAULT_TIMEOUT_S if timeout is None else timeout
        if link is not None and timeout is not None:
            link.timeout = timeout
        self.link = link
        self.store = Store()
        self.clock = ServerClock(clock)
        self._told_offset = False
        self._heard_at = 0.0
        """When (this computer's clock) the feed last said anything."""
        self._watched_at = 0.0
        """When the silence was last checked (this computer's clock)."""
        self._told_behind_at = -math.inf
        self.workspace = workspace or Path("fl-workspace")
        self._startup = startup
        self._user = user
        self._problem = problem
        self._ever_connected = False
        self._reconnect = asyncio.Event()
        self._retry_first_s = retry_first_s
        self.state = self._state_of(Connection(target=link.target if link else ""))
        self.server_apps: list[str] = []
        """The apps on the server, as its last ``list_apps`` named them."""
        self._held: deque[events.Key] = deque()
        """Keys read while an earlier one is on its way (see hold_keys)."""
        self._holds: set[object] = set()
        self._in_flight: set[Callable[[], None]] = set()
        """Releases of the keys passed on to a widget and not yet handled."""
        self._handed: set[Callable[[], None]] = set()
        """Releases of such keys, left to the screen shown since (see _screen_changed)."""
        self._awaited: list[Awaited] = []
        """Commands sent and not yet answered, the latest last."""
        self.dashboard = DashboardScreen(
            self.store, self.clock, self.app_names, self.ask, self.server_app_names, flush_s
        )

    # ------------------------------------------------------------------ facts

    @property
    def connected(self) -> bool:
        """Whether the feed is live (commands may be sent)."""
        return self.state.connection.up

    @property
    def link_look(self) -> Look:
        """The link's state as the header shows it (connected, disconnected, …)."""
        return self.state.connection.look

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

    def _state_of(self, connection: Connection) -> ConsoleState:
        link = self.link
        if link is None:
            return ConsoleState(timeout=self.timeout, save_dir=Path.cwd(), connection=connection)
        return ConsoleState(
            who=Who(link.project, link.target, link.user, link.role),
            timeout=link.timeout,
            transfer_dir=link.transfer_dir,
            save_dir=link.startup.parent,
            connection=connection,
        )

    def publish(self, connection: Connection | None = None) -> None:
        """Hand the screens the current state (after a login, a timeout or a link change)."""
        self.state = self._state_of(connection or self.state.connection)
        self.dashboard.set_state(self.state)

    def app_names(self) -> list[str]:
        """App folders in the admin's ``transfer/``: what ``u`` and ``upload_folder`` send."""
        folder = self.transfer_dir
        try:
            if folder is None or not folder.is_dir():
                return []
            return sorted(
                p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")
            )
        except OSError:  # an unreadable transfer/ offers no apps (the picker then says so)
            return []

    # ------------------------------------------------------------------ keys, one at a time

    def hold_keys(self) -> Callable[[], None]:
        """Hold every key read from now on, in order, until the returned release is called.

        Keys typed ahead (a paste, keys bunched over SSH) are read together,
        but each must act on what the keys before it made: ``↓l`` opens the
        logs of the row ``↓`` moved to, ``␣a`` aborts on the row ``␣``
        marked, and the keys after a key that opens a screen go to that
        screen. So a key passed on to a widget holds the keys after it until
        it has been handled (:meth:`_read_key`), and a key that opens a
        dialog holds them until the dialog has the focus (the dialog releases
        them then, or the worker when it ends without one). Keys wait while
        any hold is on, and are then read again one by one, each holding the
        rest in turn: none overtakes another. Releasing twice does nothing.
        """
        hold = object()
        self._holds.add(hold)

        def release() -> None:
            if hold in self._holds:
                self._holds.discard(hold)
                if not self._holds:
                    self.call_later(self._read_held_keys)

        return release

    async def _read_held_keys(self) -> None:
        while self._held and not self._holds:
            await self._read_key(self._held.popleft())

    async def _read_key(self, key: events.Key) -> None:
        """Act on ``key`` as the app reads it; one passed on to a widget holds the keys after
        it until it has been handled (:meth:`_pass_marker`), or until another screen shows
        (the key closed its own: the rest go to the one under it)."""
        if not self._screen_stack:  # the console is closing: nothing to type into
            return
        target = self.focused or self.screen
        await super().on_event(key)
        if key.is_forwarded:
            release = self.hold_keys()
            self._in_flight.add(release)
            self._pass_marker(target, KeyHandled(release))

    def _pass_marker(self, target: Widget, marker: KeyHandled) -> None:
        """Send ``marker`` up from ``target`` the way its key went.

        The key goes up from the focused widget to the app, each widget
        handling it in turn, and the app's bindings act on it last: the
        marker, posted behind it, follows it up. What those bindings post
        (an input's ``Submitted``, a table's ``RowSelected``) starts at the
        focused widget again, behind the marker: so the marker goes round a
        second time, from where the focus is then, and the keys after wait
        for both laps.
        """
        if not target.post_message(marker):
            self._key_handled(marker)

    @on(KeyHandled)
    def _key_handled(self, marker: KeyHandled) -> None:
        if marker.release not in self._in_flight:  # another screen shows: it hands them on
            return
        if not self._screen_stack:  # the console is closing: no keys to hand on
            return
        if marker.laps > 1:
            self._pass_marker(self.focused or self.screen, KeyHandled(marker.release, 1))
            return
        self._in_flight.discard(marker.release)
        marker.release()

    def _screen_changed(self, screen: Screen[Any]) -> None:
        """Keys passed on to the screen that closed never come back up: the keys after them
        wait for the screen now shown to have the focus (it takes it as it resumes, before
        the callbacks queued after), or for the next, should this one close first."""
        self._handed |= self._in_flight
        self._in_flight.clear()
        for release in self._handed:
            screen.call_later(self._hand_on, release)

    def _hand_on(self, release: Callable[[], None]) -> None:
        self._handed.discard(release)
        release()

    async def on_event(self, event: events.Event) -> None:
        """A key read while keys are held waits (keys bubbling up from widgets do not), but
        the app's own priority keys (``ctrl+q``) act at once: a slow server's reply to ``d``
        must not keep the admin from quitting."""
        if (
            isinstance(event, events.Key)
            and not event.is_forwarded
            and not any(b.priority for b in self._bindings.key_to_bindings.get(event.key, ()))
        ):
            if self._holds or self._held:
                self._held.append(event)
                self._tell_waiting()
            else:
                await self._read_key(event)
            return
        await super().on_event(event)

    def _tell_waiting(self) -> None:
        """A key waits for the reply to a command sent a while ago: say so, once per command,
        or the console looks frozen (a paste's keys, typed at once, are not told)."""
        if not self._awaited:
            return
        awaited = self._awaited[-1]
        if awaited.told or awaited.since is None or self.clock() - awaited.since < WAIT_TOLD_S:
            return
        awaited.told = True
        self.dashboard.say(
            f"waiting for the reply to {awaited.line}: the keys typed meanwhile act once it "
            "comes (ctrl+q quits)"
        )

    # ------------------------------------------------------------------ lifecycle

    async def on_mount(self) -> None:
        """Show the dashboard, then log in or ask how to."""
        self.screen_change_signal.subscribe(self, self._screen_changed)
        await self.push_screen(self.dashboard)
        self.set_interval(WATCH_S, self._watch_silence)
        self.publish()
        if self.link is None:
            self.ask_login(self._problem)
        else:
            self.follow_feed()

    async def on_unmount(self) -> None:
        """Close the connection."""
        if self.link is not None:
            await self.link.close()

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
        self.publish(Connection(target=link.target))
        self.follow_feed(logged_in=True)
        return None

    @work(exclusive=True, exit_on_error=False, group="feed", description="following the server")
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
                self.store.user = link.user
                problem = "the server ended the event stream"
                behind = 0.0
                async for event in link.events():
                    fresh = isinstance(event.body, Snapshot)
                    self._heard(event.time, fresh)
                    behind = 0.0 if fresh else self.clock.behind(event.time)
                    if behind > BEHIND_S:
                        break
                    self._talking()
                    if isinstance(event.body, Tick):
                        continue
                    if not self.store.apply(event):
                        problem = "events were missed; fetching a fresh snapshot"
                        break
                    if fresh:
                        attempt = 0
                        self._connected()
                if behind > BEHIND_S:
                    self._fell_behind(behind)
                    continue
            except AdminError as exc:
                if exc.refused and not self._ever_connected:
                    self.publish(Connection(DISCONNECTED, problem=str(exc), target=link.target))
                    self.ask_login(str(exc))
                    return
                problem = str(exc)
            except Exception as exc:  # the console's own fault: say so, never freeze "connected"
                problem = f"the console could not follow the feed: {console_fault(exc)}"
                self.problem(problem)
            self._reconnect.clear()
            if self.store.stopped_by and self.connected:
                problem = f"the server stopped ({self.store.stopped_by}); it may be starting again"
            if self.connected and self.store.shutdown is not None:
                await self._after_shutdown()
                attempt = 0
            else:
                attempt += 1
                await self._after_loss(problem, attempt)
            self.publish(replace(self.state.connection, look=CONNECTING, retry_at=0.0))

    def _heard(self, stamp: float, first: bool) -> None:
        """An event stamped by the server's clock arrived (``first``: a fresh subscription's
        snapshot): follow that clock, and say once when it is far from this computer's."""
        self._heard_at = self.clock.local()
        self.clock.heard(stamp, first)
        offset = self.clock.offset
        if not self._told_offset and self.clock.settled and abs(offset) > TOLD_OFFSET_S:
            self._told_offset = True
            way = "behind" if offset > 0 else "ahead of"
            self.log_line(
                "INFO",
                f"this computer's clock is {age(abs(offset))} {way} the server's: the console "
                "shows the server's time",
            )

    def _talking(self) -> None:
        """A current event came: a silence is over."""
        connection = self.state.connection
        if connection.look is SILENT:
            self.log_line(
                "INFO", f"the server talks again after {age(self.clock() - connection.lost_at)}"
            )
            self.publish(Connection(CONNECTED, target=connection.target))

    def _watch_silence(self) -> None:
        """Say when the feed went quiet for longer than the server's ticks allow: the server
        is stopped or overloaded, and the sites are not to blame. Not judged after this
        console's own loop stalled (the feed may have waited on it, not on the server)."""
        local = self.clock.local()
        stalled = local - self._watched_at > 2 * WATCH_S
        self._watched_at = local
        connection = self.state.connection
        if stalled or connection.look is not CONNECTED or local - self._heard_at <= SILENT_S:
            return
        since = self.clock() - (local - self._heard_at)
        self.log_line("WARNING", f"nothing from the server since {clock_time(since)}")
        self.publish(replace(connection, look=SILENT, lost_at=since))

    def _fell_behind(self, behind: float) -> None:
        """The console handled an event long after the server sent it (this computer was
        busy, or its network slow): the picture is old. Say so once, and take a fresh one."""
        message = (
            f"the console fell {age(behind)} behind the server's events (this computer or its "
            "network was slow); fetching a fresh snapshot"
        )
        self.log_line("WARNING", message)
        now = self.clock()
        if now - self._told_behind_at > TELL_BEHIND_S:
            self._told_behind_at = now
            self.notify(message, title="refreshing", severity="warning", timeout=8, markup=False)
        self.publish(Connection(REFRESHING, now, message, target=self.state.connection.target))

    async def _after_shutdown(self) -> None:
        """The server went away because an admin shut it down: say so, wait for ``r``."""
        shutdown = self.store.shutdown
        assert shutdown is not None
        now = self.clock()
        connection = Connection(SHUT_DOWN, now, "", 0.0, 0, self.state.connection.target, shutdown)
        self.publish(connection)
        message = f"server shut down by {shutdown.user} at {clock_time(shutdown.time)}"
        self.log_line("INFO", message)
        self.notify(
            f"{message}: r reconnects, q quits", title="server shut down", timeout=10, markup=False
        )
        await self._reconnect.wait()
        self.store.shutdown = None

    async def _after_loss(self, problem: str, attempt: int) -> None:
        """The link broke: say since when, and count down to the next attempt."""
        now = self.clock()
        first = self._retry_first_s
        delay = min(first * 2.0 ** (attempt - 1), max(RETRY_MAX_S, first))
        old = self.state.connection
        if old.up:
            self.notify(problem, title="connection lost", severity="error", timeout=8, markup=False)
            self.log_line("WARNING", f"connection lost: {problem}")
        lost_at = old.lost_at or now
        self.publish(Connection(DISCONNECTED, lost_at, problem, now + delay, attempt, old.target))
        try:
            await asyncio.wait_for(self._reconnect.wait(), delay)
        except TimeoutError:
            return

    def _connected(self) -> None:
        if not self._ever_connected and self.link is not None:
            for warning in self.link.kit_warnings:
                self.log_line("WARNING", warning)
                self.notify(
                    warning, title="admin kit", severity="warning", timeout=20, markup=False
                )
        if self._ever_connected and not self.connected and self.link_look is not REFRESHING:
            self.notify("reconnected: showing a fresh snapshot", title="connection")
            self.log_line("INFO", "reconnected")
        self._ever_connected = True
        self.publish(Connection(CONNECTED, target=self.state.connection.target))

    @on(Reconnect)
    def _reconnect_now(self) -> None:
        self._reconnect.set()

    # ------------------------------------------------------------------ commands

    @on(RunCommand)
    def _run_command(self, message: RunCommand) -> None:
        self.send(message.line, message.keys)

    @work(group=COMMANDS, exit_on_error=False, description="a command")
    async def send(self, line: str, keys: KeyHold) -> None:
        """Run a command line in a worker of its own; the keys typed after it (``keys``)
        wait for its reply, as a shell's do.

        The pickers are exclusive, one at a time; a command already on its
        way must not be, or the next key would cancel it and its reply would
        never be shown.
        """
        try:
            await self.run_command(line, keys=keys)
        finally:
            keys.release()

    async def run_command(
        self, line: str, quiet: bool = False, keys: KeyHold | None = None
    ) -> CommandReply | None:
        """Run a command line, confirming what is dangerous; report the reply.

        Must run in a worker (the confirmation is a modal screen awaited here).
        A command the admin's role may not run is refused here, before any
        confirmation: asking "are you sure?" about a refusal wastes a decision.

        Args:
            line: the command, as typed.
            quiet: log the reply but notify only failures (the caller shows it).
            keys: the keys typed since the line was finished, held for the reply: a
                confirmation gets them, to drop (they were not typed in answer to
                it), and a yes holds the keys typed after it again, for the reply.

        Returns:
            The reply, or None when refused, cancelled or the server could not be reached.
        """
        words = command_words(line)
        if not words or self.link is None:
            return None
        reason = refusal(words[0], self.role)
        if reason is not None:
            self.dashboard.say(f"{line}: not sent · {reason}")
            self.log_line("INFO", f"{line}: not sent ({reason})")
            return None
        if words[0] not in LOCAL_COMMANDS:
            self.store.sending(line)
        awaited = Awaited(line, self.clock())
        self._awaited.append(awaited)
        try:
            reply = await self._answered(self.link, awaited, keys or KeyHold(None))
        except AdminError as exc:
            self.store.not_sent(line)
            self.problem(f"{line}: {exc}")
            return None
        finally:
            self._awaited.remove(awaited)
        if reply is None:
            self.store.not_sent(line)
            self.log_line("INFO", f"{line}: cancelled")
            return None
        self.report(reply, quiet)
        if words[0] == "set_timeout":
            self.publish()
        if reply.ok and words[0] == "upload_folder" and len(words) == 2:
            self.server_apps = sorted({*self.server_apps, words[1]})
        return reply

    async def _answered(self, link: Link, awaited: Awaited, keys: KeyHold) -> CommandReply | None:
        """The server's reply to ``awaited``'s line, its questions answered (asked again when
        what it acts on changed while the question was open); None when the admin cancels."""
        line = awaited.line
        reply = await link.execute(line)
        while reply.confirm_prompt:
            awaited.since = None
            if not await self.confirm(reply, keys):
                return None
            awaited.since = self.clock()  # the keys typed after the yes wait from now
            reply = await link.execute(line, confirmed=True)
        return reply

    def server_app_names(self) -> list[str]:
        """The apps on the server as the console last heard (a ``d`` picker, ``:apps``, an
        upload), and the run's app: what ``deploy`` completes. Typing asks the server
        nothing."""
        names = set(self.server_apps)
        if self.store.run.app:
            names.add(self.store.run.app)
        return sorted(names)

    async def ask(self, line: str) -> CommandReply | None:
        """Run a read-only command for a view or a picker: its reply, not logged (the view
        shows it); None, with the reason notified, when the server cannot be asked."""
        if self.link is None or not self.connected:
            self.dashboard.say("not connected to the server: the view waits for the link")
            return None
        try:
            reply = await self.link.execute(line)
        except AdminError as exc:
            self.problem(f"{line}: {exc}")
            return None
        if reply.ok and command_words(line)[:1] == ["list_apps"]:
            listed = apps_page(reply.data)
            named = [app.name for app in listed.lines]
            known = [] if listed.count.page == 1 else self.server_apps
            self.server_apps = sorted({*known, *named})
        return reply

    async def confirm(self, reply: CommandReply, keys: KeyHold) -> bool:
        """Ask in a modal, showing the server's question as it is: the server decides what
        asks and says what will really happen. The keys held for the reply (``keys``) go to
        the question, which drops them; a yes holds the keys typed after it again."""
        question = ConfirmScreen.asking(
            reply.line, reply.data.get("confirm"), reply.confirm_prompt, keys.again
        )
        return await show_holding(self, question, keys.release)

    def report(self, reply: CommandReply, quiet: bool = False) -> None:
        """A reply becomes log lines and (unless quiet and fine) a notification."""
        level = "INFO" if reply.ok else "ERROR"
        lines = reply.text.rstrip("\n").splitlines() or ["(no reply text)"]
        self.log_line(level, f"> {reply.line}")
        self.log_lines(level, lines)
        if not reply.ok or not quiet:
            body = "\n".join(lines[:NOTIFY_LINES]) + ("\n…" if len(lines) > NOTIFY_LINES else "")
            severity: SeverityLevel = "information" if reply.ok else "error"
            self.notify(
                body,
                title=reply.line,
                severity=severity,
                timeout=6 if reply.ok else 12,
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

    @on(ShowValidation)
    def _show_validation(self, message: ShowValidation) -> None:
        self.validation(message.release)

    @work(group=COMMANDS, exit_on_error=False, description="the validation matrix")
    async def validation(self, release: Callable[[], None]) -> None:
        """Run ``validate all`` and show the matrix, handing it the keys typed meanwhile
        (``release``), or handing them on without one."""
        try:
            reply = await self.run_command("validate all", quiet=True)
            if reply is not None:
                failure = "" if reply.ok else reply.text
                screen = ValidationScreen(reply.data, self.store.run.run_number, failure)
                await show_holding(self, screen, release)
        finally:
            release()

    @on(OpenWizard)
    def open_wizard(self, message: OpenWizard) -> None:
        """Push the provisioning wizard over the dashboard."""
        self.wizard(message.release)

    @work(exit_on_error=False, description="the provisioning wizard")
    async def wizard(self, release: Callable[[], None]) -> None:
        """Show the wizard, handing it the keys typed after ``p`` (``release``) once it has
        the focus."""
        try:
            await show_holding(self, WizardScreen(self.workspace), release)
        finally:
            release()

    async def action_quit(self) -> None:
        """Quit, through the wizard's question when it holds unsaved kit passwords."""
        if not guard_quit(self):
            await super().action_quit()

    def deliver_screenshot(
        self, filename: str | None = None, path: str | None = None, time_format: str | None = None
    ) -> str | None:
        """Save a screenshot under the admin's folder (not ``~/Downloads``), for the admin's
        eyes only, and say where."""
        folder = Path(path) if path else self.state.save_dir / "screenshots"
        saved = deliver_privately(self, folder, filename, time_format)
        if saved is not None:
            self.log_line("INFO", f"screenshot saved to {saved}")
        return None

    def get_system_commands(self, screen: Screen[Any]) -> Iterable[SystemCommand]:
        """The palette offers the dashboard's actions too (each once)."""
        yield from super().get_system_commands(screen)
        if isinstance(screen, DashboardScreen):
            for key, action, text in screen.key_help():
                if action != "app.quit" and screen.check_action(action, ()) is True:
                    yield SystemCommand(
                        text.capitalize(), f"key: {key}", partial(screen.run_action, action)
                    )
