"""Reading and writing project.yml.

Reading refuses a key written twice in one mapping (YAML would quietly keep
the last one, and a second ``server:`` is always a mistake), and goes through
:mod:`flcore.configfile`, so a file above 1 MiB, nesting beyond 32 levels or
aliases that expand a 'billion laughs' are refused before anything is built.
Writing produces the plain layout of the sample file so the console's wizard
and a person with an editor can take turns on the same project.yml.
"""

from __future__ import annotations

import os
from collections.abc import Hashable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import yaml

from flcore.configfile import BoundedLoader, parse_yaml, read_bounded
from flcore.schema import ConfigError
from provision.errors import ProvisionError
from provision.project import Project, parse_project


class _StrictLoader(BoundedLoader):
    """The bounded SafeLoader, also refusing duplicate keys and keys that are not plain values."""


def _mapping_without_duplicates(loader: _StrictLoader, node: yaml.MappingNode) -> Any:
    seen: set[Hashable] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node)
        line = key_node.start_mark.line + 1
        if not isinstance(key, Hashable):
            raise ConfigError(f"line {line}: a key must be a plain word, not a list or mapping")
        if key in seen:
            raise ConfigError(f"line {line}: key {key!r} is written twice")
        seen.add(key)
    return loader.construct_mapping(node)


_StrictLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping_without_duplicates
)


def parse_project_yaml(text: str, source: str) -> Project:
    """Parse and check project.yml content; messages start with ``source``."""
    return parse_project(parse_yaml(text, source, _StrictLoader), source)


def load_project(path: Path) -> Project:
    """Read and check a project.yml.

    Raises:
        ProvisionError: the file cannot be read.
        ConfigError: it is too large, not valid YAML or breaks the schema.
    """
    try:
        text = read_bounded(path).decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ProvisionError(f"{path}: cannot read it ({reason})") from None
    return parse_project_yaml(text, str(path))


def project_to_dict(project: Project) -> dict[str, Any]:
    """The mapping project.yml holds for ``project``; defaults a person leaves out are left out."""
    return {
        "api_version": project.api_version,
        "name": project.name,
        "server": asdict(project.server),
        "clients": [_written(asdict(client)) for client in project.clients],
        "admins": [_written(asdict(admin)) for admin in project.admins],
        "settings": {key: as_written(value) for key, value in asdict(project.settings).items()},
    }


def _written(entry: dict[str, Any]) -> dict[str, Any]:
    """A client or admin entry without what is left at its default (no email, no csr)."""
    return {key: value for key, value in entry.items() if value not in (None, False)}


def as_written(value: Any) -> Any:
    """A number as a person writes it: ``600``, not the ``600.0`` a float setting holds."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def project_to_yaml(project: Project) -> str:
    """Serialise ``project`` as project.yml text that :func:`load_project` reads back."""
    return yaml.safe_dump(project_to_dict(project), sort_keys=False, default_flow_style=False)


def write_project(project: Project, path: Path) -> None:
    """Write ``project`` to ``path``, replacing it atomically."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(project_to_yaml(project), encoding="utf-8")
    os.replace(tmp, path)
