"""``l`` on a client: that site's log lines only, live, with wrap, search and save.

Like ``kubectl logs -f`` in k9s: the lines keep coming (``f`` stops and
resumes following), ``w`` wraps long lines, ``/`` searches and highlights
(``n``/``N`` jump between matches; ``/`` again offers the last search),
and ``ctrl+s`` saves what is shown to a file under the admin's folder,
saying where.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import ClassVar

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.screen import Screen
from textual.widgets import Footer, Input

from fltui.logfilter import LogFilter
from fltui.privatefiles import file_part, write_private
from fltui.store import LOG_LIMIT, Store
from fltui.widgets.header import LinkBanner
from fltui.widgets.line import Line
from fltui.widgets.logview import LogView, plain_line

REFRESH_S = 0.25
Clock = Callable[[], float]


class SiteLogScreen(Screen[None]):
    """The log lines of one site."""

    # The log view has these keys too, unlisted; here they are the screen's
    # own keys, so the footer lists them (priority: they are the screen's
    # first, except while the search box takes the typing).
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("slash", "search", "Search", key_display="/"),
        Binding("n", "log_view('next_match(1)')", "Next", priority=True),
        Binding("N", "log_view('next_match(-1)')", "Previous", key_display="N", priority=True),
        Binding("w", "log_view('toggle_wrap')", "Wrap", priority=True),
        Binding("f", "log_view('toggle_follow')", "Follow", priority=True),
        Binding("ctrl+s", "save", "Save"),
        Binding("escape,q", "back", "Back"),
    ]

    def __init__(self, store: Store, instance: str, save_dir: Path, clock: Clock) -> None:
        """Follow ``instance``'s lines in ``store``; saved files go under ``save_dir``."""
        super().__init__()
        self._store = store
        self.instance = instance
        self._save_dir = save_dir
        self._clock = clock
        self._seen = 0
        self.last_search = ""

    def compose(self) -> ComposeResult:
        """The log, the search box, the footer."""
        yield LinkBanner(id="banner")
        yield LogView(LOG_LIMIT, id="site-log", title=f"Logs of {self.instance}")
        yield Line(id="site-log-status")
        yield Input(placeholder="search this site's lines", id="site-search")
        yield Footer(compact=True, show_command_palette=False)

    def on_mount(self) -> None:
        """Show the site's lines so far and keep adding the new ones."""
        view = self.query_one(LogView)
        view.filter = LogFilter(sources=frozenset({self.instance}))
        self._seen = self._store.log_total
        view.replace_all(self._store.logs)
        self.query_one("#site-search", Input).display = False
        view.focus()
        self.set_interval(REFRESH_S, self.refresh_lines)

    def refresh_lines(self) -> None:
        """Add the lines that arrived since the last look."""
        fresh = self._store.new_logs(self._seen)
        self._seen = self._store.log_total
        if fresh:
            self.query_one(LogView).append(fresh)

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """The log view's letters are text while the search box has the focus."""
        if action == "log_view":
            return not isinstance(self.focused, Input)
        return True

    async def action_log_view(self, action: str) -> None:
        """Keys of the log view, whatever has the focus."""
        await self.query_one(LogView).run_action(action)

    def action_search(self) -> None:
        """Open the search box, offering the last search."""
        box = self.query_one("#site-search", Input)
        box.value = self.last_search
        box.display = True
        self.set_focus(box)

    @on(Input.Submitted, "#site-search")
    def _searched(self, event: Input.Submitted) -> None:
        self.last_search = event.value.strip()
        count = self.query_one(LogView).search_for(self.last_search)
        if self.last_search:
            found = f"{count} line(s) match" if count else "no line matches"
            self._status(f"{found} {self.last_search!r} · n next · N previous")
        self._close_search()

    def _close_search(self) -> None:
        box = self.query_one("#site-search", Input)
        box.display = False
        self.set_focus(self.query_one(LogView))

    def action_back(self) -> None:
        """Close the search box, or go back to the dashboard."""
        if self.focused is self.query_one("#site-search", Input):
            self._close_search()
        else:
            self.dismiss(None)

    def action_save(self) -> None:
        """Write the lines shown to ``<admin folder>/logs/<site>-<time>.log`` and say where."""
        lines = [plain_line(entry) for entry in self.query_one(LogView).entries]
        stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(self._clock()))
        path = self._save_dir / "logs" / f"{file_part(self.instance)}-{stamp}.log"
        try:
            write_private(path, "".join(f"{line}\n" for line in lines))
        except OSError as exc:
            reason = exc.strerror or str(exc)
            self.notify(f"cannot save to {path}: {reason}", severity="error", markup=False)
            return
        self._status(f"saved {len(lines)} line(s) to {path}")
        self.notify(f"saved {len(lines)} line(s) to {path}", title="logs saved", markup=False)

    def _status(self, text: str) -> None:
        self.query_one("#site-log-status", Line).set(text)
