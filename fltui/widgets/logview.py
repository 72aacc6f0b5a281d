"""The logs pane: lines in time order, level colours, follow mode, wrap, search, a bounded buffer.

It behaves like Toolong: it follows the tail until you scroll up, then
counts the lines that arrived meanwhile ("+12 new") until you return to the
end (``G`` or ``end``) or press ``f``. Lines are drawn on demand from the
buffer (Textual's line API), so a busy log costs only the lines on screen.

Sites forward their lines a little late and each with its own time, so a
line is put where its time belongs, not where it arrived. ``w`` wraps long
messages under themselves; a search (:meth:`LogView.search_for`) highlights
every match and ``n``/``N`` jump between them.
"""

from __future__ import annotations

import bisect
import sys
from collections.abc import Iterable
from typing import ClassVar

from rich.cells import cell_len, chop_cells
from rich.segment import Segment
from rich.style import Style
from rich.text import Text
from textual.binding import Binding, BindingType
from textual.geometry import Size
from textual.reactive import reactive
from textual.scroll_view import ScrollView
from textual.strip import Strip

from flcore.feed import LogEntry, printable
from fltui.logfilter import LogFilter
from fltui.status import clock_time, local_time, shortened
from fltui.widgets.vimkeys import VimKeys

SOURCE_WIDTH = 12
LEVEL_WIDTH = 9
PREFIX_WIDTH = 9 + SOURCE_WIDTH + LEVEL_WIDTH
MIN_WRAP = 20
LEVEL_CLASSES = {
    "DEBUG": "log--debug",
    "INFO": "log--info",
    "WARNING": "log--warning",
    "ERROR": "log--error",
    "CRITICAL": "log--error",
}


WHOLE = sys.maxsize
"""The end of a row that shows its whole message (not wrapped)."""
_LINE_BREAKS = {ord("\n"): " ⏎ ", ord("\t"): "    "}


def one_line(message: str) -> str:
    """A log message as one line of the pane, safe to draw.

    Newlines and tabs are shown rather than obeyed, and control characters
    never reach the terminal, whether the line came from the feed (cleaned
    there already) or from the console itself.
    """
    return printable(message).translate(_LINE_BREAKS)


def plain_line(entry: LogEntry) -> str:
    """A line as it is saved to a file: date, time, source, level, message."""
    stamp = local_time(entry.time, "%Y-%m-%d %H:%M:%S")
    return f"{stamp} {entry.source:<{SOURCE_WIDTH - 1}} {entry.level:<8} {one_line(entry.message)}"


def wrapped(message: str, width: int) -> list[tuple[int, int]]:
    """Where each row of ``message`` wrapped at ``width`` terminal cells starts and ends, in
    characters: a wide character (CJK, most emoji) takes two cells, and cutting by characters
    lost half of a wide line past the pane's edge."""
    if message.isascii():  # one cell each (controls are gone): no need to measure
        return [(start, start + width) for start in range(0, max(len(message), 1), width)]
    spans: list[tuple[int, int]] = []
    start = 0
    for piece in chop_cells(message, width):
        spans.append((start, start + len(piece)))
        start += len(piece)
    return spans or [(0, 0)]


def _time(entry: LogEntry) -> float:
    return entry.time


class LogView(ScrollView, VimKeys, can_focus=True):
    """Filtered log lines in time order, with follow mode, wrapping and search."""

    COMPONENT_CLASSES: ClassVar[set[str]] = {
        "log--time",
        "log--source",
        "log--debug",
        "log--info",
        "log--warning",
        "log--error",
        "log--match",
    }
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("end", "bottom", "Bottom", show=False),
        Binding("f", "toggle_follow", "Follow", show=False),
        Binding("w", "toggle_wrap", "Wrap", show=False),
        Binding("n", "next_match(1)", "Next match", show=False),
        Binding("N", "next_match(-1)", "Previous match", show=False),
    ]

    follow: reactive[bool] = reactive(True)
    unseen: reactive[int] = reactive(0)
    wrap: reactive[bool] = reactive(False)

    def __init__(self, limit: int, id: str | None = None, title: str = "Logs") -> None:
        """An empty view keeping at most ``limit`` lines, titled ``title``."""
        super().__init__(id=id)
        self.limit = limit
        self._title = title
        self.filter_text = ""
        self.filter = LogFilter()
        self.search = ""
        self._lines: list[LogEntry] = []
        self._rows: list[tuple[int, int, int]] = []
        """What each screen row shows: the index into the lines, and where in the message (in
        characters) the row starts and ends."""
        self._row_width = 0
        self._width = 0
        self._match = -1

    @property
    def line_count(self) -> int:
        """Lines that pass the filter (at most ``limit``)."""
        return len(self._lines)

    @property
    def entries(self) -> list[LogEntry]:
        """The lines that pass the filter, in time order."""
        return list(self._lines)

    def set_filter(self, text: str, entries: Iterable[LogEntry]) -> None:
        """Filter with ``text`` (see :mod:`fltui.logfilter`) and redraw from ``entries``."""
        self.filter_text = text.strip()
        self.filter = LogFilter.parse(text)
        self.replace_all(entries)

    def replace_all(self, entries: Iterable[LogEntry]) -> None:
        """Show these lines instead (a snapshot arrived or the filter changed)."""
        accepted = [entry for entry in entries if self.filter.accepts(entry)]
        self._lines = sorted(accepted, key=_time)[-self.limit :]
        self._width = max((self._line_width(e) for e in self._lines), default=0)
        self.unseen = 0
        self._layout_rows()
        self._retitle()

    def append(self, entries: Iterable[LogEntry]) -> None:
        """Add new lines; follow them, or count them while the reader is scrolled up."""
        added = [entry for entry in entries if self.filter.accepts(entry)]
        if not added:
            return
        lines = self._lines
        in_order = True
        for entry in added:
            if lines and entry.time < lines[-1].time:
                bisect.insort_right(lines, entry, key=_time)
                in_order = False
            else:
                lines.append(entry)
        self._width = max(self._width, *(self._line_width(e) for e in added))
        excess = len(lines) - self.limit
        if excess > self.limit // 10:  # trim in batches: O(1) per line on average
            del lines[:excess]
            in_order = False
        if in_order:
            self._extend_rows(len(lines) - len(added))
        else:
            self._layout_rows()
        if not self.follow:
            self.unseen += len(added)
        self._retitle()

    # ------------------------------------------------------------------ rows

    def _message_width(self) -> int:
        return max(self.scrollable_content_region.width - PREFIX_WIDTH, MIN_WRAP)

    def _rows_of(self, index: int) -> list[tuple[int, int, int]]:
        if not self.wrap:
            return [(index, 0, WHOLE)]
        message = one_line(self._lines[index].message)
        return [(index, start, end) for start, end in wrapped(message, self._row_width)]

    def _layout_rows(self) -> None:
        """Work out every screen row again (wrap, width or order changed)."""
        self._row_width = self._message_width()
        self._rows = [row for index in range(len(self._lines)) for row in self._rows_of(index)]
        self._after_rows_changed()

    def _extend_rows(self, first: int) -> None:
        for index in range(first, len(self._lines)):
            self._rows.extend(self._rows_of(index))
        self._after_rows_changed()

    def _after_rows_changed(self) -> None:
        width = 0 if self.wrap else self._width
        size = Size(width, len(self._rows))
        if size != self.virtual_size:
            # Only the scrollable extent changed, not the pane: assigning virtual_size
            # would lay out the whole screen on every batch of new lines.
            self.set_reactive(ScrollView.virtual_size, size)
            self._scroll_update(size)
        if self.follow:
            self.scroll_end(animate=False, immediate=True, x_axis=False)
        self.refresh()

    @staticmethod
    def _line_width(entry: LogEntry) -> int:
        message = entry.message
        if message.isascii() and "\n" not in message and "\t" not in message:
            return PREFIX_WIDTH + len(message)  # as drawn, one cell a character
        return PREFIX_WIDTH + cell_len(one_line(message))

    def on_resize(self) -> None:
        """A new width re-wraps; a new height must not leave a following view short of the end."""
        if self.wrap and self._message_width() != self._row_width:
            self._layout_rows()
        elif self.follow:
            self.call_after_refresh(self._to_end)

    def _to_end(self) -> None:
        self.scroll_end(animate=False, immediate=True, x_axis=False)

    # ------------------------------------------------------------------ keys

    def action_toggle_follow(self) -> None:
        """Follow the tail, or stop following."""
        self.follow = not self.follow

    def action_bottom(self) -> None:
        """``G``/``end``: jump to the end and follow (even when already following)."""
        self.follow = True
        self.unseen = 0
        self._to_end()
        self._retitle()

    def action_toggle_wrap(self) -> None:
        """Wrap long messages under themselves, or cut them at the edge."""
        self.wrap = not self.wrap

    def watch_wrap(self) -> None:
        """Lay the rows out again."""
        self._layout_rows()
        self._retitle()

    def watch_follow(self, follow: bool) -> None:
        """Jump to the end when following starts."""
        if follow:
            self.unseen = 0
            self._to_end()
        self._retitle()

    def _retitle(self) -> None:
        """Border title: how many lines, the filter, following or how many arrived unseen."""
        state = "following" if self.follow else "paused"
        if not self.follow and self.unseen:
            state += f", +{self.unseen:,} new"
        shown = f"{self.line_count:,} lines"
        if self.filter_text:
            shown += f" · filter: {self.filter_text}"
        if self.search:
            shown += f" · search: {self.search}"
        if self.wrap:
            shown += " · wrap"
        self.border_title = Text(f"{self._title} ({shown} · {state})")  # a search is text

    def watch_scroll_y(self, old: float, new: float) -> None:
        """Scrolling up stops following; reaching the end again resumes it."""
        super().watch_scroll_y(old, new)
        if new < old and not self.is_vertical_scroll_end:
            self.follow = False
        elif new > old and self.is_vertical_scroll_end:
            self.follow = True

    # ------------------------------------------------------------------ search

    def search_for(self, text: str) -> int:
        """Highlight ``text`` (case-insensitive) and jump to its last match; returns the count."""
        self.search = text.strip()
        self._match = -1
        self._retitle()
        self.refresh()
        if not self.search:
            return 0
        count = sum(1 for entry in self._lines if self._matches(entry))
        if count:
            self._match = len(self._lines)
            self.action_next_match(-1)
        return count

    def _matches(self, entry: LogEntry) -> bool:
        return self.search.lower() in one_line(entry.message).lower()

    def action_next_match(self, step: int) -> None:
        """``n``/``N``: the next or previous line with a match, kept in view."""
        if not self.search or not self._lines:
            return
        count = len(self._lines)
        index = self._match
        for _ in range(count):
            index = (index + step) % count
            if self._matches(self._lines[index]):
                self._show_match(index)
                return

    def _show_match(self, index: int) -> None:
        self._match = index
        row = next(
            r for r, (line, start, _) in enumerate(self._rows) if line == index and not start
        )
        self.follow = False
        target = max(row - self.scrollable_content_region.height // 2, 0)
        self.scroll_to(y=target, animate=False, immediate=True)
        self.refresh()

    @property
    def current_match(self) -> LogEntry | None:
        """The line ``n``/``N`` last jumped to."""
        return self._lines[self._match] if 0 <= self._match < len(self._lines) else None

    # ------------------------------------------------------------------ drawing

    def render_line(self, y: int) -> Strip:
        """Draw the screen row at ``y`` (after scrolling)."""
        scroll_x, scroll_y = self.scroll_offset
        width = self.scrollable_content_region.width
        index = scroll_y + y
        base = self.rich_style
        if index >= len(self._rows):
            return Strip.blank(width, base)
        line, start, end = self._rows[index]
        entry = self._lines[line]
        style = self.get_component_rich_style
        level_style = base + style(LEVEL_CLASSES.get(entry.level.upper(), "log--info"))
        message = one_line(entry.message)[start:end]
        if start:
            segments = [Segment(" " * PREFIX_WIDTH, base)]
        else:
            segments = [
                Segment(clock_time(entry.time) + " ", base + style("log--time")),
                Segment(
                    shortened(entry.source, SOURCE_WIDTH - 1).ljust(SOURCE_WIDTH),
                    base + style("log--source"),
                ),
                Segment(entry.level[: LEVEL_WIDTH - 1].ljust(LEVEL_WIDTH), level_style),
            ]
        segments.extend(self._highlighted(message, level_style, style("log--match")))
        strip = Strip(segments)
        if self.wrap:
            return strip.crop_extend(0, width, base)
        return strip.crop_extend(scroll_x, scroll_x + width, base)

    def _highlighted(self, message: str, style: Style, match: Style) -> list[Segment]:
        """The message with every occurrence of the search drawn in the match style."""
        needle = self.search.lower()
        if not needle:
            return [Segment(message, style)]
        segments: list[Segment] = []
        lowered = message.lower()
        position = 0
        while (found := lowered.find(needle, position)) >= 0:
            segments.append(Segment(message[position:found], style))
            segments.append(Segment(message[found : found + len(needle)], style + match))
            position = found + len(needle)
        segments.append(Segment(message[position:], style))
        return segments
