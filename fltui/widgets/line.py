"""A Static that skips redraws of unchanged text: the dashboard sets its texts many times a second.

``Static.update`` re-lays out the whole screen by default. A :class:`Line`
updates only when its text changes, and asks for a layout only when the
space the new text needs differs from the space it has: more or fewer
lines once wrapped at its width (for ``height: auto``), or a wider or
narrower text (for ``width: auto``). Counting newlines is not enough: a
longer list of names wraps onto another line with the same count, and
``✖ disconnected`` needs more room than ``● connected``.

A string is shown as it is, never read as markup: the lines show what the
server and the sites wrote (errors, host names), where a ``[/`` would
otherwise stop the console.
"""

from __future__ import annotations

from rich.text import Text
from textual.widget import Widget
from textual.widgets import Static


class Line(Static):
    """Text that is redrawn only when it changes, and re-laid out only when its size does."""

    def __init__(self, id: str | None = None, classes: str | None = None) -> None:
        """Empty at first."""
        super().__init__(id=id, classes=classes, markup=False)
        self._shown: Text | str = ""

    @property
    def shown(self) -> Text | str:
        """The text on display."""
        return self._shown

    def set(self, text: Text | str) -> None:
        """Show ``text`` unless it is already shown."""
        if text == self._shown:
            return
        self._shown = text
        self.update(text, layout=False)
        if self.is_mounted and self._needs_other_size():
            self.refresh(layout=True)

    def _needs_other_size(self) -> bool:
        """Whether the new text needs another size than the one the layout gave."""
        styles = self.styles
        have = self.content_size
        viewport = self.app.size
        parent = self.parent
        container = parent.size if isinstance(parent, Widget) else viewport
        width = have.width
        if styles.width is not None and styles.width.is_auto:
            width = self.get_content_width(container, viewport)
            if width != have.width:
                return True
        if styles.height is not None and styles.height.is_auto:
            return self.get_content_height(container, viewport, width) != have.height
        return False
