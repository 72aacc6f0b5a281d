"""The clients pane: one keyed row per client instance, updated cell by cell.

Rows are keyed by instance name and a cell is rewritten only when the text
it shows changes, so a thousand heartbeating clients cost a few cell updates
per repaint rather than a rebuilt table. Ages and health are recomputed by
the dashboard's single one-second tick.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass
from typing import ClassVar

from rich.text import Text
from textual.binding import Binding, BindingType
from textual.message import Message
from textual.widgets import DataTable
from textual.widgets.data_table import RowDoesNotExist

from flcore.feed import ClientRow
from fltui.status import Look, age, device, health, training
from fltui.widgets.tones import toned

Cell = tuple[str, str]
"""Text and tone of a cell."""


@dataclass(frozen=True)
class Column:
    """A column of the clients table."""

    key: str
    label: str
    width: int


COLUMNS = (
    Column("instance", "  Instance", 14),
    Column("client", "Client", 10),
    Column("token", "Token", 10),
    Column("health", "Status", 10),
    Column("training", "Training", 14),
    Column("beat", "Beat", 5),
    Column("round", "Round", 6),
    Column("samples", "Samples", 8),
    Column("device", "Device", 7),
)
"""Widths include the one space that separates a column from the next (no cell padding)."""
TICKING = ("health", "beat")
"""Columns that change with time alone."""


@dataclass(frozen=True)
class ClientView:
    """A client row and the facts needed to draw it."""

    row: ClientRow
    now: float
    heartbeat_interval: float
    gone: str | None
    """Why the server dropped the client, or None while it is registered."""
    marked: bool

    @property
    def health(self) -> Look:
        """Online, stale, offline, lost or left."""
        return health(self.row, self.now, self.heartbeat_interval, self.gone)

    def ticking_cells(self) -> dict[str, Cell]:
        """The cells that time alone changes."""
        look = self.health
        beat = age(self.now - self.row.last_heartbeat) if self.row.last_heartbeat else "-"
        beat_tone = "" if look.tone == "success" else look.tone
        return {"health": (look.label, look.tone), "beat": (beat, beat_tone)}

    def cells(self) -> dict[str, Cell]:
        """Every cell of the row."""
        row = self.row
        state = training(row.status)
        failed = state.tone == "error"
        in_run = row.round >= 0 and row.run_number > 0
        mark = "✓ " if self.marked else "  "
        return {
            "instance": (
                mark + row.instance,
                "error" if failed else ("accent" if self.marked else ""),
            ),
            "client": (row.client_name, ""),
            "token": (row.token_id, "muted"),
            "training": (state.label, state.tone),
            "round": (str(row.round) if in_run else "-", ""),
            "samples": (f"{row.samples:,}" if row.samples else "-", ""),
            "device": (device(row), ""),
            **self.ticking_cells(),
        }

    def matches(self, needle: str) -> bool:
        """Whether a filter text occurs in the row's words (case-insensitive)."""
        row = self.row
        words = (row.instance, row.client_name, row.org, row.status, row.device, row.hostname)
        haystack = " ".join((*words, self.health.word)).lower()
        return needle.lower() in haystack


class ClientsTable(DataTable[Text]):
    """Keyed rows of client instances."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("j", "cursor_down", "Down", show=False),
        Binding("k", "cursor_up", "Up", show=False),
        Binding("g", "scroll_top", "Top", show=False),
        Binding("G", "scroll_bottom", "Bottom", show=False),
        Binding("space", "toggle_mark", "Mark", show=False),
    ]

    def __init__(self, id: str | None = None) -> None:
        """An empty table with fixed-width columns (no re-measuring on updates)."""
        super().__init__(id=id, cursor_type="row", zebra_stripes=False, cell_padding=0)
        self.filter = ""
        self.marked: set[str] = set()
        self._shown: dict[str, dict[str, Cell]] = {}

    def on_mount(self) -> None:
        """Add the columns."""
        for column in COLUMNS:
            self.add_column(column.label, width=column.width, key=column.key)

    @property
    def selected(self) -> str | None:
        """Instance under the cursor."""
        if not self.row_count:
            return None
        key = self.coordinate_to_cell_key(self.cursor_coordinate).row_key
        return key.value

    def targets(self) -> list[str]:
        """The marked instances, or the one under the cursor when none is marked.

        Marked rows a filter hides count too: the marks are the selection,
        whatever the table shows now.
        """
        if self.marked:
            return sorted(self.marked)
        selected = self.selected
        return [selected] if selected else []

    def keep_marks(self, instances: Collection[str]) -> None:
        """Forget the marks of instances the server no longer has (after a snapshot)."""
        self.marked &= set(instances)

    def action_toggle_mark(self) -> None:
        """Mark or unmark the row under the cursor (commands then target the marked rows)."""
        instance = self.selected
        if instance is None:
            return
        self.marked.symmetric_difference_update({instance})
        self.post_message(self.MarksChanged(instance))

    class MarksChanged(Message):
        """A row was marked or unmarked; its cells need redrawing."""

        def __init__(self, instance: str) -> None:
            super().__init__()
            self.instance = instance

    def rebuild(self, views: Iterable[ClientView]) -> None:
        """Replace every row (after a snapshot or a new filter), keeping the cursor's client."""
        keep = self.selected
        self.clear()
        self._shown.clear()
        for view in views:
            if view.matches(self.filter):
                self._add(view)
        if keep in self._shown:
            self.move_cursor(row=self.get_row_index(keep))

    def update_rows(self, views: Iterable[ClientView]) -> None:
        """Add, update or hide the given rows, rewriting only the cells that changed."""
        for view in views:
            instance = view.row.instance
            if not view.matches(self.filter):
                if instance in self._shown:
                    self._remove(instance)
                continue
            if instance not in self._shown:
                self._add(view)
                continue
            for key, cell in view.cells().items():
                self._set(instance, key, cell)

    def tick(self, views: Iterable[ClientView]) -> None:
        """Refresh ages and health of these rows (pass the visible ones: see :meth:`in_view`)."""
        for view in views:
            if view.row.instance in self._shown:
                for key, cell in view.ticking_cells().items():
                    self._set(view.row.instance, key, cell)

    @property
    def shown(self) -> list[str]:
        """Instances in the table, in order."""
        return list(self._shown)

    def in_view(self) -> list[str]:
        """Instances of the rows on screen now.

        Ages change every second for every client; rewriting cells nobody
        sees would cost a thousand cell updates a second, so the tick
        refreshes these only, and a row scrolled into view is current within
        a second.
        """
        first = int(self.scroll_y)
        rows = self.ordered_rows[first : first + self.size.height]
        return [row.key.value for row in rows if row.key.value is not None]

    def watch_scroll_y(self, old: float, new: float) -> None:
        """Rows scrolled into view get their ages at once."""
        super().watch_scroll_y(old, new)
        self.post_message(self.Scrolled())

    class Scrolled(Message):
        """Other rows came into view."""

    def _add(self, view: ClientView) -> None:
        cells = view.cells()
        instance = view.row.instance
        self._shown[instance] = cells
        self.add_row(*(self._text(cells[c.key]) for c in COLUMNS), key=instance)

    def _remove(self, instance: str) -> None:
        del self._shown[instance]
        try:
            self.remove_row(instance)
        except RowDoesNotExist:
            return

    def _set(self, instance: str, key: str, cell: Cell) -> None:
        shown = self._shown[instance]
        if shown.get(key) != cell:
            shown[key] = cell
            self.update_cell(instance, key, self._text(cell))

    def _text(self, cell: Cell) -> Text:
        return toned(self.app, *cell)

    def restyle(self) -> None:
        """Redraw every cell in the current theme's colours."""
        for instance, cells in self._shown.items():
            for key, cell in cells.items():
                self.update_cell(instance, key, self._text(cell))
