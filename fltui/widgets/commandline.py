"""The ``:`` command line: any admin command or view, with inline completion and history.

The completion shows greyed after the cursor; ``tab`` (or ``→``) takes it.
``↑``/``↓`` walk through the commands typed before; ``esc`` closes the line.

``enter`` and ``esc`` are handled as the line reads its keys, in the order
they were typed, not as bindings (those act only once the key has gone up
to the app, after the keys typed behind it): a paste of
``:set_run_number 5⏎:deploy …⏎`` is two commands, never one line with both.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import ClassVar

from textual import events
from textual.binding import Binding, BindingType
from textual.message import Message
from textual.suggester import Suggester
from textual.widgets import Input

from fltui.completion import complete

Names = Callable[[], Sequence[str]]


class CommandSuggester(Suggester):
    """Suggests the completion of the line typed so far."""

    def __init__(self, instances: Names, apps: Names, server_apps: Names) -> None:
        """``instances``, ``apps`` (to upload) and ``server_apps`` (to deploy) are asked at
        each keystroke, so they are always current."""
        super().__init__(use_cache=False, case_sensitive=True)
        self._instances = instances
        self._apps = apps
        self._server_apps = server_apps

    async def get_suggestion(self, value: str) -> str | None:
        """The completed line, or None."""
        return complete(value, self._instances(), self._apps(), self._server_apps())


HISTORY_LINES = 500
"""Lines the history keeps: a console stays open for weeks, and up-arrow reaches back far enough."""


class CommandLine(Input):
    """An input with a history of submitted lines."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("tab", "cursor_right", "Complete", show=False),
        Binding("up", "history(-1)", "Previous", show=False),
        Binding("down", "history(1)", "Next", show=False),
    ]

    def __init__(self, suggester: Suggester, id: str | None = None) -> None:
        """An empty line with an empty history."""
        super().__init__(placeholder="admin command, e.g. check_status client", id=id)
        self.suggester = suggester
        self.history: list[str] = []
        self._position = 0

    class Entered(Message):
        """A line was entered (history kept, the line emptied); ``None`` when ``esc`` closed it."""

        def __init__(self, line: str | None) -> None:
            super().__init__()
            self.line = line

    async def _on_key(self, event: events.Key) -> None:
        """``enter`` and ``esc`` in typing order; the ``:`` of a line typed ahead is dropped."""
        if event.key in ("enter", "escape"):
            event.stop()
            event.prevent_default()
            line = self.value.strip() if event.key == "enter" else None
            if line is not None:
                self.remember(line)
            self.value = ""
            self.post_message(self.Entered(line))
        elif event.character == ":" and not self.value:
            event.stop()
            event.prevent_default()

    def remember(self, line: str) -> None:
        """Add a submitted line to the history (not twice in a row)."""
        if line and (not self.history or self.history[-1] != line):
            self.history.append(line)
            del self.history[:-HISTORY_LINES]
        self._position = len(self.history)

    def action_history(self, step: int) -> None:
        """Show the previous (-1) or next (+1) line of the history."""
        if not self.history:
            return
        self._position = min(max(self._position + step, 0), len(self.history))
        self.value = self.history[self._position] if self._position < len(self.history) else ""
        self.cursor_position = len(self.value)
