"""``?``: every key of the dashboard, including the navigation ones the footer leaves out."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from rich.table import Table
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import VerticalScroll
from textual.screen import Screen
from textual.widgets import Static

NAVIGATION = (
    ("tab / shift+tab, 1-4", "move between panes (clients, round, heartbeats, logs)"),
    ("↑ ↓ / j k", "move in a table, scroll a pane"),
    ("g / G, end", "top / bottom (G in the logs also resumes following)"),
    ("z", "maximise the focused pane, or back"),
    ("enter", "details of the client under the cursor, with its traceback if it failed"),
    ("l", "the log view of the client under the cursor"),
    ("space", "mark or unmark a client; commands then offer the marked ones"),
    ("y", "copy the token of the client under the cursor (OSC 52)"),
    ("S / I C H T B R M D A O", "sort the clients: cycle, or by a column (again: reverse)"),
    ("c", "show or hide columns of the clients table"),
    ("f / w", "logs: follow the tail on or off / wrap long lines"),
    ("r", "reconnect now (when the link is down or the server was shut down)"),
    ("esc", "close a dialog, clear the filter, close the command line"),
    ("ctrl+p", "command palette"),
)
CLOSE = "esc, q or ? close this help"
FILTER_HELP = (
    "Log filter words: src:NAME or @NAME (a source: server, an instance, console, admin), "
    "level:warning (that level and worse), anything else is text to look for."
)


class HelpScreen(Screen[None]):
    """The keys, grouped: actions, then navigation."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape,q,question_mark", "dismiss(None)", "Close")
    ]

    def __init__(self, actions: Sequence[tuple[str, str]]) -> None:
        """``actions`` pairs each key with what it does."""
        super().__init__()
        self._actions = list(actions)

    def compose(self) -> ComposeResult:
        """Two tables and the filter syntax."""
        with VerticalScroll(classes="dialog", id="help-dialog"):
            yield Static("Keys", classes="dialog-title")
            yield Static(self._table("Actions", self._actions))
            yield Static(self._table("Navigation", NAVIGATION))
            yield Static(FILTER_HELP, classes="dialog-hint")
            yield Static(CLOSE, classes="dialog-hint", id="help-close")

    @staticmethod
    def _table(title: str, rows: Sequence[tuple[str, str]]) -> Table:
        table = Table(title=title, title_justify="left", show_header=False, box=None, expand=True)
        table.add_column("key", style="bold", no_wrap=True, min_width=14)
        table.add_column("what")
        for key, what in rows:
            table.add_row(key, what)
        return table
