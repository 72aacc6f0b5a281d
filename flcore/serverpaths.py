"""The two paths an app names for the server to use, kept where the server's operator allows.

An app is written by a remote admin, but the server uses two of its paths
with its own rights: it reads ``initial_checkpoint`` (and sends the model
built from it to every site), and MLflow writes where ``tracking_uri``
says. Unchecked, an app could send another project's model on the same host
to its sites, or have MLflow write wherever the server may. So:

- a relative ``initial_checkpoint`` names a file in the app; an absolute one
  a file in the server's workspace or in a folder of ``checkpoint_dirs``,
  which only the server's operator sets (``local/fed_server.json``);
- MLflow's file store, or its SQLite file, lies in the server's workspace,
  outside the folders the server keeps for itself (``SERVER_OWN``, ``run_N``).
  Tracking servers (``http``, ``https``) and other databases are not paths
  on the server and stay as the app names them.

Each path is judged with its links followed, and what was judged is what is
used: the model-init child reads the resolved checkpoint, MLflow gets the
canonical URI built here, never the one the app wrote. The server checks at
upload and at ``start server``; the model-init child checks again as it reads,
and the tracker before it hands MLflow the URI.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import SplitResult, unquote, urlsplit

from flcore.appconfig import CONFIG_DIR, SERVER_CONFIG, ServerAppConfig
from flcore.schema import ConfigError, shown
from flcore.startup import LOCAL_DIR, SERVER_FILE, STARTUP_DIR

SERVER_OWN = (STARTUP_DIR, LOCAL_DIR, "state", "transfer")
"""Folders of the server's workspace that hold its kit, its operator's settings, its state
and the uploaded apps: never MLflow's (nor are the run folders, ``run_N``)."""
RUN_FOLDER = re.compile(r"run_\d+")
WHERE = f"{CONFIG_DIR}/{SERVER_CONFIG}"


def _resolved(path: Path, what: str) -> Path:
    """``path`` with every link followed (RuntimeError: a loop, on Python before 3.13)."""
    try:
        return path.resolve()
    except (OSError, RuntimeError, ValueError):
        raise ConfigError(f"{WHERE}: {what} cannot be resolved (a loop of links?)") from None


def _within(path: Path, folder: Path) -> bool:
    return path != folder and path.is_relative_to(folder)


def checkpoint_folders(workspace: Path, checkpoint_dirs: Sequence[str]) -> tuple[Path, ...]:
    """Where an absolute ``initial_checkpoint`` may lie: the workspace and the operator's
    ``checkpoint_dirs``."""
    return (workspace, *(Path(folder) for folder in checkpoint_dirs))


def checkpoint_file(app_root: Path, name: str, folders: Sequence[Path]) -> Path:
    """The file ``initial_checkpoint`` names, links followed; ConfigError where the server
    may not read it."""
    given = Path(name)
    if not given.is_absolute():
        path = _resolved(app_root / given, f"initial_checkpoint {shown(name)}")
        if _within(path, _resolved(app_root, "the app's folder")):
            return path
        raise ConfigError(
            f"{WHERE}: initial_checkpoint {shown(name)} leads out of the app: a relative path "
            "names a file in the app, such as resources/pretrained.safetensors"
        )
    path = _resolved(given, f"initial_checkpoint {shown(name)}")
    allowed = [_resolved(folder, f"the checkpoint folder {folder}") for folder in folders]
    if any(_within(path, folder) for folder in allowed):
        return path
    raise ConfigError(
        f"{WHERE}: initial_checkpoint {shown(name)} is outside the folders this server reads "
        f"checkpoints from ({', '.join(str(folder) for folder in allowed)}): put the file in "
        "the app's resources/ and name it relative to the app, or ask the server's operator "
        f"to add its folder to checkpoint_dirs in the server's {LOCAL_DIR}/{SERVER_FILE}"
    )


def tracking_store(uri: str, workspace: Path) -> str:
    """The URI MLflow gets: its file store or SQLite file resolved inside the workspace (a
    relative path is the workspace's), a tracking server's or another database's URI as it
    is; ConfigError where MLflow would write elsewhere."""
    parts = urlsplit(uri)
    scheme = parts.scheme.lower()
    if len(scheme) <= 1:  # a path (a Windows drive letter too)
        return _store(Path(uri), workspace, uri).as_uri()
    if scheme == "file":
        _plainly_local(parts, uri, ("", "localhost"))
        return _store(Path(unquote(parts.path)), workspace, uri).as_uri()
    if scheme == "sqlite":
        _plainly_local(parts, uri, ("",))
        database = parts.path[1:]
        if database in ("", ":memory:"):  # in memory: nothing is written
            return uri
        path = _store(Path(database), workspace, uri)
        if "%" in database or any(char in str(path) for char in "%?#"):
            raise ConfigError(
                f"{WHERE}: mlflow: 'tracking_uri' {shown(uri)}: name the SQLite file without "
                "'%', '?' or '#'"
            )
        return f"sqlite:///{path}"
    return uri


def _plainly_local(parts: SplitResult, uri: str, hosts: tuple[str, ...]) -> None:
    """A host, a query or a fragment would change which file is meant, past what is judged."""
    if parts.netloc.lower() not in hosts or parts.query or parts.fragment:
        raise ConfigError(
            f"{WHERE}: mlflow: 'tracking_uri' {shown(uri)} must name a file on this server "
            "without a host, a query or a fragment"
        )


def _store(path: Path, workspace: Path, uri: str) -> Path:
    root = _resolved(workspace, "the server's workspace")
    store = _resolved(root / path, f"mlflow: 'tracking_uri' {shown(uri)}")
    if not _within(store, root):
        raise ConfigError(
            f"{WHERE}: mlflow: 'tracking_uri' {shown(uri)} leads MLflow out of the server's "
            "workspace: name a path inside it (a relative path is, such as mlruns), or a "
            "tracking server's URL"
        )
    top = store.relative_to(root).parts[0]
    if top in SERVER_OWN or RUN_FOLDER.fullmatch(top):
        raise ConfigError(
            f"{WHERE}: mlflow: 'tracking_uri' {shown(uri)} leads MLflow into {top}/, which "
            "the server keeps for itself: name another path in its workspace, such as mlruns"
        )
    return store


def check_app_paths(
    app_root: Path, config: ServerAppConfig | None, workspace: Path, checkpoint_dirs: Sequence[str]
) -> None:
    """Refuse a server app whose ``initial_checkpoint`` or MLflow store the server may not
    use (the file need not exist yet: that is checked as it is read)."""
    if config is None:
        return
    if config.initial_checkpoint:
        folders = checkpoint_folders(workspace, checkpoint_dirs)
        checkpoint_file(app_root, config.initial_checkpoint, folders)
    if config.mlflow is not None:
        tracking_store(config.mlflow.tracking_uri, workspace)
