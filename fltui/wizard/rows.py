"""The clients and admins steps: a table of rows and a form to add, edit or remove one.

``enter`` in the form adds the row (or saves the one being edited), on a
picker too; ``enter`` on a table row loads it into the form. Rows that
already have a kit are shown but locked: changing what a certificate names
needs a new kit, which *Re-issue* gives (and revokes the old one). A row
whose site makes its own key gets its kit by *Sign request*. What was typed
is shown as text, never read as markup (an org may hold ``[/``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.widgets import Button, DataTable, Input, Static

from fltui.wizard.draft import KEY_BY_SITE
from fltui.wizard.draft import Form as Values
from fltui.wizard.forms import Field, Form

Check = Callable[[Values, int], str | None]
KitState = Callable[[Values], str]
"""What the Kit column says of a row: issued, revoked, new, awaits request."""
LOCKED = ("issued", "revoked")
FORM_HINT = "enter adds the entry (saves it when editing) · space or ↓ opens a choice"


class RowsEditor(Vertical):
    """Edits a list of rows in place (the draft's ``clients`` or ``admins``)."""

    class Changed(Message):
        """The list changed."""

    class KitWanted(Message):
        """Re-issue the kit of the row being edited, or sign its site's request."""

        def __init__(self, editor: RowsEditor, action: str, row: Values) -> None:
            super().__init__()
            self.editor = editor
            self.action = action
            """``reissue`` or ``sign``."""
            self.row = row

    def __init__(
        self,
        kind: str,
        fields: Sequence[Field],
        check: Check,
        kit_state: KitState,
        blank: Callable[[], Values],
        id: str | None = None,
    ) -> None:
        """``check`` validates a form at an index; ``kit_state`` tells locked rows."""
        super().__init__(id=id, classes="rows")
        self.kind = kind
        self.fields = list(fields)
        self.rows: list[Values] = []
        self._check = check
        self._kit_state = kit_state
        self._blank = blank
        self.editing: int | None = None

    def compose(self) -> ComposeResult:
        """Table, form, hint, message, buttons."""
        yield DataTable(id=f"{self.kind}-table", cursor_type="row")
        yield Form(self.kind, self.fields, id=f"{self.kind}-form")
        yield Static(FORM_HINT, classes="dialog-hint")
        yield Static(id=f"{self.kind}-problem", classes="wizard-problem", markup=False)
        with Horizontal(classes="dialog-buttons"):
            yield Button("Add", id=f"{self.kind}-add", variant="primary", compact=True)
            yield Button("Save", id=f"{self.kind}-save", compact=True)
            yield Button("Remove", id=f"{self.kind}-remove", variant="error", compact=True)
            yield Button("New", id=f"{self.kind}-new", compact=True)
            yield Button("Re-issue kit", id=f"{self.kind}-reissue", compact=True)
            yield Button("Sign request", id=f"{self.kind}-sign", compact=True)

    def on_mount(self) -> None:
        """Columns: the fields, then whether a kit exists."""
        table = self.query_one(DataTable)
        for spec in self.fields:
            table.add_column(spec.label, key=spec.key)
        table.add_column("Kit", key="kit")
        self._form().load(self._blank())

    def _form(self) -> Form:
        return self.query_one(Form)

    def reload(self, rows: list[Values]) -> None:
        """Edit this list (the draft's own, changed in place)."""
        self.rows = rows
        self.editing = None
        self._fill()
        self._form().load(self._blank())
        self._validate()

    def show_kits(self) -> None:
        """Redraw who has a kit: the workspace changed, and with it who does."""
        self._fill()
        self._validate()

    def _fill(self) -> None:
        table = self.query_one(DataTable)
        table.clear()
        for index, row in enumerate(self.rows):
            cells = (Text(row.get(spec.key, "")) for spec in self.fields)
            table.add_row(*cells, self._kit_state(row), key=str(index))

    def _issued(self, row: Values) -> bool:
        return self._kit_state(row) in LOCKED

    @property
    def pending(self) -> bool:
        """Whether the form holds something not yet in the list."""
        values = self._form().values()
        if self.editing is not None:
            return values != self.rows[self.editing]
        return any(value.strip() for value in values.values()) and values != self._blank()

    def problem(self) -> str | None:
        """What is wrong with the form, or None."""
        if not self.pending:
            return None
        index = self.editing if self.editing is not None else len(self.rows)
        return self._check(self._form().values(), index)

    def _validate(self) -> None:
        problem = self.problem()
        locked = self.editing is not None and self._issued(self.rows[self.editing])
        text = problem or ""
        site_key = self.editing is not None and self.rows[self.editing].get("csr") == KEY_BY_SITE
        if locked:
            text = "this participant has a kit: it cannot be changed or removed here; " + (
                "a lost key? Sign request signs a new one and revokes the old certificate"
                if site_key
                else "a lost kit or password? Re-issue gives a new kit and revokes the old one"
            )
        message = self.query_one(f"#{self.kind}-problem", Static)
        message.update(text)
        message.set_class(bool(problem), "-error")
        self.query_one(f"#{self.kind}-add", Button).disabled = (
            self.editing is not None or not self.pending or problem is not None
        )
        self.query_one(f"#{self.kind}-save", Button).disabled = (
            self.editing is None or locked or not self.pending or problem is not None
        )
        self.query_one(f"#{self.kind}-remove", Button).disabled = self.editing is None or locked
        state = "" if self.editing is None else self._kit_state(self.rows[self.editing])
        self.query_one(f"#{self.kind}-reissue", Button).display = locked and not site_key
        self.query_one(f"#{self.kind}-sign", Button).display = site_key and (
            state in LOCKED or (state == "awaits request" and not self.pending)
        )
        self._form().set_locked(locked)

    @on(Form.Edited)
    def _edited(self) -> None:
        self._validate()

    @on(Form.Submitted)
    def _submitted(self, event: Form.Submitted) -> None:
        event.stop()
        if self.editing is None:
            self.add_row()
        else:
            self.save_row()

    @on(DataTable.RowSelected)
    def _row_selected(self, event: DataTable.RowSelected) -> None:
        self.editing = int(event.row_key.value or 0)
        self._form().load(self.rows[self.editing])
        self._validate()
        self._form().query(Input).first().focus()

    @on(Button.Pressed)
    def _pressed(self, event: Button.Pressed) -> None:
        action = (event.button.id or "").removeprefix(f"{self.kind}-")
        event.stop()
        if action in ("reissue", "sign"):
            if self.editing is not None:
                self.post_message(self.KitWanted(self, action, self.rows[self.editing]))
            return
        {
            "add": self.add_row,
            "save": self.save_row,
            "remove": self.remove_row,
            "new": self.new_row,
        }[action]()

    def add_row(self) -> None:
        """Append the form as a new row, if it is valid."""
        if self.editing is None and self.pending and self.problem() is None:
            self.rows.append(self._form().values())
            self._changed()

    def save_row(self) -> None:
        """Replace the row being edited, if the form is valid."""
        index = self.editing
        if index is not None and not self._issued(self.rows[index]) and self.problem() is None:
            self.rows[index] = self._form().values()
            self._changed()

    def remove_row(self) -> None:
        """Remove the row being edited (not one that has a kit)."""
        index = self.editing
        if index is not None and not self._issued(self.rows[index]):
            del self.rows[index]
            self._changed()

    def new_row(self) -> None:
        """Clear the form for a new row."""
        self.editing = None
        self._form().load(self._blank())
        self._validate()
        self._form().query(Input).first().focus()

    def _changed(self) -> None:
        self.editing = None
        self._fill()
        self._form().load(self._blank())
        self._validate()
        self._form().query(Input).first().focus()
        self.post_message(self.Changed())
