"""The command line's history: what up-arrow brings back, over a console kept open for weeks."""

from __future__ import annotations

import asyncio

from textual.app import App, ComposeResult
from textual.suggester import SuggestFromList

from fltui.widgets.commandline import HISTORY_LINES, CommandLine


class _OneLine(App[None]):
    def compose(self) -> ComposeResult:
        yield CommandLine(SuggestFromList([]))


def test_the_history_keeps_the_newest_lines_and_steps_through_them() -> None:
    async def scenario() -> None:
        app = _OneLine()
        async with app.run_test() as pilot:
            line = app.query_one(CommandLine)
            for number in range(HISTORY_LINES + 20):
                line.remember(f"show_run {number}")
            line.remember(f"show_run {HISTORY_LINES + 19}")
            assert len(line.history) == HISTORY_LINES
            assert line.history[0] == "show_run 20"
            line.focus()
            await pilot.press("up", "up")
            assert line.value == f"show_run {HISTORY_LINES + 18}"
            await pilot.press("down", "down")
            assert line.value == ""

    asyncio.run(scenario())
