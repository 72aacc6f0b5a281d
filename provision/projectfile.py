"""Reading and writing project.yml.

Reading refuses a key written twice in one mapping (YAML would quietly keep
the last one, and a second ``server:`` is always a mistake). Writing produces
the plain layout of the sample file so the console's wizard and a person with
an editor can take turns on the same project.yml.
"""

from __future__ import annotations

import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

import yaml

from flcore.schema import ConfigError
from provision.errors import ProvisionError
from provision.project import Project, parse_project


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys."""


def _mapping_without_duplicates(loader: _StrictLoader, node: yaml.MappingNode) -> Any:
    seen: set[object] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node)
        if key in seen:
            line = key_node.start_mark.line + 1
            raise ConfigError(f"line {line}: key {key!r} is written twice")
        seen.add(key)
    return loader.construct_mapping(node)


_StrictLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping_without_duplicates
)


def parse_project_yaml(text: str, source: str) -> Project:
    """Parse and check project.yml content; messages start with ``source``."""
    try:
        data = yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: not valid YAML ({' '.join(str(exc).split())})") from None
    return parse_project(data, source)


def load_project(path: Path) -> Project:
    """Read and check a project.yml.

    Raises:
        ProvisionError: the file cannot be read.
        ConfigError: it is not valid YAML or breaks the schema.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ProvisionError(f"{path}: cannot read it ({reason})") from None
    return parse_project_yaml(text, str(path))


def project_to_dict(project: Project) -> dict[str, Any]:
    """The mapping project.yml holds for ``project``; a client without email omits it."""
    return {
        "api_version": project.api_version,
        "name": project.name,
        "server": asdict(project.server),
        "clients": [
            {k: v for k, v in asdict(client).items() if v is not None} for client in project.clients
        ],
        "admins": [asdict(admin) for admin in project.admins],
        "settings": asdict(project.settings),
    }


def project_to_yaml(project: Project) -> str:
    """Serialise ``project`` as project.yml text that :func:`load_project` reads back."""
    return yaml.safe_dump(project_to_dict(project), sort_keys=False, default_flow_style=False)


def write_project(project: Project, path: Path) -> None:
    """Write ``project`` to ``path``, replacing it atomically."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(project_to_yaml(project), encoding="utf-8")
    os.replace(tmp, path)
