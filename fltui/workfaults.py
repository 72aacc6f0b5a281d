"""What the console says when its own code fails in a worker.

The console's workers run with ``exit_on_error=False`` so that one failed
view does not take the whole console down; Textual then drops the error
without a word, and the admin is left with a view that never loads or a
dialog that never opens. Every app and screen that starts workers mixes in
:class:`SaysWhenWorkFails`: a failed worker becomes an error notification
and a line in the logs pane that says what was being done, what the error
said and where in the console it happened, so that it can be reported.
"""

from __future__ import annotations

import traceback
from pathlib import Path
from typing import Protocol, runtime_checkable

from textual.dom import DOMNode
from textual.worker import Worker, WorkerState

from flcore.feed import clip, printable

FAULT_CHARS = 300
"""What an error's own text may take of the line: it is the console's, not a peer's, but it
may quote one."""


@runtime_checkable
class ReportsProblems(Protocol):
    """An app that shows a problem as a notification and a log line (the console)."""

    def problem(self, message: str) -> None:
        """Say that something went wrong on the console's side."""


def console_fault(error: BaseException) -> str:
    """An error in the console's own code as one line: what it said and the file and line
    where it was raised (a report needs the place; the admin needs no class name)."""
    said = " ".join(printable(str(error)).split()) or "no detail"
    frames = traceback.extract_tb(error.__traceback__)
    where = f" (at {Path(frames[-1].filename).name} line {frames[-1].lineno})" if frames else ""
    return clip(said, FAULT_CHARS) + where


class SaysWhenWorkFails(DOMNode):
    """Mixed into the console's app and screens: a worker that fails says so.

    Name it after the app's or screen's own base: Textual takes CSS from the first base that
    is a node only, so a mixin first would cut the screen off its ``Screen`` styles.
    """

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        """A worker ended on an error: report it (Textual would say nothing)."""
        worker = event.worker
        if event.state is not WorkerState.ERROR or worker.error is None:
            return
        message = (
            f"{worker.description} stopped on an error in the console: "
            f"{console_fault(worker.error)}"
        )
        if isinstance(self.app, ReportsProblems):
            self.app.problem(message)
        else:
            self.app.notify(message, severity="error", timeout=12, markup=False)
