"""``v``: the cross-site validation matrix, each cell coloured by its value.

Rows are model owners (``global`` first), columns the sites that validated
them. ``m`` switches the metric shown. A cell with an error shows the
reason; a missing cell stays empty; sites that took no part are listed
under the table with why.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from rich.style import Style
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.color import Color
from textual.containers import Vertical
from textual.screen import Screen
from textual.widgets import DataTable, Static

from flcore.crossvalmatrix import MatrixCell, ValidationMatrix
from fltui.widgets.tones import tone_style

CELL_WIDTH = 12
DIAGONAL = (
    "A site's own model is never validated on its own data (the site picked it as its best "
    "local model by that same validation), so a site's own cell stays empty."
)


def notes_text(matrix: ValidationMatrix) -> str:
    """Why some sites have no results: one line per site."""
    return "\n".join(f"{site}: {reason}" for site, reason in sorted(matrix.notes.items()))


def metric_names(matrix: ValidationMatrix, first: str) -> list[str]:
    """Every metric some cell reports; ``first`` (the reply's own metric) first."""
    names = matrix.metric_names()
    return ([first] if first in names else []) + [name for name in names if name != first]


def lower_is_better(data: Mapping[str, Any]) -> dict[str, bool]:
    """For each metric whose direction the run's app declares (its validation metric and
    ``metric_mode``), whether lower is better. Any other metric is drawn uncoloured: a
    guess from its name once drew the best of a ``val_mae`` red."""
    modes = data.get("metric_modes")
    if not isinstance(modes, dict):
        return {}
    return {str(name): mode == "min" for name, mode in modes.items() if mode in ("max", "min")}


def shade(value: float, low: float, high: float, lower_is_better: bool) -> float:
    """Where ``value`` sits between the worst (0) and the best (1) of its metric."""
    if high <= low:
        return 1.0
    where = (value - low) / (high - low)
    return 1.0 - where if lower_is_better else where


class ValidationScreen(Screen[None]):
    """The matrix of one ``validate`` reply."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape,q", "dismiss(None)", "Close"),
        Binding("m", "next_metric", "Metric"),
    ]

    def __init__(self, data: Mapping[str, Any], run_number: int, failure: str = "") -> None:
        """``data`` is the reply's JSON (decoded here, once); ``failure`` the reply text when
        the command failed."""
        super().__init__()
        self._matrix = ValidationMatrix.from_json(data)
        self._run = self._matrix.run_number if "run_number" in data else run_number
        self._failure = failure
        self._metrics = metric_names(self._matrix, str(data.get("metric", "")))
        self._lower_is_better = lower_is_better(data)
        self._metric = self._metrics[0] if self._metrics else ""

    def compose(self) -> ComposeResult:
        """Title, matrix (or why there is none), notes."""
        with Vertical(classes="dialog", id="validation-dialog"):
            # The reply's texts are the server's and the sites' words: never markup.
            yield Static(
                f"Cross-site validation of run {self._run}", classes="dialog-title", markup=False
            )
            if self._failure:
                yield Static(self._failure, id="validation-empty", classes="-error", markup=False)
            elif not self._matrix.cells:
                yield Static(
                    f"No cross-site validation results for run {self._run}.",
                    id="validation-empty",
                    markup=False,
                )
                yield Static(
                    notes_text(self._matrix),
                    id="validation-notes",
                    classes="dialog-hint",
                    markup=False,
                )
            else:
                yield Static(id="validation-metric")
                yield DataTable(id="validation-table", cursor_type="cell")
                yield Static(DIAGONAL, id="validation-diagonal", classes="dialog-hint")
                yield Static(id="validation-notes", classes="dialog-hint", markup=False)
            yield Static("m next metric · esc or q close", classes="dialog-hint")

    def on_mount(self) -> None:
        """Fill the matrix."""
        if self._matrix.cells and not self._failure:
            self._fill()

    def action_next_metric(self) -> None:
        """Show the next metric."""
        if len(self._metrics) > 1:
            index = (self._metrics.index(self._metric) + 1) % len(self._metrics)
            self._metric = self._metrics[index]
            self._fill()

    def _fill(self) -> None:
        matrix = self._matrix
        cells = matrix.cells
        values = [
            cell.metrics[self._metric]
            for row in cells.values()
            for cell in row.values()
            if not cell.error and self._metric in cell.metrics
        ]
        low, high = (min(values), max(values)) if values else (0.0, 0.0)
        table = self.query_one("#validation-table", DataTable)
        table.clear(columns=True)
        # Keyed by a text no site name can be: a site named "row" once clashed with it.
        table.add_column("model \\ site", key="model \\ site")
        for column in matrix.columns:
            table.add_column(Text(column), key=column, width=max(CELL_WIDTH, len(column)))
        lower = self._lower_is_better.get(self._metric)
        for row in matrix.rows:
            shown = [Text(row, style="bold")]
            for column in matrix.columns:
                shown.append(self._cell(matrix.cell(row, column), low, high, lower))
            table.add_row(*shown, key=row)
        way = (
            "not coloured: the app does not say which way is better"
            if lower is None
            else "lower is better"
            if lower
            else "higher is better"
        )
        muted = tone_style(self.app, "muted")
        self.query_one("#validation-metric", Static).update(
            Text.assemble(("metric ", muted), (self._metric or "-", "bold"), (f"  ({way})", muted))
        )
        errors = [
            f"model of {row} on {column}: {cell.error}"
            for row, by_site in cells.items()
            for column, cell in by_site.items()
            if cell.error
        ]
        self.query_one("#validation-notes", Static).update("\n".join([*errors, notes_text(matrix)]))

    def _cell(
        self, cell: MatrixCell | None, low: float, high: float, lower_is_better: bool | None
    ) -> Text:
        if cell is None:
            return Text("")
        if cell.error:
            return Text(f"✖ {cell.error}", style=tone_style(self.app, "error"))
        value = cell.metrics.get(self._metric)
        if value is None:
            return Text("")
        if lower_is_better is None:
            return Text(f"{value:.4f}")
        return Text(f"{value:.4f}", style=self._colour(shade(value, low, high, lower_is_better)))

    def _colour(self, where: float) -> Style:
        variables = self.app.theme_variables
        worst = Color.parse(variables.get("error", "red"))
        middle = Color.parse(variables.get("warning", "yellow"))
        best = Color.parse(variables.get("success", "green"))
        colour = (
            worst.blend(middle, where * 2) if where < 0.5 else middle.blend(best, where * 2 - 1)
        )
        return Style(color=colour.hex, bold=where >= 0.999)
