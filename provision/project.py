"""The project description (project.yml) as checked, frozen dataclasses.

Every section has its own ``parse_*`` function so the console's provisioning
wizard can check one form at a time and show the very message that
``flprovision`` would print for the same mistake. Names end up as kit file
names and certificate subjects, so the checks are stricter than YAML needs.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

from flcore.identity import ROLES
from flcore.schema import (
    PORT,
    WEEK_S,
    ConfigError,
    Field,
    email_like,
    in_range,
    name_like,
    one_of,
    parse_mapping,
)
from provision.pki import CA_NAME_SUFFIX

API_VERSION = 1
SOURCE = "project.yml"
KEY_TYPES = ("ecdsa-p256", "ecdsa-p384", "rsa-3072")
DEFAULT_INSTALL_PREFIX = "/opt/flstack/venv"
DEFAULT_WORKSPACE_BASE = "/var/lib/flstack"
MAX_CERT_VALIDITY_DAYS = 3650
X509_NAME_MAX = 64
"""Upper bound of an X.509 CN, O or TITLE; hosts, orgs and emails end up there."""
PROJECT_NAME_MAX = X509_NAME_MAX - len(CA_NAME_SUFFIX)
"""The project names the CA (``<name> root CA``), whose CN has the same bound."""

SYSTEM_NAMES = ("global", "server", "client", "admin", "all")
"""Words a site name would collide with: the global model's row and file in cross-site
validation, the kinds of participants and targets in admin commands (``abort client``,
``validate all``), the admin kits' OU."""
WINDOWS_DEVICES = (
    "con",
    "prn",
    "aux",
    "nul",
    *(f"{port}{n}" for port in ("com", "lpt") for n in range(1, 10)),
)
"""``nul.zip`` or ``con.a.zip`` cannot be saved on Windows, where kits are often passed on."""

# Used with fullmatch: ``$`` would let a trailing newline into a kit or a unit file.
_INSTANCE_SUFFIX = re.compile(r"_[0-9]+\Z")
_HOST_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")
_SAFE_PATH = re.compile(r"/[A-Za-z0-9._/-]+")


@dataclass(frozen=True)
class ServerSpec:
    """The server: its kit name, the address clients and admins dial, its ports."""

    name: str
    host: str
    fed_port: int
    admin_port: int
    org: str


@dataclass(frozen=True)
class ClientSpec:
    """One site; its name is its kit name and certificate CN."""

    name: str
    org: str
    email: str | None = None
    csr: bool = False
    """The site makes its own key and sends a certificate request (flprovision request/sign)."""


@dataclass(frozen=True)
class AdminSpec:
    """One person who drives the server from the console; the email is the login."""

    email: str
    org: str
    role: str
    csr: bool = False
    """The admin makes their own key and sends a certificate request."""


@dataclass(frozen=True)
class ProjectSettings:
    """Timing, certificate and install settings shared by every kit."""

    heart_beat_timeout: float = 600.0
    heartbeat_interval: float = 60.0
    cert_validity_days: int = 360
    retry_window: float = 30.0
    key_type: str = KEY_TYPES[0]
    install_prefix: str = DEFAULT_INSTALL_PREFIX
    workspace_base: str = DEFAULT_WORKSPACE_BASE


@dataclass(frozen=True)
class Project:
    """A whole project.yml."""

    name: str
    server: ServerSpec
    clients: tuple[ClientSpec, ...] = ()
    admins: tuple[AdminSpec, ...] = ()
    settings: ProjectSettings = field(default_factory=ProjectSettings)
    api_version: int = API_VERSION


def _host_like(value: Any) -> str | None:
    """A host clients can dial and a certificate can name.

    An IPv6 zone (``fe80::1%eth0``) is refused: ipaddress takes any text after
    the ``%``, and the zone names an interface of one machine, not the server.
    """
    problem = (
        f"must be a DNS name or an IP address (without a %zone) of at most {X509_NAME_MAX} "
        "characters"
    )
    if len(value) > X509_NAME_MAX:
        return problem
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        labels = value.removesuffix(".").split(".")
        return None if all(_HOST_LABEL.fullmatch(label) for label in labels) else problem
    zoned = isinstance(address, ipaddress.IPv6Address) and address.scope_id is not None
    return problem if zoned else None


def _org_like(value: Any) -> str | None:
    if 0 < len(value) <= X509_NAME_MAX and value.isprintable() and value == value.strip():
        return None
    return f"must be 1-{X509_NAME_MAX} printable characters without leading or trailing spaces"


def _project_name(value: Any) -> str | None:
    problem = name_like(value)
    if problem is None and len(value) > PROJECT_NAME_MAX:
        return (
            f"must be at most {PROJECT_NAME_MAX} characters "
            f"(it names the CA, '<name>{CA_NAME_SUFFIX}', of at most {X509_NAME_MAX})"
        )
    return problem


def client_name_problem(value: Any) -> str | None:
    """What is wrong with ``value`` as a site name (None: nothing)."""
    problem = name_like(value)
    if problem is None and _INSTANCE_SUFFIX.search(value):
        return "must not end in '_<digits>' (that form names extra instances, like site_1)"
    if problem is None and is_reserved(value):
        return (
            f"must not be a word flstack uses itself ({', '.join(SYSTEM_NAMES)}, in any case) "
            "nor a Windows device name (con, nul, com1, ...)"
        )
    return problem


def is_reserved(name: str) -> bool:
    """Whether a site may not be called ``name`` (see :data:`SYSTEM_NAMES`)."""
    folded = name.casefold()
    return folded in SYSTEM_NAMES or folded.split(".")[0] in WINDOWS_DEVICES


def admin_email_problem(value: Any) -> str | None:
    """What is wrong with ``value`` as an admin's email and certificate name (None: nothing)."""
    problem = email_like(value)
    if problem is None and len(value) > X509_NAME_MAX:
        return f"must be at most {X509_NAME_MAX} characters (it becomes a certificate name)"
    return problem


def _install_path(value: Any) -> str | None:
    if _SAFE_PATH.fullmatch(value):
        return None
    return "must be an absolute path of letters, digits, '.', '_', '-' and '/'"


SERVER_FIELDS = [
    Field("name", str, required=True, check=name_like),
    Field("host", str, required=True, check=_host_like),
    Field("fed_port", int, required=True, check=PORT),
    Field("admin_port", int, required=True, check=PORT),
    Field("org", str, required=True, check=_org_like),
]
CLIENT_FIELDS = [
    Field("name", str, required=True, check=client_name_problem),
    Field("org", str, required=True, check=_org_like),
    Field("email", (str, type(None)), check=email_like),
    Field("csr", bool, default=False),
]
ADMIN_FIELDS = [
    Field("email", str, required=True, check=admin_email_problem),
    Field("org", str, required=True, check=_org_like),
    Field("role", str, required=True, check=one_of(*ROLES)),
    Field("csr", bool, default=False),
]
_DEFAULTS = ProjectSettings()
SETTINGS_FIELDS = [
    Field(
        "heart_beat_timeout", float, default=_DEFAULTS.heart_beat_timeout, check=in_range(1, WEEK_S)
    ),
    Field(
        "heartbeat_interval",
        float,
        default=_DEFAULTS.heartbeat_interval,
        check=in_range(0.1, WEEK_S),
    ),
    Field(
        "cert_validity_days",
        int,
        default=_DEFAULTS.cert_validity_days,
        check=in_range(1, MAX_CERT_VALIDITY_DAYS),
    ),
    Field("retry_window", float, default=_DEFAULTS.retry_window, check=in_range(1, WEEK_S)),
    Field("key_type", str, default=_DEFAULTS.key_type, check=one_of(*KEY_TYPES)),
    Field("install_prefix", str, default=_DEFAULTS.install_prefix, check=_install_path),
    Field("workspace_base", str, default=_DEFAULTS.workspace_base, check=_install_path),
]
PROJECT_FIELDS = [
    Field("api_version", int, required=True, check=one_of(API_VERSION)),
    Field("name", str, required=True, check=_project_name),
    Field("server", dict, required=True),
    Field("clients", list, default=[]),
    Field("admins", list, default=[]),
    Field("settings", dict, default={}),
]


def _refuse_clash(name: str, taken: Collection[str], message: str) -> None:
    """Refuse a kit name already taken, ignoring case.

    Kits are files called ``<name>.zip``: on a case-insensitive file system
    ``Site-A.zip`` would overwrite ``site-a.zip``.
    """
    folded = name.casefold()
    other = next((each for each in taken if each.casefold() == folded), None)
    if other == name:
        raise ConfigError(f"{message} {name!r}")
    if other is not None:
        raise ConfigError(
            f"{message} {name!r} (the same kit file as {other!r}: case does not count)"
        )


def parse_server(data: object, source: str = SOURCE) -> ServerSpec:
    """Check the ``server`` section.

    Raises:
        ConfigError: e.g. ``project.yml: server: missing required key 'host'``.
    """
    where = f"{source}: server"
    server = ServerSpec(**parse_mapping(data, SERVER_FIELDS, where))
    if server.fed_port == server.admin_port:
        raise ConfigError(
            f"{where}: 'admin_port' must differ from 'fed_port', got {server.admin_port!r}"
        )
    return server


def parse_client(
    data: object, index: int, taken: Collection[str] = (), source: str = SOURCE
) -> ClientSpec:
    """Check entry ``index`` of ``clients``.

    Args:
        data: the entry as read from YAML (or filled in by the wizard).
        index: its position, for the message.
        taken: kit names already in use (the server's and earlier clients').
        source: the file name messages start with.

    Raises:
        ConfigError: e.g. ``project.yml: clients[1]: duplicate client name 'site-a'``.
    """
    where = f"{source}: clients[{index}]"
    client = ClientSpec(**parse_mapping(data, CLIENT_FIELDS, where))
    _refuse_clash(client.name, taken, f"{where}: duplicate client name")
    return client


def parse_admin(
    data: object, index: int, taken: Collection[str] = (), source: str = SOURCE
) -> AdminSpec:
    """Check entry ``index`` of ``admins``; ``taken`` holds earlier admins' emails."""
    where = f"{source}: admins[{index}]"
    admin = AdminSpec(**parse_mapping(data, ADMIN_FIELDS, where))
    _refuse_clash(admin.email, taken, f"{where}: duplicate admin email")
    return admin


def parse_settings(data: object, source: str = SOURCE) -> ProjectSettings:
    """Check the ``settings`` section, filling in defaults for what it leaves out."""
    where = f"{source}: settings"
    settings = ProjectSettings(**parse_mapping(data, SETTINGS_FIELDS, where))
    if settings.heartbeat_interval >= settings.heart_beat_timeout:
        raise ConfigError(
            f"{where}: 'heartbeat_interval' must be smaller than 'heart_beat_timeout' "
            f"({settings.heart_beat_timeout:g}), got {settings.heartbeat_interval:g}"
        )
    return settings


def parse_project(data: object, source: str = SOURCE) -> Project:
    """Check a whole project description (the mapping project.yml holds)."""
    top = parse_mapping(data, PROJECT_FIELDS, source)
    server = parse_server(top["server"], source)
    clients: list[ClientSpec] = []
    for index, entry in enumerate(top["clients"]):
        taken = [server.name, *(c.name for c in clients)]
        clients.append(parse_client(entry, index, taken, source))
    admins: list[AdminSpec] = []
    for index, entry in enumerate(top["admins"]):
        admins.append(parse_admin(entry, index, [a.email for a in admins], source))
    return Project(
        name=top["name"],
        server=server,
        clients=tuple(clients),
        admins=tuple(admins),
        settings=parse_settings(top["settings"], source),
        api_version=top["api_version"],
    )
