"""The text files of a kit, rendered from ``provision/templates/``.

The templates are plain files (``string.Template``) so they read like what
they produce; ``packaging/systemd/`` holds the units rendered with the
defaults, and a test keeps the two from drifting apart.
"""

from __future__ import annotations

import shlex
from importlib import resources
from string import Template

from provision.project import DEFAULT_INSTALL_PREFIX, DEFAULT_WORKSPACE_BASE

SERVER_UNIT = "flserverd.service"
CLIENT_UNIT = "flclientd@.service"
SAMPLE_PROJECT = "project.yml"
DEFAULT_SERVER_NAME = "server"
"""Server name the packaged unit assumes (the sample project's)."""

_CLIENT_NOTE = """
# The client finds the site's data through DATA_ROOT in the environment, or
# through --data-root PATH passed to this script."""


def template_text(name: str) -> str:
    """The raw text of one template file."""
    return (resources.files("provision") / "templates" / name).read_text(encoding="utf-8")


def _render(name: str, **values: str) -> str:
    return Template(template_text(name)).substitute(values)


def sample_project() -> str:
    """The commented project.yml that ``flprovision init`` writes."""
    return template_text(SAMPLE_PROJECT)


def server_unit(
    install_prefix: str = DEFAULT_INSTALL_PREFIX,
    workspace_base: str = DEFAULT_WORKSPACE_BASE,
    server_name: str = DEFAULT_SERVER_NAME,
) -> str:
    """flserverd.service for a server kit extracted into ``<workspace_base>/<server_name>``."""
    return _render(
        SERVER_UNIT, install_prefix=install_prefix, workspace=f"{workspace_base}/{server_name}"
    )


def client_unit(
    install_prefix: str = DEFAULT_INSTALL_PREFIX, workspace_base: str = DEFAULT_WORKSPACE_BASE
) -> str:
    """flclientd@.service; the instance name (``%i``) is the client name."""
    return _render(CLIENT_UNIT, install_prefix=install_prefix, workspace_base=workspace_base)


_ADMIN_PREPARE = (
    "\n# The apps this admin uploads (upload_folder, the console's u) go into ../transfer/."
    '\nmkdir -p "$ROOT/transfer"'
)


def _launcher(
    project: str, purpose: str, program: str, arguments: str, note: str = "", prepare: str = ""
) -> str:
    return _render(
        "launch.sh",
        project=project,
        purpose=purpose,
        program=program,
        arguments=arguments,
        note=note,
        prepare=prepare,
    )


def server_start_script(project: str) -> str:
    """startup/start.sh of a server kit."""
    return _launcher(
        project, "Starts the flstack server of this kit.", "flserverd", '--workspace "$ROOT"'
    )


def client_start_script(project: str) -> str:
    """startup/start.sh of a client kit."""
    return _launcher(
        project,
        "Starts the flstack client of this kit.",
        "flclientd",
        '--workspace "$ROOT"',
        _CLIENT_NOTE,
    )


def admin_script(project: str, email: str) -> str:
    """startup/fl_admin.sh of an admin kit: the console, logged in as ``email``."""
    return _launcher(
        project,
        "Opens the flstack console as the admin of this kit.",
        "fltui",
        f'--startup "$ROOT/startup" --user {shlex.quote(email)}',
        prepare=_ADMIN_PREPARE,
    )
