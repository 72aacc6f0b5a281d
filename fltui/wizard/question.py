"""The wizard's one dialog: a question with a few answers, and a field when one is needed.

It asks before the wizard leaves passwords unsaved, before it re-issues a
kit (which revokes the old one), and for the request file to sign. The
safe answer is focused first and is what ``escape`` gives, so a key
pressed by habit never loses anything. What it shows is text, never markup.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, Static
from textual.widgets.button import ButtonVariant


@dataclass(frozen=True)
class Answer:
    """One button of a question."""

    key: str
    label: str
    variant: ButtonVariant = "default"


@dataclass(frozen=True)
class Reply:
    """The answer chosen, and what the field held."""

    key: str
    text: str = ""


class Question(ModalScreen[Reply]):
    """Title, explanation, an optional field, and buttons; the first answer is the safe one."""

    DEFAULT_CSS = """
    Question {
        align: center middle;
    }
    Question > #question-dialog {
        width: 84;
        max-width: 100%;
        height: auto;
        border: thick $error 60%;
        background: $surface;
        padding: 1 2;
    }
    Question #question-title {
        text-style: bold;
        margin-bottom: 1;
    }
    Question #question-field {
        margin-top: 1;
    }
    Question #question-buttons {
        height: auto;
        margin-top: 1;
        align-horizontal: right;
    }
    Question #question-buttons Button {
        margin-left: 2;
    }
    """
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "safe", "Cancel"),
        Binding("left", "app.focus_previous", show=False),
        Binding("right", "app.focus_next", show=False),
    ]

    def __init__(
        self,
        title: str,
        text: str,
        answers: Sequence[Answer],
        field: tuple[str, str] | None = None,
    ) -> None:
        """Ask; ``field`` is (label, initial text) of a line to fill in, if any."""
        super().__init__()
        self._title = title
        self._text = text
        self._answers = list(answers)
        self._field = field

    def compose(self) -> ComposeResult:
        """The dialog."""
        with Vertical(id="question-dialog"):
            yield Static(self._title, id="question-title", markup=False)
            yield Static(self._text, id="question-text", markup=False)
            if self._field is not None:
                label, value = self._field
                yield Label(label, markup=False)
                yield Input(value, id="question-field", select_on_focus=False)
            with Horizontal(id="question-buttons"):
                for answer in self._answers:
                    yield Button(
                        answer.label,
                        id=f"question-{answer.key}",
                        variant=answer.variant,
                        compact=True,
                    )

    def on_mount(self) -> None:
        """The field first when there is one, else the safe answer."""
        first = "#question-field" if self._field is not None else f"#question-{self._safe}"
        self.query_one(first).focus()

    @property
    def _safe(self) -> str:
        return self._answers[0].key

    def _text_now(self) -> str:
        return self.query_one("#question-field", Input).value if self._field is not None else ""

    def on_button_pressed(self, event: Button.Pressed) -> None:
        """Answer with the button pressed."""
        self.dismiss(Reply((event.button.id or "").removeprefix("question-"), self._text_now()))

    def on_input_submitted(self) -> None:
        """``enter`` in the field picks the last answer (the one the field is for)."""
        self.dismiss(Reply(self._answers[-1].key, self._text_now()))

    def action_safe(self) -> None:
        """``escape``: the safe answer."""
        self.dismiss(Reply(self._safe, self._text_now()))
