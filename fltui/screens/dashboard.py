"""The dashboard: header, clients, round, heartbeats and logs, all drawn from the store.

It never asks the server for anything on a timer: the app folds the feed
into the store it hands down here, and the screen's own timers draw what
changed a few times a second (:meth:`DashboardScreen.flush`) and what time
alone changes once a second (:meth:`DashboardScreen.tick`: heartbeat ages,
staleness, countdowns). What the app knows about the admin and the link
arrives as a :class:`~fltui.state.ConsoleState` (:meth:`set_state`); what
only the app can do is asked for with a message (:mod:`fltui.messages`).
The keys that send commands are in :mod:`fltui.screens.commandkeys`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import replace
from typing import ClassVar

from rich.text import Text
from textual import on
from textual.actions import SkipAction
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.screen import Screen
from textual.widget import Widget
from textual.widgets import DataTable, Footer, Input

from fltui.connection import SHUT_DOWN
from fltui.keyhold import KeyHold
from fltui.messages import OpenWizard, Reconnect
from fltui.screens.client import ClientScreen
from fltui.screens.commandkeys import CommandKeys, Names
from fltui.screens.dialogs import ColumnsScreen
from fltui.screens.listings import AdminsScreen, AppsScreen, Ask, RunsScreen
from fltui.screens.sitelogs import SiteLogScreen
from fltui.state import ConsoleState
from fltui.status import ONLINE, clock_time, health
from fltui.store import LOG_LIMIT, Changes, Store
from fltui.targets import live_clients
from fltui.vocabulary import command_words, is_view
from fltui.widgets.clients import BY_KEY, COLUMNS, ClientsTable, ClientView
from fltui.widgets.commandline import CommandLine, CommandSuggester
from fltui.widgets.header import Banner, StatusHeader
from fltui.widgets.heartbeats import HeartbeatView, Lane
from fltui.widgets.line import Line
from fltui.widgets.logview import LogView
from fltui.widgets.roundpane import RoundPane

PANES = {"1": "#clients", "2": "#round", "3": "#heartbeats", "4": "#logs"}
NARROW = 100
"""Terminals narrower than this get the compact layout."""
WIDE = 160
"""Terminals at least this wide give the extra room to the heartbeats and the clients' columns."""
SHORT = 30
"""Terminals shorter than this hide the heartbeats pane (``3`` or ``z`` shows it maximised)."""
HEARTBEAT_COLUMN_BEATS = 2
"""Heartbeat intervals per column of the heartbeats pane: one late beat is no gap."""
LISTINGS: dict[str, Callable[[Ask], Screen[None]]] = {
    "runs": RunsScreen,
    "apps": AppsScreen,
    "admins": AdminsScreen,
}
"""The views of ``:`` that are the server's listings."""
SAY_TICKS = 8
"""Seconds a status-line message stays."""
Clock = Callable[[], float]


class ClientsPane(Vertical):
    """The clients table and the detail line under it: one pane, maximised together."""

    ALLOW_MAXIMIZE = True


class DashboardScreen(CommandKeys):
    """The live view of one server."""

    BINDINGS: ClassVar[list[BindingType]] = [
        # The footer shows them in this order and cuts the end off on a narrow
        # terminal: the ways in and out come first. ``:``, ``/`` and the keys
        # that open a dialog or a screen are priority bindings, acted on as the
        # key is read (the keys before it have been handled by then: see
        # ConsoleApp.hold_keys), so the keys after them go to the line (see
        # _open_line) or wait for the screen (CommandKeys.open_dialog).
        Binding("colon", "command_line", "Command", key_display=":", priority=True),
        Binding("slash", "filter", "Filter", key_display="/", priority=True),
        Binding("question_mark", "help", "Help", key_display="?", priority=True),
        Binding("q", "app.quit", "Quit"),
        Binding("r", "reconnect", "Reconnect"),
        Binding("u", "upload", "Upload", priority=True),
        Binding("d", "deploy", "Deploy", priority=True),
        Binding("s", "start", "Start", priority=True),
        Binding("a", "abort", "Abort", priority=True),
        Binding("x", "shutdown", "Shutdown", priority=True),
        Binding("n", "run_number", "Run #", priority=True),
        Binding("v", "validate", "Validate", priority=True),
        Binding("t", "timeout", "Timeout", priority=True),
        Binding("p", "provision", "Provision", priority=True),
        Binding("l", "site_logs", "Logs", show=False, priority=True),
        Binding("enter", "open_client", "Details", show=False, priority=True),
        Binding("z", "zoom", "Zoom", show=False),
        Binding("y", "copy_token", "Copy token", show=False),
        Binding("c", "columns", "Columns", show=False, priority=True),
        Binding("escape", "escape", "Back", show=False),
        *(Binding(key, f"focus_pane('{key}')", f"Pane {key}", show=False) for key in PANES),
    ]

    def __init__(
        self,
        store: Store,
        clock: Clock,
        apps: Names,
        ask: Ask,
        server_apps: Names,
        flush_s: float = 0.25,
    ) -> None:
        """A dashboard over ``store``; ``clock`` dates ages and countdowns (tests freeze it);
        ``apps`` and ``server_apps`` name the apps to upload and to deploy, ``ask`` runs a
        read-only command on the server (for the views)."""
        super().__init__(store, apps, ask)
        self.server_apps = server_apps
        self.clock = clock
        self.flush_s = flush_s
        self._filter_target = "#logs"
        self._return_focus: Widget | None = None
        self._said_ticks = 0
        self._run_number = 0
        self._now = 0.0
        """The moment the panes are drawn for: read once per refresh (see :meth:`_refresh_now`)."""

    def compose(self) -> ComposeResult:
        """Header, banner, the four panes, the status, filter and command lines, the footer."""
        yield StatusHeader(id="header")
        yield Banner(id="banner")
        with Horizontal(id="top"):
            with ClientsPane(id="clients-pane", classes="pane"):
                yield ClientsTable(id="clients")
                yield Line(id="client-detail")
            with Vertical(id="right"):
                yield RoundPane(id="round", classes="pane")
                yield HeartbeatView(self._seen_clock, id="heartbeats")
        yield LogView(LOG_LIMIT, id="logs")
        yield Line(id="status-line")
        yield Input(placeholder="filter", id="filter")
        suggester = CommandSuggester(self.instances, self.apps, self.server_apps)
        yield CommandLine(suggester, id="command")
        yield Footer(compact=True, show_command_palette=False)

    def on_mount(self) -> None:
        """Start with the clients table focused and the bars hidden."""
        self.query_one("#filter", Input).display = False
        self.query_one("#command", CommandLine).display = False
        self.query_one("#status-line", Line).display = False
        self.query_one("#round", RoundPane).border_title = "Round"
        self.query_one("#heartbeats", HeartbeatView).border_title = "Heartbeats"
        self.query_one("#clients", ClientsTable).focus()
        self.app.theme_changed_signal.subscribe(self, lambda _: self.restyle())
        self.render_all()
        self.show_state()
        # The timers belong to the screen, so they stop with it.
        self.set_interval(self.flush_s, self.flush)
        self.set_interval(1.0, self.tick)

    # ------------------------------------------------------------------ facts handed down

    def set_state(self, state: ConsoleState) -> None:
        """The app's news about the admin and the link: redraw what shows it."""
        was = self.state.connection
        self.state = state
        if self.is_mounted:
            self.show_state()
            if (was.up, was.frozen_at) != (state.connection.up, state.connection.frozen_at):
                self._redraw_rows()

    def _seen_clock(self) -> float:
        """The time the server was last seen at: now, or when the console's link broke.

        What only the clock moves (the heartbeat strips, the round's countdown)
        stops there: what happened since is unknown, and a countdown running
        out would pass for a round aggregated.
        """
        frozen = self.state.connection.frozen_at
        return frozen if frozen is not None else self._now

    # ------------------------------------------------------------------ drawing

    def flush(self) -> None:
        """Draw what the feed changed since the last flush, in one batch.

        While a dialog covers the dashboard, changes keep piling up in the
        store instead: redrawing a dimmed background costs as much as the
        dashboard itself, and the dialog has to answer keys quickly.
        """
        if not self.is_current:
            return
        changes = self.store.take_changes()
        if changes:
            with self.app.batch_update():
                self.render_changes(changes)

    def on_resize(self) -> None:
        """Narrow terminals get a narrower right column and a two-line header; wide ones more."""
        self.set_class(self.size.width < NARROW, "-narrow")
        self.set_class(self.size.width >= WIDE, "-wide")
        self.set_class(self.size.height < SHORT, "-short")
        self._draw_run()

    def instances(self) -> list[str]:
        """Instance names the server has now (for completion)."""
        return live_clients(self.store)

    def _refresh_now(self) -> None:
        """Read the clock once for a refresh of the whole picture: the title's count, the
        rows, the strips and the countdown all show the same moment (read apart, a console
        running late titled "0/3 online" over three rows drawn "● online 1s"). A flush of
        changes is a refresh too: it re-ticks the rows in sight along with the title."""
        self._now = self.clock()

    def _views(self, names: Iterable[str]) -> Iterator[ClientView]:
        store = self.store
        table = self.query_one("#clients", ClientsTable)
        now = self._now
        interval = store.heartbeat_interval
        frozen = self.state.connection.frozen_at
        run = store.run.run_number
        for name in names:
            row = store.clients.get(name)
            if row is not None:
                marked = name in table.marked
                gone = store.gone.get(name)
                yield ClientView(row, now, interval, gone, marked, frozen, run)

    def render_all(self) -> None:
        """Redraw everything (after a snapshot)."""
        store = self.store
        self._refresh_now()
        table = self.query_one("#clients", ClientsTable)
        table.keep_marks(store.clients)
        self._run_number = store.run.run_number
        table.rebuild(self._views(list(store.clients)))
        self.query_one("#logs", LogView).replace_all(store.logs)
        self._draw_run()
        self._draw_lanes()
        self._titles()

    def _redraw_rows(self) -> None:
        self._refresh_now()
        table = self.query_one("#clients", ClientsTable)
        table.update_rows(self._views(list(self.store.clients)))
        self._draw_lanes()
        self._titles()

    def render_changes(self, changes: Changes) -> None:
        """Redraw what changed."""
        if changes.reset:
            self.render_all()
            self.refresh_bindings()
            return
        self._refresh_now()
        table = self.query_one("#clients", ClientsTable)
        if changes.clients:
            table.keep_marks(self.store.clients)
            table.forget(changes.clients - self.store.clients.keys())
            table.update_rows(self._views(changes.clients))
            if table.selected in changes.clients:
                self._detail(table.selected)
        # Every row in sight and the countdown at the new moment, not only the rows that beat.
        table.tick(self._views(set(table.in_view()) - changes.clients))
        self.query_one("#round", RoundPane).show_countdown(self.store.run, self._seen_clock())
        if changes.logs:
            self.query_one("#logs", LogView).append(changes.logs)
        if changes.run or changes.server:
            self._draw_run()
            if self.store.run.run_number != self._run_number:  # rounds of another run blank out
                self._run_number = self.store.run.run_number
                table.update_rows(self._views(list(self.store.clients)))
        if changes.beats:
            self._draw_lanes()
        if changes.run or changes.statuses:
            self.refresh_bindings()
        self._titles()

    def on_screen_resume(self) -> None:
        """Back from a dialog: draw what changed meanwhile."""
        self.flush()
        self.tick()

    def tick(self) -> None:
        """What time alone changes: ages, staleness, countdowns, the heartbeat strips."""
        if not self.is_current:
            return
        self._refresh_now()
        table = self.query_one("#clients", ClientsTable)
        shown = table.shown if table.sorts_by_time else table.in_view()
        table.tick(self._views(shown))
        table.resort()
        self.query_one("#round", RoundPane).show_countdown(self.store.run, self._seen_clock())
        self._draw_banner()
        self._draw_lanes()
        self._titles()
        if self._said_ticks:
            self._said_ticks -= 1
            if not self._said_ticks:
                self.query_one("#status-line", Line).display = False

    def show_state(self) -> None:
        """Redraw the header, banner and keys after the connection or the login changed."""
        self._draw_run()
        self._draw_banner()
        self.refresh_bindings()

    def _draw_banner(self) -> None:
        connection = self.state.connection
        banner = self.query_one("#banner", Banner)
        banner.set_class(connection.look is SHUT_DOWN, "-calm")
        banner.show(connection.banner(self.clock()))

    def say(self, message: str) -> None:
        """Show ``message`` in the status line above the footer for a few seconds."""
        line = self.query_one("#status-line", Line)
        line.set(message)
        line.display = True
        self._said_ticks = SAY_TICKS

    def restyle(self) -> None:
        """The theme changed: redraw what carries colours of its own."""
        self.query_one("#clients", ClientsTable).restyle()
        self._draw_run()

    def _draw_run(self) -> None:
        who = self.state.who
        server = self.store.server
        if server is not None and server.project:
            who = replace(who, project=server.project)
        self.query_one("#header", StatusHeader).show(
            who, self.store.run, self.state.connection.look, self.has_class("-narrow")
        )
        self.query_one("#round", RoundPane).show(self.store.run, self._seen_clock())

    def _draw_lanes(self) -> None:
        store = self.store
        now = self._now
        interval = store.heartbeat_interval
        frozen = self.state.connection.frozen_at
        lanes = [
            Lane(
                name,
                health(row, now, interval, store.gone.get(name), frozen).tone,
                store.beats.get(name, ()),
            )
            for name, row in store.clients.items()
        ]
        view = self.query_one("#heartbeats", HeartbeatView)
        view.set_lanes(lanes, interval * HEARTBEAT_COLUMN_BEATS)
        view.border_title = f"Heartbeats ({view.bucket_s:g}s/col)"

    def _titles(self) -> None:
        store = self.store
        table = self.query_one("#clients", ClientsTable)
        frozen = self.state.connection.frozen_at
        if frozen is not None:
            title = f"Clients ({len(store.clients)} · unknown since {clock_time(frozen)}"
        else:
            now = self._now
            interval = store.heartbeat_interval
            online = sum(
                1
                for name, row in store.clients.items()
                if health(row, now, interval, store.gone.get(name)) is ONLINE
            )
            title = f"Clients ({online}/{len(store.clients)} online"
        if table.filter:
            title += f" · {len(table.shown)} shown · filter: {table.filter}"
        if table.marked:
            title += f" · {len(table.marked)} marked"
        if table.sort_column:
            order = "▼" if table.sort_reverse else "▲"
            title += f" · by {BY_KEY[table.sort_column].label.lower()} {order}"
        self.query_one("#clients-pane").border_title = Text(title + ")")  # a filter is text

    def _detail(self, instance: str | None) -> None:
        detail = self.query_one("#client-detail", Line)
        row = self.store.clients.get(instance or "")
        if row is None:
            detail.set("")
            return
        parts = [row.instance, f"token {row.token_id}", row.org, row.hostname, row.device, row.app]
        if row.detail:
            parts.append(f"⏸ {row.detail}")
        if row.error:
            parts.append(f"✖ {row.error} (enter: traceback)")
        detail.set(" · ".join(part for part in parts if part))

    @on(DataTable.RowHighlighted, "#clients")
    def _highlighted(self, event: DataTable.RowHighlighted) -> None:
        self._detail(event.row_key.value)

    @on(DataTable.RowSelected, "#clients")
    def _selected(self, event: DataTable.RowSelected) -> None:
        self._open_client(event.row_key.value or "")

    def _open_client(self, instance: str) -> bool:
        """Show everything about ``instance`` (False: the server lists no such client)."""
        if instance not in self.store.clients:
            return False
        self.open_screen(ClientScreen(self.store, instance), f"the details of {instance}")
        return True

    @on(ClientsTable.Scrolled)
    def _scrolled(self) -> None:
        table = self.query_one("#clients", ClientsTable)
        table.tick(self._views(table.in_view()))

    @on(ClientsTable.Sorted)
    def _sorted(self) -> None:
        self._titles()

    @on(ClientsTable.MarksChanged)
    def _marks_changed(self, event: ClientsTable.MarksChanged) -> None:
        self.query_one("#clients", ClientsTable).update_rows(self._views([event.instance]))
        self._titles()

    # ------------------------------------------------------------------ keys

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """``r`` shows only while the link is down; the command keys dim as CommandKeys says.

        ``:`` and ``/`` are typed as text while a line has the focus, and no
        other key of the dashboard acts then: a key typed ahead of the line
        opening must not act as a hotkey once the line is open.
        """
        line_open = isinstance(self.focused, Input)
        if action in ("command_line", "filter"):
            return not line_open
        if action == "escape":
            return True
        if line_open:
            return False
        if action == "reconnect":
            return not self.state.connection.up and bool(self.state.who.target)
        return super().check_action(action, parameters)

    def action_reconnect(self) -> None:
        """Ask the app to connect again now."""
        self.post_message(Reconnect())

    def action_provision(self) -> None:
        """Ask the app for the provisioning wizard; the keys typed meanwhile wait for it."""
        self.post_message(OpenWizard(KeyHold(self.app).release))

    def action_open_client(self) -> None:
        """``enter`` on a client row: its details (elsewhere ``enter`` is the focused pane's)."""
        table = self.focused
        if not (isinstance(table, ClientsTable) and self._open_client(table.selected or "")):
            raise SkipAction()

    def action_focus_pane(self, key: str) -> None:
        """Focus a pane by its number (a pane hidden for want of room opens maximised)."""
        pane = self.query_one(PANES[key])
        if self.maximized is not None:
            self.minimize()
        if not pane.display:
            pane.add_class("-shown")
            self.maximize(pane)
        self.set_focus(pane)

    def action_zoom(self) -> None:
        """Maximise the focused pane, or put it back."""
        if self.maximized is not None:
            self.minimize()
        elif self.focused is not None:
            self.maximize(self.focused)

    def minimize(self) -> None:
        """Put a maximised pane back (one shown only while maximised hides again)."""
        super().minimize()
        for pane in self.query(".-shown"):
            pane.remove_class("-shown")

    def action_site_logs(self, instance: str = "") -> None:
        """The log view of one site (the one under the cursor by default)."""
        name = instance or self.query_one("#clients", ClientsTable).selected or ""
        if name not in self.store.clients and name not in self.store.beats:
            self.say(f"no client {name!r}" if name else "no client selected")
            return
        screen = SiteLogScreen(self.store, name, self.state.save_dir, self.clock)
        self.open_screen(screen, f"the logs of {name}")

    def action_copy_token(self) -> None:
        """Copy the selected client's token id to the clipboard (OSC 52) and say so: the id
        is what the daemons' logs name a session by (the token itself never leaves them)."""
        row = self.store.clients.get(self.query_one("#clients", ClientsTable).selected or "")
        if row is None or not re.fullmatch(r"[0-9a-f]{8}", row.token_id):
            # Only a token id: a server's other text pasted into a terminal could run.
            self.say("no client with a token selected")
            return
        self.app.copy_to_clipboard(row.token_id)
        self.notify(
            f"token id of {row.instance} copied (OSC 52: the terminal must allow clipboard writes)",
            title="copied",
            markup=False,
        )

    def action_columns(self) -> None:
        """Pick the clients table's columns."""
        table = self.query_one("#clients", ClientsTable)
        columns = [
            (c.key, c.label, c.key not in table.hidden) for c in COLUMNS if c.key != "instance"
        ]
        self.open_screen(ColumnsScreen(columns, table.toggle_column), "the columns dialog")

    def action_command_line(self) -> None:
        """Open the command line."""
        self._open_line("#command")

    def action_filter(self) -> None:
        """Filter the clients table when it has the focus, otherwise the logs."""
        focused = self.focused
        self._filter_target = "#clients" if isinstance(focused, ClientsTable) else "#logs"
        box = self.query_one("#filter", Input)
        if self._filter_target == "#clients":
            box.placeholder = "filter clients: name, org, status, device"
            box.value = self.query_one("#clients", ClientsTable).filter
        else:
            box.placeholder = "filter logs: src:NAME level:warning text"
            box.value = self.query_one("#logs", LogView).filter_text
        self._open_line("#filter")

    def action_escape(self) -> None:
        """Close the filter (clearing it) or the command line, put a maximised pane back,
        or clear the pane's filter."""
        focused = self.focused
        if focused is self.query_one("#filter", Input):
            self._apply_filter("")
            self._close_line("#filter")
        elif self.maximized is not None:
            self.minimize()
        elif isinstance(focused, ClientsTable | LogView):
            self._filter_target = "#clients" if isinstance(focused, ClientsTable) else "#logs"
            self._apply_filter("")

    def _open_line(self, selector: str) -> None:
        """Show a line and give it the focus *now*.

        Keys typed ahead (a paste, keys bunched over SSH) are queued in the
        app together, and each waits until the one before it has been
        handled (``ConsoleApp.hold_keys``); but ``Widget.focus`` takes
        effect a message later, after the key has. So ``:`` and ``/`` are
        priority bindings, run as the key is read, and ``set_focus`` moves
        the focus at once: every key after them lands in the line, in order
        (the line itself reads its ``enter`` and ``esc`` in that order too).
        """
        self._return_focus = self.focused
        box = self.query_one(selector, Input)
        box.display = True
        self.set_focus(box)

    def _close_line(self, selector: str) -> None:
        self.query_one(selector, Input).display = False
        back = self._return_focus
        self.set_focus(
            back if back is not None and back.is_attached else self.query_one("#clients")
        )

    def _apply_filter(self, text: str) -> None:
        if self._filter_target == "#clients":
            table = self.query_one("#clients", ClientsTable)
            table.filter = text.strip()
            table.rebuild(self._views(list(self.store.clients)))
        else:
            self.query_one("#logs", LogView).set_filter(text, self.store.logs)
        self._titles()

    @on(Input.Changed, "#filter")
    def _filter_typed(self, event: Input.Changed) -> None:
        self._apply_filter(event.value)

    @on(Input.Submitted, "#filter")
    def _filter_done(self) -> None:
        self._close_line("#filter")

    @on(CommandLine.Entered)
    def _command_entered(self, event: CommandLine.Entered) -> None:
        if self.focused is self.query_one("#command", CommandLine):
            self._close_line("#command")
        line = event.line or ""
        if is_view(line):
            self.switch_view(command_words(line))
        elif line:
            self.send(line)

    def switch_view(self, words: list[str]) -> None:
        """``:clients`` back to the dashboard's table, ``:logs [NAME]`` a site's log view,
        ``:runs``, ``:apps``, ``:admins`` the server's listings."""
        view, args = words[0], words[1:]
        listing = LISTINGS.get(view)
        if listing is not None:
            self.app.push_screen(listing(self.ask))
        elif view == "clients":
            if self.maximized is not None:
                self.minimize()
            self.set_focus(self.query_one("#clients"))
        elif view == "logs":
            self.action_site_logs(args[0] if args else "")
