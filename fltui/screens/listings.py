"""The server's listings as views, switched to from ``:`` like k9s resources.

``:runs`` lists every run on the server (``enter`` opens one: its metrics
round by round and site by site), ``:apps`` the apps uploaded, with size
and hash, ``:admins`` who is logged in. Each view asks the server with the
read-only command of the same facts (``list_runs``, ``show_run N``,
``list_apps``, ``list_admins``) when it opens, on ``r``, and on ``[``/``]``
for another page; what the server sends is shown as it is, never as markup.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any, ClassVar

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.screen import Screen
from textual.widgets import DataTable, Footer

from fladmin.client import CommandReply
from flcore.folders import human_size
from fltui.status import clock_date, training
from fltui.widgets.line import Line

Ask = Callable[[str], Awaitable[CommandReply | None]]
"""Runs a read-only command and returns its reply (None when it could not be sent)."""
Row = tuple[str, Sequence[str]]
"""A row's key and its cells."""
MAX_METRIC_COLUMNS = 8
SITE_INDENT = "  "


def _when(value: Any) -> str:
    return clock_date(value) if isinstance(value, int | float) and value else "-"


def _metric(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, int | float) else ""


class ListingScreen(Screen[None]):
    """One listing of the server's, page by page; subclasses say which and how it reads."""

    COMMAND: ClassVar[str] = ""
    TITLE: ClassVar[str] = ""
    HINT: ClassVar[str] = "r refresh · [ ] page · esc back"
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape,q", "dismiss(None)", "Back"),
        Binding("r", "refresh", "Refresh"),
        Binding("left_square_bracket", "page(-1)", "Prev page", key_display="["),
        Binding("right_square_bracket", "page(1)", "Next page", key_display="]"),
    ]

    def __init__(self, ask: Ask) -> None:
        """A view that asks the server through ``ask``."""
        super().__init__()
        self._ask = ask
        self.page = 1
        self.pages = 1
        self.data: dict[str, Any] = {}

    def compose(self) -> ComposeResult:
        """The table, a status line, the footer."""
        yield DataTable(id="listing", cursor_type="row", zebra_stripes=True)
        yield Line(id="listing-status")
        yield Footer(compact=True, show_command_palette=False)

    def on_mount(self) -> None:
        """Ask the server for the first page."""
        self.query_one(DataTable).border_title = self.TITLE
        self.load()

    def command(self) -> str:
        """The command line that asks for the current page."""
        return self.COMMAND if self.page == 1 else f"{self.COMMAND} {self.page}"

    @work(exclusive=True, exit_on_error=False)
    async def load(self) -> None:
        """Ask for the page and show it (the reason, when the server refuses)."""
        status = self.query_one("#listing-status", Line)
        status.set(f"asking the server: {self.command()} …")
        reply = await self._ask(self.command())
        if reply is None:
            status.set("not connected: r tries again once the link is back")
            return
        if not reply.ok:
            status.set(Text(reply.text, style="bold"))
            return
        self.data = reply.data
        self.pages = int(reply.data.get("pages", 1) or 1)
        self.fill(reply.data)
        status.set(f"{self.summary(reply.data)} · {self.HINT}")

    def fill(self, data: dict[str, Any]) -> None:
        """Put the reply's rows into the table, keeping the cursor's row where it can."""
        table = self.query_one(DataTable)
        cursor = table.cursor_row
        table.clear(columns=True)
        for label in self.columns(data):
            table.add_column(label, key=label)
        for key, cells in self.rows(data):
            table.add_row(*(Text(cell) for cell in cells), key=key)
        if table.row_count:
            table.move_cursor(row=min(cursor, table.row_count - 1))
        total = data.get("total", table.row_count)
        table.border_title = f"{self.TITLE} ({total} · page {self.page} of {self.pages})"

    def columns(self, data: dict[str, Any]) -> Sequence[str]:
        """The table's column labels."""
        raise NotImplementedError

    def rows(self, data: dict[str, Any]) -> Sequence[Row]:
        """The table's rows."""
        raise NotImplementedError

    def summary(self, data: dict[str, Any]) -> str:
        """What the status line says about the page."""
        return f"page {self.page} of {self.pages}"

    def action_refresh(self) -> None:
        """Ask again."""
        self.load()

    def action_page(self, step: int) -> None:
        """Another page, when there is one."""
        page = min(max(self.page + step, 1), self.pages)
        if page != self.page:
            self.page = page
            self.load()


class RunsScreen(ListingScreen):
    """``:runs``: every run on the server, newest first; ``enter`` opens one."""

    COMMAND = "list_runs"
    TITLE = "Runs"
    HINT = "enter rounds per site · r refresh · [ ] page · esc back"

    def columns(self, data: dict[str, Any]) -> Sequence[str]:
        """Run, app, rounds, status, best, started, ended, and how it ended (the widest)."""
        return ("run", "app", "rounds", "status", "best", "started", "ended", "how it ended")

    def rows(self, data: dict[str, Any]) -> Sequence[Row]:
        """One row per run."""
        rows = []
        for run in data.get("runs", []):
            rows.append(
                (
                    str(run.get("run_number", "")),
                    (
                        str(run.get("run_number", "")),
                        str(run.get("app", "")) or "-",
                        str(run.get("rounds", "")),
                        training(str(run.get("status", ""))).label,
                        str(run.get("best", "")) or "-",
                        _when(run.get("started_at")),
                        _when(run.get("ended_at")),
                        str(run.get("ending", "")) or "-",
                    ),
                )
            )
        return rows

    @on(DataTable.RowHighlighted)
    def _highlighted(self, event: DataTable.RowHighlighted) -> None:
        """The whole story of the run under the cursor, however narrow the terminal."""
        number = event.row_key.value or ""
        run = next(
            (r for r in self.data.get("runs", []) if str(r.get("run_number")) == number), None
        )
        if run is not None:
            ending = str(run.get("ending", ""))
            status = str(run.get("status", ""))
            self.query_one("#listing-status", Line).set(
                f"run {number}: {status}" + (f" ({ending})" if ending else "") + f" · {self.HINT}"
            )

    @on(DataTable.RowSelected)
    def _open(self, event: DataTable.RowSelected) -> None:
        number = event.row_key.value or ""
        if number.isdigit():
            self.app.push_screen(RunScreen(self._ask, int(number)))


class RunScreen(ListingScreen):
    """``enter`` on a run: its metrics round by round, each site's under its round."""

    TITLE = "Run"

    def __init__(self, ask: Ask, run_number: int) -> None:
        """Run ``run_number``, asked through ``ask``."""
        super().__init__(ask)
        self.run_number = run_number

    def command(self) -> str:
        """``show_run N [page]``."""
        return f"show_run {self.run_number}" + (f" {self.page}" if self.page > 1 else "")

    def fill(self, data: dict[str, Any]) -> None:
        """The table, titled with the run."""
        super().fill(data)
        run = data.get("run", {})
        title = f"Run {self.run_number} · {run.get('app') or 'no app'} · {run.get('status', '')}"
        self.query_one(
            DataTable
        ).border_title = f"{title} (rounds: page {self.page} of {self.pages})"

    def _metric_names(self, data: dict[str, Any]) -> list[str]:
        names: dict[str, None] = {}
        for line in data.get("rounds", []):
            names.update(dict.fromkeys(line.get("metrics", {})))
            for site in line.get("sites", {}).values():
                names.update(dict.fromkeys(site.get("metrics", {})))
        return list(names)[:MAX_METRIC_COLUMNS]

    def columns(self, data: dict[str, Any]) -> Sequence[str]:
        """Round, site, samples, then the metrics reported."""
        return ("round", "site", "samples", *self._metric_names(data))

    def rows(self, data: dict[str, Any]) -> Sequence[Row]:
        """Each round's weighted metrics, then one row per site that sent an update."""
        names = self._metric_names(data)
        rows: list[Row] = []
        for line in data.get("rounds", []):
            label = "final" if line.get("final") else str(line.get("round", ""))
            metrics = line.get("metrics", {})
            sites = line.get("sites", {})
            samples = sum(int(s.get("samples", 0)) for s in sites.values())
            weighted = "all (weighted)" if sites else "all"
            cells = [label, weighted, str(samples or ""), *(_metric(metrics.get(n)) for n in names)]
            rows.append((f"{label}", cells))
            for site, result in sorted(sites.items()):
                mine = result.get("metrics", {})
                rows.append(
                    (
                        f"{label}/{site}",
                        [
                            "",
                            f"{SITE_INDENT}{site}",
                            str(result.get("samples", "")),
                            *(_metric(mine.get(n)) for n in names),
                        ],
                    )
                )
        return rows

    def summary(self, data: dict[str, Any]) -> str:
        """The best model and the page."""
        best = data.get("run", {}).get("best", "")
        return (f"best {best} · " if best else "") + super().summary(data)


class AppsScreen(ListingScreen):
    """``:apps``: the apps uploaded to the server, with size and content hash."""

    COMMAND = "list_apps"
    TITLE = "Apps on the server"

    def columns(self, data: dict[str, Any]) -> Sequence[str]:
        """App, size, files, uploaded, sha256."""
        return ("app", "size", "files", "uploaded", "sha256")

    def rows(self, data: dict[str, Any]) -> Sequence[Row]:
        """One row per app."""
        return [
            (
                str(app.get("name", "")),
                (
                    str(app.get("name", "")),
                    human_size(int(app.get("size", 0))),
                    str(app.get("files", "")),
                    _when(app.get("uploaded_at")),
                    str(app.get("sha256", "")),
                ),
            )
            for app in data.get("apps", [])
        ]


class AdminsScreen(ListingScreen):
    """``:admins``: who is logged in, their role, consoles open and last command."""

    COMMAND = "list_admins"
    TITLE = "Admins logged in"

    def columns(self, data: dict[str, Any]) -> Sequence[str]:
        """Admin, role, consoles, logins, last seen, last command."""
        return ("admin", "role", "consoles", "logins", "last seen", "last command")

    def rows(self, data: dict[str, Any]) -> Sequence[Row]:
        """One row per admin."""
        rows = []
        for admin in data.get("admins", []):
            last = str(admin.get("last_command", ""))
            verdict = "ok" if admin.get("last_ok") else "failed"
            rows.append(
                (
                    str(admin.get("user", "")),
                    (
                        str(admin.get("user", "")),
                        str(admin.get("role", "")),
                        str(admin.get("consoles", 0)),
                        str(admin.get("logins", 0)),
                        _when(admin.get("last_used")),
                        f"{last} ({verdict}, {_when(admin.get('last_command_at'))})"
                        if last
                        else "-",
                    ),
                )
            )
        return rows
