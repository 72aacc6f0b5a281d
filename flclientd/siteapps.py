"""The apps deployed at a site: ``run_<N>/app_<instance>/``, each with the name it was
deployed under in ``.app_name`` (the folder itself is named for the instance).

A site keeps the apps of the runs it uses and of the ``keep_deployed_apps`` newest
others; each deploy, and the daemon's start, removes the rest (:func:`retired_apps`). They
are copies: the server keeps every run's app for good, and a deploy brings one back.

A deploy receives the new copy, and a removal sets the old one aside, under a hidden name
beside the app's folder (:func:`aside_name`): what a crash leaves there (:func:`leftovers`)
is removed by the next deploy of that run and by the daemon's start.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path

APP_NAME_FILE = ".app_name"
_APP_FOLDER = re.compile(r"run_(\d+)/app_[^/]+")
_RUN_FOLDER = re.compile(r"run_\d+")


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


def instance_apps(workspace: Path, instance: str) -> list[DeployedApp]:
    """The apps this instance deployed, newest run first, each a folder of the workspace
    itself: not a link, nor in a run folder that is one (what site IT linked in, or moved
    to another disk, stays theirs). Other instances of the kit in the same workspace keep
    their own."""
    root = workspace.resolve()
    return [
        app
        for app in deployed_apps(workspace)
        if app.folder.name == f"app_{instance}"
        and app.folder.resolve() == root / app.folder.parent.name / app.folder.name
    ]


def retired_apps(
    apps: Sequence[DeployedApp], in_use: Collection[int], keep: int
) -> list[DeployedApp]:
    """Which of one instance's ``apps`` the site removes: all but those of the runs
    ``in_use`` (the one deployed, trained, rejoined or waiting for approval) and of the
    ``keep`` highest-numbered other runs. Numbers, not dates: a folder's time changes with
    a copy or a restore, a run's number does not."""
    others = sorted({app.run_number for app in apps} - set(in_use), reverse=True)
    kept = set(in_use) | set(others[:keep])
    return [app for app in apps if app.run_number not in kept]


def aside_name(folder: Path) -> Path:
    """A new hidden name beside ``folder`` (``.app_<instance>.<32 hex digits>``), which no
    ``run_*/app_*`` pattern finds: nothing reads half an app received or deleted there."""
    return folder.with_name(f".{folder.name}.{uuid.uuid4().hex}")


def leftovers(folder: Path) -> list[Path]:
    """What :func:`aside_name` names beside ``folder`` (none when its run folder is gone). The
    instance's name is matched whole: ``.app_site-a_2.<hex>`` is not one of ``app_site-a``'s."""
    pattern = re.compile(re.escape(f".{folder.name}.") + "[0-9a-f]{32}")
    if not folder.parent.is_dir():
        return []
    return sorted(path for path in folder.parent.iterdir() if pattern.fullmatch(path.name))


def own_run_folders(workspace: Path) -> list[Path]:
    """The workspace's ``run_<N>`` folders that are folders of its own, not links (see
    :func:`instance_apps`)."""
    return sorted(
        path
        for path in workspace.glob("run_*")
        if _RUN_FOLDER.fullmatch(path.name) and path.is_dir() and not path.is_symlink()
    )
