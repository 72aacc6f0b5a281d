"""A Static that skips redraws of unchanged text: the dashboard sets its texts many times a second.

``Static.update`` re-lays out the whole screen by default; a :class:`Line`
updates only when its text changes, and asks for a layout only when the
number of lines does. A string is shown as it is, never read as markup: the
lines show what the server and the sites wrote (errors, host names), where
a ``[/`` would otherwise stop the console.
"""

from __future__ import annotations

from rich.text import Text
from textual.widgets import Static


class Line(Static):
    """Text that is redrawn only when it changes."""

    def __init__(self, id: str | None = None, classes: str | None = None) -> None:
        """Empty at first."""
        super().__init__(id=id, classes=classes, markup=False)
        self._shown: Text | str = ""

    def set(self, text: Text | str) -> None:
        """Show ``text`` unless it is already shown."""
        if text == self._shown:
            return
        layout = _height(text) != _height(self._shown)
        self._shown = text
        self.update(text, layout=layout)


def _height(text: Text | str) -> int:
    plain = str(text)
    return plain.count("\n") + 1 if plain else 0
