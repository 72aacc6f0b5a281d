"""Labelled fields for the wizard's steps: an input per key, or a picker for fixed choices.

A form knows nothing of project.yml: it shows text, reports each edit as
a :class:`Form.Edited` message, and gives back its values as text. The
wizard screen turns them into the draft and checks them.

Keys behave the same in every field, as the hint under each form says:
``enter`` submits the form (:class:`Form.Submitted`), on a picker too;
``space`` or the arrows open a picker's list. Focusing a field puts the
cursor at its end and selects nothing, so the first key typed adds to
what is there instead of erasing it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.widgets import Input, Label, Select

from fltui.wizard.draft import Form as Values


@dataclass(frozen=True)
class Field:
    """One key of a form: its label, a placeholder, and the choices if it is a picker."""

    key: str
    label: str
    placeholder: str = ""
    choices: tuple[str, ...] = ()


class Picker(Select[str]):
    """A Select whose ``enter`` submits the form, like an input's; space and arrows open it."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("down,space,up", "show_overlay", "Open", show=False),
        Binding("enter", "submit", "Submit", show=False),
    ]

    class Submitted(Message):
        """``enter`` was pressed on the closed picker."""

    def action_submit(self) -> None:
        """Submit the form this picker is in."""
        self.post_message(self.Submitted())


class Form(Vertical):
    """A column of labelled fields whose widget ids are ``<prefix>-<key>``."""

    class Edited(Message):
        """A field of the form changed."""

        def __init__(self, form: Form, key: str) -> None:
            super().__init__()
            self.form = form
            self.key = key

    class Submitted(Message):
        """``enter`` in a field of the form."""

        def __init__(self, form: Form) -> None:
            super().__init__()
            self.form = form

    def __init__(self, prefix: str, fields: Sequence[Field], id: str | None = None) -> None:
        """Fields in order; values come with :meth:`load`."""
        super().__init__(id=id, classes="form")
        self.prefix = prefix
        self.fields = list(fields)

    def compose(self) -> ComposeResult:
        """One row per field."""
        for spec in self.fields:
            with Horizontal(classes="form-row"):
                yield Label(spec.label, classes="form-label")
                if spec.choices:
                    yield Picker(
                        [(choice, choice) for choice in spec.choices],
                        allow_blank=False,
                        id=self._field_id(spec.key),
                        compact=True,
                    )
                else:
                    yield Input(
                        placeholder=spec.placeholder,
                        id=self._field_id(spec.key),
                        compact=True,
                        select_on_focus=False,
                    )

    def _field_id(self, key: str) -> str:
        return f"{self.prefix}-{key}"

    def load(self, values: Values) -> None:
        """Show these values (they come back as edits, which changes nothing)."""
        for spec in self.fields:
            value = values.get(spec.key, "")
            if spec.choices:
                select: Select[str] = self.query_one(f"#{self._field_id(spec.key)}", Select)
                select.value = value if value in spec.choices else spec.choices[0]
            else:
                self.query_one(f"#{self._field_id(spec.key)}", Input).value = value

    def values(self) -> Values:
        """Every field's text."""
        out: Values = {}
        for spec in self.fields:
            if spec.choices:
                value = self.query_one(f"#{self._field_id(spec.key)}", Select).value
                out[spec.key] = value if isinstance(value, str) else ""
            else:
                out[spec.key] = self.query_one(f"#{self._field_id(spec.key)}", Input).value
        return out

    def set_locked(self, locked: bool) -> None:
        """Make the fields read-only (what issued kits embed cannot change here)."""
        for spec in self.fields:
            self.query_one(f"#{self._field_id(spec.key)}").disabled = locked

    def on_input_changed(self, event: Input.Changed) -> None:
        """Report an edit."""
        self._edited(event.input.id)

    def on_select_changed(self, event: Select.Changed) -> None:
        """Report a choice."""
        self._edited(event.select.id)

    @on(Input.Submitted)
    @on(Picker.Submitted)
    def _submitted(self, event: Message) -> None:
        event.stop()
        self.post_message(self.Submitted(self))

    def _edited(self, widget_id: str | None) -> None:
        if widget_id:
            self.post_message(self.Edited(self, widget_id.removeprefix(f"{self.prefix}-")))
