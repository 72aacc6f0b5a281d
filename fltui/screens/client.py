"""``enter`` on a client: everything the server knows about it, and its traceback if it failed.

The screen reads the store it was handed a few times a second, so what it
shows is the client now, not when the screen opened.
"""

from __future__ import annotations

from typing import ClassVar

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import VerticalScroll
from textual.screen import Screen
from textual.widgets import Static

from flcore.feed import ClientRow
from fltui.status import local_time
from fltui.store import Store
from fltui.widgets.header import LinkBanner
from fltui.widgets.tones import tone_style

CLOSE = "esc, enter or q close"
REFRESH_S = 0.25


def _when(stamp: float) -> str:
    return local_time(stamp, "%Y-%m-%d %H:%M:%S") if stamp else "-"


class ClientScreen(Screen[None]):
    """Details of one client instance, kept current."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape,enter,q", "dismiss(None)", "Close")]

    def __init__(self, store: Store, instance: str) -> None:
        """Show ``instance`` as ``store`` has it."""
        super().__init__()
        self._store = store
        self.instance = instance
        self._drawn: tuple[ClientRow | None, str | None] = (None, None)

    def compose(self) -> ComposeResult:
        """Title, facts, and how to close."""
        yield LinkBanner(id="banner")
        with VerticalScroll(classes="dialog", id="client-dialog"):
            yield Static(f"Client {self.instance}", classes="dialog-title", markup=False)
            yield Static(id="client-facts")
            yield Static(CLOSE, classes="dialog-hint")

    def on_mount(self) -> None:
        """Draw now, then whenever the store has news of this client."""
        self.redraw()
        self.set_interval(REFRESH_S, self.redraw)

    def redraw(self) -> None:
        """Draw the client's facts again if they changed."""
        row = self._store.clients.get(self.instance)
        gone = self._store.gone.get(self.instance)
        if (row, gone) == self._drawn:
            return
        self._drawn = (row, gone)
        self.query_one("#client-facts", Static).update(self._facts(row, gone))

    def _facts(self, row: ClientRow | None, gone: str | None) -> Text:
        text = Text()
        if row is None:
            text.append("The server no longer lists this client.", style="bold")
            return text
        facts = [
            ("instance", row.instance),
            ("client name", row.client_name),
            ("token id", row.token_id or "-"),
            ("org", row.org),
            ("host", row.hostname),
            ("device", row.device),
            ("status", row.detail or row.status),
            ("run / round", f"{row.run_number or '-'} / {row.round if row.round >= 0 else '-'}"),
            ("samples", str(row.samples)),
            ("app", row.app or "-"),
            ("connected since", _when(row.connected_at)),
            ("last heartbeat", _when(row.last_heartbeat)),
        ]
        if gone is not None:
            facts.append(("dropped", gone))
        for name, value in facts:
            text.append(f"{name:>16}  ", style="bold")
            text.append(f"{value}\n")
        error_style = tone_style(self.app, "error")
        if row.error:
            text.append(f"\n{row.error}\n", style=error_style)
        if row.traceback:
            text.append(f"\n{row.traceback.rstrip()}\n", style=error_style)
        return text
