"""The apps deployed at a site: ``run_<N>/app_<instance>/``, each with the name it was
deployed under in ``.app_name`` (the folder itself is named for the instance)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

APP_NAME_FILE = ".app_name"
_APP_FOLDER = re.compile(r"run_(\d+)/app_[^/]+")


@dataclass(frozen=True)
class DeployedApp:
    """One deployed copy of an app."""

    run_number: int
    folder: Path
    name: str


def deployed_name(app_dir: Path) -> str:
    """The name an app folder was deployed under ('' when it does not say)."""
    try:
        return (app_dir / APP_NAME_FILE).read_text().strip()
    except (FileNotFoundError, NotADirectoryError):
        return ""


def deployed_apps(workspace: Path) -> list[DeployedApp]:
    """Every app deployed in the workspace, newest run first."""
    found = []
    for folder in workspace.glob("run_*/app_*"):
        match = _APP_FOLDER.fullmatch(folder.relative_to(workspace).as_posix())
        if match and folder.is_dir():
            found.append(DeployedApp(int(match[1]), folder, deployed_name(folder)))
    return sorted(found, key=lambda app: (-app.run_number, app.folder.name))
