"""The dashboard's command keys: pick a target or type a value, then send the command.

Each key opens a picker or a prompt (fast: ``enter`` takes the highlighted
choice) and hands the finished command line to the app, which asks before
anything is stopped. The command then runs in a worker of its own, so the
next key never cancels a reply still on its way. :meth:`CommandKeys.check_action` dims the keys that
cannot work now, so a member, a console without a connection, or a run
with nothing deployed shows them greyed out instead of failing afterwards.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from textual import work
from textual.binding import Binding, BindingType
from textual.screen import Screen

from fladmin.client import TIMEOUT_RULE, parse_timeout
from flcore import status as st
from fltui.screens.dialogs import ChoiceScreen, PromptScreen
from fltui.screens.help import HelpScreen
from fltui.screens.validation import ValidationScreen
from fltui.targets import Choice, target_choices
from fltui.widgets.clients import ClientsTable

if TYPE_CHECKING:
    from fltui.app import ConsoleApp

SERVER_ACTIONS = frozenset(
    {"upload", "deploy", "start", "abort", "shutdown", "run_number", "validate"}
)
SUPER_ACTIONS = SERVER_ACTIONS - {"validate"}
DIALOGS = "dialog"
"""Worker group of the pickers and prompts: one at a time."""
COMMANDS = "commands"
"""Worker group of commands on their way: never cancelled by another key."""


def check_positive_int(value: str) -> str | None:
    """A run number: a whole number from 1, in ASCII digits (``²`` is a digit to Python)."""
    text = value.strip()
    ok = text.isascii() and text.isdigit() and int(text) >= 1
    return None if ok else "a whole number from 1"


def check_seconds(value: str) -> str | None:
    """A timeout, as ``set_timeout`` accepts it."""
    return None if parse_timeout(value) is not None else TIMEOUT_RULE


class CommandKeys(Screen[None]):
    """Keys that send admin commands; the screen using it has a ``#clients`` table."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("question_mark", "help", "Help", key_display="?"),
        Binding("u", "upload", "Upload"),
        Binding("d", "deploy", "Deploy"),
        Binding("s", "start", "Start"),
        Binding("a", "abort", "Abort"),
        Binding("x", "shutdown", "Shutdown"),
        Binding("n", "run_number", "Run #"),
        Binding("v", "validate", "Validate"),
        Binding("t", "timeout", "Timeout"),
    ]
    ACTION_HELP: ClassVar[dict[str, str]] = {
        "upload": "upload an app from your transfer/ folder to the server",
        "deploy": "deploy an uploaded app to the server, all clients or the selected ones",
        "start": "start training on the server, all clients or the selected ones",
        "abort": "abort training (asks first, naming what stops)",
        "shutdown": "shut down clients or the server (asks first; warns while clients are up)",
        "run_number": "set the run number (creates run_N on the server)",
        "validate": "cross-site validation results of the run, as a matrix",
        "timeout": "how long commands wait for clients' replies",
        "command_line": "type any admin command, with completion (tab) and history (↑ ↓)",
        "filter": "filter the focused table or the logs",
        "provision": "the provisioning wizard: new project, or add sites and admins",
        "help": "this help",
        "app.quit": "quit",
    }

    @property
    def console(self) -> ConsoleApp:
        """The app, with its store and link."""
        return self.app  # type: ignore[return-value]

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """Dim what cannot run now: server commands while disconnected, changes for members,
        starting before anything is deployed, aborting when nothing trains."""
        if action not in SERVER_ACTIONS:
            return True
        console = self.console
        if not console.connected:
            return None
        if action in SUPER_ACTIONS and console.role != "super":
            return None
        store = console.store
        run = store.run
        clients = store.clients.values()
        if action in ("deploy", "start", "validate") and not run.run_number:
            return None
        if action == "start" and not (run.app or any(c.app for c in clients)):
            return None
        if action == "abort" and not (
            run.server_status in st.ACTIVE or any(c.status in st.ACTIVE for c in clients)
        ):
            return None
        if action == "run_number" and run.server_status in st.ACTIVE:
            return None
        return True

    def _targets(self) -> list[str]:
        return self.query_one("#clients", ClientsTable).targets()

    async def _pick(self, title: str, choices: list[Choice]) -> str | None:
        if not choices:
            return None
        return await self.app.push_screen_wait(ChoiceScreen(title, choices))

    async def _pick_target(self, verb: str, server: bool = True) -> str | None:
        choices = target_choices(self.console.store, self._targets(), server)
        return await self._pick(f"{verb} on", choices)

    async def _pick_app(self, title: str) -> str | None:
        apps = self.console.app_names()
        if not apps:
            self.console.problem(
                f"no apps in {self.console.transfer_dir}: copy an app folder there"
            )
            return None
        return await self._pick(title, [Choice(app, app) for app in apps])

    @work(group=COMMANDS, exit_on_error=False)
    async def send(self, line: str) -> None:
        """Run a finished command line in a worker of its own.

        The pickers are exclusive, one at a time; a command already on its
        way must not be, or the next key would cancel it and its reply would
        never be shown.
        """
        await self.console.run_command(line)

    @work(exclusive=True, group=DIALOGS, exit_on_error=False)
    async def action_upload(self) -> None:
        """Pick an app from transfer/ and upload it."""
        app = await self._pick_app("Upload which app from transfer/?")
        if app:
            self.send(f"upload_folder {app}")

    @work(exclusive=True, group=DIALOGS, exit_on_error=False)
    async def action_deploy(self) -> None:
        """Pick an app, then where to deploy it."""
        app = await self._pick_app("Deploy which app?")
        target = await self._pick_target(f"Deploy {app}") if app else None
        if app and target:
            self.send(f"deploy {app} {target}")

    @work(exclusive=True, group=DIALOGS, exit_on_error=False)
    async def action_start(self) -> None:
        """Pick where to start training."""
        target = await self._pick_target("Start training")
        if target:
            self.send(f"start {target}")

    @work(exclusive=True, group=DIALOGS, exit_on_error=False)
    async def action_abort(self) -> None:
        """Pick what to abort; the app asks for confirmation."""
        target = await self._pick_target("Abort training")
        if target:
            self.send(f"abort {target}")

    @work(exclusive=True, group=DIALOGS, exit_on_error=False)
    async def action_shutdown(self) -> None:
        """Pick what to shut down; the server's confirmation (and warning) follows."""
        target = await self._pick_target("Shut down")
        if target:
            self.send(f"shutdown {target}")

    @work(exclusive=True, group=DIALOGS, exit_on_error=False)
    async def action_run_number(self) -> None:
        """Ask for a run number and set it."""
        current = self.console.store.run.run_number
        hint = f"current run: {current}" if current else "no run set yet"
        number = await self.app.push_screen_wait(
            PromptScreen("Set the run number", hint, check_positive_int)
        )
        if number:
            self.send(f"set_run_number {number}")

    @work(exclusive=True, group=DIALOGS, exit_on_error=False)
    async def action_timeout(self) -> None:
        """Ask how long commands wait for clients."""
        current = f"{self.console.timeout:g}"
        seconds = await self.app.push_screen_wait(
            PromptScreen("Command timeout (seconds)", f"now {current}s", check_seconds, current)
        )
        if seconds:
            self.send(f"set_timeout {seconds}")

    @work(group=COMMANDS, exit_on_error=False)
    async def action_validate(self) -> None:
        """Run ``validate all`` and show the matrix."""
        outcome = await self.console.run_command("validate all", quiet=True)
        if outcome is not None:
            failure = "" if outcome.ok else outcome.text
            run = self.console.store.run.run_number
            await self.app.push_screen_wait(ValidationScreen(outcome.data, run, failure))

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
        self.app.push_screen(name)
