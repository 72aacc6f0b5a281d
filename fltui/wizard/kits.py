"""The last step: the kits just written, their passwords, and a way to keep the passwords.

The passwords exist nowhere else, so they are shown once here and can be
saved with :class:`provision.PasswordsFile`, as ``flprovision
--passwords-file`` saves them: a new file only the owner can read. The
file offered is one that does not exist yet (``passwords.txt``, else
``passwords-2.txt``, ...), so a later run never suggests writing over an
earlier run's passwords; adding to an existing file is a separate, named
choice (*Append*). The engine's warnings (participants removed, settings
changed since earlier kits) and what a re-issue revoked are shown above
the table. :attr:`KitsStep.unsaved` tells the wizard whether leaving now
would lose passwords.
"""

from __future__ import annotations

from pathlib import Path

from textual import on
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.widgets import Button, DataTable, Input, Label, Static

from fltui.paths import typed_path
from provision import PasswordsFile, ProvisionError, ProvisionResult, WrittenKit
from provision.csr import colon_hex

PASSWORDS_FILE = "passwords.txt"


def free_passwords_path(workspace: Path) -> Path:
    """``passwords.txt`` in the workspace, or the first ``passwords-N.txt`` that does not exist."""
    path = workspace / PASSWORDS_FILE
    number = 2
    while path.exists():
        path = workspace / f"passwords-{number}.txt"
        number += 1
    return path


class KitsStep(Vertical):
    """Table of written kits with passwords; save them to a new 0600 file, or append."""

    def __init__(self, id: str | None = None) -> None:
        """Empty until :meth:`show`."""
        super().__init__(id=id)
        self._kits: tuple[WrittenKit, ...] = ()
        self.unsaved = False
        """Passwords are shown that no file holds yet: leaving would lose them."""

    def compose(self) -> ComposeResult:
        """Summary, warnings, table, the file to save to."""
        yield Static(id="kits-summary", markup=False)
        yield Static(id="kits-warnings", markup=False)
        yield DataTable(id="kits-table", cursor_type="row")
        yield Label("Save the password lines to a new file (created with mode 0600):")
        with Horizontal(classes="form-row"):
            yield Input(id="kits-file", compact=True, select_on_focus=False)
            yield Button("Save passwords", id="kits-save", variant="primary", compact=True)
            yield Button("Append", id="kits-append", compact=True)
        yield Static(id="kits-saved", markup=False)

    def on_mount(self) -> None:
        """The table's columns."""
        self.query_one(DataTable).add_columns("Kit", "Kind", "Password", "Send to")

    @property
    def passwords(self) -> tuple[WrittenKit, ...]:
        """The kits shown that have a password (a kit without a key has none)."""
        return tuple(kit for kit in self._kits if kit.password)

    def show(self, result: ProvisionResult, workspace: Path) -> None:
        """List what a run wrote, what it revoked, and what the lead should know about it."""
        table = self.query_one(DataTable)
        table.clear()
        for kit in result.written:
            password = kit.password or "none: no key inside, send it as it is"
            table.add_row(kit.zip_path.name, kit.kind, password, kit.email or "")
        self._kits = result.written
        summary = [f"Wrote {len(result.written)} kit(s) into {workspace / 'packages'}."]
        if result.skipped:
            summary.append(f"Kept (already issued): {', '.join(result.skipped)}.")
        if result.awaiting:
            summary.append(f"Awaiting certificate requests: {', '.join(result.awaiting)}.")
        summary.append(
            f"Project CA fingerprint (SHA-256): {colon_hex(result.ca_fingerprint)}. Tell each "
            "site's IT by phone: they compare it with what flprovision verify or assemble prints."
        )
        if self.passwords:
            summary.append("The passwords are shown only now.")
        self.query_one("#kits-summary", Static).update(" ".join(summary))
        notes = [f"⚠ {warning}" for warning in result.warnings]
        if result.crl is not None:
            notes += [
                f"⚠ revoked {each.name}'s certificate {each.serial}: load "
                f"{result.crl.path} into the server (load_crl) so the old kit stops working"
                for each in result.crl.revoked
            ]
        warnings = self.query_one("#kits-warnings", Static)
        warnings.update("\n".join(notes))
        warnings.display = bool(notes)
        self.unsaved = bool(self.passwords)
        self.query_one("#kits-file", Input).value = str(free_passwords_path(workspace))
        self._say("")
        self._offer_append()

    @on(Input.Changed, "#kits-file")
    def _offer_append(self) -> None:
        """Append is offered only for a file that exists; Save only for one that does not."""
        exists = self._exists()
        self.query_one("#kits-append", Button).disabled = not exists or not self.passwords
        self.query_one("#kits-save", Button).disabled = exists is not False or not self.passwords
        if exists:
            self._say(
                f"{self._path().name} exists (an earlier run's passwords?): Append adds these "
                "lines at its end, or type the name of a new file"
            )
        elif exists is False and not self.query_one("#kits-saved", Static).has_class("-done"):
            self._say("")

    def _path(self) -> Path:
        return typed_path(self.query_one("#kits-file", Input).value)

    def _exists(self) -> bool | None:
        """Whether the file named exists; None, said in the field, when the name cannot be
        looked up (a part over 255 characters, say): raised in an event handler, that
        would end the app and lose the passwords without asking."""
        path = self._path()
        try:
            return path.exists()
        except OSError as exc:
            self._say(f"{path}: cannot use this name ({exc.strerror}); type another", error=True)
            return None

    def _say(self, text: str, error: bool = False, done: bool = False) -> None:
        message = self.query_one("#kits-saved", Static)
        message.update(text)
        message.set_class(error, "-error")
        message.set_class(done, "-done")

    @on(Button.Pressed, "#kits-save")
    @on(Input.Submitted, "#kits-file")
    def _save_pressed(self) -> None:
        exists = self._exists()
        if exists:  # adding to a file is a choice of its own: Append
            self._say(
                f"{self._path()}: already exists; Append adds these lines at its end, or type "
                "the name of a new file",
                error=True,
            )
        elif exists is False:
            self.save()

    @on(Button.Pressed, "#kits-append")
    def _append_pressed(self) -> None:
        self.save(append=True)

    def save(self, append: bool = False) -> bool:
        """Write the password lines to the file named in the field; say how it went.

        ``append`` adds them to an existing file only its owner can read;
        otherwise the file must be new.
        """
        path = self._path()
        try:
            target = PasswordsFile.append_to(path) if append else PasswordsFile(path)
            target.write(self.passwords)
        except ProvisionError as exc:
            self._say(str(exc), error=True)
            return False
        self.unsaved = False
        verb = "added" if append else "saved"
        self._say(f"{verb} {len(self.passwords)} password line(s) to {path} (mode 0600)", done=True)
        self.query_one("#kits-save", Button).disabled = True
        self.query_one("#kits-append", Button).disabled = True
        return True
