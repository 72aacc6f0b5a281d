"""The clients pane: one keyed row per client instance, updated cell by cell.

Rows are keyed by instance name and a cell is rewritten only when the text
it shows changes, so a thousand heartbeating clients cost a few cell updates
per repaint rather than a rebuilt table. Ages and health are recomputed by
the dashboard's single one-second tick.

Columns have a rank: when the table is too narrow for all of them, the
lowest-ranked go first, so instance, status, training, beat and round stay
at 80 columns and org, host and app appear where there is room. Room left
over widens the columns whose texts are cut, most important first (at 200
columns the org was cut to ``org-flclie…`` beside 26 empty columns of host). The admin
can hide and show columns (``c``) and sort by one (``S`` cycles, a column's
shift-key picks it, again reverses).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import ClassVar

from rich.text import Text
from textual.binding import Binding, BindingType
from textual.message import Message
from textual.widgets import DataTable
from textual.widgets.data_table import RowDoesNotExist

from flcore.feed import ClientRow
from fltui.status import (
    LEFT,
    LOST,
    OFFLINE,
    ONLINE,
    STALE,
    UNKNOWN,
    Look,
    age,
    device,
    health,
    shortened,
    training,
)
from fltui.widgets.tones import toned
from fltui.widgets.vimkeys import VimKeys

Cell = tuple[str, str]
"""Text and tone of a cell."""
MARK = "✓ "
NO_MARK = "  "


@dataclass(frozen=True)
class Column:
    """A column of the clients table."""

    key: str
    label: str
    width: int
    rank: int
    """Lower ranks stay longer when the table is too narrow for every column."""
    sort_key: str = ""
    """The shift-key that sorts by this column ("" for none)."""


COLUMNS = (
    Column("instance", "Instance", 14, 0, "I"),
    Column("client", "Client", 10, 7, "C"),
    Column("token", "Token", 10, 8),
    Column("health", "Status", 10, 1, "H"),
    Column("training", "Training", 14, 2, "T"),
    Column("beat", "Beat", 5, 3, "B"),
    Column("round", "Round", 6, 4, "R"),
    Column("samples", "Samples", 8, 6, "M"),
    Column("device", "Device", 7, 5, "D"),
    Column("app", "App", 14, 9, "A"),
    Column("org", "Org", 12, 10, "O"),
    Column("host", "Host", 20, 11),
)
"""In display order. Widths include the one space that separates a column from the next."""
BY_KEY = {column.key: column for column in COLUMNS}
SORTABLE = [column for column in COLUMNS if column.sort_key]
NAMES = ("instance", "client")
"""Columns of site names: two sites must never look alike there."""
FREE_TEXT = ("client", "app", "org", "host")
"""Columns of texts the admin's sites chose (the others hold words of a known width, or
names that tell sites apart): narrowed to their texts when another is cut."""
TICKING = ("health", "beat")
"""Columns that change with time alone."""
HEALTH_ORDER = {LOST: 0, OFFLINE: 1, STALE: 2, UNKNOWN: 3, ONLINE: 4, LEFT: 5}
"""Troubled sites first when sorting by status."""


@dataclass(frozen=True)
class ClientView:
    """A client row and the facts needed to draw it."""

    row: ClientRow
    now: float
    heartbeat_interval: float
    gone: str | None
    """Why the server dropped the client, or None while it is registered."""
    marked: bool
    frozen_at: float | None = None
    """When the console's own link broke: the row is unknown from then on."""
    current_run: int = 0
    """The server's run: a row's round and samples of another run are not shown as current."""

    @property
    def health(self) -> Look:
        """Online, stale, offline, lost, left, or unknown while the console is disconnected."""
        return health(self.row, self.now, self.heartbeat_interval, self.gone, self.frozen_at)

    def ticking_cells(self) -> dict[str, Cell]:
        """The cells that time alone changes."""
        look = self.health
        beat = "-"
        if self.row.last_heartbeat:
            beat = age((self.frozen_at or self.now) - self.row.last_heartbeat)
        beat_tone = "" if look.tone == "success" else look.tone
        return {"health": (look.label, look.tone), "beat": (beat, beat_tone)}

    @property
    def in_current_run(self) -> bool:
        """Whether the row's round and samples belong to the server's run (never once the
        server dropped the client: what it does since is not known)."""
        row = self.row
        same_run = not self.current_run or row.run_number == self.current_run
        return row.round >= 0 and row.run_number > 0 and same_run and self.gone is None

    @property
    def training(self) -> Look:
        """The client's training as it last said, or unknown once the server dropped it: a
        lost site may train on or have died, and "✖ lost ▶ started" read as both."""
        return training(self.row.status) if self.gone is None else UNKNOWN

    def cells(self) -> dict[str, Cell]:
        """Every cell of the row."""
        row = self.row
        state = self.training
        failed = state.tone == "error"
        current = self.in_current_run
        return {
            "instance": (
                (MARK if self.marked else NO_MARK) + row.instance,
                "error" if failed else ("accent" if self.marked else ""),
            ),
            "client": (row.client_name, ""),
            "token": (row.token_id, "muted"),
            "training": (state.label, state.tone),
            "round": (str(row.round) if current else "-", ""),
            "samples": (f"{row.samples:,}" if current and row.samples else "-", ""),
            "device": (device(row), ""),
            "app": (row.app or "-", ""),
            "org": (row.org or "-", ""),
            "host": (row.hostname or "-", ""),
            **self.ticking_cells(),
        }

    def sort_value(self, key: str) -> tuple[object, ...]:
        """What the column ``key`` sorts by (the instance name breaks ties)."""
        row = self.row
        values: dict[str, object] = {
            "instance": "",
            "client": row.client_name,
            "health": HEALTH_ORDER.get(self.health, 3),
            "training": self.training.word,
            "beat": row.last_heartbeat,
            "round": row.round if self.in_current_run else -1,
            "samples": row.samples if self.in_current_run else -1,
            "device": device(row),
            "app": row.app,
            "org": row.org,
        }
        return (values.get(key, ""), row.instance)

    def matches(self, needle: str) -> bool:
        """Whether a filter text occurs in the row's words (case-insensitive)."""
        row = self.row
        words = (row.instance, row.client_name, row.org, row.status, row.device, row.hostname)
        haystack = " ".join((*words, self.health.word)).lower()
        return needle.lower() in haystack


def fitting(
    hidden: Collection[str], width: int, needs: Mapping[str, int] | None = None
) -> list[Column]:
    """The columns shown in ``width`` cells: all but the hidden, lowest ranks dropped first;
    with the cells their texts ``needs``, each as wide as its texts, the room left going to
    the texts still cut."""
    shown = [column for column in COLUMNS if column.key not in hidden]
    by_rank = sorted(shown, key=lambda column: column.rank, reverse=True)
    total = sum(column.width for column in shown)
    for column in by_rank[:-1]:
        if total <= width:
            break
        shown.remove(column)
        total -= column.width
    if not needs or all(needs.get(c.key, 0) <= c.width for c in shown):
        return shown
    # A text is cut: the columns of free text as wide as their texts (never narrower than the
    # label and a sort arrow), then the room left to those still cut, lowest ranks first.
    shown = [
        replace(c, width=min(c.width, max(needs.get(c.key, c.width), len(c.label) + 3)))
        if c.key in FREE_TEXT
        else c
        for c in shown
    ]
    spare = width - sum(column.width for column in shown)
    for column in sorted(shown, key=lambda column: column.rank):
        grow = min(needs.get(column.key, 0) - column.width, spare)
        if grow > 0:
            shown[shown.index(column)] = replace(column, width=column.width + grow)
            spare -= grow
    return shown


class ClientsTable(DataTable[Text], VimKeys):
    """Keyed rows of client instances."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("space", "toggle_mark", "Mark", show=False),
        Binding("S", "cycle_sort", "Sort", show=False),
        *(
            Binding(c.sort_key, f"sort_by('{c.key}')", f"Sort by {c.label}", show=False)
            for c in SORTABLE
        ),
    ]

    def __init__(self, id: str | None = None) -> None:
        """An empty table with fixed-width columns (no re-measuring on updates)."""
        super().__init__(id=id, cursor_type="row", zebra_stripes=False, cell_padding=0)
        self.filter = ""
        self.marked: set[str] = set()
        self.hidden: set[str] = set()
        """Columns the admin hid (``c``)."""
        self.sort_column = ""
        self.sort_reverse = False
        self._mark_tokens: dict[str, str] = {}
        self._shown: dict[str, dict[str, Cell]] = {}
        self._views: dict[str, ClientView] = {}
        self._picked: list[Column] = []
        self._widths: dict[str, Column] = {}
        """The shown columns, by key, as wide as they are drawn."""
        self._refitting = False
        self._needs: dict[str, int] = {}
        """The cells each column's texts needed when the widths were last picked."""

    def on_mount(self) -> None:
        """Add the columns that fit."""
        self._set_columns(fitting(self.hidden, self._room()))

    def on_resize(self) -> None:
        """Show the columns that fit the new width."""
        self.refit()

    @property
    def sorts_by_time(self) -> bool:
        """Whether the order changes with time alone (every row then needs the tick)."""
        return self.sort_column in TICKING

    def toggle_column(self, key: str) -> None:
        """Hide a shown column or show a hidden one (the instance always stays)."""
        if key != "instance" and key in BY_KEY:
            self.hidden.symmetric_difference_update({key})
            self.refit()

    @property
    def columns_shown(self) -> list[str]:
        """Keys of the columns on screen, in order."""
        return [column.key for column in self._picked]

    def _room(self) -> int:
        return self.size.width - 1 if self.size.width else 200  # leave room for a scrollbar

    def refit(self) -> None:
        """Re-pick the columns (after a resize, a change of the hidden ones, or a text that
        outgrew its column)."""
        needs: dict[str, int] = {}
        for cells in self._shown.values():
            for key, (words, _) in cells.items():
                needs[key] = max(needs.get(key, 0), len(words) + 1)
        self._needs = needs
        columns = fitting(self.hidden, self._room(), needs)
        if columns != self._picked:
            self._set_columns(columns)

    def _outgrown(self, key: str, words: str) -> None:
        """A text longer than its column, and than any the widths were last picked for:
        re-pick them once the batch is drawn."""
        column = self._widths.get(key)
        need = len(words) + 1
        if column is None or need <= max(column.width, self._needs.get(key, 0)):
            return
        self._needs[key] = need
        if not self._refitting:
            self._refitting = True
            self.call_after_refresh(self._refit_later)

    def _refit_later(self) -> None:
        self._refitting = False
        self.refit()

    def _set_columns(self, columns: list[Column]) -> None:
        keep = self.selected
        order = [row.key.value for row in self.ordered_rows if row.key.value is not None]
        self.clear(columns=True)
        self._picked = columns
        self._widths = {column.key: column for column in columns}
        for column in columns:
            self.add_column(self._label(column), width=column.width, key=column.key)
        for instance in order:
            cells = self._shown[instance]
            self.add_row(*(self._text(cells[c.key], c) for c in columns), key=instance)
        self._keep_cursor(keep)

    def _label(self, column: Column) -> Text:
        arrow = ""
        if column.key == self.sort_column:
            arrow = " ▼" if self.sort_reverse else " ▲"
        indent = NO_MARK if column.key == "instance" else ""
        return Text(indent + column.label + arrow, no_wrap=True, overflow="ellipsis")

    @property
    def selected(self) -> str | None:
        """Instance under the cursor."""
        if not self.row_count:
            return None
        key = self.coordinate_to_cell_key(self.cursor_coordinate).row_key
        return key.value

    def _keep_cursor(self, instance: str | None) -> None:
        if instance in self._shown:
            self.move_cursor(row=self.get_row_index(instance))

    def targets(self) -> list[str]:
        """The marked instances, or the one under the cursor when none is marked.

        Marked rows a filter hides count too: the marks are the selection,
        whatever the table shows now.
        """
        if self.marked:
            return sorted(self.marked)
        selected = self.selected
        return [selected] if selected else []

    def keep_marks(self, rows: Mapping[str, ClientRow]) -> None:
        """Forget marks of instances the server no longer has, or has in a new session.

        A mark is on a session: an instance that came back with a new token
        is another session of the same site, and a command meant for the
        old one must not reach it unasked.
        """
        for instance in list(self.marked):
            row = rows.get(instance)
            if row is None or row.token_id != self._mark_tokens.get(instance):
                self.marked.discard(instance)
                self._mark_tokens.pop(instance, None)

    def action_toggle_mark(self) -> None:
        """Mark or unmark the row under the cursor (commands then target the marked rows)."""
        instance = self.selected
        if instance is None:
            return
        if instance in self.marked:
            self.marked.discard(instance)
            self._mark_tokens.pop(instance, None)
        else:
            self.marked.add(instance)
            view = self._views.get(instance)
            self._mark_tokens[instance] = view.row.token_id if view is not None else ""
        self.post_message(self.MarksChanged(instance))

    class MarksChanged(Message):
        """A row was marked or unmarked; its cells need redrawing."""

        def __init__(self, instance: str) -> None:
            super().__init__()
            self.instance = instance

    # ------------------------------------------------------------------ sorting

    def action_sort_by(self, key: str) -> None:
        """Sort by ``key``; the same key again reverses the order."""
        if key == self.sort_column:
            self.sort_reverse = not self.sort_reverse
        else:
            self.sort_column, self.sort_reverse = key, False
        self._relabel()
        self.resort()

    def action_cycle_sort(self) -> None:
        """Sort by the next sortable column (after the last one: the server's order)."""
        keys = [column.key for column in SORTABLE]
        following = keys.index(self.sort_column) + 1 if self.sort_column in keys else 0
        self.sort_column = keys[following] if following < len(keys) else ""
        self.sort_reverse = False
        self._relabel()
        self.resort()

    def _relabel(self) -> None:
        self._set_columns(self._picked)
        self.post_message(self.Sorted())

    class Sorted(Message):
        """The sort order was changed (the pane's title says by what)."""

    def resort(self) -> None:
        """Put the rows in the chosen order again (values change with the feed and time)."""
        if self.row_count < 2:
            return
        key, views = self.sort_column, self._views
        if key:
            wanted = sorted(
                self._shown, key=lambda i: views[i].sort_value(key), reverse=self.sort_reverse
            )
        else:  # the server's order, in which the rows were added
            wanted = list(self._shown)
        if wanted == [row.key.value for row in self.ordered_rows]:
            return
        # DataTable.sort shows the key function cells only, and a name's cell may be cut short
        # (two long names can even look alike): each row is known by its cell object.
        rank = {
            id(self.get_cell(instance, "instance")): index for index, instance in enumerate(wanted)
        }
        keep = self.selected
        self.sort("instance", key=lambda cell: rank[id(cell)])
        self._keep_cursor(keep)

    # ------------------------------------------------------------------ rows

    def rebuild(self, views: Iterable[ClientView]) -> None:
        """Replace every row (after a snapshot or a new filter), keeping the cursor's client."""
        keep = self.selected
        self.clear()
        self._shown.clear()
        self._views.clear()
        for view in views:
            if view.matches(self.filter):
                self._add(view)
        self.resort()
        self._keep_cursor(keep)

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
            self._views[instance] = view
            for key, cell in view.cells().items():
                self._set(instance, key, cell)
        self.resort()

    def forget(self, instances: Iterable[str]) -> None:
        """Take out the rows of clients the console no longer keeps."""
        for instance in instances:
            if instance in self._shown:
                self._remove(instance)

    def tick(self, views: Iterable[ClientView]) -> None:
        """Refresh ages and health of these rows (pass the visible ones: see :meth:`in_view`)."""
        for view in views:
            instance = view.row.instance
            if instance in self._shown:
                self._views[instance] = view
                for key, cell in view.ticking_cells().items():
                    self._set(instance, key, cell)

    @property
    def shown(self) -> list[str]:
        """Instances in the table, in order."""
        return [row.key.value for row in self.ordered_rows if row.key.value is not None]

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
        self._views[instance] = view
        self.add_row(*(self._text(cells[c.key], c) for c in self._picked), key=instance)
        for key, (words, _) in cells.items():
            self._outgrown(key, words)

    def _remove(self, instance: str) -> None:
        del self._shown[instance]
        self._views.pop(instance, None)
        try:
            self.remove_row(instance)
        except RowDoesNotExist:
            return

    def _set(self, instance: str, key: str, cell: Cell) -> None:
        shown = self._shown[instance]
        if shown.get(key) != cell:
            shown[key] = cell
            column = self._widths.get(key)
            if column is not None:
                self.update_cell(instance, key, self._text(cell, column))
                self._outgrown(key, cell[0])

    def _text(self, cell: Cell, column: Column) -> Text:
        """A cell's text, cut one short of its column so the next column keeps its gap; a
        name is cut in the middle, keeping the end that tells one site from another."""
        words, tone = cell
        room = column.width - 1
        text = toned(self.app, shortened(words, room) if column.key in NAMES else words, tone)
        text.truncate(room, overflow="ellipsis")
        return text

    def restyle(self) -> None:
        """Redraw every cell in the current theme's colours."""
        for instance, cells in self._shown.items():
            for column in self._picked:
                self.update_cell(instance, column.key, self._text(cells[column.key], column))

    # ------------------------------------------------------------------ navigation

    def action_line_down(self) -> None:
        """``j``: the cursor one row down."""
        self.action_cursor_down()

    def action_line_up(self) -> None:
        """``k``: the cursor one row up."""
        self.action_cursor_up()

    def action_top(self) -> None:
        """``g``: the first row."""
        self.action_scroll_top()

    def action_bottom(self) -> None:
        """``G``: the last row."""
        self.action_scroll_bottom()
