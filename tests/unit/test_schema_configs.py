"""Config files people edit: the schema checker, startup configs and app configs."""

from __future__ import annotations

import json
import os
import pwd
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from flcore import appconfig, startup
from flcore.appconfig import (
    BundleConfig,
    ClientAppConfig,
    ComponentSpec,
    ServerAppConfig,
    TrainConfig,
    load_app,
)
from flcore.compression import WireCompression
from flcore.schema import (
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
from flcore.tls import TlsFiles

# --------------------------------------------------------------------------- schema

FIELDS = [
    Field("name", str, required=True, check=name_like),
    Field("port", int, default=8002, check=in_range(1, 65535)),
    Field("rate", float, default=1.5, check=at_least(0.1)),
    Field("on", bool, default=False),
    Field("mode", str, default="max", check=one_of("max", "min")),
    Field("opt", (str, type(None)), default=None, check=non_empty),
]


def test_parse_mapping_fills_defaults() -> None:
    assert parse_mapping({"name": "site-a"}, FIELDS, "f.json") == {
        "name": "site-a",
        "port": 8002,
        "rate": 1.5,
        "on": False,
        "mode": "max",
        "opt": None,
    }


def test_parse_mapping_int_for_float_becomes_float() -> None:
    out = parse_mapping({"name": "a", "rate": 2}, FIELDS, "f.json")
    assert out["rate"] == 2.0 and isinstance(out["rate"], float)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ([1, 2], "f.json: expected a mapping of keys to values, got a list"),
        ("text", "f.json: expected a mapping of keys to values, got a string"),
        ({}, "f.json: missing required key 'name'"),
        (
            {"name": "a", "colour": 1},
            "f.json: unknown key 'colour' (allowed keys: mode, name, on, opt, port, rate)",
        ),
        ({"name": "a", "port": "80"}, "f.json: 'port' must be an integer, got '80'"),
        ({"name": "a", "port": 8.5}, "f.json: 'port' must be an integer, got 8.5"),
        ({"name": "a", "port": True}, "f.json: 'port' must be an integer, got true"),
        ({"name": "a", "on": 1}, "f.json: 'on' must be true or false, got 1"),
        ({"name": "a", "rate": True}, "f.json: 'rate' must be a number, got true"),
        ({"name": "a", "opt": 3}, "f.json: 'opt' must be a string or null, got 3"),
        ({"name": "a", "port": 0}, "f.json: 'port' must be between 1 and 65535, got 0"),
        ({"name": "a", "port": 65536}, "f.json: 'port' must be between 1 and 65535, got 65536"),
        ({"name": "a", "rate": 0.05}, "f.json: 'rate' must be at least 0.1, got 0.05"),
        ({"name": "a", "mode": "avg"}, "f.json: 'mode' must be one of max, min, got 'avg'"),
        ({"name": "a", "opt": ""}, "f.json: 'opt' must not be empty, got ''"),
        ({"name": "-bad"}, "f.json: 'name' must be 1-63 letters"),
        ({"name": "a" * 64}, "f.json: 'name' must be 1-63 letters"),
        ({"name": "a/b"}, "f.json: 'name' must be 1-63 letters"),
    ],
)
def test_parse_mapping_errors_name_file_and_key(data: Any, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_mapping(data, FIELDS, "f.json")
    assert str(info.value).startswith(message)


@pytest.mark.parametrize("good", ["a@b.org", "first.last+tag@sub.example.org"])
def test_email_like_accepts(good: str) -> None:
    assert email_like(good) is None


@pytest.mark.parametrize(
    "bad", ["a@b", "ab.org", "@b.org", "a b@c.org", "a@b..org", "a@b.org\n", "a@b.org\nx"]
)
def test_email_like_refuses(bad: str) -> None:
    assert email_like(bad) is not None


@pytest.mark.parametrize("bad", ["demo\n", "demo\nx", "", "-demo", "a" * 64])
def test_name_like_refuses_even_a_trailing_newline(bad: str) -> None:
    assert name_like(bad) is not None
    assert name_like("demo") is None


@pytest.mark.parametrize(
    ("host", "target"),
    [
        ("fl.example.org", "fl.example.org:8002"),
        ("10.0.0.5", "10.0.0.5:8002"),
        ("::1", "[::1]:8002"),
        ("2001:db8::7", "[2001:db8::7]:8002"),
    ],
)
def test_targets_bracket_ipv6_addresses(host: str, target: str) -> None:
    assert startup.host_port(host, 8002) == target
    assert replace(CLIENT, server_host=host).server_target == target
    assert replace(ADMIN, server_host=host, admin_port=8002).admin_target == target


# --------------------------------------------------------------------------- startup

SERVER = startup.ServerStartup(
    project="demo",
    name="server",
    host="fl.example.org",
    fed_port=8002,
    admin_port=8003,
    listen_host="0.0.0.0",  # noqa: S104
    heart_beat_timeout=600.0,
    heartbeat_interval=60.0,
)
CLIENT = startup.ClientStartup(
    project="demo",
    name="site-a",
    server_host="fl.example.org",
    fed_port=8002,
    heartbeat_interval=1.0,
)
ADMIN = startup.AdminStartup(
    project="demo",
    email="lead@example.org",
    role="super",
    server_host="fl.example.org",
    admin_port=8003,
)


def _private_key(folder: Path, name: str, mode: int = 0o600) -> Path:
    """A stand-in key file: the loaders look at its mode, TLS would read it."""
    key = folder / name
    key.write_text("-----BEGIN PRIVATE KEY-----\n")
    key.chmod(mode)
    return key


def _workspace(root: Path, file_name: str, text: str, local: object = None) -> Path:
    (root / "startup").mkdir(parents=True)
    (root / "startup" / file_name).write_text(text)
    _private_key(root / "startup", "server.key" if "server" in file_name else "client.key")
    if local is not None:
        (root / "local").mkdir()
        (root / "local" / file_name).write_text(
            local if isinstance(local, str) else json.dumps(local)
        )
    return root


def test_load_server_round_trip(tmp_path: Path) -> None:
    ws = _workspace(tmp_path, "fed_server.json", startup.to_json(SERVER))
    assert startup.load_server(ws) == SERVER


def test_load_client_round_trip(tmp_path: Path) -> None:
    ws = _workspace(tmp_path, "fed_client.json", startup.to_json(CLIENT))
    loaded = startup.load_client(ws)
    assert loaded == CLIENT
    assert loaded.server_target == "fl.example.org:8002"


def test_load_admin_round_trip(tmp_path: Path) -> None:
    (tmp_path / "fed_admin.json").write_text(startup.to_json(ADMIN))
    _private_key(tmp_path, "client.key")
    loaded = startup.load_admin(tmp_path)
    assert loaded == ADMIN
    assert loaded.admin_target == "fl.example.org:8003"


def test_load_server_local_overrides_merged(tmp_path: Path) -> None:
    ws = _workspace(
        tmp_path,
        "fed_server.json",
        startup.to_json(SERVER),
        {"listen_host": "127.0.0.1", "max_upload_mb": 50},
    )
    loaded = startup.load_server(ws)
    assert loaded.listen_host == "127.0.0.1"
    assert loaded.max_upload_mb == 50
    # keys the local file does not name keep the signed values, not the defaults
    assert loaded.heart_beat_timeout == 600.0
    assert loaded.host == "fl.example.org"


def test_load_client_local_overrides_merged(tmp_path: Path) -> None:
    ws = _workspace(
        tmp_path,
        "fed_client.json",
        startup.to_json(CLIENT),
        {"retry_window": 120, "forward_logs": False, "allow_cpu_mgpu": True},
    )
    loaded = startup.load_client(ws)
    assert loaded.retry_window == 120.0 and isinstance(loaded.retry_window, float)
    assert loaded.forward_logs is False
    assert loaded.allow_cpu_mgpu is True
    assert loaded.heartbeat_interval == 1.0  # signed value, not the 60 s default


def test_trust_custom_code_is_off_unless_the_site_turns_it_on(tmp_path: Path) -> None:
    assert (
        startup.load_client(
            _workspace(tmp_path / "a", "fed_client.json", startup.to_json(CLIENT))
        ).trust_custom_code
        is False
    )
    assert "trust_custom_code" not in startup.to_json(CLIENT)
    ws = _workspace(
        tmp_path / "b", "fed_client.json", startup.to_json(CLIENT), {"trust_custom_code": True}
    )
    assert startup.load_client(ws).trust_custom_code is True


def test_how_many_old_apps_a_site_keeps_is_the_sites_to_set(tmp_path: Path) -> None:
    """Its disk, its call: the kit carries no such key, and local/ sets it."""
    assert "keep_deployed_apps" not in startup.to_json(CLIENT)
    default = _workspace(tmp_path / "a", "fed_client.json", startup.to_json(CLIENT))
    assert startup.load_client(default).keep_deployed_apps == 5
    ws = _workspace(
        tmp_path / "b", "fed_client.json", startup.to_json(CLIENT), {"keep_deployed_apps": 0}
    )
    assert startup.load_client(ws).keep_deployed_apps == 0
    ws = _workspace(
        tmp_path / "c", "fed_client.json", startup.to_json(CLIENT), {"keep_deployed_apps": -1}
    )
    with pytest.raises(ConfigError, match=r"keep_deployed_apps.*must be at least 0"):
        startup.load_client(ws)


@pytest.mark.parametrize(("changed", "mode"), [("file", 0o666), ("file", 0o620), ("folder", 0o777)])
def test_a_local_override_others_may_change_is_refused(
    tmp_path: Path, changed: str, mode: int
) -> None:
    """It may turn trust_custom_code on: anyone who may write it, or replace it through its
    folder, would decide which code the site runs."""
    ws = _workspace(
        tmp_path, "fed_client.json", startup.to_json(CLIENT), {"trust_custom_code": True}
    )
    local = ws / "local" / "fed_client.json"
    (local if changed == "file" else local.parent).chmod(mode)
    what = "fed_client.json" if changed == "file" else f"its folder {local.parent}"
    with pytest.raises(ConfigError, match=f"{re.escape(what)} has mode {mode:04o}.*chmod go-w"):
        startup.load_client(ws)


@pytest.mark.parametrize(("changed", "mode"), [("file", 0o666), ("folder", 0o777)])
def test_a_startup_folder_others_may_change_is_refused(
    tmp_path: Path, changed: str, mode: int
) -> None:
    """The seal is checked once, at start: anyone who may replace a kit file afterwards (the
    CA, the key) through its mode or its folder's decides whom the site trusts."""
    ws = _workspace(tmp_path, "fed_client.json", startup.to_json(CLIENT))
    signed = ws / "startup" / "fed_client.json"
    (signed if changed == "file" else signed.parent).chmod(mode)
    what = "fed_client.json" if changed == "file" else f"its folder {signed.parent}"
    with pytest.raises(ConfigError, match=f"{re.escape(what)} has mode {mode:04o}.*chmod -R go-w"):
        startup.load_client(ws)


def test_a_kit_cannot_decide_to_trust_custom_code_for_the_site(tmp_path: Path) -> None:
    signed = json.loads(startup.to_json(CLIENT))
    signed["trust_custom_code"] = True
    ws = _workspace(tmp_path, "fed_client.json", json.dumps(signed))
    with pytest.raises(
        ConfigError, match=r"startup/fed_client\.json: unknown key 'trust_custom_code'"
    ):
        startup.load_client(ws)


def test_only_the_servers_operator_names_the_folders_it_reads_checkpoints_from(
    tmp_path: Path,
) -> None:
    """What the server reads for an app and sends to every site is its operator's decision:
    not the kit's, nor the app's (flcore.serverpaths)."""
    assert (
        startup.load_server(
            _workspace(tmp_path / "a", "fed_server.json", startup.to_json(SERVER))
        ).checkpoint_dirs
        == ()
    )
    assert "checkpoint_dirs" not in startup.to_json(SERVER)
    ws = _workspace(
        tmp_path / "b",
        "fed_server.json",
        startup.to_json(SERVER),
        {"checkpoint_dirs": ["/srv/pretrained", "/data/models"]},
    )
    assert startup.load_server(ws).checkpoint_dirs == ("/srv/pretrained", "/data/models")
    signed = json.loads(startup.to_json(SERVER))
    signed["checkpoint_dirs"] = ["/"]
    ws = _workspace(tmp_path / "c", "fed_server.json", json.dumps(signed))
    with pytest.raises(
        ConfigError, match=r"startup/fed_server\.json: unknown key 'checkpoint_dirs'"
    ):
        startup.load_server(ws)
    for number, value in enumerate((["pretrained"], [7], "/srv", ["/a\0b"])):
        ws = _workspace(
            tmp_path / f"d{number}",
            "fed_server.json",
            startup.to_json(SERVER),
            {"checkpoint_dirs": value},
        )
        with pytest.raises(ConfigError, match=r"local/fed_server\.json: 'checkpoint_dirs' must be"):
            startup.load_server(ws)


@pytest.mark.parametrize("key", ["fed_port", "server_host", "ssl_cert", "name", "project"])
def test_load_client_local_refuses_signed_keys(tmp_path: Path, key: str) -> None:
    value = getattr(CLIENT, key)
    ws = _workspace(tmp_path, "fed_client.json", startup.to_json(CLIENT), {key: value})
    with pytest.raises(ConfigError) as info:
        startup.load_client(ws)
    message = str(info.value)
    assert message.startswith(str(ws / "local" / "fed_client.json"))
    assert f"unknown key {key!r}" in message
    assert "heartbeat_interval" in message  # names what may be set there


@pytest.mark.parametrize("key", ["fed_port", "admin_port", "ssl_private_key", "host"])
def test_load_server_local_refuses_signed_keys(tmp_path: Path, key: str) -> None:
    ws = _workspace(
        tmp_path, "fed_server.json", startup.to_json(SERVER), {key: getattr(SERVER, key)}
    )
    with pytest.raises(ConfigError, match=f"local/fed_server.json: unknown key {key!r}"):
        startup.load_server(ws)


def test_load_server_local_invalid_value(tmp_path: Path) -> None:
    ws = _workspace(tmp_path, "fed_server.json", startup.to_json(SERVER), {"heart_beat_timeout": 0})
    with pytest.raises(
        ConfigError, match=re.escape("local/fed_server.json: 'heart_beat_timeout' must be")
    ):
        startup.load_server(ws)


def test_load_local_not_json(tmp_path: Path) -> None:
    ws = _workspace(tmp_path, "fed_client.json", startup.to_json(CLIENT), "{oops")
    with pytest.raises(ConfigError, match=re.escape("local/fed_client.json: not valid JSON")):
        startup.load_client(ws)


def test_load_server_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=re.escape("startup/fed_server.json: not found")):
        startup.load_server(tmp_path)


def test_load_signed_invalid(tmp_path: Path) -> None:
    data = json.loads(startup.to_json(SERVER))
    data["fed_port"] = 70000
    ws = _workspace(tmp_path, "fed_server.json", json.dumps(data))
    with pytest.raises(
        ConfigError, match=re.escape("startup/fed_server.json: 'fed_port' must be between")
    ):
        startup.load_server(ws)


def test_load_signed_wrong_format_version(tmp_path: Path) -> None:
    data = json.loads(startup.to_json(CLIENT))
    data["format_version"] = 2
    ws = _workspace(tmp_path, "fed_client.json", json.dumps(data))
    with pytest.raises(ConfigError, match="'format_version' must be one of 1"):
        startup.load_client(ws)


def test_load_admin_bad_role(tmp_path: Path) -> None:
    data = json.loads(startup.to_json(ADMIN))
    data["role"] = "root"
    (tmp_path / "fed_admin.json").write_text(json.dumps(data))
    with pytest.raises(
        ConfigError, match=re.escape("fed_admin.json: 'role' must be one of super, member")
    ):
        startup.load_admin(tmp_path)


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644, 0o660])
@pytest.mark.parametrize("kind", ["server", "client", "admin"])
def test_a_private_key_others_may_read_is_refused(tmp_path: Path, kind: str, mode: int) -> None:
    if kind == "admin":
        (tmp_path / "fed_admin.json").write_text(startup.to_json(ADMIN))
        key = _private_key(tmp_path, "client.key", mode)
        load: Any = lambda: startup.load_admin(tmp_path)  # noqa: E731
    else:
        config = SERVER if kind == "server" else CLIENT
        ws = _workspace(tmp_path, f"fed_{kind}.json", startup.to_json(config))
        key = ws / "startup" / f"{kind}.key"
        key.chmod(mode)
        load = lambda: getattr(startup, f"load_{kind}")(ws)  # noqa: E731
    with pytest.raises(ConfigError) as refused:
        load()
    assert str(refused.value) == (
        f"{key}: the private key may be read by others (mode {mode:04o}); only its owner may "
        f"read it: run chmod 600 {key}"
    )
    key.chmod(0o400)  # read-only for the owner is fine
    load()


def test_tls_refuses_a_key_others_may_read(tmp_path: Path) -> None:
    key = _private_key(tmp_path, "client.key", 0o644)
    files = TlsFiles(tmp_path / "rootCA.pem", tmp_path / "client.crt", key)
    with pytest.raises(ConfigError, match="the private key may be read by others"):
        files.read()


def test_tls_files_are_found_in_startup_unless_absolute() -> None:
    config = startup.ClientStartup(
        project="p",
        name="c",
        server_host="h",
        fed_port=1,
        heartbeat_interval=1,
        ssl_root_cert="/etc/ssl/ca.pem",
    )
    files = TlsFiles.named_by(config, Path("/srv/site/startup"))
    assert files.cert == Path("/srv/site/startup/client.crt")
    assert files.root_cert == Path("/etc/ssl/ca.pem")


# --------------------------------------------------------------------------- app configs

TRAIN = {
    "model": {"path": "torch.nn.Linear", "args": {"in_features": 4, "out_features": 2}},
    "dataset": {"path": "mypkg.data.Digits"},
}


def _app(
    root: Path,
    server: object = None,
    client: object = None,
    train: object = TRAIN,
) -> Path:
    config = root / "config"
    config.mkdir(parents=True)
    for name, data in (
        ("config_fed_server.json", server),
        ("config_fed_client.json", client),
        ("config_train.json", train),
    ):
        if data is not None:
            text = data if isinstance(data, str) else json.dumps(data)
            (config / name).write_text(text)
    (root / "resources").mkdir()
    return root


def test_load_app_good(tmp_path: Path) -> None:
    root = _app(
        tmp_path / "app",
        server={"num_rounds": 3, "min_num_clients": 2, "max_num_clients": 2, "metric_mode": "min"},
        client={"cross_validate": True, "local_epochs": 2},
    )
    app = load_app(root)
    assert app.server == ServerAppConfig(
        num_rounds=3, min_num_clients=2, max_num_clients=2, metric_mode="min"
    )
    assert app.client == ClientAppConfig(local_epochs=2, cross_validate=True)
    assert isinstance(app.train, TrainConfig)
    assert app.train.model == ComponentSpec(
        "torch.nn.Linear", {"in_features": 4, "out_features": 2}
    )
    assert app.train.dataset == ComponentSpec("mypkg.data.Digits", {})
    assert app.train.optimizer == ComponentSpec("torch.optim.SGD", {"lr": 0.01})
    assert app.train.loss == ComponentSpec("torch.nn.CrossEntropyLoss", {})
    assert app.train.trainer is None
    assert app.train.batch_size == 32
    assert app.resources == root / "resources"


def test_load_app_server_only_and_client_only(tmp_path: Path) -> None:
    server_only = load_app(_app(tmp_path / "s", server={}))
    assert server_only.server == ServerAppConfig() and server_only.client is None
    client_only = load_app(_app(tmp_path / "c", client={}))
    assert client_only.client == ClientAppConfig() and client_only.server is None


def test_load_app_missing_config_folder(tmp_path: Path) -> None:
    root = tmp_path / "myapp"
    (root / "resources").mkdir(parents=True)
    with pytest.raises(ConfigError, match="myapp: no config/ folder"):
        load_app(root)


def test_load_app_missing_both_fed_configs(tmp_path: Path) -> None:
    root = _app(tmp_path / "myapp")
    with pytest.raises(
        ConfigError,
        match=re.escape(
            "myapp: config/ needs config_fed_server.json, config_fed_client.json or both"
        ),
    ):
        load_app(root)


def test_load_app_missing_train_config(tmp_path: Path) -> None:
    root = _app(tmp_path / "myapp", server={}, train=None)
    with pytest.raises(ConfigError, match=r"^config/config_train\.json: missing$"):
        load_app(root)


@pytest.mark.parametrize(
    ("server", "message"),
    [
        (
            {"num_rounds": 0},
            "config/config_fed_server.json: 'num_rounds' must be at least 1, got 0",
        ),
        (
            {"num_rounds": "10"},
            "config/config_fed_server.json: 'num_rounds' must be an integer, got '10'",
        ),
        (
            {"start_round": 5, "num_rounds": 5},
            "config/config_fed_server.json: 'start_round' (5) must be smaller than "
            "'num_rounds' (5)",
        ),
        (
            {"start_round": 7, "num_rounds": 5},
            "config/config_fed_server.json: 'start_round' (7) must be smaller than "
            "'num_rounds' (5)",
        ),
        (
            {"min_num_clients": 3, "max_num_clients": 2},
            "config/config_fed_server.json: 'min_num_clients' (3) must not exceed "
            "'max_num_clients' (2)",
        ),
        (
            {"wait_after_min_clients": -1},
            "config/config_fed_server.json: 'wait_after_min_clients' must be at least 0, got -1",
        ),
        (
            {"metric_mode": "best"},
            "config/config_fed_server.json: 'metric_mode' must be one of max, min, got 'best'",
        ),
        (
            {"num_round": 5},
            "config/config_fed_server.json: unknown key 'num_round' (allowed keys: ",
        ),
        (
            {"wire_compression": "int4"},
            "config/config_fed_server.json: 'wire_compression' must be one of none, bf16, fp16, "
            "int8, got 'int4'",
        ),
        ([], "config/config_fed_server.json: expected a mapping"),
        (  # no site could report it, so no best model was ever chosen, and MLflow refused it
            {"validation_metric": "x" * 65},
            "config/config_fed_server.json: 'validation_metric' must be 1-64 letters, digits,",
        ),
        (
            {"validation_metric": "dice@0.5"},
            "config/config_fed_server.json: 'validation_metric' must be 1-64 letters, digits,",
        ),
    ],
)
def test_load_app_bad_server_config(tmp_path: Path, server: object, message: str) -> None:
    root = _app(tmp_path / "app", server=server)
    with pytest.raises(ConfigError) as info:
        load_app(root)
    assert str(info.value).startswith(message)


@pytest.mark.parametrize(
    ("client", "message"),
    [
        (
            {"cross_validate": "yes"},
            "config/config_fed_client.json: 'cross_validate' must be true or false, got 'yes'",
        ),
        (
            {"local_epochs": 0},
            "config/config_fed_client.json: 'local_epochs' must be at least 1, got 0",
        ),
        (
            {"epochs": 1},
            "config/config_fed_client.json: unknown key 'epochs'",
        ),
    ],
)
def test_load_app_bad_client_config(tmp_path: Path, client: object, message: str) -> None:
    root = _app(tmp_path / "app", client=client)
    with pytest.raises(ConfigError) as info:
        load_app(root)
    assert str(info.value).startswith(message)


@pytest.mark.parametrize(
    ("train", "message"),
    [
        ({"dataset": TRAIN["dataset"]}, "config/config_train.json: missing required key 'model'"),
        (
            {**TRAIN, "batch_size": 0},
            "config/config_train.json: 'batch_size' must be at least 1, got 0",
        ),
        (
            {**TRAIN, "model": {"args": {}}},
            "config/config_train.json: model: missing required key 'path'",
        ),
        (
            {**TRAIN, "optimizer": {"path": "torch.optim.Adam", "lr": 0.1}},
            "config/config_train.json: optimizer: unknown key 'lr'",
        ),
        (
            {**TRAIN, "trainer": {"path": ""}},
            "config/config_train.json: trainer: 'path' must not be empty",
        ),
        ({**TRAIN, "model": "torch.nn.Linear"}, "config/config_train.json: 'model' must be a"),
        (  # forked at the site, for an app that may need no approval
            {**TRAIN, "num_workers": 10_000},
            "config/config_train.json: 'num_workers' must be",
        ),
        (  # passed the upload, then failed the run's start with an overflow
            {**TRAIN, "seed": 2**64},
            "config/config_train.json: 'seed' must be a whole number from 0 to 2**63 - 1",
        ),
        ({**TRAIN, "seed": -1}, "config/config_train.json: 'seed' must be a whole number"),
    ],
)
def test_load_app_bad_train_config(tmp_path: Path, train: object, message: str) -> None:
    root = _app(tmp_path / "app", server={}, train=train)
    with pytest.raises(ConfigError) as info:
        load_app(root)
    assert str(info.value).startswith(message)


def test_load_app_invalid_json_names_file(tmp_path: Path) -> None:
    root = _app(tmp_path / "app", server='{"num_rounds": 3,}')
    with pytest.raises(ConfigError, match=r"^config/config_fed_server\.json: not valid JSON"):
        load_app(root)


def test_parse_server_config_defaults_match_dataclass() -> None:
    assert appconfig.parse_server_config({}) == ServerAppConfig()
    assert appconfig.parse_client_config({}) == ClientAppConfig()
    config = appconfig.parse_server_config(
        {"wait_after_min_clients": 0, "initial_checkpoint": None}
    )
    assert config.wait_after_min_clients == 0.0
    assert isinstance(config.wait_after_min_clients, float)
    assert ServerAppConfig().wire_compression is WireCompression.NONE
    for word in ("none", "bf16", "fp16", "int8"):
        parsed = appconfig.parse_server_config({"wire_compression": word})
        assert parsed.wire_compression is WireCompression(word)


# --------------------------------------------------------------------------- MONAI bundle apps


def _bundle_app(root: Path, bundle: object, files: tuple[str, ...]) -> Path:
    _app(root, server={}, train={"bundle": bundle, "seed": 3})
    for rel in files:
        (root / "resources" / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / "resources" / rel).write_text("{}")
    return root


def test_a_bundle_app_names_its_bundle_and_configs(tmp_path: Path) -> None:
    files = ("seg/configs/train.json", "seg/configs/evaluate.json")
    app = load_app(_bundle_app(tmp_path / "app", {"folder": "seg"}, files))
    assert app.train == BundleConfig(folder="seg", seed=3)
    assert app.bundle == app.train
    custom = {
        "folder": "nested/seg",
        "train_config": "configs/train.yaml",
        "evaluate_config": "eval.json",
        "network": "net",
    }
    files = ("nested/seg/configs/train.yaml", "nested/seg/eval.json")
    app = load_app(_bundle_app(tmp_path / "custom", custom, files))
    assert app.train == BundleConfig(
        "nested/seg", "configs/train.yaml", "eval.json", network="net", seed=3
    )


def test_an_app_of_components_has_no_bundle(tmp_path: Path) -> None:
    assert load_app(_app(tmp_path / "app", server={})).bundle is None


@pytest.mark.parametrize(
    ("bundle", "message"),
    [
        ({}, "config/config_train.json: bundle: missing required key 'folder'"),
        ("seg", "config/config_train.json: 'bundle' must be"),
        ({"folder": "../elsewhere"}, "config/config_train.json: bundle: 'folder' must be a"),
        ({"folder": "/srv/bundle"}, "config/config_train.json: bundle: 'folder' must be a"),
        ({"folder": "seg", "train_config": "..\\x.json"}, "config/config_train.json: bundle: "),
        ({"folder": "seg", "network": ""}, "config/config_train.json: bundle: 'network' must"),
        ({"folder": "seg", "epochs": 3}, "config/config_train.json: bundle: unknown key 'epochs'"),
    ],
)
def test_a_bad_bundle_entry_is_refused(tmp_path: Path, bundle: object, message: str) -> None:
    root = _bundle_app(tmp_path / "app", bundle, ())
    with pytest.raises(ConfigError) as info:
        load_app(root)
    assert str(info.value).startswith(message)


def test_a_bundle_entry_beside_components_is_refused(tmp_path: Path) -> None:
    root = _app(tmp_path / "app", server={}, train={**TRAIN, "bundle": {"folder": "seg"}})
    with pytest.raises(ConfigError, match=r"config/config_train\.json: unknown key 'model'"):
        load_app(root)


def test_a_bundle_without_its_configs_is_refused(tmp_path: Path) -> None:
    root = _bundle_app(tmp_path / "app", {"folder": "seg"}, ("seg/configs/train.json",))
    with pytest.raises(ConfigError) as info:
        load_app(root)
    assert str(info.value) == (
        "config/config_train.json: bundle: resources/seg/configs/evaluate.json is missing "
        "(a bundle holds configs/train.json and configs/evaluate.json)"
    )


AS_ROOT = pytest.mark.skipif(os.geteuid() != 0, reason="changing a file's owner needs root")
NOBODY = 65534


def test_a_workspace_others_may_write_is_refused(tmp_path: Path) -> None:
    """Bits on the files alone were judged: in a workspace of mode 0777 anyone could move
    local/ away and put one that sets trust_custom_code in its place."""
    ws = _workspace(tmp_path / "ws", "fed_client.json", startup.to_json(CLIENT))
    ws.chmod(0o777)
    with pytest.raises(ConfigError, match=f"{re.escape(str(ws))} has mode 0777.*chmod go-w {ws}$"):
        startup.load_client(ws)
    ws.chmod(0o755)
    assert startup.load_client(ws) == CLIENT


def test_a_folder_above_the_workspace_others_may_write_is_refused(tmp_path: Path) -> None:
    above = tmp_path / "shared"
    ws = _workspace(above / "ws", "fed_client.json", startup.to_json(CLIENT))
    above.chmod(0o775)
    with pytest.raises(
        ConfigError, match=f"{re.escape(str(above))} has mode 0775.*run chmod go-w {above}, or move"
    ):
        startup.load_client(ws)


@AS_ROOT
def test_a_root_owned_sticky_folder_above_is_fine_as_tmp_is(tmp_path: Path) -> None:
    above = tmp_path / "shared"
    ws = _workspace(above / "ws", "fed_client.json", startup.to_json(CLIENT))
    above.chmod(0o1777)
    assert startup.load_client(ws) == CLIENT
    ws.chmod(0o1777)  # the workspace itself: others could create a local/ where none is
    with pytest.raises(ConfigError, match=f"{re.escape(str(ws))} has mode 1777"):
        startup.load_client(ws)


@AS_ROOT
@pytest.mark.parametrize("owned", ["local", "local/fed_client.json", "startup/rootCA.pem", "ws"])
def test_a_kit_or_local_file_of_another_user_is_refused(tmp_path: Path, owned: str) -> None:
    """Another user's file is that user's to change, whatever its mode: as `nobody` in a
    workspace others could write, `mv local local.old && mkdir local` with a
    fed_client.json setting trust_custom_code was loaded."""
    ws = _workspace(
        tmp_path / "ws", "fed_client.json", startup.to_json(CLIENT), {"trust_custom_code": True}
    )
    (ws / "startup" / "rootCA.pem").write_text("ca\n")
    path = ws if owned == "ws" else ws / owned
    os.chown(path, NOBODY, NOBODY)
    name = pwd.getpwuid(NOBODY).pw_name
    with pytest.raises(ConfigError, match=f"owned by {name}, not by root.*run chown (-R )?root "):
        startup.load_client(ws)
    os.chown(path, 0, 0)
    assert startup.load_client(ws).trust_custom_code
