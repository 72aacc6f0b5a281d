"""The provisioning wizard: project, server, clients, admins, settings, review, kits.

Every edit goes into the :class:`~fltui.wizard.draft.Draft` and is checked
at once with flprovision's own parse functions; the message under the form
is the one flprovision would print, and *Next* stays disabled until the
step is valid. The review shows the project.yml that will be written and
which kits are new; provisioning runs the same engine as flprovision, in a
thread, and only participants without a kit get one. While it runs the
wizard cannot be left: its result holds the only copy of the passwords,
and leaving the Kits step while they are not saved asks first, offering to
save them. A participant's kit can be re-issued (its old certificate is
revoked) and a site that makes its own key gets its kit by signing its
request, both from its row. Placeholders describe a field and never look
like a value; ``enter`` in a step's form goes on as its hint says; a key
that would do nothing is not offered in the footer. Whatever the user typed
or a file holds is shown as text, never as markup.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import ClassVar

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import Screen
from textual.widgets import Button, ContentSwitcher, Footer, Input, Label, Static

from flcore.identity import KIND_ADMIN, KIND_CLIENT, ROLES
from flcore.schema import ConfigError
from fltui.paths import typed_path
from fltui.wizard.draft import KEY_MAKERS, Draft
from fltui.wizard.forms import Field, Form
from fltui.wizard.kits import KitsStep
from fltui.wizard.question import Answer, Question, Reply
from fltui.wizard.rows import RowsEditor
from fltui.workfaults import SaysWhenWorkFails
from provision import ProvisionError, ProvisionResult, project_to_yaml
from provision.project import KEY_TYPES

STEPS = ("project", "server", "clients", "admins", "settings", "review", "kits")
TITLES = ("Project", "Server", "Clients", "Admins", "Settings", "Review", "Kits")
SERVER_FIELDS = (
    Field("name", "Kit name", "required: the server kit's file name"),
    Field("host", "Host", "required: DNS name or IP address that clients and admins dial"),
    Field("fed_port", "Federation port", "required: port the clients connect to"),
    Field("admin_port", "Admin port", "required: port the consoles connect to"),
    Field("org", "Organisation", "required: who runs the server (certificate O)"),
)
KEY_MAKER = Field("csr", "Key made by", choices=KEY_MAKERS)
"""lead: the key is in the zip kit; site: the site sends a certificate request."""
CLIENT_FIELDS = (
    Field("name", "Name", "required: the site's kit name and identity"),
    Field("org", "Organisation", "required: the hospital or institute (certificate O)"),
    Field("email", "Email", "optional: where the kit's password goes"),
    KEY_MAKER,
)
ADMIN_FIELDS = (
    Field("email", "Email", "required: the admin's login"),
    Field("org", "Organisation", "required: the admin's organisation (certificate O)"),
    Field("role", "Role", choices=ROLES),
    KEY_MAKER,
)
SETTINGS_FIELDS = (
    Field("heart_beat_timeout", "Heartbeat timeout (s)"),
    Field("heartbeat_interval", "Heartbeat interval (s)"),
    Field("retry_window", "Retry window (s)"),
    Field("cert_validity_days", "Certificate days"),
    Field("key_type", "Key type", choices=KEY_TYPES),
    Field("install_prefix", "Install prefix"),
    Field("workspace_base", "Workspace base"),
)


class WizardScreen(Screen[None], SaysWhenWorkFails):
    """Step by step to a project.yml and its kits."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("ctrl+n", "next", "Next"),
        Binding("ctrl+b", "back", "Back"),
        Binding("escape", "close", "Close"),
    ]
    STEP_HINT = "enter or ^n: next step · ^b: back · esc: close"

    def __init__(self, workspace: Path) -> None:
        """Start a new project in ``workspace``, or open the one saved there."""
        super().__init__()
        self.draft = Draft.new(workspace)
        self.step = 0
        self.provisioning = False
        """A run is under way: the screen stays until it shows the passwords."""
        self._open_error = ""
        if self.draft.folder.project_file:
            try:
                self.draft = Draft.open(workspace)
            except (ConfigError, ProvisionError) as exc:
                self._open_error = str(exc)

    def compose(self) -> ComposeResult:
        """Steps indicator, the steps, the message line, the buttons."""
        yield Static(id="wizard-steps")
        with ContentSwitcher(initial="step-project", id="wizard-body"):
            with VerticalScroll(id="step-project", classes="step"):
                yield Label("Provisioning workspace (CA, packages/, project.yml)")
                with Horizontal(classes="form-row"):
                    yield Input(id="project-workspace", compact=True, select_on_focus=False)
                    yield Button("Open", id="project-open", compact=True)
                yield Static(id="project-workspace-hint", classes="dialog-hint", markup=False)
                yield Form(
                    "project",
                    [Field("name", "Project name", "required: letters, digits, '.', '_' or '-'")],
                )
                yield Static(self.STEP_HINT, classes="dialog-hint")
            with VerticalScroll(id="step-server", classes="step"):
                yield Form("server", SERVER_FIELDS)
                yield Static(self.STEP_HINT, classes="dialog-hint")
                yield Static(id="server-note", classes="dialog-hint")
            yield RowsEditor(
                "clients",
                CLIENT_FIELDS,
                self.draft_check_client,
                lambda row: self.draft.kit_state(KIND_CLIENT, row),
                lambda: self.draft.new_client(),
                id="step-clients",
            )
            yield RowsEditor(
                "admins",
                ADMIN_FIELDS,
                self.draft_check_admin,
                lambda row: self.draft.kit_state(KIND_ADMIN, row),
                lambda: self.draft.new_admin(),
                id="step-admins",
            )
            with VerticalScroll(id="step-settings", classes="step"):
                yield Form("settings", SETTINGS_FIELDS)
                yield Static(self.STEP_HINT, classes="dialog-hint")
            with Vertical(id="step-review", classes="step"):
                yield Static(id="review-summary", markup=False)
                with VerticalScroll(id="review-yaml-box"):
                    yield Static(id="review-yaml", markup=False)
                yield Button(
                    "Provision and save project.yml",
                    id="review-go",
                    variant="primary",
                    compact=True,
                )
            yield KitsStep(id="step-kits")
        yield Static(id="wizard-problem", classes="wizard-problem", markup=False)
        with Horizontal(id="wizard-nav", classes="dialog-buttons"):
            yield Button("Back", id="wizard-back", compact=True)
            yield Button("Next", id="wizard-next", variant="primary", compact=True)
        yield Footer()

    def on_mount(self) -> None:
        """Fill the forms from the draft, and focus the first field now: keys typed before
        the wizard showed wait for its focus (the console's ``p``) and go there."""
        self._load_draft()
        if self._open_error:
            self.notify(
                self._open_error, title="cannot open the workspace", severity="error", markup=False
            )
        self._show_step()
        self._focus_step()

    # ---------------------------------------------------------------- draft <-> forms

    def draft_check_client(self, form: dict[str, str], index: int) -> str | None:
        """Validate a client form against the current draft."""
        return self.draft.check_client(form, index)

    def draft_check_admin(self, form: dict[str, str], index: int) -> str | None:
        """Validate an admin form against the current draft."""
        return self.draft.check_admin(form, index)

    def _load_draft(self) -> None:
        draft = self.draft
        self.query_one("#project-workspace", Input).value = str(draft.workspace)
        self._form("project").load({"name": draft.name})
        self._form("server").load(draft.server)
        self._form("settings").load(draft.settings)
        self.query_one("#step-clients", RowsEditor).reload(draft.clients)
        self.query_one("#step-admins", RowsEditor).reload(draft.admins)
        self._lock()
        self._workspace_hint()

    def _lock(self) -> None:
        locked = self.draft.locked
        self._form("project").set_locked(locked)
        self._form("server").set_locked(locked)
        note = (
            "Kits were issued with these values: they cannot change here "
            "(flprovision --force re-issues every kit)."
            if locked
            else ""
        )
        self.query_one("#server-note", Static).update(note)

    def _form(self, prefix: str) -> Form:
        return next(form for form in self.query(Form) if form.prefix == prefix)

    @on(Form.Edited)
    def _form_edited(self, event: Form.Edited) -> None:
        prefix = event.form.prefix
        values = event.form.values()
        if prefix == "project":
            self.draft.name = values["name"]
        elif prefix == "server":
            self.draft.server = values
        elif prefix == "settings":
            self.draft.settings = values
        # A row form's editor checks the row; Next and the message follow it too.
        self._validate()

    @on(Form.Submitted)
    def _form_submitted(self) -> None:
        """``enter`` in the project, server or settings form: on to the next step."""
        self.action_next()

    @on(RowsEditor.Changed)
    def _rows_changed(self) -> None:
        self._validate()

    @on(Input.Changed, "#project-workspace")
    def _workspace_changed(self, event: Input.Changed) -> None:
        workspace = typed_path(event.value)
        if workspace == self.draft.workspace:
            return
        self.draft.set_workspace(workspace)  # who has a kit is what this workspace says
        self._lock()
        for editor in self.query(RowsEditor):
            editor.show_kits()
        self._workspace_hint()
        self._validate()

    def _workspace_hint(self) -> None:
        draft = self.draft
        workspace = draft.workspace
        hint = self.query_one("#project-workspace-hint", Static)
        self.query_one("#project-open", Button).disabled = not draft.folder.project_file
        problem = draft.workspace_problem()
        if problem:
            hint.update(problem)
        elif draft.issued:
            hint.update(f"opened {workspace}: {len(draft.issued)} kits issued; add sites or admins")
        elif draft.folder.project_file:
            hint.update(f"opened {workspace}: no kits issued yet")
        else:
            hint.update("a new workspace: the project CA will be created there")

    @on(Button.Pressed, "#project-open")
    def _open(self) -> None:
        try:
            self.draft = Draft.open(self.draft.workspace)
        except (ConfigError, ProvisionError) as exc:
            self.notify(str(exc), title="cannot open the workspace", severity="error", markup=False)
            return
        self._load_draft()
        self.notify(
            f"opened {self.draft.workspace}: {len(self.draft.issued)} kits issued; "
            "add sites or admins and provision again",
            title="workspace",
            markup=False,
        )
        self._validate()

    # ---------------------------------------------------------------- steps

    def problem(self) -> str | None:
        """What keeps the current step from being done, or None."""
        draft = self.draft
        name = STEPS[self.step]
        if name == "project":
            return draft.workspace_problem() or draft.check_name()
        if name == "server":
            return draft.check_server()
        if name in ("clients", "admins"):
            return self._rows_problem(name)
        if name == "settings":
            return draft.check_settings()
        if name == "review":
            try:
                project = draft.project()
            except ConfigError as exc:
                return str(exc)
            new, _, awaited = draft.split_kits(project)
            return None if new or awaited else "nothing new to issue: every participant has a kit"
        return None

    def _rows_problem(self, name: str) -> str | None:
        editor = self.query_one(f"#step-{name}", RowsEditor)
        if editor.pending:
            return (
                editor.problem() or "the form holds an unsaved entry: press enter to add it, or New"
            )
        check = self.draft.check_client if name == "clients" else self.draft.check_admin
        for index, row in enumerate(editor.rows):
            problem = check(row, index)
            if problem:
                return problem
        return None

    def _validate(self) -> None:
        if self.provisioning:
            return  # the message line says "provisioning…" until the run is over
        problem = self.problem()
        message = self.query_one("#wizard-problem", Static)
        message.update(f"✖ {problem}" if problem else "✔ looks good")
        message.set_class(bool(problem), "-error")
        last = STEPS[self.step] in ("review", "kits")
        self.query_one("#wizard-next", Button).disabled = bool(problem) or last
        self.query_one("#review-go", Button).disabled = bool(problem)
        self.query_one("#wizard-back", Button).disabled = (
            self.step == 0 or STEPS[self.step] == "kits"
        )
        self.refresh_bindings()

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """Offer Next and Back in the footer only where they go somewhere."""
        name = STEPS[self.step]
        if action == "next":
            return name not in ("review", "kits")
        if action == "back":
            return self.step > 0 and name != "kits"
        return True

    def _show_step(self) -> None:
        name = STEPS[self.step]
        self.query_one(ContentSwitcher).current = f"step-{name}"
        parts = [
            f"[b reverse] {title} [/]" if index == self.step else f" {title} "
            for index, title in enumerate(TITLES)
        ]
        self.query_one("#wizard-steps", Static).update("›".join(parts))
        if name == "review":
            self._review()
        self._validate()
        self.call_after_refresh(self._focus_step)

    def _focus_step(self) -> None:
        """Focus the first field of the step (a form field before a table or a button).

        Not when focus is in the step already: keys typed since it was shown
        went there, and taking focus away would send the rest elsewhere.
        """
        step = self.query_one(f"#step-{STEPS[self.step]}")
        focused = self.app.focused
        if focused is not None and step in focused.ancestors:
            return
        for kind in ("Input", "Select", "DataTable", "Button"):
            focusable = [widget for widget in step.query(kind) if widget.focusable]
            if focusable:
                focusable[0].focus()
                return

    def _review(self) -> None:
        draft = self.draft
        summary = self.query_one("#review-summary", Static)
        yaml_view = self.query_one("#review-yaml", Static)
        try:
            project = draft.project()
        except ConfigError as exc:
            summary.update(f"✖ {exc}")
            yaml_view.update("")
            return
        new, kept, awaited = draft.split_kits(project)
        workspace = draft.workspace
        text = f"Writes {workspace / 'project.yml'} and the kits of: {', '.join(new) or 'nobody'}."
        if kept:
            text += f"\nAlready issued, left as they are: {', '.join(kept)}."
        if awaited:
            text += (
                f"\nMake their own key, so their kits wait for their requests: {', '.join(awaited)}"
                " (Sign request on their row, or flprovision sign)."
            )
        summary.update(text)
        yaml_view.update(project_to_yaml(project))

    def _busy(self) -> bool:
        """Whether a run is under way; says so, since the key pressed does nothing."""
        if self.provisioning:
            self.notify("provisioning: the kits and their passwords follow", title="wait")
        return self.provisioning

    def action_next(self) -> None:
        """Go to the next step when this one is valid."""
        if self._busy():
            return
        if self.problem() is None and STEPS[self.step] not in ("review", "kits"):
            self.step += 1
            self._show_step()

    def action_back(self) -> None:
        """Go back a step (not from the kits: they are written)."""
        if self._busy():
            return
        if self.step > 0 and STEPS[self.step] != "kits":
            self.step -= 1
            self._show_step()

    def action_close(self) -> None:
        """Leave the wizard: not while provisioning, and not past unsaved passwords unasked."""
        self.request_close()

    def request_close(self, then: Callable[[], object] | None = None) -> None:
        """Leave the wizard as :meth:`action_close` does, then call ``then`` (an app's quit).

        ``then`` is dropped when the admin chooses to stay, so a quit that was
        answered "stay" does not happen later by surprise.
        """
        if self._busy():
            return
        kits = self.query_one(KitsStep)
        if STEPS[self.step] == "kits" and kits.unsaved:
            self.app.push_screen(self._leave_question(kits), partial(self._leave_answered, then))
        else:
            self._leave(then)

    def _leave(self, then: Callable[[], object] | None) -> None:
        self.dismiss(None)
        if then is not None:
            then()

    def _leave_question(self, kits: KitsStep) -> Question:
        count = len(kits.passwords)
        path = kits.query_one("#kits-file", Input).value
        return Question(
            f"The passwords of {count} kit(s) are not saved",
            "They are shown only now and stored nowhere else: without its password a kit "
            "cannot be opened, and a lost one means re-issuing that kit.",
            [
                Answer("stay", "Stay"),
                Answer("save", f"Save to {Path(path).name} and close", "primary"),
                Answer("discard", "Close without saving", "error"),
            ],
        )

    def _leave_answered(self, then: Callable[[], object] | None, reply: Reply | None) -> None:
        if reply is None or reply.key == "stay":
            return
        kits = self.query_one(KitsStep)
        if reply.key == "save" and not kits.save(append=False):
            return  # the kits step says why; the passwords are still on screen
        self._leave(then)

    @on(Button.Pressed, "#wizard-next")
    def _next_pressed(self) -> None:
        self.action_next()

    @on(Button.Pressed, "#wizard-back")
    def _back_pressed(self) -> None:
        self.action_back()

    @on(Button.Pressed, "#review-go")
    def _go(self) -> None:
        self.run_engine("provisioning…", self.draft.provision)

    @on(RowsEditor.KitWanted)
    def _kit_wanted(self, event: RowsEditor.KitWanted) -> None:
        if self._busy():
            return
        kind = KIND_ADMIN if event.editor.kind == "admins" else KIND_CLIENT
        name = event.row.get("email" if kind == KIND_ADMIN else "name", "").strip()
        issued = self.draft.is_issued(kind, name)
        if event.action == "reissue":
            question = Question(
                f"Re-issue the kit of {name}?",
                f"{name} gets a new kit with a new key and password. Its current certificate is "
                "revoked: load the new crl.pem into the server so the old kit stops working.",
                [Answer("cancel", "Cancel"), Answer("reissue", "Re-issue", "error")],
            )
        else:
            revoke = (
                f" {name} has a certificate already: it is revoked, and the new request's key "
                "takes its place."
                if issued
                else ""
            )
            question = Question(
                f"Sign the certificate request of {name}",
                f"The request file {name}'s IT made with 'flprovision request'.{revoke}",
                [Answer("cancel", "Cancel"), Answer("sign", "Sign", "primary")],
                field=("Request file (.csr)", str(self.draft.workspace / f"{name}.csr")),
            )
        self.app.push_screen(question, lambda reply: self._kit_answered(reply, name, issued))

    def _kit_answered(self, reply: Reply | None, name: str, issued: bool) -> None:
        if reply is None or reply.key == "cancel":
            return
        if reply.key == "reissue":
            self.run_engine(f"re-issuing {name}…", lambda: self.draft.reissue(name))
            return
        self.run_engine(
            f"signing the request of {name}…",
            lambda: self.draft.sign(typed_path(reply.text), reissue=issued),
        )

    @work(exclusive=True, exit_on_error=False, description="provisioning")
    async def run_engine(self, doing: str, run: Callable[[], ProvisionResult]) -> None:
        """Run provisioning, a re-issue or a signing in a thread, then show the kits.

        Key generation takes a while; until the result (and its passwords) is
        on the Kits step the wizard cannot be left.
        """
        if self.provisioning:
            return
        self.provisioning = True
        for button in ("#review-go", "#wizard-back", "#wizard-next"):
            self.query_one(button, Button).disabled = True
        problem = self.query_one("#wizard-problem", Static)
        problem.update(doing)
        problem.remove_class("-error")
        try:
            result = await asyncio.to_thread(run)
        except Exception as exc:  # whatever it is, say so: never stay at "provisioning…"
            known = isinstance(exc, ConfigError | ProvisionError | OSError)
            message = str(exc) if known else f"unexpected {type(exc).__name__}: {exc}"
            self.provisioning = False
            self._validate()
            problem.update(f"✖ {message}")
            problem.add_class("-error")
            self.notify(message, title="failed", severity="error", timeout=12, markup=False)
            return
        self.provisioning = False
        self.step = STEPS.index("kits")
        self.query_one(KitsStep).show(result, self.draft.workspace)
        self._lock()
        self._workspace_hint()
        for editor in self.query(RowsEditor):
            editor.show_kits()
        self._show_step()
        self.notify(f"wrote {len(result.written)} kit(s)", title="done")
