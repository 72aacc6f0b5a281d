"""Keys held for what a key opens or sends: the keys typed after it wait, in order.

The console reads keys one at a time (``ConsoleApp.hold_keys``); a key that
opens a dialog, or a line that sends a command, holds the keys typed after
it until what it opened has the focus, or its reply has been shown, so
that they act there and not on the dashboard behind it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, TypeVar, runtime_checkable

from textual.app import App
from textual.screen import Screen

AnswerT = TypeVar("AnswerT")


@runtime_checkable
class HoldsKeys(Protocol):
    """An app that can hold the keys it reads until a dialog is ready for them (the console)."""

    def hold_keys(self) -> Callable[[], None]:
        """Hold the keys read from now on; call the result to hand them on."""


def no_keys_held() -> None:
    """The release of an app that cannot hold keys: nothing to hand on."""


class KeyHold:
    """The keys held for one command key or command, from the key to its reply.

    The key holds the keys read after it, and its dialog takes them once it
    has the focus. A dialog answered so that something follows (``d``'s app
    picker, then its target picker; a picker or prompt whose answer is sent;
    a confirmation's yes) holds them again as its answer is read: the keys
    typed after that answer wait for the next dialog, or for the command's
    reply, instead of reaching the dashboard in between, as hotkeys.
    """

    def __init__(self, app: object) -> None:
        """Hold the keys ``app`` reads from now on (nothing, for an app that cannot)."""
        self._app = app
        self._release: Callable[[], None] = no_keys_held
        self.again()

    def again(self) -> None:
        """Hold the keys read from now on: a dialog was answered, the next dialog or the
        reply is on its way (a hold still on is handed over to this one)."""
        app = self._app
        before = self._release
        self._release = app.hold_keys() if isinstance(app, HoldsKeys) else no_keys_held
        before()

    def release(self) -> None:
        """Hand the held keys on, to where the focus is (a dialog, once it has it); a second
        release does nothing."""
        self._release()


async def show_holding(
    app: App[Any], screen: Screen[AnswerT], release: Callable[[], None]
) -> AnswerT:
    """Show ``screen`` and wait for it to be dismissed; ``release`` hands it the keys held
    for it once it has the focus (a screen focuses its widget as it resumes, before the
    callbacks queued after). Must run in a worker."""
    answer = app.push_screen(screen, wait_for_dismiss=True)
    screen.call_later(release)
    return await answer
