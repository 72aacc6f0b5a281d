"""``j`` ``k`` ``g`` ``G``: the same navigation keys in every pane, defined once.

Panes that move a cursor rather than the view (the clients table) or that
follow a tail (the logs) override the action that differs.
"""

from __future__ import annotations

from typing import ClassVar

from textual.binding import Binding, BindingType
from textual.widget import Widget


class VimKeys(Widget):
    """Mixed in after a scrolling widget: ``class LogView(ScrollView, VimKeys)``.

    After, not before: Textual takes a widget's CSS and component classes
    from its first base only, and that must stay the scrolling widget.
    """

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("j", "line_down", "Down", show=False),
        Binding("k", "line_up", "Up", show=False),
        Binding("g", "top", "Top", show=False),
        Binding("G", "bottom", "Bottom", show=False),
    ]

    def action_line_down(self) -> None:
        """One line down."""
        self.scroll_down(animate=False)

    def action_line_up(self) -> None:
        """One line up."""
        self.scroll_up(animate=False)

    def action_top(self) -> None:
        """To the top."""
        self.scroll_home(animate=False)

    def action_bottom(self) -> None:
        """To the bottom."""
        self.scroll_end(animate=False)
