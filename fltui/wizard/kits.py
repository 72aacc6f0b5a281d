"""The last step: the kits just written, their passwords, and a way to keep the passwords.

The passwords exist nowhere else, so they are shown once here and can be
saved with :class:`provision.PasswordsFile`, as ``flprovision
--passwords-file`` saves them: a new file only the owner can read. The
engine's warnings (participants removed, settings changed since earlier
kits) are shown above the table.
"""

from __future__ import annotations

from pathlib import Path

from textual import on
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.widgets import Button, DataTable, Input, Label, Static

from fltui.paths import typed_path
from provision import PasswordsFile, ProvisionError, ProvisionResult, WrittenKit

PASSWORDS_FILE = "passwords.txt"


class KitsStep(Vertical):
    """Table of written kits with passwords; save them to a 0600 file."""

    def __init__(self, id: str | None = None) -> None:
        """Empty until :meth:`show`."""
        super().__init__(id=id)
        self._kits: tuple[WrittenKit, ...] = ()

    def compose(self) -> ComposeResult:
        """Summary, warnings, table, the file to save to."""
        yield Static(id="kits-summary", markup=False)
        yield Static(id="kits-warnings", markup=False)
        yield DataTable(id="kits-table", cursor_type="row")
        yield Label("Save the password lines to (created with mode 0600):")
        with Horizontal(classes="form-row"):
            yield Input(id="kits-file", compact=True)
            yield Button("Save passwords", id="kits-save", variant="primary", compact=True)
        yield Static(id="kits-saved", markup=False)

    def on_mount(self) -> None:
        """The table's columns."""
        self.query_one(DataTable).add_columns("Kit", "Kind", "Password", "Send to")

    def show(self, result: ProvisionResult, workspace: Path) -> None:
        """List what a provisioning run wrote, and what the lead should know about it."""
        table = self.query_one(DataTable)
        table.clear()
        for kit in result.written:
            table.add_row(kit.zip_path.name, kit.kind, kit.password, kit.email or "")
        self._kits = result.written
        summary = f"Wrote {len(result.written)} kit(s) into {workspace / 'packages'}."
        if result.skipped:
            summary += f" Kept (already issued): {', '.join(result.skipped)}."
        summary += " The passwords are shown only now."
        self.query_one("#kits-summary", Static).update(summary)
        warnings = self.query_one("#kits-warnings", Static)
        warnings.update("\n".join(f"⚠ {warning}" for warning in result.warnings))
        warnings.display = bool(result.warnings)
        self.query_one("#kits-file", Input).value = str(workspace / PASSWORDS_FILE)
        self.query_one("#kits-saved", Static).update("")

    @on(Button.Pressed, "#kits-save")
    @on(Input.Submitted, "#kits-file")
    def _save(self) -> None:
        path = typed_path(self.query_one("#kits-file", Input).value)
        message = self.query_one("#kits-saved", Static)
        try:
            PasswordsFile(path).write(self._kits)
        except ProvisionError as exc:
            message.update(str(exc))
            message.add_class("-error")
            return
        message.remove_class("-error")
        message.update(f"saved {len(self._kits)} password line(s) to {path} (mode 0600)")
