"""The heartbeats pane: one strip per client, one column per heartbeat interval.

A healthy site draws an unbroken fence (``┃┃┃┃``), a silent one trails off
into dots, a flapping one is speckled with ``✖`` (link down) and ``▲``
(back up). Troubled sites sort to the top. Only the visible lines are drawn
(Textual's line API), so a thousand clients cost no more than twenty.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import ClassVar

from rich.segment import Segment
from rich.style import Style
from textual.geometry import Size
from textual.scroll_view import ScrollView
from textual.strip import Strip

from fltui.status import LEFT, LOST, ONLINE, shortened
from fltui.store import BEAT, DOWN, GONE, UP, Beat
from fltui.widgets.vimkeys import VimKeys

NAME_WIDTH = 14
MIN_BUCKET_S = 0.5

GLYPHS = {BEAT: "┃", DOWN: "✖", GONE: "✖", UP: "▲"}
PRIORITY = {GONE: 3, DOWN: 2, UP: 1, BEAT: 0}


@dataclass(frozen=True)
class Lane:
    """One client's line: its name, health tone and heartbeat history."""

    instance: str
    tone: str
    beats: Sequence[Beat]


def bucket_marks(beats: Sequence[Beat], now: float, bucket: float, count: int) -> list[str | None]:
    """What happened in each of ``count`` buckets ending at ``now``, oldest first.

    A bucket holds the most telling event in it (gone > down > up > beat);
    ``""`` is an interval without a heartbeat and None is before the
    client's history starts.
    """
    marks: list[str | None] = [None] * count
    if not beats:
        return marks
    start = now - bucket * count
    first = int((beats[0].time - start) // bucket)
    for index in range(max(first, 0), count):
        marks[index] = ""
    for beat in beats:
        index = int((beat.time - start) // bucket)
        if 0 <= index < count:
            current = marks[index]
            if not current or PRIORITY[beat.kind] > PRIORITY[current]:
                marks[index] = beat.kind
    return marks


class HeartbeatView(ScrollView, VimKeys, can_focus=True):
    """Recent heartbeats of every client, drawn line by line."""

    COMPONENT_CLASSES: ClassVar[set[str]] = {
        "heartbeat--beat",
        "heartbeat--gap",
        "heartbeat--down",
        "heartbeat--up",
        "heartbeat--name",
        "heartbeat--warning",
        "heartbeat--error",
    }

    def __init__(self, clock: Callable[[], float], id: str | None = None) -> None:
        """An empty view; ``clock`` gives the time the right edge stands for (the dashboard
        stops it while the console's link is down: what happened since is unknown)."""
        super().__init__(id=id)
        self._clock = clock
        self._lanes: list[Lane] = []
        self.bucket_s = 1.0

    def set_lanes(self, lanes: list[Lane], bucket_s: float) -> None:
        """Show these lanes (troubled ones first, those that left last), one column per
        ``bucket_s`` seconds."""
        rank = {LOST.tone: 0, "warning": 1, ONLINE.tone: 2, LEFT.tone: 3}
        self._lanes = sorted(lanes, key=lambda lane: (rank.get(lane.tone, 1), lane.instance))
        self.bucket_s = max(bucket_s, MIN_BUCKET_S)
        self.virtual_size = Size(0, len(self._lanes))  # as wide as the pane: no horizontal scroll
        self.refresh()

    @property
    def columns(self) -> int:
        """How many buckets fit beside the names."""
        return max(self.scrollable_content_region.width - NAME_WIDTH - 1, 1)

    @property
    def span_s(self) -> float:
        """Seconds the strips cover."""
        return self.columns * self.bucket_s

    def render_line(self, y: int) -> Strip:
        """Draw the lane at ``y`` (after scrolling)."""
        width = self.scrollable_content_region.width
        index = self.scroll_offset.y + y
        base = self.rich_style
        if index >= len(self._lanes):
            return Strip.blank(width, base)
        lane = self._lanes[index]
        style = self.get_component_rich_style
        name_style = style("heartbeat--name")
        if lane.tone in ("warning", "error"):
            name_style = style(f"heartbeat--{lane.tone}")
        name = shortened(lane.instance, NAME_WIDTH - 1).ljust(NAME_WIDTH)
        segments = [Segment(name, base + name_style)]
        now = self._clock()
        styles: dict[str | None, tuple[str, Style]] = {
            None: (" ", base),
            "": ("·", base + style("heartbeat--gap")),
            BEAT: (GLYPHS[BEAT], base + style("heartbeat--beat")),
            DOWN: (GLYPHS[DOWN], base + style("heartbeat--down")),
            GONE: (GLYPHS[GONE], base + style("heartbeat--down")),
            UP: (GLYPHS[UP], base + style("heartbeat--up")),
        }
        for mark in bucket_marks(lane.beats, now, self.bucket_s, self.columns):
            glyph, glyph_style = styles[mark]
            segments.append(Segment(glyph, glyph_style))
        return Strip(segments).crop_extend(0, width, base)
