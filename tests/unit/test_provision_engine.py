"""Incremental provisioning: the CA stays, old kits keep working, only new kits are written."""

from __future__ import annotations

import json
import logging
import stat
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from flcore.kitsig import verify_startup
from provision import ProvisionError, extract_kit, parse_project, provision_workspace
from provision.pki import fingerprint, generate_key, key_pem
from provision.revocation import refresh_crl
from tests.unit.conftest import ProvisionedWorkspace


def _root_ca(workspace: ProvisionedWorkspace) -> bytes:
    return (workspace.root / "state" / "rootCA.pem").read_bytes()


def _kit_cert(
    workspace: ProvisionedWorkspace, kit: str, password: str, dest: Path
) -> x509.Certificate:
    startup = extract_kit(workspace.kit(kit), password, dest)
    verify_startup(startup)
    name = "server.crt" if (startup / "server.crt").exists() else "client.crt"
    return x509.load_pem_x509_certificate((startup / name).read_bytes())


def test_first_run_writes_every_kit(provisioned_workspace: Any) -> None:
    result = provisioned_workspace.result
    assert [(k.name, k.kind) for k in result.written] == [
        ("server", "server"),
        ("site-a", "client"),
        ("site-b", "client"),
        ("lead@example.org", "admin"),
        ("viewer@example.org", "admin"),
    ]
    assert result.skipped == result.removed == ()
    lines = [k.password_line() for k in result.written]
    assert lines[0] == f"===> password: {provisioned_workspace.password('server')} for server.zip"
    assert lines[1].endswith(" for site-a.zip to it@a.example.org")
    assert lines[2].endswith(" for site-b.zip")
    assert lines[3].endswith(" for lead@example.org.zip to lead@example.org")
    assert len({k.password for k in result.written}) == 5
    ca = x509.load_pem_x509_certificate(_root_ca(provisioned_workspace))
    assert result.ca_fingerprint == fingerprint(ca)  # what lead IT tells the sites


def test_state_is_private(provisioned_workspace: Any) -> None:
    state = provisioned_workspace.root / "state"
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    assert stat.S_IMODE((state / "rootCA.key").stat().st_mode) == 0o600
    assert stat.S_IMODE((provisioned_workspace.root / "packages").stat().st_mode) == 0o700


def test_adding_participants_reuses_the_ca(
    provisioned_workspace: Any,
    provision_project_mapping: dict[str, Any],
    provision_into: Any,
    tmp_path: Path,
) -> None:
    first = provisioned_workspace
    old_zip = first.kit("site-a").read_bytes()
    provision_project_mapping["clients"].append({"name": "site-c", "org": "hospital-c"})
    provision_project_mapping["admins"].append(
        {"email": "new@example.org", "org": "lead", "role": "member"}
    )
    second = provision_into(provision_project_mapping)
    assert [k.name for k in second.result.written] == ["site-c", "new@example.org"]
    assert second.result.skipped == (
        "server",
        "site-a",
        "site-b",
        "lead@example.org",
        "viewer@example.org",
    )
    assert _root_ca(second) == _root_ca(first)
    assert first.kit("site-a").read_bytes() == old_zip
    new_root = x509.load_pem_x509_certificate(_root_ca(second))
    old_cert = _kit_cert(first, "site-a", first.password("site-a"), tmp_path / "old")
    old_cert.verify_directly_issued_by(new_root)
    new_cert = _kit_cert(second, "site-c", second.password("site-c"), tmp_path / "new")
    new_cert.verify_directly_issued_by(new_root)


def test_nothing_new_writes_nothing(
    provisioned_workspace: Any, provision_into: Any, provision_project_mapping: dict[str, Any]
) -> None:
    before = {
        p.name: p.stat().st_mtime_ns for p in (provisioned_workspace.root / "packages").iterdir()
    }
    again = provision_into(provision_project_mapping)
    assert again.result.written == ()
    assert len(again.result.skipped) == 5
    after = {
        p.name: p.stat().st_mtime_ns for p in (provisioned_workspace.root / "packages").iterdir()
    }
    assert after == before


def test_force_reissues_every_kit_under_the_same_ca(
    provisioned_workspace: Any,
    provision_project_mapping: dict[str, Any],
    provision_into: Any,
    tmp_path: Path,
) -> None:
    old_cert = _kit_cert(
        provisioned_workspace, "site-a", provisioned_workspace.password("site-a"), tmp_path / "o"
    )
    forced = provision_into(provision_project_mapping, force=True)
    assert len(forced.result.written) == 5
    assert forced.result.skipped == ()
    assert _root_ca(forced) == _root_ca(provisioned_workspace)
    new_cert = _kit_cert(forced, "site-a", forced.password("site-a"), tmp_path / "n")
    assert new_cert.serial_number != old_cert.serial_number
    assert forced.password("site-a") != provisioned_workspace.password("site-a")


def test_force_revokes_what_the_kits_it_replaces_held_so_a_demoted_admin_is_demoted(
    provisioned_workspace: Any,
    provision_project_mapping: dict[str, Any],
    provision_into: Any,
    tmp_path: Path,
) -> None:
    """A changed role is refused without --force, and --force left the old certificates
    valid: the old kit of a super admin made a member logged in as super until it expired."""
    old = {
        name: _kit_cert(
            provisioned_workspace, name, provisioned_workspace.password(name), tmp_path / name
        ).serial_number
        for name in ("server", "site-a", "viewer@example.org")
    }
    provision_project_mapping["admins"][0]["role"] = "member"
    with pytest.raises(ProvisionError, match="role 'super' -> 'member'"):
        provision_into(provision_project_mapping)
    forced = provision_into(provision_project_mapping, force=True)
    crl = forced.result.crl
    assert crl is not None and crl.next_update is not None
    listed = x509.load_pem_x509_crl(crl.path.read_bytes())
    revoked = {entry.serial_number for entry in listed}
    assert len(revoked) == 4 == crl.listed  # both sites and both admins; never the server
    assert old["site-a"] in revoked and old["viewer@example.org"] in revoked
    assert old["server"] not in revoked
    new = _kit_cert(forced, "site-a", forced.password("site-a"), tmp_path / "new")
    assert new.serial_number not in revoked


@pytest.mark.parametrize(
    ("section", "key", "value", "expected"),
    [
        ("server", "host", "fl.example.org", "server.host 'localhost' -> 'fl.example.org'"),
        ("server", "fed_port", 9002, "server.fed_port 8002 -> 9002"),
        ("server", "name", "hub", "server.name 'server' -> 'hub'"),
        (None, "name", "renamed", "name 'demo' -> 'renamed'"),
    ],
)
def test_changed_server_or_project_name_is_refused(
    provisioned_workspace: Any,
    provision_project_mapping: dict[str, Any],
    provision_into: Any,
    section: str | None,
    key: str,
    value: object,
    expected: str,
) -> None:
    (provision_project_mapping[section] if section else provision_project_mapping)[key] = value
    before = sorted(p.name for p in (provisioned_workspace.root / "packages").iterdir())
    with pytest.raises(ProvisionError) as caught:
        provision_into(provision_project_mapping)
    assert expected in str(caught.value)
    assert "--force" in str(caught.value)
    assert sorted(p.name for p in (provisioned_workspace.root / "packages").iterdir()) == before
    forced = provision_into(provision_project_mapping, force=True)
    assert len(forced.result.written) == 5
    assert provision_into(provision_project_mapping).result.written == ()


def test_changed_admin_role_is_refused(
    provisioned_workspace: Any, provision_project_mapping: dict[str, Any], provision_into: Any
) -> None:
    provision_project_mapping["admins"][1]["role"] = "super"
    expected = r"admin 'viewer@example\.org' role 'member' -> 'super'"
    with pytest.raises(ProvisionError, match=expected):
        provision_into(provision_project_mapping)


def test_changed_client_email_needs_no_new_kit(
    provisioned_workspace: Any, provision_project_mapping: dict[str, Any], provision_into: Any
) -> None:
    provision_project_mapping["clients"][1]["email"] = "it@b.example.org"
    assert provision_into(provision_project_mapping).result.written == ()


def test_removed_participant_is_reported(
    provisioned_workspace: Any, provision_project_mapping: dict[str, Any], provision_into: Any
) -> None:
    del provision_project_mapping["clients"][1]
    again = provision_into(provision_project_mapping)
    assert again.result.removed == ("site-b",)
    assert again.result.warnings == (
        "site-b left project.yml; its kit stays valid until it expires "
        f"(flprovision revoke site-b -w {again.root} ends it now)",
    )
    provision_project_mapping["clients"].append({"name": "site-b", "org": "hospital-b"})
    assert [k.name for k in provision_into(provision_project_mapping).result.written] == ["site-b"]


def test_audit_records_what_was_issued(
    provisioned_workspace: Any, provision_project_mapping: dict[str, Any], provision_into: Any
) -> None:
    provision_project_mapping["clients"].append({"name": "site-c", "org": "hospital-c"})
    provision_into(provision_project_mapping)
    audit = json.loads((provisioned_workspace.root / "audit.json").read_text())
    assert audit["project"] == "demo"
    assert audit["ca"]["subject"] == "O=lead,CN=demo root CA"
    assert [e["name"] for e in audit["issued"]] == [
        "server",
        "site-a",
        "site-b",
        "lead@example.org",
        "viewer@example.org",
        "site-c",
    ]
    entry = audit["issued"][3]
    assert entry["kind"] == "admin"
    assert (entry["org"], entry["email"], entry["role"]) == ("lead", "lead@example.org", "super")
    assert entry["kit"] == "packages/lead@example.org.zip"
    for key in ("serial", "sha256", "not_before", "not_after", "run_time"):
        assert entry[key]
    assert audit["issued"][0]["run_time"] != audit["issued"][5]["run_time"]


def test_no_secret_leaks(
    tmp_path: Path, provision_project_mapping: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG):
        result = provision_workspace(parse_project(provision_project_mapping), tmp_path / "ws")
    passwords = [k.password for k in result.written if k.password is not None]
    assert len(passwords) == len(result.written)
    readable = [
        (tmp_path / "ws" / "audit.json").read_text(),
        (tmp_path / "ws" / "state" / "issued.json").read_text(),
        caplog.text,
    ]
    for text in readable:
        assert "PRIVATE KEY" not in text
        for password in passwords:
            assert password not in text


def test_partial_state_is_refused(
    provisioned_workspace: Any, provision_into: Any, provision_project_mapping: dict[str, Any]
) -> None:
    (provisioned_workspace.root / "state" / "issued.json").unlink()
    with pytest.raises(ProvisionError, match="holds only part of the project's state"):
        provision_into(provision_project_mapping)


def test_corrupt_record_is_refused(
    provisioned_workspace: Any, provision_into: Any, provision_project_mapping: dict[str, Any]
) -> None:
    (provisioned_workspace.root / "state" / "issued.json").write_text("{")
    expected = r"issued\.json: not valid JSON \(.*\); restore it from a backup"
    with pytest.raises(ProvisionError, match=expected):
        provision_into(provision_project_mapping)


def test_a_ca_key_that_is_not_the_certificate_s_is_refused(
    provisioned_workspace: Any, provision_project_mapping: dict[str, Any]
) -> None:
    """Restored from different backups, the pair signed CRLs and kits no site accepts."""
    other = generate_key("ecdsa-p256")
    (provisioned_workspace.root / "state" / "rootCA.key").write_bytes(key_pem(other))
    with pytest.raises(ProvisionError, match=r"rootCA\.key: this key is not the one .* certifies"):
        refresh_crl(provisioned_workspace.root)
    assert not (provisioned_workspace.root / "crl.pem").exists()


def test_a_ca_key_with_a_passphrase_is_refused_in_words(provisioned_workspace: Any) -> None:
    path = provisioned_workspace.root / "state" / "rootCA.key"
    key = serialization.load_pem_private_key(path.read_bytes(), None)
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
    )
    with pytest.raises(ProvisionError, match=r"the CA key is encrypted with a passphrase"):
        refresh_crl(provisioned_workspace.root)


def test_changed_settings_warn_and_keep_old_kits(
    provisioned_workspace: Any, provision_project_mapping: dict[str, Any], provision_into: Any
) -> None:
    assert provisioned_workspace.result.warnings == ()
    provision_project_mapping["settings"]["retry_window"] = 99
    again = provision_into(provision_project_mapping)
    assert again.result.written == ()
    assert len(again.result.warnings) == 1
    assert again.result.warnings[0].startswith("settings changed since earlier kits were issued")


def test_new_clients_must_beat_faster_than_the_issued_server_times_out(
    provisioned_workspace: Any, provision_project_mapping: dict[str, Any], provision_into: Any
) -> None:
    # The server kit out there drops a client after 5s; a new site beating every 10s
    # would be dropped over and over, although these settings are fine on their own.
    provision_project_mapping["settings"].update(heart_beat_timeout=20, heartbeat_interval=10)
    provision_project_mapping["clients"].append({"name": "site-c", "org": "hospital-c"})
    with pytest.raises(ProvisionError) as caught:
        provision_into(provision_project_mapping)
    assert "new client kits would send a heartbeat every 10s" in str(caught.value)
    assert "drops a client after 5s" in str(caught.value)
    assert not (provisioned_workspace.root / "packages" / "site-c.zip").exists()
    provision_project_mapping["settings"]["heartbeat_interval"] = 4
    assert [k.name for k in provision_into(provision_project_mapping).result.written] == ["site-c"]
    # An admin kit carries no heartbeat: adding one never trips the check.
    provision_project_mapping["settings"]["heartbeat_interval"] = 10
    provision_project_mapping["admins"].append(
        {"email": "new@example.org", "org": "lead", "role": "member"}
    )
    assert [k.name for k in provision_into(provision_project_mapping).result.written] == [
        "new@example.org"
    ]


def test_a_first_run_cut_short_is_carried_on(
    tmp_path: Path, provision_project_mapping: dict[str, Any], provision_into: Any
) -> None:
    packages = tmp_path / "workspace" / "packages"
    (packages / "site-a.zip").mkdir(parents=True)  # in the way of the second kit
    with pytest.raises(IsADirectoryError):
        provision_into(provision_project_mapping)
    state = tmp_path / "workspace" / "state"
    ca = (state / "rootCA.pem").read_bytes()
    assert json.loads((state / "issued.json").read_text())["participants"] == {}
    (packages / "site-a.zip").rmdir()
    again = provision_into(provision_project_mapping)
    assert [k.name for k in again.result.written] == [
        "server",
        "site-a",
        "site-b",
        "lead@example.org",
        "viewer@example.org",
    ]
    assert (state / "rootCA.pem").read_bytes() == ca
    for kit in again.result.written:
        assert kit.password is not None
        startup = extract_kit(kit.zip_path, kit.password, tmp_path / "out" / kit.name)
        verify_startup(startup)
        assert (startup / "rootCA.pem").read_bytes() == ca
