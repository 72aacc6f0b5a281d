"""The fixed top of the dashboard: who, where, which run, and whether the link is up.

The connection state is drawn on its own at the right edge so that it stays
visible however narrow the terminal is; the rest is cut short first.
"""

from __future__ import annotations

from dataclasses import dataclass

from rich.style import Style
from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Horizontal

from flcore.feed import RunInfo
from fltui.status import Look, server_look
from fltui.widgets.line import Line
from fltui.widgets.tones import look_text, tone_style

CONNECTED = Look("●", "connected", "success")
CONNECTING = Look("◌", "connecting", "warning")
DISCONNECTED = Look("✖", "disconnected", "error")


@dataclass(frozen=True)
class Who:
    """The logged-in admin and the server they reach."""

    project: str
    target: str
    user: str
    role: str


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
        title = Text(no_wrap=True, overflow="ellipsis")
        title.append(" ◆ ", style=bold)
        title.append(who.project or "flstack", style=bold)
        title.append(f"  {who.target}")
        title.append(f"  {who.user}" + (f" ({who.role})" if who.role else ""))
        title.append("\n   " if two_lines else "  ")
        if run.run_number:
            title.append(f"run {run.run_number}", style="bold")
        else:
            title.append("no run set", style=tone_style(app, "muted"))
        status = server_look(run.server_status)
        title.append("  ")
        title.append_text(look_text(app, status))
        if run.current_round >= 0 and run.num_rounds:
            title.append(f"  round {run.current_round}/{run.num_rounds}")
        self.styles.height = 2 if two_lines else 1
        self.query_one("#header-title", Line).set(title)
        self.query_one("#header-link", Line).set(look_text(app, link))


class Banner(Line):
    """A line under the header that says the link is down and what the console is doing."""

    def show_problem(self, message: str) -> None:
        """Show ``message``; the banner stays until :meth:`clear`."""
        self.set(f"✖ {message}")
        self.display = True

    def clear(self) -> None:
        """Hide the banner."""
        self.display = False
