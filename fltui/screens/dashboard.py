"""The dashboard: header, clients, round, heartbeats and logs, all drawn from the store.

It never asks the server for anything on a timer: the app folds the feed
into the store, and calls :meth:`DashboardScreen.render_changes` a few times
a second with what changed and :meth:`DashboardScreen.tick` once a second
for what time alone changes (heartbeat ages, staleness, the countdown).
The keys that send commands are in :mod:`fltui.screens.commandkeys`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import ClassVar

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.widget import Widget
from textual.widgets import DataTable, Footer, Input

from fltui.screens.client import ClientScreen
from fltui.screens.commandkeys import CommandKeys
from fltui.status import ONLINE, health
from fltui.store import LOG_LIMIT, Changes
from fltui.targets import live_clients
from fltui.widgets.clients import ClientsTable, ClientView
from fltui.widgets.commandline import CommandLine, CommandSuggester
from fltui.widgets.header import Banner, StatusHeader
from fltui.widgets.heartbeats import HeartbeatView, Lane
from fltui.widgets.line import Line
from fltui.widgets.logview import LogView
from fltui.widgets.roundpane import RoundPane

PANES = {"1": "#clients", "2": "#round", "3": "#heartbeats", "4": "#logs"}
NARROW = 100
"""Terminals narrower than this get the compact layout."""
HEARTBEAT_COLUMN_BEATS = 2
"""Heartbeat intervals per column of the heartbeats pane: one late beat is no gap."""


class DashboardScreen(CommandKeys):
    """The live view of one server."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("colon", "command_line", "Command", key_display=":"),
        Binding("slash", "filter", "Filter", key_display="/"),
        Binding("p", "provision", "Provision"),
        Binding("q", "app.quit", "Quit"),
        Binding("escape", "escape", "Back", show=False),
        *(Binding(key, f"focus_pane('{key}')", f"Pane {key}", show=False) for key in PANES),
    ]

    def __init__(self) -> None:
        """Panes are created in :meth:`compose`."""
        super().__init__()
        self._filter_target = "#logs"
        self._return_focus: Widget | None = None

    def compose(self) -> ComposeResult:
        """Header, banner, the four panes, the filter and command lines, the footer."""
        yield StatusHeader(id="header")
        yield Banner(id="banner")
        with Horizontal(id="body"):
            with Vertical(id="left"):
                with Vertical(id="clients-pane", classes="pane"):
                    yield ClientsTable(id="clients")
                    yield Line(id="client-detail")
                yield LogView(LOG_LIMIT, id="logs")
            with Vertical(id="right"):
                yield RoundPane(id="round", classes="pane")
                yield HeartbeatView(self.console.clock, id="heartbeats")
        yield Input(placeholder="filter", id="filter")
        suggester = CommandSuggester(self.instances, self.console.app_names)
        yield CommandLine(suggester, id="command")
        yield Footer(compact=True, show_command_palette=False)

    def on_mount(self) -> None:
        """Start with the clients table focused and the bars hidden."""
        self.query_one("#banner", Banner).clear()
        self.query_one("#filter", Input).display = False
        self.query_one("#command", CommandLine).display = False
        self.query_one("#round", RoundPane).border_title = "Round"
        self.query_one("#heartbeats", HeartbeatView).border_title = "Heartbeats"
        self.query_one("#clients", ClientsTable).focus()
        self.app.theme_changed_signal.subscribe(self, lambda _: self.restyle())
        self.render_all()
        # The timers belong to the screen, so they stop with it.
        self.set_interval(self.console.flush_s, self.console.flush)
        self.set_interval(1.0, self.tick)

    # ------------------------------------------------------------------ drawing

    def on_resize(self) -> None:
        """Narrow terminals get a narrower right column and a two-line header."""
        self.set_class(self.size.width < NARROW, "-narrow")
        self._draw_run()

    def instances(self) -> list[str]:
        """Instance names the server has now (for completion)."""
        return live_clients(self.console.store)

    def _views(self, names: Iterable[str]) -> Iterator[ClientView]:
        store = self.console.store
        table = self.query_one("#clients", ClientsTable)
        now = self.console.clock()
        interval = store.heartbeat_interval
        for name in names:
            row = store.clients.get(name)
            if row is not None:
                yield ClientView(row, now, interval, store.gone.get(name), name in table.marked)

    def render_all(self) -> None:
        """Redraw everything (after a snapshot)."""
        store = self.console.store
        table = self.query_one("#clients", ClientsTable)
        table.keep_marks(store.clients)
        table.rebuild(self._views(list(store.clients)))
        self.query_one("#logs", LogView).replace_all(store.logs)
        self._draw_run()
        self._draw_lanes()
        self._titles()

    def render_changes(self, changes: Changes) -> None:
        """Redraw what changed."""
        if changes.reset:
            self.render_all()
            self.refresh_bindings()
            return
        table = self.query_one("#clients", ClientsTable)
        if changes.clients:
            table.update_rows(self._views(changes.clients))
            if table.selected in changes.clients:
                self._detail(table.selected)
        if changes.beating:
            table.tick(self._views(set(table.in_view()) & changes.beating - changes.clients))
        if changes.logs:
            self.query_one("#logs", LogView).append(changes.logs)
        if changes.run or changes.server:
            self._draw_run()
        if changes.beats:
            self._draw_lanes()
        if changes.run or changes.statuses:
            self.refresh_bindings()
        self._titles()

    def on_screen_resume(self) -> None:
        """Back from a dialog: draw what changed meanwhile."""
        self.console.flush()
        self.tick()

    def tick(self) -> None:
        """What time alone changes: ages, staleness, the countdown, the heartbeat strips."""
        if not self.is_current:
            return
        store = self.console.store
        table = self.query_one("#clients", ClientsTable)
        table.tick(self._views(table.in_view()))
        self.query_one("#round", RoundPane).show_countdown(store.run, self.console.clock())
        self._draw_lanes()
        self._titles()

    def show_link(self) -> None:
        """Redraw the header and banner after the connection changed."""
        self._draw_run()
        banner = self.query_one("#banner", Banner)
        if self.console.link_problem:
            banner.show_problem(self.console.link_problem)
        else:
            banner.clear()
        self.refresh_bindings()

    def restyle(self) -> None:
        """The theme changed: redraw what carries colours of its own."""
        self.query_one("#clients", ClientsTable).restyle()
        self._draw_run()

    def _draw_run(self) -> None:
        console = self.console
        self.query_one("#header", StatusHeader).show(
            console.who(), console.store.run, console.link_look, self.has_class("-narrow")
        )
        self.query_one("#round", RoundPane).show(console.store.run, console.clock())

    def _draw_lanes(self) -> None:
        store = self.console.store
        now = self.console.clock()
        interval = store.heartbeat_interval
        lanes = [
            Lane(
                name,
                health(row, now, interval, store.gone.get(name)).tone,
                store.beats.get(name, ()),
            )
            for name, row in store.clients.items()
        ]
        view = self.query_one("#heartbeats", HeartbeatView)
        view.set_lanes(lanes, interval * HEARTBEAT_COLUMN_BEATS)
        view.border_title = f"Heartbeats ({view.bucket_s:g}s/col)"

    def _titles(self) -> None:
        store = self.console.store
        table = self.query_one("#clients", ClientsTable)
        now = self.console.clock()
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
        self.query_one("#clients-pane").border_title = title + ")"

    def _detail(self, instance: str | None) -> None:
        detail = self.query_one("#client-detail", Line)
        row = self.console.store.clients.get(instance or "")
        if row is None:
            detail.set("")
            return
        parts = [row.instance, f"token {row.token_id}", row.org, row.hostname, row.device, row.app]
        if row.error:
            parts.append(f"✖ {row.error} (enter: traceback)")
        detail.set(" · ".join(part for part in parts if part))

    @on(DataTable.RowHighlighted, "#clients")
    def _highlighted(self, event: DataTable.RowHighlighted) -> None:
        self._detail(event.row_key.value)

    @on(DataTable.RowSelected, "#clients")
    def _selected(self, event: DataTable.RowSelected) -> None:
        store = self.console.store
        row = store.clients.get(event.row_key.value or "")
        if row is not None:
            self.app.push_screen(ClientScreen(row, store.gone.get(row.instance)))

    @on(ClientsTable.Scrolled)
    def _scrolled(self) -> None:
        table = self.query_one("#clients", ClientsTable)
        table.tick(self._views(table.in_view()))

    @on(ClientsTable.MarksChanged)
    def _marks_changed(self, event: ClientsTable.MarksChanged) -> None:
        self.query_one("#clients", ClientsTable).update_rows(self._views([event.instance]))
        self._titles()

    # ------------------------------------------------------------------ keys

    def action_provision(self) -> None:
        """Open the provisioning wizard."""
        self.console.open_wizard()

    def action_focus_pane(self, key: str) -> None:
        """Focus a pane by its number."""
        self.query_one(PANES[key]).focus()

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
        """Close the filter (clearing it) or the command line, or clear the pane's filter."""
        focused = self.focused
        if focused is self.query_one("#filter", Input):
            self._apply_filter("")
            self._close_line("#filter")
        elif focused is self.query_one("#command", CommandLine):
            self._close_line("#command")
        elif isinstance(focused, ClientsTable | LogView):
            self._filter_target = "#clients" if isinstance(focused, ClientsTable) else "#logs"
            self._apply_filter("")

    def _open_line(self, selector: str) -> None:
        self._return_focus = self.focused
        box = self.query_one(selector, Input)
        box.display = True
        box.focus()

    def _close_line(self, selector: str) -> None:
        self.query_one(selector, Input).display = False
        back = self._return_focus
        (back if back is not None and back.is_attached else self.query_one("#clients")).focus()

    def _apply_filter(self, text: str) -> None:
        store = self.console.store
        if self._filter_target == "#clients":
            table = self.query_one("#clients", ClientsTable)
            table.filter = text.strip()
            table.rebuild(self._views(list(store.clients)))
        else:
            self.query_one("#logs", LogView).set_filter(text, store.logs)
        self._titles()

    @on(Input.Changed, "#filter")
    def _filter_typed(self, event: Input.Changed) -> None:
        self._apply_filter(event.value)

    @on(Input.Submitted, "#filter")
    def _filter_done(self) -> None:
        self._close_line("#filter")

    @on(Input.Submitted, "#command")
    def _command_submitted(self, event: Input.Submitted) -> None:
        line = event.value.strip()
        box = self.query_one("#command", CommandLine)
        box.remember(line)
        box.value = ""
        self._close_line("#command")
        if line:
            self.send(line)
