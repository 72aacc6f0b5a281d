"""Startup configuration of each kit: fed_server.json, fed_client.json, fed_admin.json.

Provisioning writes these files into the signed ``startup/`` folder, so a
site cannot edit them without breaking the kit signature. The few settings a
site's IT may legitimately change (retry window, log forwarding, where the
server listens, ...) go into an optional file of the same name under
``<workspace>/local/``, which is merged over the signed one; any other key
there is refused. Both readers and the writer live here so the format is
defined once.
"""

from __future__ import annotations

import ipaddress
import json
import stat
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from flcore.configfile import load_json
from flcore.schema import (
    PORT,
    WEEK_S,
    ConfigError,
    Field,
    at_least,
    email_like,
    in_range,
    name_like,
    non_empty,
    one_of,
    parse_mapping,
)
from flcore.strictmodes import check_folders_to, entry_exposure, trusted_owners

FORMAT_VERSION = 1
STARTUP_DIR = "startup"
LOCAL_DIR = "local"
SERVER_FILE = "fed_server.json"
CLIENT_FILE = "fed_client.json"
ADMIN_FILE = "fed_admin.json"
KIT_FILES = {SERVER_FILE: "server", CLIENT_FILE: "client", ADMIN_FILE: "admin"}
"""The startup file each kind of kit holds, and the kind it says the kit is."""
TAKES_KIT = {
    "server": "flserverd takes the server kit's workspace (--workspace)",
    "client": "flclientd takes a client kit's workspace (--workspace)",
    "admin": "fltui takes an admin kit's startup/ folder (--startup)",
}
MiB = 1024 * 1024
LOOPBACK = "127.0.0.1"


def host_port(host: str, port: int) -> str:
    """``host:port`` as gRPC dials or binds it: an IPv6 address goes in brackets.

    ``::1:8002`` cannot be told apart from an address; ``[::1]:8002`` can.
    """
    try:
        bracketed = ipaddress.ip_address(host).version == 6
    except ValueError:  # a DNS name, or already bracketed
        bracketed = False
    return f"[{host}]:{port}" if bracketed else f"{host}:{port}"


@dataclass(frozen=True)
class ServerStartup:
    """What flserverd needs to know before it can serve."""

    project: str
    name: str
    host: str
    fed_port: int
    admin_port: int
    listen_host: str
    heart_beat_timeout: float
    heartbeat_interval: float
    ssl_root_cert: str = "rootCA.pem"
    ssl_cert: str = "server.crt"
    ssl_private_key: str = "server.key"
    max_upload_mb: int = 200
    max_instances_per_kit: int = 4
    metrics_port: int = 0
    metrics_host: str = LOOPBACK
    metrics_tls_cert: str = ""
    metrics_tls_key: str = ""
    metrics_tls_client_ca: str = ""
    checkpoint_dirs: tuple[str, ...] = ()
    """Folders besides the workspace whose files an app may name as ``initial_checkpoint``
    (flcore.serverpaths)."""
    format_version: int = FORMAT_VERSION


@dataclass(frozen=True)
class ClientStartup:
    """What flclientd needs to reach the server and behave at its site."""

    project: str
    name: str
    server_host: str
    fed_port: int
    heartbeat_interval: float
    retry_window: float = 30.0
    forward_logs: bool = True
    log_lines_per_second: float = 20.0
    allow_cpu_mgpu: bool = False
    trust_custom_code: bool = False
    keep_deployed_apps: int = 5
    metrics_port: int = 0
    metrics_host: str = LOOPBACK
    metrics_tls_cert: str = ""
    metrics_tls_key: str = ""
    metrics_tls_client_ca: str = ""
    ssl_root_cert: str = "rootCA.pem"
    ssl_cert: str = "client.crt"
    ssl_private_key: str = "client.key"
    format_version: int = FORMAT_VERSION

    @property
    def server_target(self) -> str:
        """host:port of the federation service."""
        return host_port(self.server_host, self.fed_port)


@dataclass(frozen=True)
class AdminStartup:
    """What fltui needs to reach the admin service as this admin."""

    project: str
    email: str
    role: str
    server_host: str
    admin_port: int
    ssl_root_cert: str = "rootCA.pem"
    ssl_cert: str = "client.crt"
    ssl_private_key: str = "client.key"
    format_version: int = FORMAT_VERSION

    @property
    def admin_target(self) -> str:
        """host:port of the admin service."""
        return host_port(self.server_host, self.admin_port)


_COMMON = [
    Field("format_version", int, required=True, check=one_of(FORMAT_VERSION)),
    Field("project", str, required=True, check=name_like),
]
_CERTS = [
    Field("ssl_root_cert", str, default="rootCA.pem", check=non_empty),
]

SERVER_FIELDS = [
    *_COMMON,
    Field("name", str, required=True, check=name_like),
    Field("host", str, required=True, check=non_empty),
    Field("fed_port", int, required=True, check=PORT),
    Field("admin_port", int, required=True, check=PORT),
    Field("listen_host", str, default="0.0.0.0", check=non_empty),  # noqa: S104
    Field("heart_beat_timeout", float, default=600.0, check=in_range(1, WEEK_S)),
    Field("heartbeat_interval", float, default=60.0, check=in_range(0.1, WEEK_S)),
    Field("max_upload_mb", int, default=200, check=at_least(1)),
    Field("max_instances_per_kit", int, default=4, check=in_range(1, 10_000)),
    *_CERTS,
    Field("ssl_cert", str, default="server.crt", check=non_empty),
    Field("ssl_private_key", str, default="server.key", check=non_empty),
]
SERVER_LOCAL_KEYS = ("listen_host", "heart_beat_timeout", "max_upload_mb", "max_instances_per_kit")
METRICS_FIELDS = [
    Field("metrics_port", int, default=0, check=in_range(0, 65535)),
    Field("metrics_host", str, default=LOOPBACK, check=non_empty),
    Field("metrics_tls_cert", str, default=""),
    Field("metrics_tls_key", str, default=""),
    Field("metrics_tls_client_ca", str, default=""),
]
"""The Prometheus endpoint (flcore.exporter), a setting only the site may make: it opens a
listening port on the site's machine, which a kit must not do for the site."""
MAX_CHECKPOINT_DIRS = 64


def absolute_folders(value: Any) -> str | None:
    """``checkpoint_dirs``: a few absolute paths, each a plain string."""
    if len(value) > MAX_CHECKPOINT_DIRS:
        return f"must list at most {MAX_CHECKPOINT_DIRS} folders"
    for entry in value:
        if not isinstance(entry, str) or not Path(entry).is_absolute() or "\0" in entry:
            return "must be a list of absolute folder paths"
    return None


SERVER_SITE_ONLY = [
    *METRICS_FIELDS,
    Field("checkpoint_dirs", list, default=(), check=absolute_folders),
]
"""Settings only the server's operator may make: the metrics endpoint, and the folders whose
files the server reads for an app (a kit that carried them would let whoever provisions
decide what the server reads)."""

CLIENT_FIELDS = [
    *_COMMON,
    Field("name", str, required=True, check=name_like),
    Field("server_host", str, required=True, check=non_empty),
    Field("fed_port", int, required=True, check=PORT),
    Field("heartbeat_interval", float, default=60.0, check=in_range(0.1, WEEK_S)),
    Field("retry_window", float, default=30.0, check=in_range(1, WEEK_S)),
    Field("forward_logs", bool, default=True),
    Field("log_lines_per_second", float, default=20.0, check=at_least(0.1)),
    Field("allow_cpu_mgpu", bool, default=False),
    *_CERTS,
    Field("ssl_cert", str, default="client.crt", check=non_empty),
    Field("ssl_private_key", str, default="client.key", check=non_empty),
]
CLIENT_LOCAL_KEYS = (
    "heartbeat_interval",
    "retry_window",
    "forward_logs",
    "log_lines_per_second",
    "allow_cpu_mgpu",
)
CLIENT_SITE_ONLY = [
    Field("trust_custom_code", bool, default=False),
    Field("keep_deployed_apps", int, default=5, check=at_least(0)),
    *METRICS_FIELDS,
]
"""Settings only the site may make: a kit that carried them would let whoever provisions
decide for the site (``trust_custom_code`` runs apps' code without the site's approval;
``keep_deployed_apps`` is how much of the site's disk old apps keep; the metrics endpoint
opens a port)."""

ADMIN_FIELDS = [
    *_COMMON,
    Field("email", str, required=True, check=email_like),
    Field("role", str, required=True, check=one_of("super", "member")),
    Field("server_host", str, required=True, check=non_empty),
    Field("admin_port", int, required=True, check=PORT),
    *_CERTS,
    Field("ssl_cert", str, default="client.crt", check=non_empty),
    Field("ssl_private_key", str, default="client.key", check=non_empty),
]


def to_json(config: ServerStartup | ClientStartup | AdminStartup) -> str:
    """Serialise a startup config the way provisioning writes it (without the settings only
    a site may make)."""
    values = asdict(config)
    for field in (*CLIENT_SITE_ONLY, *SERVER_SITE_ONLY):
        values.pop(field.name, None)
    return json.dumps(values, indent=2) + "\n"


def _read_json(path: Path) -> Any:
    try:
        return load_json(path)
    except FileNotFoundError:
        raise ConfigError(_not_found(path)) from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read it ({exc.strerror or exc})") from None


def _a(kind: str) -> str:
    return f"an {kind}" if kind == "admin" else f"a {kind}"


def _not_found(path: Path) -> str:
    """Why a kit lacks its startup file: most often it is a kit of another kind (a client's
    kit given to the console), which the file it holds instead says."""
    wanted = KIT_FILES.get(path.name)
    held = [(name, kind) for name, kind in KIT_FILES.items() if (path.parent / name).is_file()]
    if wanted is None or not held:
        return f"{path}: not found; is this the folder that holds the kit's startup/ folder?"
    name, kind = held[0]
    return (
        f"{path.parent}: this is {_a(kind)} kit, not {_a(wanted)} kit ({name} instead of "
        f"{path.name}); {TAKES_KIT[wanted]}"
    )


def check_private_key(path: Path) -> None:
    """Refuse a private key that anyone but its owner may read, as ssh does.

    Whoever can read a kit's key *is* that participant; a key left readable
    by a group or everyone (an archive tool, a ``cp -r``, a wide umask) is a
    leak waiting to happen, so the daemons and the console stop and say how
    to fix it rather than start with it.

    Raises:
        ConfigError: the key cannot be looked at, or its mode lets others read it.
    """
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except OSError as exc:
        raise ConfigError(f"cannot read the private key {path}: {exc.strerror or exc}") from None
    if mode & 0o077:
        raise ConfigError(
            f"{path}: the private key may be read by others (mode {mode:04o}); only its owner "
            f"may read it: run chmod 600 {path}"
        )


def check_folder(folder: Path, matters: str, owners: frozenset[int], whole: bool) -> None:
    """Refuse ``folder`` when others than ``owners`` may change it or anything in it:
    ``startup/`` (its seal is checked once, at start, so a file others may replace
    afterwards, the CA the daemon trusts or its key, would make that check worth nothing)
    and ``local/`` (site IT's settings and approvals decide which code the site runs).
    ``matters`` says why in the refusal; ``whole`` fixes the whole folder at once.

    Raises:
        ConfigError: others may change the folder or something in it.
        OSError: a file cannot be looked at.
    """
    entries = [(folder, f"its folder {folder}")]
    entries += [(path, path.name) for path in sorted(folder.iterdir())]
    for path, what in entries:
        exposed = entry_exposure(path, what, owners)
        if exposed is not None:
            fix = exposed.fix(folder, recursive=True) if whole else exposed.fix(path)
            raise ConfigError(
                f"{path}: others than this user may change it ({exposed.reason}), and it "
                f"{matters}: run {fix}"
            )


def check_workspace(workspace: Path) -> None:
    """Refuse a workspace whose kit or ``local/`` others than this user and root may change,
    through the files, their folders, or any folder above them (:mod:`flcore.strictmodes`).

    Raises:
        ConfigError: the message names what others may change, and the fix.
        OSError: a file cannot be looked at.
    """
    owners = trusted_owners()
    check_folders_to(workspace, "the kit and local/", owners)
    check_folder(workspace / STARTUP_DIR, "is what this site trusts and who it is", owners, True)
    local = workspace / LOCAL_DIR
    if local.exists():
        check_folder(local, "decides for this site", owners, False)


def _load(
    workspace: Path,
    file_name: str,
    fields: list[Field],
    local_keys: tuple[str, ...],
    site_only: tuple[Field, ...] = (),
) -> Any:
    signed = workspace / STARTUP_DIR / file_name
    values = parse_mapping(_read_json(signed), fields, str(signed))
    values.update({field.name: field.default for field in site_only})
    check_private_key(workspace / STARTUP_DIR / values["ssl_private_key"])
    check_workspace(workspace)
    local = workspace / LOCAL_DIR / file_name
    if local.exists():
        raw = _read_json(local)
        local_fields = [f for f in fields if f.name in local_keys] + list(site_only)
        overrides = parse_mapping(raw, local_fields, str(local))
        values.update({key: overrides[key] for key in raw})
    return values


def load_server(workspace: Path) -> ServerStartup:
    """Read ``startup/fed_server.json`` (and ``local/fed_server.json`` overrides)."""
    values = _load(
        workspace, SERVER_FILE, SERVER_FIELDS, SERVER_LOCAL_KEYS, tuple(SERVER_SITE_ONLY)
    )
    values["checkpoint_dirs"] = tuple(values["checkpoint_dirs"])
    return ServerStartup(**values)


def load_client(workspace: Path) -> ClientStartup:
    """Read ``startup/fed_client.json`` (and ``local/fed_client.json`` overrides)."""
    return ClientStartup(
        **_load(workspace, CLIENT_FILE, CLIENT_FIELDS, CLIENT_LOCAL_KEYS, tuple(CLIENT_SITE_ONLY))
    )


def load_admin(startup_dir: Path) -> AdminStartup:
    """Read ``fed_admin.json`` from an admin kit's startup folder."""
    path = startup_dir / ADMIN_FILE
    admin = AdminStartup(**parse_mapping(_read_json(path), ADMIN_FIELDS, str(path)))
    check_private_key(startup_dir / admin.ssl_private_key)
    return admin
