"""Rich styles for the tones of :mod:`fltui.status`, taken from the current theme.

Tables render Rich text, which cannot use CSS variables, so the colour of
each tone is looked up in the theme's variables when a cell is drawn; a
change of theme redraws the cells.
"""

from __future__ import annotations

from rich.style import Style
from rich.text import Text
from textual.app import App

from fltui.status import Look


def tone_style(app: App[object], tone: str) -> Style:
    """The style of a tone (``success``, ``warning``, ``error``, ``accent``, ``muted``)."""
    if tone == "muted":
        return Style(dim=True)
    if tone == "error":
        return Style(color=app.theme_variables.get("error"), bold=True)
    color = app.theme_variables.get(tone)
    return Style(color=color) if color else Style()


def toned(app: App[object], text: str, tone: str) -> Text:
    """``text`` in the colour of ``tone``."""
    return Text(text, style=tone_style(app, tone), no_wrap=True, overflow="ellipsis")


def look_text(app: App[object], look: Look) -> Text:
    """Glyph and word of a state, in its tone."""
    return toned(app, look.label, look.tone)
