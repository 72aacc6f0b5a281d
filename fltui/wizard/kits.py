"""The last step: the kits just written, their passwords, and a way to keep the passwords.

The passwords exist nowhere else, so they are shown once here and can be
saved to a file that only the owner can read: it is created with mode 0600
from the start (``os.open``), never loosened and tightened afterwards, and
an existing file is never overwritten.
"""

from __future__ import annotations

import os
from pathlib import Path

from textual import on
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.widgets import Button, DataTable, Input, Label, Static

from provision import ProvisionResult

PASSWORDS_FILE = "passwords.txt"
PRIVATE_MODE = 0o600


def save_passwords(path: Path, lines: list[str]) -> None:
    """Write the password lines to a new file readable by its owner only.

    Raises:
        OSError: the file exists already (FileExistsError) or cannot be created.
    """
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_MODE)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.writelines(f"{line}\n" for line in lines)


class KitsStep(Vertical):
    """Table of written kits with passwords; save them to a 0600 file."""

    def __init__(self, id: str | None = None) -> None:
        """Empty until :meth:`show`."""
        super().__init__(id=id)
        self._lines: list[str] = []

    def compose(self) -> ComposeResult:
        """Summary, table, the file to save to."""
        yield Static(id="kits-summary")
        yield DataTable(id="kits-table", cursor_type="row")
        yield Label("Save the password lines to (created with mode 0600):")
        with Horizontal(classes="form-row"):
            yield Input(id="kits-file", compact=True)
            yield Button("Save passwords", id="kits-save", variant="primary", compact=True)
        yield Static(id="kits-saved")

    def on_mount(self) -> None:
        """The table's columns."""
        self.query_one(DataTable).add_columns("Kit", "Kind", "Password", "Send to")

    def show(self, result: ProvisionResult, workspace: Path) -> None:
        """List what a provisioning run wrote."""
        table = self.query_one(DataTable)
        table.clear()
        for kit in result.written:
            table.add_row(kit.zip_path.name, kit.kind, kit.password, kit.email or "")
        self._lines = [kit.password_line() for kit in result.written]
        summary = f"Wrote {len(result.written)} kit(s) into {workspace / 'packages'}."
        if result.skipped:
            summary += f" Kept (already issued): {', '.join(result.skipped)}."
        summary += " The passwords are shown only now."
        self.query_one("#kits-summary", Static).update(summary)
        self.query_one("#kits-file", Input).value = str(workspace / PASSWORDS_FILE)
        self.query_one("#kits-saved", Static).update("")

    @on(Button.Pressed, "#kits-save")
    @on(Input.Submitted, "#kits-file")
    def _save(self) -> None:
        path = Path(self.query_one("#kits-file", Input).value.strip()).expanduser()
        message = self.query_one("#kits-saved", Static)
        try:
            save_passwords(path, self._lines)
        except FileExistsError:
            message.update(f"{path} already exists: choose another file")
            message.add_class("-error")
            return
        except OSError as exc:
            message.update(f"{path}: cannot create it ({exc.strerror})")
            message.add_class("-error")
            return
        message.remove_class("-error")
        message.update(f"saved {len(self._lines)} password line(s) to {path} (mode 0600)")
