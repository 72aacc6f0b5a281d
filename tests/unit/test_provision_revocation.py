"""Revocation, provisioning side: flprovision revoke, crl and --reissue, and flcore.crl.

The CRL is checked the way the server checks it, with flcore.crl against the
project CA's certificate; openssl is not needed.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from hypothesis import given
from hypothesis import strategies as st

from flcore.crl import CRL_FILE, CrlError, RevocationList, parse_crl, read_crl
from flcore.kitsig import verify_startup
from provision import ProvisionError, extract_kit, parse_project, provision_workspace
from provision.pki import create_ca
from provision.revocation import refresh_crl, revoke, sign_crl
from tests.flprovision import flprovision
from tests.fuzz import FUZZ

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def _ca_cert(root: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate((root / "state" / "rootCA.pem").read_bytes())


def _crl(root: Path) -> RevocationList:
    return read_crl(root / CRL_FILE, _ca_cert(root))


def _serials(root: Path, name: str) -> list[int]:
    audit = json.loads((root / "audit.json").read_text())
    return [int(entry["serial"], 16) for entry in audit["issued"] if entry["name"] == name]


def _kit_cert(root: Path, name: str, password: str, dest: Path) -> x509.Certificate:
    startup = extract_kit(root / "packages" / f"{name}.zip", password, dest)
    verify_startup(startup)
    return x509.load_pem_x509_certificate((startup / "client.crt").read_bytes())


def test_revoke_signs_a_crl_the_server_can_check(provisioned_workspace: Any) -> None:
    root = provisioned_workspace.root
    written = revoke(root, "site-a", "key-compromise", now=NOW)
    assert written.path == root / CRL_FILE
    assert [(r.name, r.kind, r.reason) for r in written.revoked] == [
        ("site-a", "client", "key-compromise")
    ]
    crl = _crl(root)
    (site_a,) = _serials(root, "site-a")
    assert crl.is_revoked(site_a)
    assert not any(crl.is_revoked(s) for s in _serials(root, "site-b") + _serials(root, "server"))
    assert (crl.number, crl.last_update, crl.next_update) == (1, NOW, NOW + timedelta(days=90))
    assert not crl.is_stale(NOW + timedelta(days=89))
    assert crl.is_stale(NOW + timedelta(days=91))
    raw = x509.load_pem_x509_crl((root / CRL_FILE).read_bytes())
    entry = raw.get_revoked_certificate_by_serial_number(site_a)
    assert entry is not None
    reason = entry.extensions.get_extension_for_class(x509.CRLReason).value.reason
    assert reason is x509.ReasonFlags.key_compromise


def test_every_serial_ever_revoked_stays_and_the_number_grows(provisioned_workspace: Any) -> None:
    root = provisioned_workspace.root
    revoke(root, "site-a", now=NOW)
    revoke(root, "viewer@example.org", "privilege-withdrawn", now=NOW + timedelta(hours=1))
    refreshed = refresh_crl(root, days=7, now=NOW + timedelta(days=2))
    crl = _crl(root)
    assert crl.number == refreshed.number == 3
    assert crl.serials == {*_serials(root, "site-a"), *_serials(root, "viewer@example.org")}
    assert crl.next_update == NOW + timedelta(days=9)
    audit = json.loads((root / "audit.json").read_text())
    assert [entry["name"] for entry in audit["revoked"]] == ["site-a", "viewer@example.org"]


def test_revoking_twice_changes_nothing(provisioned_workspace: Any) -> None:
    root = provisioned_workspace.root
    revoke(root, "site-a", now=NOW)
    before = (root / CRL_FILE).read_bytes()
    again = revoke(root, "site-a", now=NOW)
    assert (again.revoked, again.next_update, again.listed) == ((), None, 1)
    assert (root / CRL_FILE).read_bytes() == before


def test_the_server_certificate_cannot_be_revoked(provisioned_workspace: Any) -> None:
    root = provisioned_workspace.root
    with pytest.raises(ProvisionError, match="'server' is the server: its certificate cannot be"):
        revoke(root, "server")
    assert not (root / CRL_FILE).exists()


def test_an_unknown_name_is_refused(provisioned_workspace: Any) -> None:
    with pytest.raises(ProvisionError, match="no certificate was issued to 'Site-A' here"):
        revoke(provisioned_workspace.root, "Site-A")


def test_a_workspace_never_provisioned_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ProvisionError, match="not a provisioning workspace"):
        revoke(tmp_path / "nowhere", "site-a")
    assert not (tmp_path / "nowhere").exists()


def test_a_site_that_left_the_project_can_still_be_revoked(
    provisioned_workspace: Any, provision_project_mapping: dict[str, Any], provision_into: Any
) -> None:
    del provision_project_mapping["clients"][1]
    provision_into(provision_project_mapping)
    revoke(provisioned_workspace.root, "site-b", "cessation-of-operation", now=NOW)
    assert _crl(provisioned_workspace.root).serials == set(
        _serials(provisioned_workspace.root, "site-b")
    )


def test_every_certificate_a_participant_held_is_revoked(
    provisioned_workspace: Any, provision_project_mapping: dict[str, Any], provision_into: Any
) -> None:
    provision_into(provision_project_mapping, force=True)  # a second certificate for everyone
    root = provisioned_workspace.root
    held = _serials(root, "site-a")
    assert len(held) == 2
    revoke(root, "site-a", now=NOW)
    # --force revoked the first certificate of everyone; this revokes site-a's second
    assert set(held) <= _crl(root).serials
    assert _serials(root, "site-b")[-1] not in _crl(root).serials


def test_the_ca_key_stays_where_it_is(provisioned_workspace: Any) -> None:
    root = provisioned_workspace.root
    key = (root / "state" / "rootCA.key").read_bytes()
    revoke(root, "site-a", now=NOW)
    assert (root / "state" / "rootCA.key").read_bytes() == key
    for path in root.rglob("*"):
        if path.is_file() and path.suffix != ".zip" and path.name != "rootCA.key":
            assert b"PRIVATE KEY" not in path.read_bytes(), path
    assert oct((root / CRL_FILE).stat().st_mode & 0o777) == "0o644"


def test_a_revoked_kit_is_kept_out_of_plain_runs_with_a_warning(
    provisioned_workspace: Any, provision_project_mapping: dict[str, Any], provision_into: Any
) -> None:
    revoke(provisioned_workspace.root, "site-a", now=NOW)
    again = provision_into(provision_project_mapping)
    assert again.result.written == ()
    root = provisioned_workspace.root
    assert again.result.warnings == (
        "site-a's kit is revoked; flprovision --reissue site-a gives it a new one, or remove it "
        "from project.yml",
    )
    record = json.loads((root / "state" / "issued.json").read_text())
    assert record["participants"]["client:site-a"]["revoked"] is True


# --------------------------------------------------------------------------- reissue


def test_reissue_gives_a_new_kit_and_revokes_the_old_one(
    provisioned_workspace: Any, tmp_path: Path
) -> None:
    root, project = provisioned_workspace.root, provisioned_workspace.project
    old_password = provisioned_workspace.password("site-a")
    old_cert = _kit_cert(root, "site-a", old_password, tmp_path / "old")
    result = provision_workspace(project, root, reissue="site-a", now=NOW)
    (kit,) = result.written
    assert (kit.name, kit.kind, kit.email) == ("site-a", "client", "it@a.example.org")
    assert kit.password is not None and kit.password != old_password
    new_cert = _kit_cert(root, "site-a", kit.password, tmp_path / "new")
    assert new_cert.serial_number != old_cert.serial_number
    assert new_cert.public_key() != old_cert.public_key()
    with pytest.raises(ProvisionError, match="wrong password"):
        extract_kit(root / "packages" / "site-a.zip", old_password, tmp_path / "again")
    assert result.crl is not None
    assert [r.reason for r in result.crl.revoked] == ["superseded"]
    crl = _crl(root)
    assert crl.revokes(old_cert) and not crl.revokes(new_cert)
    record = json.loads((root / "state" / "issued.json").read_text())
    entry = record["participants"]["client:site-a"]
    assert entry["serial"] == f"{new_cert.serial_number:x}" and "revoked" not in entry
    assert len(_serials(root, "site-a")) == 2  # audit.json keeps both


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("server", "'server' is the server: its certificate cannot be revoked"),
        ("site-z", "'site-z' is not in project.yml"),
    ],
)
def test_reissue_refuses(provisioned_workspace: Any, name: str, message: str) -> None:
    root = provisioned_workspace.root
    with pytest.raises(ProvisionError, match=message):
        provision_workspace(provisioned_workspace.project, root, reissue=name)
    assert not (root / CRL_FILE).exists()


def test_reissue_of_someone_without_a_kit_says_how(
    provisioned_workspace: Any, provision_project_mapping: dict[str, Any]
) -> None:
    provision_project_mapping["clients"].append({"name": "site-c", "org": "h"})
    with pytest.raises(ProvisionError, match="'site-c' has no kit yet: a plain run"):
        provision_workspace(
            parse_project(provision_project_mapping), provisioned_workspace.root, reissue="site-c"
        )


def test_reissue_and_force_do_not_go_together(provisioned_workspace: Any) -> None:
    with pytest.raises(ProvisionError, match="choose one of them"):
        provision_workspace(
            provisioned_workspace.project, provisioned_workspace.root, True, reissue="site-a"
        )


# --------------------------------------------------------------------------- flcore.crl


def _other_ca(name: str = "demo root CA") -> Any:
    return create_ca(name.removesuffix(" root CA"), "lead", "ecdsa-p256", 30, NOW)


def test_a_crl_signed_by_another_ca_is_refused(provisioned_workspace: Any) -> None:
    root = provisioned_workspace.root
    impostor = _other_ca()  # same name as the project CA, another key
    forged = sign_crl(impostor, [], 99, NOW, 30)
    with pytest.raises(CrlError, match="not signed by this project's CA"):
        parse_crl(forged, _ca_cert(root), "forged.pem")
    stranger = sign_crl(_other_ca("other root CA"), [], 1, NOW, 30)
    with pytest.raises(CrlError, match="issued by 'O=lead,CN=other root CA', not by this"):
        parse_crl(stranger, _ca_cert(root), "other.pem")


def test_a_der_crl_reads_like_the_pem_one(provisioned_workspace: Any) -> None:
    root = provisioned_workspace.root
    revoke(root, "site-a", now=NOW)
    pem = (root / CRL_FILE).read_bytes()
    der = x509.load_pem_x509_crl(pem).public_bytes(serialization.Encoding.DER)
    assert parse_crl(der, _ca_cert(root), "crl.der") == _crl(root)


def test_only_a_newer_crl_supersedes(provisioned_workspace: Any) -> None:
    root = provisioned_workspace.root
    revoke(root, "site-a", now=NOW)
    first = _crl(root)
    refresh_crl(root, now=NOW)
    second = _crl(root)
    assert second.supersedes(first) and second.supersedes(None)
    assert not first.supersedes(second) and not second.supersedes(second)


def test_unreadable_crl_files_are_clear_errors(provisioned_workspace: Any, tmp_path: Path) -> None:
    ca = _ca_cert(provisioned_workspace.root)
    with pytest.raises(CrlError, match=r"missing\.pem: cannot read it"):
        read_crl(tmp_path / "missing.pem", ca)
    big = tmp_path / "big.pem"
    with big.open("wb") as out:
        out.truncate(100 * 1024 * 1024)
    with pytest.raises(CrlError, match=r"big\.pem: 104,857,600 bytes is more than"):
        read_crl(big, ca)
    garbage = tmp_path / "garbage.pem"
    garbage.write_bytes(b"-----BEGIN X509 CRL-----\nAAAA\n-----END X509 CRL-----\n")
    with pytest.raises(CrlError, match=r"garbage\.pem: not a certificate revocation list"):
        read_crl(garbage, ca)


@FUZZ
@given(
    st.binary(max_size=400)
    | st.binary(max_size=300).map(lambda b: b"-----BEGIN X509 CRL-----\n" + b)
)
def test_property_any_bytes_are_a_crl_or_a_crl_error(data: bytes) -> None:
    ca = _other_ca().cert
    try:
        parse_crl(data, ca, "x.pem")
    except CrlError as exc:
        assert str(exc).startswith("x.pem: ")


# --------------------------------------------------------------------------- the CLI, as a process


def test_cli_revoke_reissue_and_crl(tmp_path: Path) -> None:
    assert flprovision("init", cwd=tmp_path).returncode == 0
    assert flprovision("-p", "project.yml", "-w", "ws", cwd=tmp_path).returncode == 0
    done = flprovision(
        "revoke", "flclient2", "-w", "ws", "--reason", "key-compromise", cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr
    first, second = done.stdout.splitlines()
    assert first.startswith("===> revoked flclient2: certificate serial ")
    assert first.endswith(" (key-compromise)")
    assert second.startswith("===> wrote ws/crl.pem: CRL number 1, 1 certificate(s) revoked in all")
    assert second.endswith("(console command load_crl) now")  # a stolen kit: at once
    assert done.stderr == ""

    done = flprovision("-p", "project.yml", "-w", "ws", "--reissue", "flclient1", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("===> revoked flclient1: certificate serial ")
    assert lines[0].endswith(" (superseded)")
    assert lines[1].startswith("===> wrote ws/crl.pem: CRL number 2, 2 certificate(s)")
    # the old kit is still in use: loaded before the new one is in place, it cuts the site off
    assert lines[1].endswith(
        "(console command load_crl) once every new kit is in place (until then the old ones "
        "keep working)"
    )
    assert lines[2].startswith("===> password: ")
    assert lines[2].endswith(" for flclient1.zip to optional.email@flclient.org")

    done = flprovision("revoke", "server", "-w", "ws", cwd=tmp_path)
    assert done.returncode == 1
    assert done.stderr.startswith("flprovision: error: 'server' is the server")
    assert len(done.stderr.splitlines()) == 1

    done = flprovision("crl", "-w", "ws", "--days", "30", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "CRL number 3, 2 certificate(s) revoked in all" in done.stdout

    done = flprovision("crl", "-w", "ws", "--days", "0", cwd=tmp_path)
    assert done.returncode == 1
    assert done.stderr == "flprovision: error: --days must be between 1 and 3650, got 0\n"

    done = flprovision("revoke", "flclient1", "-w", "ws", "--reason", "stolen", cwd=tmp_path)
    assert done.returncode == 1
    assert "argument --reason: invalid choice: 'stolen'" in done.stderr
