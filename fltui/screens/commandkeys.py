"""The dashboard's command keys: pick a target or type a value, then ask the app to send it.

Each key opens a picker or a prompt and posts the finished command line up
to the app (:class:`~fltui.messages.RunCommand`), which asks before
anything is stopped and sends it in a worker of its own, so the next key
never cancels a reply still on its way. The dialogs open from workers, so
the keys typed after a command key are held until its dialog has the focus
(:meth:`CommandKeys.open_dialog`): they answer the dialog, never the
dashboard behind it. A dialog's answer holds them again (:class:`KeyHold`):
for the next dialog of a flow of two (``d``: the app, then where), or for
the reply to the command it sends (:meth:`CommandKeys.send`), and ``v``
holds them for the matrix the app shows once the server has worked it out
(:func:`show_holding`); ``l``, ``enter`` on a client and ``p`` hold them for
the screen they open too (:meth:`CommandKeys.open_screen`). The keys before
a command key have been handled when it acts: the app reads keys one at a
time (``ConsoleApp.hold_keys``). :meth:`CommandKeys.check_action` dims the
keys that cannot work now, so a member, a console without a connection, or
a run with nothing deployed shows them greyed out; pressing one says why in
the status line instead of doing nothing.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any, ClassVar, TypeVar

from textual import events
from textual.screen import Screen

from fladmin.client import TIMEOUT_RULE, parse_timeout
from flcore import status as st
from flcore.listingrecords import apps_page
from fltui.keyhold import KeyHold, show_holding
from fltui.messages import RunCommand, ShowValidation
from fltui.screens.dialogs import ChoiceScreen, PromptScreen
from fltui.screens.help import HelpScreen
from fltui.screens.listings import Ask
from fltui.state import ConsoleState
from fltui.store import Store
from fltui.targets import Choice, target_choices
from fltui.vocabulary import SUPER
from fltui.widgets.clients import ClientsTable
from fltui.workfaults import SaysWhenWorkFails

SERVER_ACTIONS = frozenset(
    {"upload", "deploy", "start", "abort", "shutdown", "run_number", "validate"}
)
SUPER_ACTIONS = SERVER_ACTIONS - {"validate"}
CAREFUL_ACTIONS = frozenset({"abort", "shutdown"})
"""Their pickers open with nothing highlighted: a typed-ahead ``enter`` picks nothing."""
MAX_APP_PAGES = 20
"""Pages of list_apps a deploy picker reads (50 apps each)."""
DIALOGS = "dialog"
"""Worker group of the pickers and prompts: one at a time."""

Names = Callable[[], Sequence[str]]
AnswerT = TypeVar("AnswerT")


def check_positive_int(value: str) -> str | None:
    """A run number: a whole number from 1, in ASCII digits (``²`` is a digit to Python)."""
    text = value.strip()
    ok = text.isascii() and text.isdigit() and int(text) >= 1
    return None if ok else "a whole number from 1"


def check_seconds(value: str) -> str | None:
    """A timeout, as ``set_timeout`` accepts it."""
    return None if parse_timeout(value) is not None else TIMEOUT_RULE


class CommandKeys(Screen[None], SaysWhenWorkFails):
    """Keys that send admin commands; the screen using it has a ``#clients`` table.

    The screen is handed the store and the app names it offers, and the app
    keeps :attr:`state` current; the bindings are the using screen's, in the
    order its footer shows them.
    """

    ACTION_HELP: ClassVar[dict[str, str]] = {
        "command_line": (
            "an admin command or a view (:clients :logs :runs :apps :admins), tab completes"
        ),
        "filter": "filter the focused table or the logs",
        "help": "this help",
        "app.quit": "quit",
        "upload": "upload an app from your transfer/ folder to the server",
        "deploy": "deploy an uploaded app to the server, all clients or the selected ones",
        "start": "start training on the server, all clients or the selected ones",
        "abort": "abort training (asks first, naming what stops)",
        "shutdown": "shut down clients or the server (asks first; warns while clients are up)",
        "run_number": "set the run number (creates run_N on the server)",
        "validate": "cross-site validation results of the run, as a matrix",
        "timeout": "how long commands wait for clients' replies",
        "provision": "the provisioning wizard: new project, or add sites and admins",
        "reconnect": "connect again now (after a shutdown, or without waiting)",
    }

    def __init__(self, store: Store, apps: Names, ask: Ask) -> None:
        """Keys over ``store``; ``apps`` names the admin's apps to upload, asked each time;
        ``ask`` runs a read-only command on the server (the apps to deploy are its)."""
        super().__init__()
        self.store = store
        self.apps = apps
        self.ask = ask
        self.state = ConsoleState()
        self._keys = KeyHold(None)

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """Dim what cannot run now: server commands while disconnected, changes for members,
        starting before anything is deployed, aborting when nothing trains."""
        return None if self.why_not(action) else True

    def why_not(self, action: str) -> str:
        """Why the key of ``action`` does nothing now ("" when it works)."""
        if action not in SERVER_ACTIONS:
            return ""
        state = self.state
        if not state.connection.up:
            return "not connected to the server: commands wait for the link"
        if action in SUPER_ACTIONS and state.role != SUPER:
            return f"{state.role or 'this'} role: read-only ({action} needs the {SUPER} role)"
        run = self.store.run
        clients = self.store.clients.values()
        if action in ("deploy", "start", "validate") and not run.run_number:
            return "no run number set yet: n sets one"
        if action == "start" and not (run.app or any(c.app for c in clients)):
            return "nothing is deployed yet: d deploys an app"
        if action == "abort" and not (
            run.server_status in st.ACTIVE or any(c.status in st.ACTIVE for c in clients)
        ):
            return "nothing is training: there is nothing to abort"
        if action == "run_number" and run.server_status in st.ACTIVE:
            return f"run {run.run_number} is training: abort it before setting another run"
        return ""

    def on_key(self, event: events.Key) -> None:
        """A dimmed key says why it does nothing (the binding itself does not run)."""
        for binding in self._bindings.key_to_bindings.get(event.key, ()):
            reason = self.why_not(binding.action)
            if reason:
                self.say(reason)

    def say(self, message: str) -> None:
        """Show a short message in the status line (the using screen draws it)."""
        self.notify(message, severity="warning", timeout=4, markup=False)

    def _targets(self) -> list[str]:
        return self.query_one("#clients", ClientsTable).targets()

    def open_dialog(self, dialog: Callable[[], Awaitable[None]], what: str) -> None:
        """Run ``dialog`` (``what`` names it) in a worker, holding the keys typed meanwhile.

        Called from the key's binding, as the key is read: every key after it
        waits until the dialog has the focus (:meth:`_answer`), or until the
        worker ends without one, and then goes where the focus is. A picker
        that another follows holds them again as it is answered (:meth:`_pick`).
        """
        keys = self._keys = KeyHold(self.app)

        async def holding() -> None:
            try:
                await dialog()
            finally:
                keys.release()

        self.run_worker(
            holding(), group=DIALOGS, exclusive=True, exit_on_error=False, description=what
        )

    def open_screen(self, screen: Screen[Any], what: str) -> None:
        """Show ``screen`` (``what`` names it), holding the keys typed meanwhile for it."""

        async def showing() -> None:
            await self._answer(screen)

        self.open_dialog(showing, what)

    async def _answer(self, dialog: Screen[AnswerT]) -> AnswerT:
        """Show ``dialog`` and wait for its answer; the held keys go to it."""
        return await show_holding(self.app, dialog, self._keys.release)

    async def _pick(self, title: str, choices: list[Choice], careful: bool = False) -> str | None:
        """Pick one of ``choices``: another dialog or a command follows a choice, and the keys
        typed after it wait for that."""
        if not choices:
            return None
        return await self._answer(
            ChoiceScreen(title, choices, careful=careful, then=self._keys.again)
        )

    async def _pick_target(self, verb: str, careful: bool = False) -> str | None:
        choices = target_choices(self.store, self._targets(), careful=careful)
        return await self._pick(f"{verb} on", choices, careful)

    async def _pick_app(self, title: str, apps: Sequence[str], none: str) -> str | None:
        if not apps:
            self.say(none)
            return None
        return await self._pick(title, [Choice(app, app) for app in apps])

    async def _server_apps(self) -> list[str] | None:
        """The apps uploaded to the server, every page of them (None: it did not answer,
        or refused, which the status line says: a key must not do nothing without a word)."""
        names: list[str] = []
        page, pages = 1, 1
        while page <= min(pages, MAX_APP_PAGES):
            line = "list_apps" if page == 1 else f"list_apps {page}"
            reply = await self.ask(line)
            if reply is None:
                return None
            if not reply.ok:
                self.say(f"{line}: {reply.text.strip()}")
                return None
            listed = apps_page(reply.data)
            names += [app.name for app in listed.lines]
            pages = listed.count.pages
            page += 1
        return names

    def send(self, line: str) -> None:
        """Hand a finished command line to the app; the keys typed from now on wait for its
        reply (``ConsoleApp.send``)."""
        self.post_message(RunCommand(line, KeyHold(self.app)))

    def action_upload(self) -> None:
        """Pick an app from transfer/ and upload it."""
        self.open_dialog(self._upload_dialog, "the upload dialog")

    async def _upload_dialog(self) -> None:
        none = f"no apps in {self.state.transfer_dir}: copy an app folder there"
        app = await self._pick_app("Upload which app from transfer/?", self.apps(), none)
        if app:
            self.send(f"upload_folder {app}")

    def action_deploy(self) -> None:
        """Pick an app the server has, then where to deploy it."""
        self.open_dialog(self._deploy_dialog, "the deploy dialog")

    async def _deploy_dialog(self) -> None:
        apps = await self._server_apps()
        if apps is None:
            return
        none = "no apps on the server yet: u uploads one from your transfer/ folder"
        app = await self._pick_app("Deploy which app (on the server)?", apps, none)
        target = await self._pick_target(f"Deploy {app}") if app else None
        if app and target:
            self.send(f"deploy {app} {target}")

    def action_start(self) -> None:
        """Pick where to start training."""
        self.open_dialog(self._start_dialog, "the start dialog")

    async def _start_dialog(self) -> None:
        target = await self._pick_target("Start training")
        if target:
            self.send(f"start {target}")

    def action_abort(self) -> None:
        """Pick what to abort (nothing is preselected); the app asks for confirmation."""
        self.open_dialog(self._abort_dialog, "the abort dialog")

    async def _abort_dialog(self) -> None:
        target = await self._pick_target("Abort training", careful=True)
        if target:
            self.send(f"abort {target}")

    def action_shutdown(self) -> None:
        """Pick what to shut down (nothing is preselected); a confirmation follows."""
        self.open_dialog(self._shutdown_dialog, "the shutdown dialog")

    async def _shutdown_dialog(self) -> None:
        target = await self._pick_target("Shut down", careful=True)
        if target:
            self.send(f"shutdown {target}")

    def action_run_number(self) -> None:
        """Ask for a run number and set it."""
        self.open_dialog(self._run_number_dialog, "the run number dialog")

    async def _run_number_dialog(self) -> None:
        current = self.store.run.run_number
        hint = f"current run: {current}" if current else "no run set yet"
        number = await self._answer(
            PromptScreen("Set the run number", hint, check_positive_int, then=self._keys.again)
        )
        if number:
            self.send(f"set_run_number {number}")

    def action_timeout(self) -> None:
        """Ask how long commands wait for clients."""
        self.open_dialog(self._timeout_dialog, "the timeout dialog")

    async def _timeout_dialog(self) -> None:
        current = f"{self.state.timeout:g}"
        seconds = await self._answer(
            PromptScreen(
                "Command timeout (seconds)",
                f"now {current}s",
                check_seconds,
                current,
                then=self._keys.again,
            )
        )
        if seconds:
            self.send(f"set_timeout {seconds}")

    def action_validate(self) -> None:
        """Ask the app for the validation matrix; the keys typed meanwhile wait for it (the
        server works it out first)."""
        self.post_message(ShowValidation(KeyHold(self.app).release))

    def key_help(self) -> list[tuple[str, str, str]]:
        """Key, action and what it does, for every documented key of this screen."""
        return [
            (binding.key_display or binding.key, binding.action, self.ACTION_HELP[binding.action])
            for bindings in self._bindings.key_to_bindings.values()
            for binding in bindings
            if binding.action in self.ACTION_HELP
        ]

    def action_help(self) -> None:
        """Show every key of this screen.

        A screen's keys never change, so its help screen is built once and
        kept installed: composing it again on every ``?`` costs ~0.1 s of
        the console's CPU, the whole budget of a key.
        """
        name = f"help-{self.id or id(self)}"
        if not self.app.is_screen_installed(name):
            keys = [(key, text) for key, _, text in self.key_help()]
            self.app.install_screen(HelpScreen(keys), name)
        self.open_screen(self.app.get_screen(name), "the help")
