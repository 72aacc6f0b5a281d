"""The logs pane: every source's lines, level colours, follow mode and a bounded buffer.

It behaves like Toolong: it follows the tail until you scroll up, then
counts the lines that arrived meanwhile ("+12 new") until you return to the
end (``G`` or ``end``) or press ``f``. Lines are drawn on demand from the
buffer (Textual's line API), so a busy log costs only the lines on screen.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import ClassVar

from rich.segment import Segment
from textual.binding import Binding, BindingType
from textual.geometry import Size
from textual.reactive import reactive
from textual.scroll_view import ScrollView
from textual.strip import Strip

from flcore.feed import LogEntry, printable
from fltui.logfilter import LogFilter

SOURCE_WIDTH = 12
LEVEL_WIDTH = 9
PREFIX_WIDTH = 9 + SOURCE_WIDTH + LEVEL_WIDTH
LEVEL_CLASSES = {
    "DEBUG": "log--debug",
    "INFO": "log--info",
    "WARNING": "log--warning",
    "ERROR": "log--error",
    "CRITICAL": "log--error",
}


_LINE_BREAKS = {ord("\n"): " ⏎ ", ord("\t"): "    "}


def one_line(message: str) -> str:
    """A log message as one line of the pane, safe to draw.

    Newlines and tabs are shown rather than obeyed, and control characters
    never reach the terminal, whether the line came from the feed (cleaned
    there already) or from the console itself.
    """
    return printable(message).translate(_LINE_BREAKS)


def clock_time(stamp: float) -> str:
    """``HH:MM:SS`` in local time."""
    return time.strftime("%H:%M:%S", time.localtime(stamp))


class LogView(ScrollView, can_focus=True):
    """Filtered log lines with follow mode."""

    COMPONENT_CLASSES: ClassVar[set[str]] = {
        "log--time",
        "log--source",
        "log--debug",
        "log--info",
        "log--warning",
        "log--error",
    }
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("f", "toggle_follow", "Follow", show=False),
        Binding("j", "scroll_down", "Down", show=False),
        Binding("k", "scroll_up", "Up", show=False),
        Binding("g", "scroll_home", "Top", show=False),
        Binding("G", "follow", "Bottom", show=False),
        Binding("end", "follow", "Bottom", show=False),
    ]

    follow: reactive[bool] = reactive(True)
    unseen: reactive[int] = reactive(0)

    def __init__(self, limit: int, id: str | None = None) -> None:
        """An empty view keeping at most ``limit`` lines."""
        super().__init__(id=id)
        self.limit = limit
        self.filter_text = ""
        self.filter = LogFilter()
        self._lines: list[LogEntry] = []
        self._width = 0

    @property
    def line_count(self) -> int:
        """Lines that pass the filter (at most ``limit``)."""
        return len(self._lines)

    def set_filter(self, text: str, entries: Iterable[LogEntry]) -> None:
        """Filter with ``text`` (see :mod:`fltui.logfilter`) and redraw from ``entries``."""
        self.filter_text = text.strip()
        self.filter = LogFilter.parse(text)
        self.replace_all(entries)

    def replace_all(self, entries: Iterable[LogEntry]) -> None:
        """Show these lines instead (a snapshot arrived or the filter changed)."""
        self._lines = [entry for entry in entries if self.filter.accepts(entry)][-self.limit :]
        self._width = max((self._line_width(e) for e in self._lines), default=0)
        self.unseen = 0
        self._resize()
        if self.follow:
            self.scroll_end(animate=False, immediate=True, x_axis=False)
        self._retitle()
        self.refresh()

    def append(self, entries: Iterable[LogEntry]) -> None:
        """Add new lines; follow them, or count them while the reader is scrolled up."""
        added = [entry for entry in entries if self.filter.accepts(entry)]
        if not added:
            return
        self._lines.extend(added)
        self._width = max(self._width, *(self._line_width(e) for e in added))
        excess = len(self._lines) - self.limit
        if excess > self.limit // 10:  # trim in batches: O(1) per line on average
            del self._lines[:excess]
            if not self.follow:
                self.scroll_to(y=max(self.scroll_y - excess, 0), animate=False, immediate=True)
        self._resize()
        if self.follow:
            self.scroll_end(animate=False, immediate=True, x_axis=False)
        else:
            self.unseen += len(added)
        self._retitle()
        self.refresh()

    def _resize(self) -> None:
        size = Size(self._width, len(self._lines))
        if size != self.virtual_size:
            # Only the scrollable extent changed, not the pane: assigning virtual_size
            # would lay out the whole screen on every batch of new lines.
            self.set_reactive(ScrollView.virtual_size, size)
            self._scroll_update(size)

    @staticmethod
    def _line_width(entry: LogEntry) -> int:
        return PREFIX_WIDTH + len(entry.message)

    def action_toggle_follow(self) -> None:
        """Follow the tail, or stop following."""
        self.follow = not self.follow

    def action_follow(self) -> None:
        """Jump to the end and follow."""
        self.follow = True

    def watch_follow(self, follow: bool) -> None:
        """Jump to the end when following starts."""
        if follow:
            self.unseen = 0
            self.scroll_end(animate=False, immediate=True, x_axis=False)
        self._retitle()

    def _retitle(self) -> None:
        """Border title: how many lines, the filter, following or how many arrived unseen."""
        state = "following" if self.follow else f"paused, +{self.unseen:,} new"
        shown = f"{self.line_count:,} lines"
        if self.filter_text:
            shown += f" · filter: {self.filter_text}"
        self.border_title = f"Logs ({shown} · {state})"

    def watch_scroll_y(self, old: float, new: float) -> None:
        """Scrolling up stops following; reaching the end again resumes it."""
        super().watch_scroll_y(old, new)
        if new < old and not self.is_vertical_scroll_end:
            self.follow = False
        elif new > old and self.is_vertical_scroll_end:
            self.follow = True

    def render_line(self, y: int) -> Strip:
        """Draw the line at ``y`` (after scrolling)."""
        scroll_x, scroll_y = self.scroll_offset
        width = self.scrollable_content_region.width
        index = scroll_y + y
        base = self.rich_style
        if index >= len(self._lines):
            return Strip.blank(width, base)
        entry = self._lines[index]
        style = self.get_component_rich_style
        level_style = style(LEVEL_CLASSES.get(entry.level.upper(), "log--info"))
        message = one_line(entry.message)
        segments = [
            Segment(clock_time(entry.time) + " ", base + style("log--time")),
            Segment(
                entry.source[: SOURCE_WIDTH - 1].ljust(SOURCE_WIDTH), base + style("log--source")
            ),
            Segment(entry.level[: LEVEL_WIDTH - 1].ljust(LEVEL_WIDTH), base + level_style),
            Segment(message, base + level_style),
        ]
        return Strip(segments).crop_extend(scroll_x, scroll_x + width, base)
