"""The paths an app names for the server to use stay where the server's operator allows:
``initial_checkpoint`` in the app, the workspace or ``checkpoint_dirs``; MLflow's file store
and SQLite file in the workspace, outside the server's own folders."""

from __future__ import annotations

import re
from contextlib import AbstractContextManager
from pathlib import Path

import pytest

from flcore.appconfig import MlflowSettings, ServerAppConfig
from flcore.schema import ConfigError, shown
from flcore.serverpaths import check_app_paths, checkpoint_file, checkpoint_folders, tracking_store


@pytest.fixture
def host(tmp_path: Path) -> Path:
    """A host with two projects' workspaces and an operator's folder of checkpoints."""
    for folder in ("ws/run_1/app_server/resources", "other/run_1", "pretrained"):
        (tmp_path / folder).mkdir(parents=True)
    return tmp_path


def refused(message: str) -> AbstractContextManager[pytest.ExceptionInfo[ConfigError]]:
    return pytest.raises(ConfigError, match=re.escape(message))


def test_a_relative_checkpoint_is_a_file_in_the_app(host: Path) -> None:
    app = host / "ws" / "run_1" / "app_server"
    name = "resources/start.safetensors"
    assert checkpoint_file(app, name, [host / "ws"]) == app / name
    for escaping in ("../../../other/run_1/best_global_model.safetensors", "resources/../../x"):
        with refused(f"initial_checkpoint {escaping!r} leads out of the app: a relative path"):
            checkpoint_file(app, escaping, [host / "ws"])
    # A link in the app is followed before it is judged (an upload holds none; a copy might).
    (app / "resources" / "link").symlink_to(host / "other" / "run_1")
    with refused("leads out of the app"):
        checkpoint_file(app, "resources/link/best_global_model.safetensors", [host / "ws"])


def test_an_absolute_checkpoint_lies_in_the_workspace_or_a_folder_the_operator_allows(
    host: Path,
) -> None:
    app = host / "ws" / "run_2" / "app_server"
    folders = checkpoint_folders(host / "ws", [str(host / "pretrained")])
    mine = host / "ws" / "run_1" / "best_global_model.safetensors"
    assert checkpoint_file(app, str(mine), folders) == mine
    lead = host / "pretrained" / "resnet.pt"
    assert checkpoint_file(app, str(lead), folders) == lead
    another_project = host / "other" / "run_1" / "best_global_model.safetensors"
    for name in (another_project, host / "ws" / ".." / "other" / "x.pt", Path("/etc/passwd")):
        with refused(
            f"is outside the folders this server reads "
            f"checkpoints from ({host / 'ws'}, {host / 'pretrained'}): put the file in the "
            "app's resources/ and name it relative to the app, or ask the server's operator "
            "to add its folder to checkpoint_dirs in the server's local/fed_server.json"
        ):
            checkpoint_file(app, str(name), folders)
    (host / "pretrained" / "link").symlink_to(host / "other")
    with refused("is outside the folders"):
        checkpoint_file(app, str(host / "pretrained" / "link" / "run_1" / "x.pt"), folders)
    with refused("is outside the folders"):  # a folder itself is no file in it
        checkpoint_file(app, str(host / "pretrained"), folders)


def test_mlflow_files_stay_in_the_workspace(host: Path) -> None:
    ws = host / "ws"
    assert tracking_store("mlruns", ws) == (ws / "mlruns").as_uri()
    assert tracking_store("file:mlruns", ws) == (ws / "mlruns").as_uri()
    assert tracking_store(str(ws / "tracking"), ws) == (ws / "tracking").as_uri()
    assert tracking_store(f"file://localhost{ws}/a%20b", ws) == (ws / "a b").as_uri()
    assert tracking_store("sqlite:///mlflow.db", ws) == f"sqlite:///{ws / 'mlflow.db'}"
    assert tracking_store(f"sqlite:///{ws}/t/mlflow.db", ws) == f"sqlite:///{ws}/t/mlflow.db"
    for outside in (
        "../other/mlruns",
        "/srv/mlruns",
        str(host / "other" / "mlruns"),
        "file:///srv/mlruns",
        "file:mlruns/%2e%2e/%2e%2e/other",
        ".",
        "sqlite:////srv/mlflow.db",
        "sqlite:///../other/mlflow.db",
    ):
        with refused(f"'tracking_uri' {shown(outside)} leads MLflow out of the server's workspace"):
            tracking_store(outside, ws)
    (ws / "elsewhere").symlink_to(host / "other")
    with refused("leads MLflow out of the server's workspace"):
        tracking_store("elsewhere/mlruns", ws)


@pytest.mark.parametrize(
    ("uri", "own"),
    [
        ("startup", "startup"),
        ("local/mlruns", "local"),
        ("sqlite:///state/flserverd.sqlite3", "state"),
        ("transfer/mlruns", "transfer"),
        ("run_1/mlruns", "run_1"),
    ],
)
def test_mlflow_stays_out_of_the_servers_own_folders(host: Path, uri: str, own: str) -> None:
    with refused(f"leads MLflow into {own}/, which the server keeps for itself"):
        tracking_store(uri, host / "ws")


@pytest.mark.parametrize(
    "uri",
    [
        "file://mlflow.example.org/srv/mlruns",
        "file:///srv/mlruns?x=1",
        "sqlite://host/mlflow.db",
        "sqlite:///mlflow.db?uri=true",
        "sqlite:///mlflow.db#x",
    ],
)
def test_a_host_query_or_fragment_on_a_file_is_refused(host: Path, uri: str) -> None:
    with refused("must name a file on this server without a host, a query or a fragment"):
        tracking_store(uri, host / "ws")


def test_a_sqlite_file_is_named_plainly(host: Path) -> None:
    with refused("name the SQLite file without '%', '?' or '#'"):
        tracking_store("sqlite:///a%2F..%2F..%2Fx.db", host / "ws")


def test_what_is_no_file_on_the_server_stays_as_the_app_names_it(host: Path) -> None:
    for uri in (
        "http://mlflow:5000",
        "https://mlflow.example.org",
        "postgresql://db.example.org/mlflow?sslmode=require",
        "sqlite://",
        "sqlite:///:memory:",
    ):
        assert tracking_store(uri, host / "ws") == uri


def test_an_app_is_checked_for_both(host: Path) -> None:
    ws, app = host / "ws", host / "ws" / "run_1" / "app_server"
    outside = str(host / "other" / "x.pt")
    check_app_paths(app, None, ws, [])
    check_app_paths(app, ServerAppConfig(initial_checkpoint="resources/x.pt"), ws, [])
    check_app_paths(app, ServerAppConfig(initial_checkpoint=outside), ws, [str(host / "other")])
    with refused("is outside the folders"):
        check_app_paths(app, ServerAppConfig(initial_checkpoint=outside), ws, [])
    with refused("leads MLflow out of the server's workspace"):
        check_app_paths(app, ServerAppConfig(mlflow=MlflowSettings("/srv/mlruns")), ws, [])
