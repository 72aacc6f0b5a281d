"""``enter`` on a client: everything the server knows about it, and its traceback if it failed."""

from __future__ import annotations

import time
from typing import ClassVar

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import VerticalScroll
from textual.screen import Screen
from textual.widgets import Static

from flcore.feed import ClientRow
from fltui.widgets.tones import tone_style


def _when(stamp: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(stamp)) if stamp else "-"


class ClientScreen(Screen[None]):
    """Details of one client instance."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape,enter,q", "dismiss(None)", "Close")]

    def __init__(self, row: ClientRow, gone_reason: str | None) -> None:
        """Show ``row``; ``gone_reason`` says why the server dropped it, if it did."""
        super().__init__()
        self._row = row
        self._gone = gone_reason

    def compose(self) -> ComposeResult:
        """Facts first, then the error and traceback."""
        row = self._row
        facts = [
            ("instance", row.instance),
            ("client name", row.client_name),
            ("token id", row.token_id or "-"),
            ("org", row.org),
            ("host", row.hostname),
            ("device", row.device),
            ("status", row.status),
            ("run / round", f"{row.run_number or '-'} / {row.round if row.round >= 0 else '-'}"),
            ("samples", str(row.samples)),
            ("app", row.app or "-"),
            ("connected since", _when(row.connected_at)),
            ("last heartbeat", _when(row.last_heartbeat)),
        ]
        if self._gone is not None:
            facts.append(("dropped", self._gone))
        text = Text()
        for name, value in facts:
            text.append(f"{name:>16}  ", style="bold")
            text.append(f"{value}\n")
        error_style = tone_style(self.app, "error")
        if row.error:
            text.append(f"\n{row.error}\n", style=error_style)
        if row.traceback:
            text.append(f"\n{row.traceback.rstrip()}\n", style=error_style)
        with VerticalScroll(classes="dialog", id="client-dialog"):
            yield Static(f"Client {row.instance}", classes="dialog-title", markup=False)
            yield Static(text, id="client-facts")
