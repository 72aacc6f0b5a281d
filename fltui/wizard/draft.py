"""The wizard's project in the making, checked by the very functions flprovision uses.

The forms hold text; :func:`section` turns a form into the mapping
project.yml would hold for it (numbers where the schema wants numbers,
empty fields left out), and each ``check_*`` runs the matching
``provision.parse_*`` on it, so the wizard shows the message flprovision
would print for the same mistake, word for word. Nothing here knows about
the screen.

Who already has a kit is read from the workspace (:class:`Folder`), never
carried over from another one, and the draft writes project.yml only into
the workspace it was opened from (or a new one), and only once the engine
has accepted the run: a refused run leaves the saved project as it was.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from flcore.identity import KIND_ADMIN, KIND_CLIENT, KIND_SERVER, ROLE_SUPER
from flcore.schema import ConfigError
from provision import (
    Project,
    ProjectSettings,
    ProvisionError,
    ProvisionResult,
    load_project,
    parse_admin,
    parse_client,
    parse_project,
    parse_server,
    parse_settings,
    provision_workspace,
    write_project,
)
from provision.csr import sign_request
from provision.project import API_VERSION, SOURCE
from provision.projectfile import as_written
from provision.workspace import STATE_DIR, Workspace

PROJECT_FILE = "project.yml"
Form = dict[str, str]
Kit = tuple[str, str]
"""(kind, name) of a participant's kit."""

SERVER_KEYS = ("name", "host", "fed_port", "admin_port", "org")
CLIENT_KEYS = ("name", "org", "email", "csr")
ADMIN_KEYS = ("email", "org", "role", "csr")
KEY_BY_LEAD = "lead"
KEY_BY_SITE = "site"
KEY_MAKERS = (KEY_BY_LEAD, KEY_BY_SITE)
"""The ``csr`` field as the forms show it: who makes the participant's private key."""
SETTINGS_KEYS = tuple(ProjectSettings.__dataclass_fields__)
NUMERIC = frozenset(
    {
        "fed_port",
        "admin_port",
        "heart_beat_timeout",
        "heartbeat_interval",
        "retry_window",
        "cert_validity_days",
    }
)


def typed(key: str, text: str) -> Any:
    """Form text as YAML would read it: a number for numeric keys when it is one.

    ``csr`` is the key maker's word: ``site`` is ``csr: true``.
    """
    text = text.strip()
    if key == "csr":
        return text == KEY_BY_SITE
    if key not in NUMERIC:
        return text
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            continue
    return text


def section(form: Form) -> dict[str, Any]:
    """The mapping of one form; empty fields and defaults are left out, as if never written."""
    values = {key: typed(key, value) for key, value in form.items() if value.strip()}
    return {key: value for key, value in values.items() if value is not False}


def form_of(values: dict[str, Any], keys: Sequence[str]) -> Form:
    """Form text for the values of a loaded section, numbers as a person writes them."""
    return {key: _text(key, values.get(key)) for key in keys}


def _text(key: str, value: Any) -> str:
    if key == "csr":
        return KEY_BY_SITE if value else KEY_BY_LEAD
    if value is None:
        return ""
    return str(as_written(value))


@dataclass(frozen=True)
class Folder:
    """What a workspace path holds, looked at once each time the path changes."""

    path: Path
    problem: str | None = None
    """Why the wizard cannot look into it or use it at all."""
    project_file: bool = False
    issued: frozenset[Kit] = frozenset()
    """Participants that have a kit from this workspace."""
    revoked: frozenset[Kit] = frozenset()
    """Those of them whose kit was revoked (``flprovision revoke``) and not re-issued."""

    @classmethod
    def look(cls, path: Path) -> Folder:
        """Look at ``path`` without ever raising: an unreadable path becomes a problem."""
        try:
            if path.exists() and not path.is_dir():
                return cls(path, f"{path} is not a folder")
            project_file = (path / PROJECT_FILE).is_file()
            ca = (path / STATE_DIR).is_dir()
        except OSError as exc:  # no permission, a name too long, ...
            return cls(path, f"{path}: cannot look into it ({exc.strerror or exc})")
        try:
            record = Workspace(path).load_issued() if ca else None
        except ProvisionError as exc:
            return cls(path, str(exc), project_file)
        holders = list(record.participants.values()) if record is not None else []
        issued = frozenset((entry["kind"], entry["name"]) for entry in holders)
        revoked = frozenset((e["kind"], e["name"]) for e in holders if e.get("revoked"))
        return cls(path, None, project_file, issued, revoked)


def _same_folder(a: Path, b: Path) -> bool:
    return os.path.realpath(a) == os.path.realpath(b)


@dataclass
class Draft:
    """Everything the wizard's steps edit."""

    workspace: Path
    name: str = ""
    server: Form = field(default_factory=dict)
    clients: list[Form] = field(default_factory=list)
    admins: list[Form] = field(default_factory=list)
    settings: Form = field(default_factory=dict)
    opened: Path | None = None
    """The workspace whose project.yml this draft holds (None: a new project)."""
    folder: Folder = field(init=False)

    def __post_init__(self) -> None:
        """Look at the workspace."""
        self.folder = Folder.look(self.workspace)

    @classmethod
    def new(cls, workspace: Path) -> Draft:
        """A fresh project with the sample's defaults."""
        defaults = asdict(ProjectSettings())
        return cls(
            workspace=workspace,
            server={
                "name": "server",
                "host": "localhost",
                "fed_port": "8002",
                "admin_port": "8003",
                "org": "",
            },
            admins=[],
            settings=form_of(defaults, SETTINGS_KEYS),
        )

    @classmethod
    def open(cls, workspace: Path) -> Draft:
        """The project saved in a workspace.

        Raises:
            ConfigError: project.yml is not valid.
            ProvisionError: it cannot be read.
        """
        project = load_project(workspace / PROJECT_FILE)
        return cls(
            workspace=workspace,
            name=project.name,
            server=form_of(asdict(project.server), SERVER_KEYS),
            clients=[form_of(asdict(c), CLIENT_KEYS) for c in project.clients],
            admins=[form_of(asdict(a), ADMIN_KEYS) for a in project.admins],
            settings=form_of(asdict(project.settings), SETTINGS_KEYS),
            opened=workspace,
        )

    def set_workspace(self, workspace: Path) -> None:
        """Point at another workspace; who has a kit is what that one says."""
        self.workspace = workspace
        self.folder = Folder.look(workspace)

    @property
    def issued(self) -> frozenset[Kit]:
        """(kind, name) of participants that already have a kit in this workspace."""
        return self.folder.issued

    @property
    def is_opened(self) -> bool:
        """Whether the workspace is the one this draft's project.yml came from."""
        return self.opened is not None and _same_folder(self.opened, self.workspace)

    def workspace_problem(self) -> str | None:
        """Why kits cannot go into the workspace, or None."""
        folder = self.folder
        if folder.problem:
            return folder.problem
        if folder.project_file and not self.is_opened:
            return (
                f"{folder.path} holds a project.yml that is not the one open here: "
                "Open loads it, or choose another folder"
            )
        if folder.issued and not folder.project_file:
            # A CA without kits is a first run cut short: provisioning carries it on.
            return f"{folder.path} holds a CA and kits but no project.yml: choose another folder"
        return None

    @property
    def locked(self) -> bool:
        """Whether kits were issued: then the name and server are embedded in them."""
        return bool(self.issued)

    def is_issued(self, kind: str, name: str) -> bool:
        """Whether this participant already has a kit."""
        return (kind, name) in self.issued

    def kit_state(self, kind: str, row: Form) -> str:
        """What the Kit column says of a row: issued, revoked, new, or awaits a request."""
        name = row.get("email" if kind == KIND_ADMIN else "name", "").strip()
        if (kind, name) in self.folder.revoked:
            return "revoked"
        if self.is_issued(kind, name):
            return "issued"
        return "awaits request" if typed("csr", row.get("csr", "")) else "new"

    def new_client(self) -> Form:
        """An empty client row; lead IT makes its key, as with the sample."""
        return {"name": "", "org": "", "email": "", "csr": KEY_BY_LEAD}

    def new_admin(self) -> Form:
        """An empty admin row (super by default, like the sample)."""
        return {"email": "", "org": "", "role": ROLE_SUPER, "csr": KEY_BY_LEAD}

    # ---------------------------------------------------------------- checks

    def check_name(self) -> str | None:
        """The project name, checked as flprovision checks the top level."""
        try:
            parse_project({"api_version": API_VERSION, "name": self.name.strip(), "server": {}})
        except ConfigError as exc:
            message = str(exc)
            return None if message.startswith(f"{SOURCE}: server:") else message
        return None

    def check_server(self) -> str | None:
        """The server section."""
        try:
            parse_server(section(self.server))
        except ConfigError as exc:
            return str(exc)
        return None

    def check_client(self, form: Form, index: int) -> str | None:
        """Client ``index`` (where it is or would go) among the others and the server.

        Rows before and after it count: the wizard must block the row being
        edited, while flprovision names the later of two duplicates.
        """
        taken = [self.server.get("name", "").strip()]
        taken += [c["name"].strip() for i, c in enumerate(self.clients) if i != index]
        try:
            parse_client(section(form), index, taken)
        except ConfigError as exc:
            return str(exc)
        return None

    def check_admin(self, form: Form, index: int) -> str | None:
        """Admin ``index`` among the others (before and after it)."""
        taken = [a["email"].strip() for i, a in enumerate(self.admins) if i != index]
        try:
            parse_admin(section(form), index, taken)
        except ConfigError as exc:
            return str(exc)
        return None

    def check_settings(self) -> str | None:
        """The settings section."""
        try:
            parse_settings(section(self.settings))
        except ConfigError as exc:
            return str(exc)
        return None

    def mapping(self) -> dict[str, Any]:
        """The whole project.yml mapping."""
        return {
            "api_version": API_VERSION,
            "name": self.name.strip(),
            "server": section(self.server),
            "clients": [section(c) for c in self.clients],
            "admins": [section(a) for a in self.admins],
            "settings": section(self.settings),
        }

    def project(self) -> Project:
        """The checked project (ConfigError with flprovision's message when it is not)."""
        return parse_project(self.mapping())

    def split_kits(self, project: Project) -> tuple[list[str], list[str], list[str]]:
        """Kit names a provisioning run will write, those it leaves alone, and those it awaits.

        Awaited are new participants that make their own key (``csr: true``):
        their kit is written when their request is signed.
        """
        kits = [(KIND_SERVER, project.server.name, False)]
        kits += [(KIND_CLIENT, c.name, c.csr) for c in project.clients]
        kits += [(KIND_ADMIN, a.email, a.csr) for a in project.admins]
        new = [name for kind, name, csr in kits if not csr and not self.is_issued(kind, name)]
        kept = [name for kind, name, _ in kits if self.is_issued(kind, name)]
        awaited = [name for kind, name, csr in kits if csr and not self.is_issued(kind, name)]
        return new, kept, awaited

    def provision(self) -> ProvisionResult:
        """Issue the kits not yet issued, then save project.yml into the workspace.

        project.yml is written only after the engine accepted the run, so a
        refused run (a changed server, say) leaves the saved project as it
        was. The kits are out once the engine returns: a project.yml that
        cannot be written then becomes a warning of the result, never an
        error that would lose the passwords. Blocking (key generation); run
        it in a thread.

        Raises:
            ConfigError: the project is not valid.
            ProvisionError: the workspace is not this project's, or the engine
                refused (e.g. the server changed after kits were issued).
        """
        project = self._checked()
        return self._saved(project, provision_workspace(project, self.workspace))

    def reissue(self, name: str) -> ProvisionResult:
        """A new kit for ``name`` (new key and password), its old certificates revoked.

        Raises:
            ConfigError, ProvisionError: as :meth:`provision`, or the engine
                refused (the server, someone without a kit, or one whose site
                makes its own key).
        """
        project = self._checked()
        return self._saved(project, provision_workspace(project, self.workspace, reissue=name))

    def sign(self, request: Path, reissue: bool = False) -> ProvisionResult:
        """Sign a certificate request (``flprovision sign``) into a kit without a key.

        Returns the run as a result of one kit. With ``reissue`` the request
        replaces a certificate, which is revoked.

        Raises:
            ConfigError, ProvisionError: as :meth:`provision`, or the request
                does not match the project.
        """
        project = self._checked()
        signed = sign_request(project, self.workspace, request, reissue)
        result = ProvisionResult(
            (signed.kit,), (), (), signed.ca_fingerprint, signed.warnings, crl=signed.crl
        )
        return self._saved(project, result)

    def _checked(self) -> Project:
        project = self.project()
        self.set_workspace(self.workspace)  # look again: the folder may have changed since
        problem = self.workspace_problem()
        if problem:
            raise ProvisionError(problem)
        return project

    def _saved(self, project: Project, result: ProvisionResult) -> ProvisionResult:
        """Write project.yml after the engine accepted a run; a failure becomes a warning."""
        path = self.workspace / PROJECT_FILE
        try:
            write_project(project, path)
        except OSError as exc:
            warning = (
                f"{path}: cannot write it ({exc.strerror or exc}); the kits are issued, but "
                "later runs need project.yml: save the review's text there by hand"
            )
            result = replace(result, warnings=(*result.warnings, warning))
        else:
            self.opened = self.workspace
        self.set_workspace(self.workspace)
        return result
