"""Hostile config files: bombs, depth and size are refused before parsing, with a clear error.

Every loader of a file a person or a peer writes (project.yml; a kit's
fed_*.json and signature.json; an app's config/*.json) goes through
flcore.configfile. The property-based tests feed each of them arbitrary
input: the only outcomes allowed are a value or a ConfigError (a
KitSignatureError for a kit's seal), never another exception.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from flcore import appconfig, startup
from flcore.configfile import MAX_CONFIG_BYTES, load_json, parse_json, parse_yaml, read_bounded
from flcore.kitsig import KitSignatureError, verify_files, verify_startup
from flcore.schema import ConfigError, shown
from provision import (
    ProvisionError,
    load_project,
    parse_project_yaml,
    project_to_yaml,
    provision_workspace,
)
from provision.project import parse_project
from provision.workspace import Workspace
from tests.flprovision import flprovision
from tests.fuzz import FUZZ, mutated, values


def laughs(levels: int = 9) -> str:
    """A project.yml whose name is 9 lists of 9 ... of 'lol': 9**9 strings once expanded.

    Before the bound, the wrong type of ``name`` made the message quote the
    value, which expanded it: 25 s and a MemoryError.
    """
    lines = ["api_version: 1", "name:", f"  - &l0 [{','.join(['lol'] * 9)}]"]
    lines += [f"  - &l{level} [{','.join([f'*l{level - 1}'] * 9)}]" for level in range(1, levels)]
    lines += ["server: {name: server, host: localhost, fed_port: 8002, admin_port: 8003, org: o}"]
    return "\n".join(lines) + "\n"


def test_billion_laughs_is_refused_before_expansion() -> None:
    with pytest.raises(ConfigError) as refused:
        parse_project_yaml(laughs(), "project.yml")
    message = str(refused.value)
    assert message.startswith("project.yml: its anchors and aliases expand to more than 100,000")
    assert "billion laughs" in message


@pytest.mark.timeout(30)
def test_flprovision_refuses_a_billion_laughs_project_and_writes_nothing(tmp_path: Path) -> None:
    bomb = tmp_path / "project.yml"
    bomb.write_text(laughs())
    done = flprovision("-p", str(bomb), "-w", str(tmp_path / "ws"), cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.startswith(f"flprovision: error: {bomb}: its anchors and aliases expand")
    assert len(done.stderr.splitlines()) == 1
    assert not (tmp_path / "ws").exists()


def test_a_few_anchors_are_fine(provision_project_mapping: dict[str, Any]) -> None:
    text = (
        yaml.safe_dump(provision_project_mapping)
        .replace("org: hospital-a", "org: &org hospital-a")
        .replace("org: hospital-b", "org: *org")
    )
    project = parse_project_yaml(text, "project.yml")
    assert [c.org for c in project.clients] == ["hospital-a", "hospital-a"]


def test_deep_yaml_nesting_is_refused() -> None:
    text = "name: " + "[" * 5000 + "]" * 5000 + "\n"
    with pytest.raises(ConfigError, match=r"^p.yml: line 1: nested more than 32 levels deep$"):
        parse_yaml(text, "p.yml")


def test_a_long_chain_of_aliases_is_counted_without_recursing_along_it() -> None:
    lines = ["chain:", "  - &a0 [x]"]
    lines += [f"  - &a{i} [*a{i - 1}]" for i in range(1, 3000)]  # grows with the square
    with pytest.raises(ConfigError, match="anchors and aliases expand to more than"):
        parse_yaml("\n".join(lines), "p.yml")
    assert len(parse_yaml("\n".join(lines[:300]), "p.yml")["chain"]) == 299


def test_a_recursive_alias_is_refused() -> None:
    with pytest.raises(ConfigError, match="anchors and aliases expand"):
        parse_yaml("a: &a [*a]\n", "p.yml")


def test_a_list_as_key_is_a_clear_error() -> None:
    with pytest.raises(ConfigError, match=r"^project.yml: line 1: a key must be a plain word"):
        parse_project_yaml("? [a, b]\n: 1\n", "project.yml")


def test_a_huge_project_file_is_refused_before_it_is_read(tmp_path: Path) -> None:
    huge = tmp_path / "project.yml"
    with huge.open("wb") as out:
        out.truncate(100 * 1024 * 1024)  # sparse: 100 MB that take no disk
    with pytest.raises(ConfigError, match=r"104,857,600 bytes is more than a config file may hold"):
        load_project(huge)


def test_read_bounded_counts_what_it_reads_not_only_the_size_it_is_told(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)

    def write() -> None:  # more than the limit, through a pipe whose size reads as 0
        with fifo.open("wb") as out, contextlib.suppress(BrokenPipeError):
            out.write(b"x" * (MAX_CONFIG_BYTES + 10))

    writer = threading.Thread(target=write)
    writer.start()
    try:
        with pytest.raises(ConfigError, match="is more than a config file may hold"):
            read_bounded(fifo)
    finally:
        writer.join(10)


def test_json_nesting_is_refused_before_parsing() -> None:
    deep = "[" * 100_000 + "]" * 100_000
    with pytest.raises(ConfigError, match=r"^f.json: nested more than 32 levels deep"):
        parse_json(deep, "f.json")
    brackets_in_strings = json.dumps({"text": "[" * 1000})
    assert parse_json(brackets_in_strings, "f.json") == {"text": "[" * 1000}


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_json_constants_that_are_not_numbers_are_refused(constant: str) -> None:
    with pytest.raises(ConfigError, match=f"not valid JSON \\({constant} is not a JSON number\\)"):
        parse_json(f'{{"heartbeat_interval": {constant}}}', "f.json")


def test_a_number_of_five_thousand_digits_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"^f\.json: not valid JSON"):
        parse_json('{"port": ' + "9" * 5000 + "}", "f.json")


def test_messages_show_a_value_never_dump_it() -> None:
    assert len(shown(["x" * 1000] * 1000)) <= 80
    with pytest.raises(ConfigError) as refused:
        parse_project({"api_version": 1, "name": ["lol"] * 100_000, "server": {}})
    assert len(str(refused.value)) < 200


# --------------------------------------------------------------------------- kits and apps


def kit_folder(tmp_path: Path, provision_project_mapping: dict[str, Any]) -> Path:
    """An extracted, valid client kit."""
    from provision import extract_kit

    result = provision_workspace(parse_project(provision_project_mapping), tmp_path / "ws")
    kit = next(k for k in result.written if k.name == "site-a")
    assert kit.password is not None
    extract_kit(kit.zip_path, kit.password, tmp_path / "site-a")
    return tmp_path / "site-a"


def test_kit_loaders_refuse_huge_and_deep_files(
    tmp_path: Path, provision_project_mapping: dict[str, Any]
) -> None:
    workspace = kit_folder(tmp_path, provision_project_mapping)
    local = workspace / "local"
    local.mkdir(exist_ok=True)  # extracting a kit makes it
    (local / startup.CLIENT_FILE).write_text("[" * 50 + "]" * 50)
    with pytest.raises(ConfigError, match=r"local/fed_client.json: nested more than 32 levels"):
        startup.load_client(workspace)
    with (local / startup.CLIENT_FILE).open("wb") as out:
        out.truncate(100 * 1024 * 1024)
    with pytest.raises(ConfigError, match=r"fed_client.json: 104,857,600 bytes is more than"):
        startup.load_client(workspace)
    with (workspace / "startup" / "big").open("wb") as out:
        out.truncate(100 * 1024 * 1024)
    with pytest.raises(KitSignatureError, match=r"startup/big: 104,857,600 bytes is more than"):
        verify_startup(workspace / "startup")


def test_a_kit_with_hundreds_of_files_is_refused_before_reading_them(
    tmp_path: Path, provision_project_mapping: dict[str, Any]
) -> None:
    folder = kit_folder(tmp_path, provision_project_mapping) / "startup"
    for index in range(100):
        (folder / f"extra{index}").write_text("x")
    with pytest.raises(KitSignatureError, match="107 files, more than a kit has"):
        verify_startup(folder)


def test_app_config_bombs_are_refused(tmp_path: Path) -> None:
    config = tmp_path / "app" / "config"
    config.mkdir(parents=True)
    (config / appconfig.TRAIN_CONFIG).write_text('{"model": ' + "[" * 40 + "]" * 40 + "}")
    with pytest.raises(ConfigError, match=r"^config/config_train.json: nested more than 32"):
        appconfig.read_json(config / appconfig.TRAIN_CONFIG)
    with (config / appconfig.SERVER_CONFIG).open("wb") as out:
        out.truncate(100 * 1024 * 1024)
    with pytest.raises(ConfigError, match=r"^config/config_fed_server.json: 104,857,600 bytes"):
        appconfig.read_json(config / appconfig.SERVER_CONFIG)


# --------------------------------------------------------------------------- properties


@FUZZ
@given(st.text(max_size=300))
def test_property_any_text_is_a_project_or_a_config_error(text: str) -> None:
    try:
        parse_project_yaml(text, "project.yml")
    except ConfigError as exc:
        assert str(exc).startswith("project.yml")


@FUZZ
@given(st.data())
def test_property_a_mangled_project_is_a_project_or_a_config_error(
    provision_project_mapping: dict[str, Any], data: st.DataObject
) -> None:
    mapping = data.draw(mutated(provision_project_mapping))
    for section in ("server", "settings"):
        if isinstance(mapping.get(section), dict):
            mapping[section] = data.draw(mutated(mapping[section]))
    text = yaml.safe_dump(mapping)
    try:
        project = parse_project_yaml(text, "project.yml")
    except ConfigError as exc:
        assert str(exc).startswith("project.yml: ")
    else:  # what it accepted, it writes back as the same project
        assert parse_project_yaml(project_to_yaml(project), "again") == project


@FUZZ
@given(st.binary(max_size=300) | values.map(lambda v: json.dumps(v).encode()))
def test_property_parse_json_gives_a_value_or_a_config_error(data: bytes) -> None:
    try:
        parse_json(data, "f.json")
    except ConfigError as exc:
        assert str(exc).startswith("f.json: ")


@FUZZ
@given(st.sampled_from(["server", "client"]), st.data())
def test_property_startup_loaders_refuse_cleanly(
    tmp_path: Path, kind: str, data: st.DataObject
) -> None:
    name = startup.SERVER_FILE if kind == "server" else startup.CLIENT_FILE
    valid = json.loads(
        startup.to_json(
            startup.ServerStartup("p", "s", "h", 1, 2, "0.0.0.0", 60.0, 6.0)  # noqa: S104
            if kind == "server"
            else startup.ClientStartup("p", "c", "h", 1, 6.0)
        )
    )
    workspace = tmp_path / f"ws-{kind}"
    for folder in (startup.STARTUP_DIR, startup.LOCAL_DIR):
        (workspace / folder).mkdir(parents=True, exist_ok=True)
    signed = data.draw(mutated(valid) | values)
    local = data.draw(st.none() | mutated({"retry_window": 5, "listen_host": "x"}) | values)
    (workspace / startup.STARTUP_DIR / name).write_text(json.dumps(signed))
    local_path = workspace / startup.LOCAL_DIR / name
    local_path.unlink(missing_ok=True)
    if local is not None:
        local_path.write_text(json.dumps(local))
    loader = startup.load_server if kind == "server" else startup.load_client
    try:
        loader(workspace)
    except ConfigError as exc:
        assert str(exc).startswith(str(workspace))


@FUZZ
@given(st.data())
def test_property_admin_loader_refuses_cleanly(tmp_path: Path, data: st.DataObject) -> None:
    valid = json.loads(startup.to_json(startup.AdminStartup("p", "a@b.org", "super", "h", 1)))
    folder = tmp_path / "admin"
    folder.mkdir(exist_ok=True)
    (folder / startup.ADMIN_FILE).write_text(json.dumps(data.draw(mutated(valid) | values)))
    try:
        startup.load_admin(folder)
    except ConfigError as exc:
        assert str(exc).startswith(str(folder))


@FUZZ
@given(
    st.sampled_from(
        [
            (appconfig.parse_server_config, {"num_rounds": 3, "min_num_clients": 1}),
            (appconfig.parse_client_config, {"local_epochs": 1, "cross_validate": True}),
            (
                appconfig.parse_train_config,
                {"model": {"path": "m"}, "dataset": {"path": "d", "args": {}}, "batch_size": 4},
            ),
        ]
    ),
    st.data(),
)
def test_property_app_configs_refuse_cleanly(
    parser_and_valid: tuple[Any, dict[str, Any]], data: st.DataObject
) -> None:
    parser, valid = parser_and_valid
    value = data.draw(mutated(valid) | values)
    try:
        parser(parse_json(json.dumps(value), "config/x.json"), "config/x.json")
    except ConfigError as exc:
        assert str(exc).startswith("config/x.json")


@FUZZ
@given(st.binary(max_size=200) | values.map(lambda v: json.dumps(v).encode()))
def test_property_a_forged_signature_file_is_a_signature_error(forged: bytes) -> None:
    files = {"rootCA.pem": b"x", "client.crt": b"y", "signature.json": forged}
    with pytest.raises(KitSignatureError):
        verify_files(files, "kit")


def test_load_json_reads_a_small_file(tmp_path: Path) -> None:
    path = tmp_path / "f.json"
    path.write_text('{"a": [1, 2.5, "x"]}')
    assert load_json(path) == {"a": [1, 2.5, "x"]}


@FUZZ
@given(
    st.sampled_from(["issued.json", "revoked.json", "audit"]),
    st.binary(max_size=200) | values.map(lambda v: json.dumps(v).encode()),
)
def test_property_workspace_records_are_read_or_refused_cleanly(
    tmp_path: Path, record: str, data: bytes
) -> None:
    ws = Workspace(tmp_path / "ws")
    ws.prepare()
    path = ws.audit_path if record == "audit" else ws.state_dir / record
    path.write_bytes(data)
    load = {"issued.json": ws.load_issued, "revoked.json": ws.load_revoked, "audit": ws.load_audit}
    try:
        load[record]()
    except ProvisionError as exc:
        assert str(exc).startswith(str(path))


def test_issued_json_reads_once_into_its_record_and_writes_back_as_it_was(tmp_path: Path) -> None:
    ws = Workspace(tmp_path / "ws")
    ws.prepare()
    path = ws.state_dir / "issued.json"
    entry = {"name": "site-1", "kind": "client", "serial": "0a", "revoked": True}
    written = {
        "format_version": 1,
        "project": "p",
        "server": {"name": "server.example.org", "fed_learn_port": 8002},
        "settings": {"heartbeat_interval": 30.0},
        "server_settings": None,
        "participants": {"client:site-1": entry},
    }
    path.write_text(json.dumps(written, indent=2) + "\n")
    record = ws.load_issued()
    assert record is not None and record.participants == {"client:site-1": entry}
    before = path.read_bytes()
    ws.save_issued(record)
    assert path.read_bytes() == before


def test_issued_json_with_a_holder_that_is_not_an_object_is_refused(tmp_path: Path) -> None:
    ws = Workspace(tmp_path / "ws")
    ws.prepare()
    path = ws.state_dir / "issued.json"
    path.write_text(json.dumps({"format_version": 1, "participants": {"client:a": "x"}}))
    with pytest.raises(ProvisionError, match="not a record flprovision wrote"):
        ws.load_issued()


def test_revoked_json_with_an_entry_flprovision_never_wrote_is_refused(tmp_path: Path) -> None:
    ws = Workspace(tmp_path / "ws")
    ws.prepare()
    path = ws.state_dir / "revoked.json"
    entry = {"serial": "0a", "name": "a", "kind": "client", "reason": "superseded"}
    path.write_text(json.dumps({"format_version": 1, "crl_number": 1, "revoked": [entry]}))
    with pytest.raises(ProvisionError, match="not a record flprovision wrote"):
        ws.load_revoked()
    entry["revoked_at"] = "2026-01-01T00:00:00+00:00"
    path.write_text(json.dumps({"format_version": 1, "crl_number": 1, "revoked": [entry]}))
    assert [cert.serial for cert in ws.load_revoked().revoked] == ["0a"]
