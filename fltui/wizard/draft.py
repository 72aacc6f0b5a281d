"""The wizard's project in the making, checked by the very functions flprovision uses.

The forms hold text; :func:`section` turns a form into the mapping
project.yml would hold for it (numbers where the schema wants numbers,
empty fields left out), and each ``check_*`` runs the matching
``provision.parse_*`` on it, so the wizard shows the message flprovision
would print for the same mistake, word for word. Nothing here knows about
the screen.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from flcore.identity import KIND_ADMIN, KIND_CLIENT, KIND_SERVER, ROLE_SUPER
from flcore.schema import ConfigError
from provision import (
    Project,
    ProjectSettings,
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
from provision.workspace import Workspace

PROJECT_FILE = "project.yml"
SOURCE = PROJECT_FILE
API_VERSION = 1
Form = dict[str, str]

SERVER_KEYS = ("name", "host", "fed_port", "admin_port", "org")
CLIENT_KEYS = ("name", "org", "email")
ADMIN_KEYS = ("email", "org", "role")
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
    """Form text as YAML would read it: a number for numeric keys when it is one."""
    text = text.strip()
    if key not in NUMERIC:
        return text
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            continue
    return text


def section(form: Form) -> dict[str, Any]:
    """The mapping of one form; empty fields are left out, as if never written."""
    return {key: typed(key, value) for key, value in form.items() if value.strip()}


def form_of(values: dict[str, Any], keys: Sequence[str]) -> Form:
    """Form text for the values of a loaded section."""
    return {key: "" if values.get(key) is None else str(values[key]) for key in keys}


@dataclass
class Draft:
    """Everything the wizard's steps edit."""

    workspace: Path
    name: str = ""
    server: Form = field(default_factory=dict)
    clients: list[Form] = field(default_factory=list)
    admins: list[Form] = field(default_factory=list)
    settings: Form = field(default_factory=dict)
    issued: frozenset[tuple[str, str]] = frozenset()
    """(kind, name) of participants that already have a kit in this workspace."""

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
        """The project saved in a workspace, with who already has a kit.

        Raises:
            ConfigError: project.yml is not valid.
            ProvisionError: it or the workspace's records cannot be read.
        """
        project = load_project(workspace / PROJECT_FILE)
        record = Workspace(workspace).load_issued() or {}
        issued = frozenset(
            (entry["kind"], entry["name"]) for entry in record.get("participants", {}).values()
        )
        return cls(
            workspace=workspace,
            name=project.name,
            server=form_of(asdict(project.server), SERVER_KEYS),
            clients=[form_of(asdict(c), CLIENT_KEYS) for c in project.clients],
            admins=[form_of(asdict(a), ADMIN_KEYS) for a in project.admins],
            settings=form_of(asdict(project.settings), SETTINGS_KEYS),
            issued=issued,
        )

    @staticmethod
    def saved_in(workspace: Path) -> bool:
        """Whether a workspace holds a project.yml the wizard can open."""
        return (workspace / PROJECT_FILE).is_file()

    @staticmethod
    def workspace_problem(workspace: Path) -> str | None:
        """Why kits cannot go into ``workspace``, or None."""
        if workspace.exists() and not workspace.is_dir():
            return f"{workspace} is not a folder"
        if (workspace / "state").is_dir() and not Draft.saved_in(workspace):
            return f"{workspace} holds a CA but no project.yml: choose another folder"
        return None

    @property
    def locked(self) -> bool:
        """Whether kits were issued: then the name and server are embedded in them."""
        return bool(self.issued)

    def is_issued(self, kind: str, name: str) -> bool:
        """Whether this participant already has a kit."""
        return (kind, name) in self.issued

    def new_admin(self) -> Form:
        """An empty admin row (super by default, like the sample)."""
        return {"email": "", "org": "", "role": ROLE_SUPER}

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
        """Client ``index`` (where it is or would go) among the others and the server."""
        taken = [self.server.get("name", "").strip()]
        taken += [c["name"].strip() for i, c in enumerate(self.clients) if i < index]
        try:
            parse_client(section(form), index, taken)
        except ConfigError as exc:
            return str(exc)
        later = [c["name"].strip() for i, c in enumerate(self.clients) if i > index]
        if form.get("name", "").strip() in later:
            return f"{SOURCE}: clients[{index}]: duplicate client name {form['name'].strip()!r}"
        return None

    def check_admin(self, form: Form, index: int) -> str | None:
        """Admin ``index`` among the others."""
        taken = [a["email"].strip() for i, a in enumerate(self.admins) if i < index]
        try:
            parse_admin(section(form), index, taken)
        except ConfigError as exc:
            return str(exc)
        later = [a["email"].strip() for i, a in enumerate(self.admins) if i > index]
        if form.get("email", "").strip() in later:
            return f"{SOURCE}: admins[{index}]: duplicate admin email {form['email'].strip()!r}"
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

    def split_kits(self, project: Project) -> tuple[list[str], list[str]]:
        """Kit names a provisioning run will write, and those it will leave alone."""
        kits = [(KIND_SERVER, project.server.name)]
        kits += [(KIND_CLIENT, c.name) for c in project.clients]
        kits += [(KIND_ADMIN, a.email) for a in project.admins]
        new = [name for kind, name in kits if not self.is_issued(kind, name)]
        kept = [name for kind, name in kits if self.is_issued(kind, name)]
        return new, kept

    def provision(self) -> ProvisionResult:
        """Write project.yml into the workspace and issue the kits not yet issued.

        Blocking (key generation); run it in a thread.

        Raises:
            ConfigError: the project is not valid.
            ProvisionError: the workspace refused (e.g. the server changed after kits were issued).
        """
        project = self.project()
        self.workspace.mkdir(parents=True, exist_ok=True)
        write_project(project, self.workspace / PROJECT_FILE)
        result = provision_workspace(project, self.workspace)
        self.issued = self.issued | {(kit.kind, kit.name) for kit in result.written}
        return result
