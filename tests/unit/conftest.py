"""Fixtures shared by the unit tests: a small project and a workspace provisioned from it."""

from __future__ import annotations

import copy
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from provision import Project, ProvisionResult, parse_project, provision_workspace

_PROJECT: dict[str, Any] = {
    "api_version": 1,
    "name": "demo",
    "server": {
        "name": "server",
        "host": "localhost",
        "fed_port": 8002,
        "admin_port": 8003,
        "org": "lead",
    },
    "clients": [
        {"name": "site-a", "org": "hospital-a", "email": "it@a.example.org"},
        {"name": "site-b", "org": "hospital-b"},
    ],
    "admins": [
        {"email": "lead@example.org", "org": "lead", "role": "super"},
        {"email": "viewer@example.org", "org": "lead", "role": "member"},
    ],
    "settings": {"heart_beat_timeout": 5, "heartbeat_interval": 1, "cert_validity_days": 30},
}


@pytest.fixture
def provision_project_mapping() -> dict[str, Any]:
    """A valid project.yml mapping that each test may change freely."""
    return copy.deepcopy(_PROJECT)


@dataclass(frozen=True)
class ProvisionedWorkspace:
    """A workspace after one provisioning run, with the passwords that run printed."""

    root: Path
    project: Project
    result: ProvisionResult

    def kit(self, name: str) -> Path:
        """The zip of the kit called ``name``."""
        return self.root / "packages" / f"{name}.zip"

    def password(self, name: str) -> str:
        """The password printed for kit ``name``."""
        password = next(k.password for k in self.result.written if k.name == name)
        assert password is not None, f"kit {name} was written without a key, so without a password"
        return password


@pytest.fixture
def provision_into(tmp_path: Path) -> Callable[..., ProvisionedWorkspace]:
    """Provision a project mapping into ``tmp_path/workspace`` (again, if called again)."""

    def run(mapping: dict[str, Any], force: bool = False) -> ProvisionedWorkspace:
        project = parse_project(mapping)
        root = tmp_path / "workspace"
        return ProvisionedWorkspace(root, project, provision_workspace(project, root, force=force))

    return run


@pytest.fixture
def provisioned_workspace(
    provision_project_mapping: dict[str, Any], provision_into: Callable[..., ProvisionedWorkspace]
) -> ProvisionedWorkspace:
    """The example project provisioned once into a fresh workspace."""
    return provision_into(provision_project_mapping)


@pytest.fixture
def umask_000() -> Iterator[None]:
    """A shell whose umask lets everyone write what it creates."""
    previous = os.umask(0)
    try:
        yield
    finally:
        os.umask(previous)
