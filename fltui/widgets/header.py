"""The fixed top of the dashboard: who, where, which run, and whether the console's link is up.

The connection state is drawn on its own at the right edge so that it stays
visible however narrow the terminal is; the rest is cut short first. Fields
are separated by `` · ``, never by bare spaces alone: a screen read back as
text (a screen reader, a copied SVG screenshot) must not run words together.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, cast

from rich.style import Style
from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Horizontal

from flcore import status as st
from flcore.feed import RunInfo
from fltui.state import ConsoleState, Who
from fltui.status import Look, server_look
from fltui.widgets.line import Line
from fltui.widgets.tones import look_text, tone_style

SEPARATOR = " · "


class StatusHeader(Horizontal):
    """Project, server, admin and role, run and server status, connection state."""

    def compose(self) -> ComposeResult:
        """A title that may be cut short and a connection state that may not."""
        yield Line(id="header-title")
        yield Line(id="header-link")

    def show(self, who: Who, run: RunInfo, link: Look, two_lines: bool = False) -> None:
        """Redraw from the current facts; ``two_lines`` puts the run on a line of its own."""
        app = self.app
        bold = tone_style(app, "accent") + Style(bold=True)
        muted = tone_style(app, "muted")
        title = Text(no_wrap=True, overflow="ellipsis")
        title.append(" ◆ ", style=bold)
        title.append(who.project or "flstack", style=bold)
        if who.target:
            title.append(SEPARATOR, style=muted)
            title.append(who.target)
        title.append(SEPARATOR, style=muted)
        title.append(who.user + (f" ({who.role})" if who.role else ""))
        title.append("\n   " if two_lines else SEPARATOR, style=muted)
        if run.run_number:
            title.append(f"run {run.run_number}", style="bold")
        else:
            title.append("no run set", style=muted)
        title.append(SEPARATOR, style=muted)
        title.append_text(look_text(app, server_look(run.server_status)))
        if run.server_status == st.NOT_STARTED and run.reason:
            title.append(f" (last start failed: {run.reason})")
        elif run.ending():
            title.append(f" ({run.ending()})")
        elif run.fault:
            title.append(f" ({run.fault})")
        if run.blocked:
            title.append(SEPARATOR, style=muted)
            title.append("⚠ cannot progress", style=tone_style(app, "warning"))
        if run.current_round >= 0 and run.num_rounds:
            title.append(SEPARATOR, style=muted)
            title.append(f"round {min(run.current_round, run.num_rounds)}/{run.num_rounds}")
        self.styles.height = 2 if two_lines else 1
        self.query_one("#header-title", Line).set(title)
        self.query_one("#header-link", Line).set(look_text(app, link))


class Banner(Line):
    """A line under the header: the console's link is down (and what it does about it)."""

    def show(self, message: str) -> None:
        """Show ``message``, or hide the banner when it is empty."""
        self.set(message)
        self.display = bool(message)


class Following(Protocol):
    """An app that follows a server: its connection, and its clock."""

    state: ConsoleState
    clock: Callable[[], float]


class LinkBanner(Banner):
    """The banner of the views that cover the dashboard (a client's details, a site's log,
    the listings): while the link is down what they show is no longer current, and they say
    so, not only the dashboard beneath them."""

    def on_mount(self) -> None:
        """Draw now and every second (its countdown ticks)."""
        self.redraw()
        self.set_interval(1.0, self.redraw)

    def redraw(self) -> None:
        """Show the app's connection as it is now."""
        app = cast(Following, self.app)
        self.show(app.state.connection.banner(app.clock(), keys=False))
