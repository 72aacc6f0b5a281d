"""The dashboard's small dialogs: confirm, pick one, type a value.

Danger is slow: :class:`ConfirmScreen` opens with *Cancel* focused, so
``enter`` right away does nothing harmful, it has no one-key yes, and keys
typed before it was shown (meant for what came before) never answer it: it
drops them and says so; the pickers of commands that stop something open
with nothing highlighted, so an ``enter`` typed ahead picks nothing (least
of all the server).
Safe things are fast: other pickers take ``enter`` on the highlighted choice.
What they show (client names and states, the server's warning, app folder
names) is never read as markup.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, ClassVar

from textual import events
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Input, OptionList, SelectionList, Static
from textual.widgets.option_list import Option

from fltui.targets import Choice

Check = Callable[[str], str | None]
QUESTION = "Are you sure (Y/N):"
"""The last line of the server's question as text (``fltui --cmd`` asks it)."""
QUESTION_SHOWN = "Are you sure?"


class ConfirmScreen(ModalScreen[bool]):
    """Names what will stop, shows the server's warning, and asks; Cancel is the default.

    ``then`` is called as the admin says yes, before the question closes:
    the keys typed after that wait for the reply (``ConsoleApp.run_command``).
    """

    AUTO_FOCUS = "#confirm-cancel"
    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "dismiss(False)", "Cancel")]

    def __init__(
        self,
        title: str,
        stops: Sequence[str],
        warning: str,
        verb: str,
        heading: str = "This stops:",
        then: Callable[[], None] | None = None,
    ) -> None:
        """``stops`` lists what ``heading`` announces; ``verb`` labels the button that does it."""
        super().__init__()
        self._title = title
        self._stops = list(stops)
        self._warning = warning
        self._verb = verb
        self._heading = heading
        self._then = then
        self._shown_at: float | None = None
        self.ignored = 0
        """Keys dropped for having been typed before the question showed."""
        self._question = Static(QUESTION_SHOWN, id="confirm-question", markup=False)

    @classmethod
    def asking(
        cls, line: str, question: Any, prompt: str, then: Callable[[], None] | None = None
    ) -> ConfirmScreen:
        """The server's question about ``line`` (its reply's ``confirm`` data), shown as it
        is; a question without that data (an older server) shows its text as the lines."""
        if isinstance(question, dict):
            lines = question.get("lines")
            texts = [str(x) for x in lines] if isinstance(lines, list) else []
            return cls(
                str(question.get("title", line)),
                texts,
                str(question.get("warning", "")),
                str(question.get("verb", "") or line.split()[0]),
                str(question.get("heading", "")),
                then,
            )
        lines = [ln for ln in prompt.splitlines() if ln.strip() and ln != QUESTION]
        return cls(line, lines, "", line.split()[0], "", then)

    def compose(self) -> ComposeResult:
        """Title, what stops, warning, question, buttons."""
        with Vertical(id="confirm-dialog", classes="dialog"):
            yield Static(self._title, classes="dialog-title", markup=False)
            if self._heading:
                yield Static(self._heading, classes="dialog-label", markup=False)
            stops = "\n".join(f"• {line}" for line in self._stops)
            yield Static(stops, id="confirm-stops", markup=False)
            if self._warning:
                yield Static(f"⚠ {self._warning}", id="confirm-warning", markup=False)
            yield self._question
            with Horizontal(classes="dialog-buttons"):
                yield Button("Cancel", id="confirm-cancel")
                yield Button(self._verb, id="confirm-ok", variant="error")

    def on_mount(self, event: events.Mount) -> None:
        """Note when the question was put, on the clock that stamps the keys."""
        self._shown_at = event.time

    def on_key(self, event: events.Key) -> None:
        """Drop a key typed before the question was shown: it was meant for something else.

        The server's question takes a moment to come, and the keys typed
        meanwhile (``⇥⏎`` after ``:abort client⏎``, a paste) wait for it in the
        app's queue; they would reach this dialog, ``tab`` moving the focus to
        the button that stops and ``enter`` pressing it. Stopping the key
        here, before it bubbles up to the app, keeps its bindings from acting
        on it; the dialog says how many it dropped, so the admin knows why
        the rest of a paste did nothing.
        """
        if self._shown_at is None or event.time < self._shown_at:
            event.prevent_default()
            event.stop()
            self.ignored += 1
            self._question.update(
                f"{QUESTION_SHOWN} · {self.ignored} key(s) typed before this question were ignored"
            )

    def on_button_pressed(self, event: Button.Pressed) -> None:
        """Answer with the button pressed."""
        yes = event.button.id == "confirm-ok"
        if yes and self._then is not None:
            self._then()
        self.dismiss(yes)


MOVES = {
    "up": "cursor_up",
    "down": "cursor_down",
    "home": "first",
    "end": "last",
    "pageup": "page_up",
    "pagedown": "page_down",
}
"""The picker's keys that move the highlight, and the option list's actions for them."""


class ChoiceScreen(ModalScreen[str | None]):
    """Pick one of a few choices (an app, a target).

    Its keys act as the app reads them (priority bindings), in the order
    they were typed: an ``enter`` typed ahead answers with the choice the
    keys before it highlighted, and ``then`` holds the keys after that
    ``enter`` for what follows (the next picker, or the command's reply).
    The option list's own bindings act only once a key has come back up to
    the app, when the keys behind it have gone to this picker too, to be
    lost as it closes.
    """

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "dismiss(None)", "Cancel", priority=True),
        Binding("enter", "choose", "Choose", priority=True),
        *(Binding(key, f"move('{to}')", show=False, priority=True) for key, to in MOVES.items()),
    ]

    def __init__(
        self,
        title: str,
        choices: Sequence[Choice],
        hint: str = "",
        careful: bool = False,
        then: Callable[[], None] | None = None,
    ) -> None:
        """Offer ``choices``: the first is highlighted, or none when ``careful``; ``then`` is
        called as a choice is made, before the picker closes (another dialog, or the command
        sent, follows: the keys after wait for it)."""
        super().__init__()
        self._title = title
        self._choices = list(choices)
        self._careful = careful
        self._then = then
        default = "↑ ↓ to pick, then enter" if careful else "enter to choose"
        self._hint = hint or f"{default} · esc to cancel"

    def compose(self) -> ComposeResult:
        """Title, options, hint."""
        with Vertical(classes="dialog"):
            yield Static(self._title, classes="dialog-title", markup=False)
            yield OptionList(
                *(Option(c.label, id=str(i)) for i, c in enumerate(self._choices)),
                id="choice-list",
                markup=False,
            )
            yield Static(self._hint, classes="dialog-hint")

    def on_mount(self) -> None:
        """A careful picker starts with nothing highlighted: ``enter`` alone picks nothing."""
        if self._careful:
            self.query_one("#choice-list", OptionList).highlighted = None

    def action_move(self, to: str) -> None:
        """Move the highlight (``to`` names the option list's action)."""
        getattr(self.query_one("#choice-list", OptionList), f"action_{to}")()

    def action_choose(self) -> None:
        """Answer with the highlighted choice (nothing highlighted: no answer)."""
        highlighted = self.query_one("#choice-list", OptionList).highlighted
        if highlighted is not None:
            self._choose(highlighted)

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        """A click answers too."""
        self._choose(event.option_index)

    def _choose(self, index: int) -> None:
        if not self.is_current:  # answered already (a click and a key, both read)
            return
        if self._then is not None:
            self._then()
        self.dismiss(self._choices[index].value)


class PromptScreen(ModalScreen[str | None]):
    """Type one value (a run number, a timeout); ``check`` explains what is wrong as you type."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "dismiss(None)", "Cancel")]

    def __init__(
        self,
        title: str,
        hint: str,
        check: Check,
        value: str = "",
        then: Callable[[], None] | None = None,
    ) -> None:
        """Ask for a value; ``check`` returns a message for a bad one, None for a good one;
        ``then`` is called as a good one is accepted, before the prompt closes (it is sent,
        and the keys after wait for the reply)."""
        super().__init__()
        self._title = title
        self._hint = hint
        self._check = check
        self._value = value
        self._then = then

    def compose(self) -> ComposeResult:
        """Title, input, hint or error."""
        with Vertical(classes="dialog"):
            yield Static(self._title, classes="dialog-title")
            yield Input(value=self._value, id="prompt-input")
            yield Static(self._hint, id="prompt-hint", classes="dialog-hint")

    def on_input_changed(self, event: Input.Changed) -> None:
        """Say what is wrong while typing."""
        problem = self._check(event.value) if event.value else None
        hint = self.query_one("#prompt-hint", Static)
        hint.update(problem or self._hint)
        hint.set_class(bool(problem), "-error")

    def on_input_submitted(self, event: Input.Submitted) -> None:
        """Accept a good value."""
        problem = self._check(event.value)
        if problem is None:
            if self._then is not None:
                self._then()
            self.dismiss(event.value.strip())
        else:
            hint = self.query_one("#prompt-hint", Static)
            hint.update(problem)
            hint.add_class("-error")


class ColumnsScreen(ModalScreen[None]):
    """``c``: tick the clients table's columns to show; the change applies at once."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape,enter,c", "dismiss(None)", "Close")]

    def __init__(self, columns: Sequence[tuple[str, str, bool]], toggle: Callable[[str], None]):
        """``columns`` are (key, label, shown); ``toggle`` hides or shows one by key."""
        super().__init__()
        self._columns = list(columns)
        self._toggle = toggle

    def compose(self) -> ComposeResult:
        """Title, the list of columns, hint."""
        with Vertical(classes="dialog", id="columns-dialog"):
            yield Static("Columns of the clients table", classes="dialog-title")
            yield SelectionList[str](
                *((label, key, shown) for key, label, shown in self._columns),
                id="columns-list",
            )
            yield Static(
                "space shows or hides · columns that do not fit the width stay out · "
                "esc, enter or c close",
                classes="dialog-hint",
            )

    def on_selection_list_selection_toggled(
        self, event: SelectionList.SelectionToggled[str]
    ) -> None:
        """Apply the change now, so the table behind shows it."""
        self._toggle(event.selection.value)
