"""project.yml: every mistake is named with its place, and a valid file round-trips."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from flcore.schema import ConfigError
from provision import (
    ClientSpec,
    ProvisionError,
    load_project,
    parse_admin,
    parse_client,
    parse_project,
    parse_server,
    parse_settings,
    project_to_yaml,
    provision_workspace,
    sample_project,
    write_project,
)
from provision.projectfile import parse_project_yaml


def _error(mapping: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as caught:
        parse_project(mapping)
    return str(caught.value)


def test_valid_project_parses_with_defaults(provision_project_mapping: dict[str, Any]) -> None:
    del provision_project_mapping["settings"]
    project = parse_project(provision_project_mapping)
    assert project.name == "demo"
    assert project.server.host == "localhost"
    assert project.clients[0] == ClientSpec("site-a", "hospital-a", "it@a.example.org")
    assert project.clients[1].email is None
    assert [a.role for a in project.admins] == ["super", "member"]
    settings = project.settings
    assert (settings.heart_beat_timeout, settings.heartbeat_interval) == (600, 60)
    assert (settings.retry_window, settings.key_type) == (30, "ecdsa-p256")
    assert settings.install_prefix == "/opt/flstack/venv"
    assert settings.workspace_base == "/var/lib/flstack"


def test_clients_and_admins_may_be_empty(provision_project_mapping: dict[str, Any]) -> None:
    provision_project_mapping["clients"] = []
    del provision_project_mapping["admins"]
    project = parse_project(provision_project_mapping)
    assert project.clients == () and project.admins == ()


def test_unknown_key_is_named(provision_project_mapping: dict[str, Any]) -> None:
    provision_project_mapping["server"]["hots"] = "x"
    assert _error(provision_project_mapping).startswith("project.yml: server: unknown key 'hots'")


def test_missing_server_host(provision_project_mapping: dict[str, Any]) -> None:
    del provision_project_mapping["server"]["host"]
    assert _error(provision_project_mapping) == "project.yml: server: missing required key 'host'"


def test_missing_server_section(provision_project_mapping: dict[str, Any]) -> None:
    del provision_project_mapping["server"]
    assert _error(provision_project_mapping) == "project.yml: missing required key 'server'"


def test_duplicate_client_name(provision_project_mapping: dict[str, Any]) -> None:
    provision_project_mapping["clients"][1]["name"] = "site-a"
    message = _error(provision_project_mapping)
    assert message == "project.yml: clients[1]: duplicate client name 'site-a'"


def test_client_named_like_the_server(provision_project_mapping: dict[str, Any]) -> None:
    provision_project_mapping["server"]["name"] = "hub"  # "server" itself is reserved for sites
    provision_project_mapping["clients"][0]["name"] = "hub"
    message = _error(provision_project_mapping)
    assert message == "project.yml: clients[0]: duplicate client name 'hub'"


def test_duplicate_admin_email(provision_project_mapping: dict[str, Any]) -> None:
    provision_project_mapping["admins"][1]["email"] = "lead@example.org"
    message = _error(provision_project_mapping)
    assert message == "project.yml: admins[1]: duplicate admin email 'lead@example.org'"


@pytest.mark.parametrize("section", ["clients", "admins"])
def test_bad_email(provision_project_mapping: dict[str, Any], section: str) -> None:
    provision_project_mapping[section][0]["email"] = "not-an-email"
    message = _error(provision_project_mapping)
    assert message.startswith(f"project.yml: {section}[0]: 'email' must be an email address")


@pytest.mark.parametrize("port", [0, 65536, -1])
def test_port_out_of_range(provision_project_mapping: dict[str, Any], port: int) -> None:
    provision_project_mapping["server"]["fed_port"] = port
    message = _error(provision_project_mapping)
    assert message.startswith("project.yml: server: 'fed_port' must be between 1 and 65535")


def test_same_fed_and_admin_port(provision_project_mapping: dict[str, Any]) -> None:
    provision_project_mapping["server"]["admin_port"] = 8002
    message = _error(provision_project_mapping)
    assert message == "project.yml: server: 'admin_port' must differ from 'fed_port', got 8002"


def test_port_must_be_an_integer(provision_project_mapping: dict[str, Any]) -> None:
    provision_project_mapping["server"]["fed_port"] = "8002"
    assert "'fed_port' must be an integer" in _error(provision_project_mapping)


def test_client_name_with_instance_suffix(provision_project_mapping: dict[str, Any]) -> None:
    provision_project_mapping["clients"][0]["name"] = "site_2"
    message = _error(provision_project_mapping)
    assert message.startswith("project.yml: clients[0]: 'name' must not end in '_<digits>'")


@pytest.mark.parametrize(
    "name", ["global", "Global", "server", "client", "admin", "ALL", "nul", "con.site", "lpt9"]
)
def test_names_the_system_uses_are_refused_for_sites(
    provision_project_mapping: dict[str, Any], name: str
) -> None:
    provision_project_mapping["clients"][1]["name"] = name
    assert _error(provision_project_mapping) == (
        "project.yml: clients[1]: 'name' must not be a word flstack uses itself (global, server, "
        "client, admin, all, in any case) nor a Windows device name (con, nul, com1, ...), "
        f"got {name!r}"
    )


@pytest.mark.parametrize("name", ["globals", "server-2", "console", "all-sites", "com10"])
def test_names_that_only_contain_a_reserved_word_are_fine(
    provision_project_mapping: dict[str, Any], name: str
) -> None:
    provision_project_mapping["clients"][1]["name"] = name
    assert parse_project(provision_project_mapping).clients[1].name == name


def test_the_server_may_keep_its_usual_name(provision_project_mapping: dict[str, Any]) -> None:
    assert parse_project(provision_project_mapping).server.name == "server"


@pytest.mark.parametrize("name", ["", "a b", "../x", "-x", "x" * 64])
def test_bad_client_name(provision_project_mapping: dict[str, Any], name: str) -> None:
    provision_project_mapping["clients"][0]["name"] = name
    assert "project.yml: clients[0]: 'name' must be" in _error(provision_project_mapping)


@pytest.mark.parametrize(
    "host",
    [
        "bad host",
        "-x.org",
        "a..b",
        "x" * 65,
        "fe80::1%eth0",
        "::1%x,CN=evil",
        "fe80::1%a b\n$(id)",
        "::1%" + "a" * 200,
    ],
)
def test_bad_server_host(provision_project_mapping: dict[str, Any], host: str) -> None:
    provision_project_mapping["server"]["host"] = host
    assert "'host' must be a DNS name or an IP address" in _error(provision_project_mapping)


@pytest.mark.parametrize("host", ["fl.example.org", "10.0.0.5", "::1", "localhost"])
def test_good_server_host(provision_project_mapping: dict[str, Any], host: str) -> None:
    provision_project_mapping["server"]["host"] = host
    assert parse_project(provision_project_mapping).server.host == host


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda m: m.update(name="demo\n"), "project.yml: 'name' must be 1-63"),
        (lambda m: m["server"].update(name="server\n"), "server: 'name' must be 1-63"),
        (lambda m: m["server"].update(host="server\n"), "server: 'host' must be a DNS name"),
        (lambda m: m["clients"][0].update(name="site-a\n"), "clients[0]: 'name' must be 1-63"),
        (
            lambda m: m["admins"][0].update(email="lead@example.org\n"),
            "admins[0]: 'email' must be an email address",
        ),
        (
            lambda m: m["settings"].update(install_prefix="/opt/flstack/venv\n"),
            "'install_prefix' must be an absolute path",
        ),
        (
            lambda m: m["settings"].update(workspace_base="/var/lib/flstack\n"),
            "'workspace_base' must be an absolute path",
        ),
    ],
)
def test_a_trailing_newline_is_refused(
    provision_project_mapping: dict[str, Any], change: Any, expected: str
) -> None:
    change(provision_project_mapping)
    assert expected in _error(provision_project_mapping)


def test_project_name_leaves_room_for_the_ca_name(
    provision_project_mapping: dict[str, Any], tmp_path: Path
) -> None:
    provision_project_mapping["name"] = "p" * 57
    assert _error(provision_project_mapping) == (
        "project.yml: 'name' must be at most 56 characters (it names the CA, "
        f"'<name> root CA', of at most 64), got '{'p' * 57}'"
    )
    provision_project_mapping["name"] = "p" * 56
    project = parse_project(provision_project_mapping)
    result = provision_workspace(project, tmp_path / "ws")
    assert len(result.written) == 5


@pytest.mark.parametrize(
    ("section", "index", "key", "value", "other"),
    [
        ("clients", 1, "name", "Site-A", "site-a"),
        ("clients", 0, "name", "HUB", "hub"),
        ("admins", 1, "email", "Lead@Example.org", "lead@example.org"),
    ],
)
def test_kit_names_differing_only_in_case_clash(
    provision_project_mapping: dict[str, Any],
    section: str,
    index: int,
    key: str,
    value: str,
    other: str,
) -> None:
    provision_project_mapping["server"]["name"] = "hub"  # "server" itself is reserved for sites
    provision_project_mapping[section][index][key] = value
    message = _error(provision_project_mapping)
    assert message.startswith(f"project.yml: {section}[{index}]: duplicate ")
    assert f"{value!r} (the same kit file as {other!r}: case does not count)" in message


def test_bad_role(provision_project_mapping: dict[str, Any]) -> None:
    provision_project_mapping["admins"][0]["role"] = "root"
    message = _error(provision_project_mapping)
    assert message == "project.yml: admins[0]: 'role' must be one of super, member, got 'root'"


def test_api_version_must_be_1(provision_project_mapping: dict[str, Any]) -> None:
    provision_project_mapping["api_version"] = 2
    assert _error(provision_project_mapping).startswith(
        "project.yml: 'api_version' must be one of 1"
    )


def test_heartbeat_interval_below_timeout(provision_project_mapping: dict[str, Any]) -> None:
    provision_project_mapping["settings"] = {"heart_beat_timeout": 60, "heartbeat_interval": 60}
    message = _error(provision_project_mapping)
    assert message == (
        "project.yml: settings: 'heartbeat_interval' must be smaller than "
        "'heart_beat_timeout' (60), got 60"
    )


def test_small_heartbeats_are_allowed() -> None:
    settings = parse_settings({"heart_beat_timeout": 2, "heartbeat_interval": 1})
    assert (settings.heart_beat_timeout, settings.heartbeat_interval) == (2.0, 1.0)


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("key_type", "dsa", "'key_type' must be one of ecdsa-p256, ecdsa-p384, rsa-3072"),
        ("cert_validity_days", 0, "'cert_validity_days' must be between 1 and 3650"),
        ("install_prefix", "opt/flstack", "'install_prefix' must be an absolute path"),
        ("workspace_base", "/var/lib/fl stack", "'workspace_base' must be an absolute path"),
        ("retry_window", 0, "'retry_window' must be between 1 and 604800"),
        ("retry_window", float("inf"), "'retry_window' must be a finite number"),  # YAML's .inf
        ("heart_beat_timeout", 10**400, "'heart_beat_timeout' must be a finite number"),
        ("heartbeat_interval", 3e9, "'heartbeat_interval' must be between 0.1 and 604800"),
        ("colour", "blue", "unknown key 'colour'"),
    ],
)
def test_bad_settings(key: str, value: object, expected: str) -> None:
    with pytest.raises(ConfigError, match=r"^project\.yml: settings: ") as caught:
        parse_settings({key: value})
    assert expected in str(caught.value)


def test_section_parsers_serve_the_wizard() -> None:
    server = parse_server(
        {"name": "hub", "host": "10.1.2.3", "fed_port": 1, "admin_port": 2, "org": "x"}
    )
    assert server.host == "10.1.2.3"
    with pytest.raises(ConfigError, match=r"^project.yml: clients\[3\]: duplicate client name"):
        parse_client({"name": "hub", "org": "x"}, 3, taken=[server.name])
    admin = parse_admin({"email": "a@b.org", "org": "x", "role": "member"}, 0)
    assert admin.role == "member"
    with pytest.raises(ConfigError, match=r"^wizard: admins\[1\]: 'org' must be"):
        parse_admin({"email": "a@b.org", "org": " x", "role": "member"}, 1, source="wizard")


def test_project_round_trips_through_yaml(
    tmp_path: Path, provision_project_mapping: dict[str, Any]
) -> None:
    project = parse_project(provision_project_mapping)
    path = tmp_path / "project.yml"
    write_project(project, path)
    assert load_project(path) == project
    assert "email" not in yaml.safe_load(project_to_yaml(project))["clients"][1]


def test_sample_project_parses() -> None:
    project = parse_project_yaml(sample_project(), "project.yml")
    assert project.server.name == "server"
    assert [c.name for c in project.clients] == ["flclient1", "flclient2"]


def test_key_written_twice_in_yaml_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"^p\.yml: line 3: key 'name' is written twice$"):
        parse_project_yaml("api_version: 1\nname: a\nname: b\n", "p.yml")


def test_invalid_yaml_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"^p\.yml: not valid YAML"):
        parse_project_yaml("server: [\n", "p.yml")


def test_not_a_mapping_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"^p\.yml: expected a mapping"):
        parse_project_yaml("- a\n", "p.yml")


def test_unreadable_file_is_not_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ProvisionError, match="cannot read it"):
        load_project(tmp_path / "missing.yml")


def test_public_api_is_what_the_wizard_uses() -> None:
    import provision

    assert sorted(provision.__all__) == [
        "AdminSpec", "ClientSpec", "PasswordsFile", "Project", "ProjectSettings", "ProvisionError",
        "ProvisionResult", "ServerSpec", "WrittenKit", "extract_kit", "load_project",
        "parse_admin", "parse_client", "parse_project", "parse_project_yaml", "parse_server",
        "parse_settings", "project_to_yaml", "provision_workspace", "read_kit", "sample_project",
        "write_project",
    ]  # fmt: skip
    for name in provision.__all__:
        assert getattr(provision, name) is not None


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("name: 2024-13-45", "month must be in 1..12"),  # PyYAML builds a date, and fails
        ("name: " + "9" * 5000, "Exceeds the limit (4300 digits)"),
    ],
)
def test_a_value_yaml_cannot_build_is_an_invalid_project(line: str, expected: str) -> None:
    """Once "unexpected ValueError: month must be in 1..12", exit 1, and no file named."""
    with pytest.raises(ConfigError, match=r"^project\.yml: not valid YAML \(") as caught:
        parse_project_yaml(line, "project.yml")
    assert expected in str(caught.value)
