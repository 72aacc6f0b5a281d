"""Provisioning: project.yml in, one encrypted startup kit per participant out.

The console's provisioning wizard and the tests use this package through the
names below; ``flprovision`` (:mod:`provision.cli`) is a thin layer over them.
"""

from provision.engine import ProvisionResult, WrittenKit, provision_workspace
from provision.errors import ProvisionError
from provision.extract import extract_kit, read_kit
from provision.passwords import PasswordsFile
from provision.project import (
    AdminSpec,
    ClientSpec,
    Project,
    ProjectSettings,
    ServerSpec,
    parse_admin,
    parse_client,
    parse_project,
    parse_server,
    parse_settings,
)
from provision.projectfile import load_project, parse_project_yaml, project_to_yaml, write_project
from provision.templates import sample_project

__all__ = [
    "AdminSpec",
    "ClientSpec",
    "PasswordsFile",
    "Project",
    "ProjectSettings",
    "ProvisionError",
    "ProvisionResult",
    "ServerSpec",
    "WrittenKit",
    "extract_kit",
    "load_project",
    "parse_admin",
    "parse_client",
    "parse_project",
    "parse_project_yaml",
    "parse_server",
    "parse_settings",
    "project_to_yaml",
    "provision_workspace",
    "read_kit",
    "sample_project",
    "write_project",
]
