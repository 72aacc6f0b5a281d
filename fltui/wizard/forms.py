"""Labelled fields for the wizard's steps: an input per key, or a picker for fixed choices.

A form knows nothing of project.yml: it shows text, reports each edit as
a :class:`Form.Edited` message, and gives back its values as text. The
wizard screen turns them into the draft and checks them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from textual.app import ComposeResult
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


class Form(Vertical):
    """A column of labelled fields whose widget ids are ``<prefix>-<key>``."""

    class Edited(Message):
        """A field of the form changed."""

        def __init__(self, form: Form, key: str) -> None:
            super().__init__()
            self.form = form
            self.key = key

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
                    yield Select(
                        [(choice, choice) for choice in spec.choices],
                        allow_blank=False,
                        id=self._field_id(spec.key),
                        compact=True,
                    )
                else:
                    yield Input(
                        placeholder=spec.placeholder, id=self._field_id(spec.key), compact=True
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

    def _edited(self, widget_id: str | None) -> None:
        if widget_id:
            self.post_message(self.Edited(self, widget_id.removeprefix(f"{self.prefix}-")))
