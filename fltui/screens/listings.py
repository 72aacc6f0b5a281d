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
from typing import ClassVar, Generic, Protocol, TypeVar

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.screen import Screen
from textual.widgets import DataTable, Footer

from fladmin.client import CommandReply
from flcore.folders import human_size
from flcore.listingrecords import (
    JSON,
    AdminLine,
    AppLine,
    LinesPage,
    PageCount,
    RunLine,
    RunPage,
    admins_page,
    apps_page,
    runs_page,
)
from fltui.status import clock_date, training
from fltui.widgets.header import LinkBanner
from fltui.widgets.line import Line
from fltui.workfaults import SaysWhenWorkFails

Ask = Callable[[str], Awaitable[CommandReply | None]]
"""Runs a read-only command and returns its reply (None when it could not be sent)."""
Row = tuple[str, Sequence[str]]
"""A row's key and its cells."""
MAX_METRIC_COLUMNS = 8
SITE_INDENT = "  "


def _when(stamp: float) -> str:
    return clock_date(stamp) if stamp else "-"


def _metric(value: float | None) -> str:
    return f"{value:.4f}" if value is not None else ""


class Listing(Protocol):
    """A page of a listing, decoded from the reply's data."""

    @property
    def count(self) -> PageCount:
        """Which page it is, of how many."""
        ...


ListingT = TypeVar("ListingT", bound=Listing)


class ListingScreen(Screen[None], SaysWhenWorkFails, Generic[ListingT]):
    """One listing of the server's, page by page; subclasses say which and how it reads.

    The reply's data is decoded once, when it arrives, into the listing's records
    (:mod:`flcore.listingrecords`); the table is drawn from those.
    """

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
        self.listing: ListingT | None = None

    def compose(self) -> ComposeResult:
        """The table, a status line, the footer."""
        yield LinkBanner(id="banner")
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

    @work(exclusive=True, exit_on_error=False, description="the listing")
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
        listing = self.decode(reply.data)
        self.listing = listing
        self.pages = listing.count.pages
        self.fill(listing)
        status.set(f"{self.summary(listing)} · {self.HINT}")

    def fill(self, listing: ListingT) -> None:
        """Put the listing's rows into the table, keeping the cursor's row where it can."""
        table = self.query_one(DataTable)
        cursor = table.cursor_row
        table.clear(columns=True)
        # Metric names come from sites: a label is text, never markup, and a column is known
        # by its place (a metric named "round" would have clashed with the round's column).
        for place, label in enumerate(self.columns(listing)):
            table.add_column(Text(label), key=str(place))
        for key, cells in self.rows(listing):
            table.add_row(*(Text(cell) for cell in cells), key=key)
        if table.row_count:
            table.move_cursor(row=min(cursor, table.row_count - 1))
        total = listing.count.total
        total = table.row_count if total is None else total
        table.border_title = Text(f"{self.TITLE} ({total} · page {self.page} of {self.pages})")

    def decode(self, data: JSON) -> ListingT:
        """The reply's data as the listing's records."""
        raise NotImplementedError

    def columns(self, listing: ListingT) -> Sequence[str]:
        """The table's column labels."""
        raise NotImplementedError

    def rows(self, listing: ListingT) -> Sequence[Row]:
        """The table's rows."""
        raise NotImplementedError

    def summary(self, listing: ListingT) -> str:
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


class RunsScreen(ListingScreen[LinesPage[RunLine]]):
    """``:runs``: every run on the server, newest first; ``enter`` opens one."""

    COMMAND = "list_runs"
    TITLE = "Runs"
    HINT = "enter rounds per site · r refresh · [ ] page · esc back"

    def decode(self, data: JSON) -> LinesPage[RunLine]:
        """A page of runs."""
        return runs_page(data)

    def columns(self, listing: LinesPage[RunLine]) -> Sequence[str]:
        """Run, app, rounds, status, best, started, ended, and how it ended (the widest)."""
        return ("run", "app", "rounds", "status", "best", "started", "ended", "how it ended")

    def rows(self, listing: LinesPage[RunLine]) -> Sequence[Row]:
        """One row per run."""
        return [
            (
                str(run.run_number),
                (
                    str(run.run_number),
                    run.app or "-",
                    run.rounds,
                    training(run.status).label,
                    run.best or "-",
                    _when(run.started_at),
                    _when(run.ended_at),
                    run.ending or "-",
                ),
            )
            for run in listing.lines
        ]

    @on(DataTable.RowHighlighted)
    def _highlighted(self, event: DataTable.RowHighlighted) -> None:
        """The whole story of the run under the cursor, however narrow the terminal."""
        number = event.row_key.value or ""
        runs = self.listing.lines if self.listing is not None else ()
        run = next((r for r in runs if str(r.run_number) == number), None)
        if run is not None:
            self.query_one("#listing-status", Line).set(
                f"run {number}: {run.status}"
                + (f" ({run.ending})" if run.ending else "")
                + f" · {self.HINT}"
            )

    @on(DataTable.RowSelected)
    def _open(self, event: DataTable.RowSelected) -> None:
        number = event.row_key.value or ""
        if number.isdigit():
            self.app.push_screen(RunScreen(self._ask, int(number)))


class RunScreen(ListingScreen[RunPage]):
    """``enter`` on a run: its metrics round by round, each site's under its round."""

    TITLE = "Run"

    def __init__(self, ask: Ask, run_number: int) -> None:
        """Run ``run_number``, asked through ``ask``."""
        super().__init__(ask)
        self.run_number = run_number

    def command(self) -> str:
        """``show_run N [page]``."""
        return f"show_run {self.run_number}" + (f" {self.page}" if self.page > 1 else "")

    def decode(self, data: JSON) -> RunPage:
        """The run and a page of its rounds."""
        return RunPage.from_json(data)

    def fill(self, listing: RunPage) -> None:
        """The table, titled with the run."""
        super().fill(listing)
        run = listing.run
        title = f"Run {self.run_number} · {run.app or 'no app'} · {run.status}"
        self.query_one(DataTable).border_title = Text(
            f"{title} (rounds: page {self.page} of {self.pages})"
        )

    def _metric_names(self, listing: RunPage) -> list[str]:
        names: dict[str, None] = {}
        for line in listing.rounds:
            names.update(dict.fromkeys(line.metrics))
            for site in line.sites.values():
                names.update(dict.fromkeys(site.metrics))
        return list(names)[:MAX_METRIC_COLUMNS]

    def columns(self, listing: RunPage) -> Sequence[str]:
        """Round, site, samples, then the metrics reported."""
        return ("round", "site", "samples", *self._metric_names(listing))

    def rows(self, listing: RunPage) -> Sequence[Row]:
        """Each round's weighted metrics, then one row per site that sent an update."""
        names = self._metric_names(listing)
        rows: list[Row] = []
        for line in listing.rounds:
            label = "final" if line.final else str(line.round)
            samples = sum(s.samples for s in line.sites.values())
            weighted = "all (weighted)" if line.sites else "all"
            metrics = [_metric(line.metrics.get(n)) for n in names]
            rows.append((label, [label, weighted, str(samples or ""), *metrics]))
            for site, result in sorted(line.sites.items()):
                mine = [_metric(result.metrics.get(n)) for n in names]
                rows.append(
                    (f"{label}/{site}", ["", f"{SITE_INDENT}{site}", str(result.samples), *mine])
                )
        return rows

    def summary(self, listing: RunPage) -> str:
        """The best model and the page."""
        best = listing.run.best
        return (f"best {best} · " if best else "") + super().summary(listing)


class AppsScreen(ListingScreen[LinesPage[AppLine]]):
    """``:apps``: the apps uploaded to the server, with size and content hash."""

    COMMAND = "list_apps"
    TITLE = "Apps on the server"

    def decode(self, data: JSON) -> LinesPage[AppLine]:
        """A page of apps."""
        return apps_page(data)

    def columns(self, listing: LinesPage[AppLine]) -> Sequence[str]:
        """App, size, files, uploaded, sha256."""
        return ("app", "size", "files", "uploaded", "sha256")

    def rows(self, listing: LinesPage[AppLine]) -> Sequence[Row]:
        """One row per app."""
        return [
            (
                app.name,
                (
                    app.name,
                    human_size(app.size),
                    str(app.files),
                    _when(app.uploaded_at),
                    app.sha256,
                ),
            )
            for app in listing.lines
        ]


class AdminsScreen(ListingScreen[LinesPage[AdminLine]]):
    """``:admins``: who is logged in, their role, consoles open and last command."""

    COMMAND = "list_admins"
    TITLE = "Admins logged in"

    def decode(self, data: JSON) -> LinesPage[AdminLine]:
        """A page of admins."""
        return admins_page(data)

    def columns(self, listing: LinesPage[AdminLine]) -> Sequence[str]:
        """Admin, role, consoles, logins, last seen, last command."""
        return ("admin", "role", "consoles", "logins", "last seen", "last command")

    def rows(self, listing: LinesPage[AdminLine]) -> Sequence[Row]:
        """One row per admin."""
        rows = []
        for admin in listing.lines:
            seen = admin.activity
            last = seen.last_command
            verdict = "ok" if seen.last_ok else "failed"
            rows.append(
                (
                    admin.user,
                    (
                        admin.user,
                        seen.role,
                        str(seen.consoles),
                        str(seen.logins),
                        _when(seen.last_used),
                        f"{last} ({verdict}, {_when(seen.last_command_at)})" if last else "-",
                    ),
                )
            )
        return rows
