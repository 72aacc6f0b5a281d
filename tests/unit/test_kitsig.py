"""The kit signature: a sealed startup/ folder verifies, any change to it is named."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from flcore.identity import KIND_CLIENT
from flcore.kitsig import (
    ALG_ECDSA,
    ALG_RSA,
    SIGNATURE_FILE,
    KitSignatureError,
    SigningKey,
    read_startup,
    sign_files,
    verify_startup,
)
from provision.pki import CertifiedKey, Subject, cert_pem, create_ca, issue, key_pem

NOW = datetime(2025, 1, 1, tzinfo=UTC)


def _ca(key_type: str = "ecdsa-p256", project: str = "demo") -> CertifiedKey:
    return create_ca(project, "lead", key_type, 30, NOW)


def _client(ca: CertifiedKey, name: str = "site-a") -> CertifiedKey:
    return issue(ca, Subject(name, "hospital", KIND_CLIENT), "ecdsa-p256", 30, NOW)


def _seal(folder: Path, ca_key: SigningKey) -> None:
    """Sign what the folder holds, as provisioning signs a kit before zipping it."""
    (folder / SIGNATURE_FILE).write_bytes(sign_files(read_startup(folder), ca_key))


def _write_kit(folder: Path, ca: CertifiedKey, client: CertifiedKey) -> Path:
    folder.mkdir()
    (folder / "rootCA.pem").write_bytes(cert_pem(ca.cert))
    (folder / "client.crt").write_bytes(cert_pem(client.cert))
    (folder / "client.key").write_bytes(key_pem(client.key))
    (folder / "fed_client.json").write_text('{"name": "site-a"}\n')
    _seal(folder, ca.key)
    return folder


@pytest.fixture
def ca() -> CertifiedKey:
    return _ca()


@pytest.fixture
def startup(tmp_path: Path, ca: CertifiedKey) -> Path:
    return _write_kit(tmp_path / "startup", ca, _client(ca))


def _problem(startup: Path) -> str:
    with pytest.raises(KitSignatureError) as caught:
        verify_startup(startup)
    return str(caught.value)


def test_sealed_kit_verifies_and_lists_every_file(startup: Path) -> None:
    verify_startup(startup)
    manifest = json.loads((startup / SIGNATURE_FILE).read_text())
    assert manifest["format_version"] == 1
    assert manifest["algorithm"] == ALG_ECDSA
    assert sorted(manifest["files"]) == [
        "client.crt",
        "client.key",
        "fed_client.json",
        "rootCA.pem",
    ]


def test_rsa_ca_signs_with_pkcs1v15(tmp_path: Path) -> None:
    ca = _ca("rsa-3072")
    folder = _write_kit(tmp_path / "startup", ca, _client(ca))
    assert json.loads((folder / SIGNATURE_FILE).read_text())["algorithm"] == ALG_RSA
    verify_startup(folder)


def test_changed_byte_is_named(startup: Path) -> None:
    path = startup / "fed_client.json"
    path.write_text(path.read_text().replace("site-a", "site-b"))
    message = _problem(startup)
    assert "altered: fed_client.json" in message
    assert "re-extract the kit from its zip or have it re-issued" in message


def test_removed_file_is_named(startup: Path) -> None:
    (startup / "client.key").unlink()
    assert "missing: client.key" in _problem(startup)


def test_added_file_is_refused(startup: Path) -> None:
    (startup / "fed_client.local.json").write_text("{}")
    assert "unexpected: fed_client.local.json" in _problem(startup)


def test_every_problem_is_listed(startup: Path) -> None:
    (startup / "client.key").unlink()
    (startup / "rootCA.pem").write_text("x")
    (startup / "extra").write_text("x")
    message = _problem(startup)
    for part in ("altered: rootCA.pem", "missing: client.key", "unexpected: extra"):
        assert part in message


def test_certificate_swapped_for_another_participants_is_named(
    startup: Path, ca: CertifiedKey
) -> None:
    (startup / "client.crt").write_bytes(cert_pem(_client(ca, "site-b").cert))
    assert "altered: client.crt" in _problem(startup)


def test_certificate_from_another_ca_is_refused_even_when_resigned(
    tmp_path: Path, ca: CertifiedKey
) -> None:
    foreign = _ca(project="other")
    folder = _write_kit(tmp_path / "startup", ca, _client(foreign))
    assert "client.crt was not issued by the CA in rootCA.pem" in _problem(folder)


EC_PUBLIC_KEY_OID = bytes.fromhex("06072a8648ce3d0201")
"""DER of id-ecPublicKey, the key algorithm in an ECDSA certificate's public key."""


def test_a_ca_of_an_unknown_key_type_is_refused_in_words(startup: Path, ca: CertifiedKey) -> None:
    """cryptography's UnsupportedAlgorithm went past the daemons' error handling."""
    der = ca.cert.public_bytes(Encoding.DER).replace(
        EC_PUBLIC_KEY_OID, EC_PUBLIC_KEY_OID[:-1] + b"\x09"
    )
    (startup / "rootCA.pem").write_bytes(cert_pem(x509.load_der_x509_certificate(der)))
    (startup / SIGNATURE_FILE).unlink()
    _seal(startup, ca.key)
    assert "rootCA.pem holds a key of a type flstack does not use" in _problem(startup)


def test_manifest_signed_by_another_key_is_refused(startup: Path) -> None:
    (startup / SIGNATURE_FILE).unlink()
    _seal(startup, _ca(project="other").key)
    assert "was not signed by the CA in rootCA.pem" in _problem(startup)


def test_edited_manifest_is_refused(startup: Path) -> None:
    path = startup / "fed_client.json"
    path.write_text("{}")
    manifest = json.loads((startup / SIGNATURE_FILE).read_text())
    files = {n: (startup / n).read_bytes() for n in manifest["files"]}
    forged = json.loads(sign_files(files, _ca(project="other").key))
    manifest["files"] = forged["files"]
    (startup / SIGNATURE_FILE).write_text(json.dumps(manifest))
    assert "was not signed by the CA" in _problem(startup)


@pytest.mark.parametrize(
    ("content", "expected"),
    [(None, "signature.json is missing"), ("{", "not valid JSON"), ('{"files": 1}', "malformed")],
)
def test_broken_manifest_is_refused(startup: Path, content: str | None, expected: str) -> None:
    path = startup / SIGNATURE_FILE
    if content is None:
        path.unlink()
    else:
        path.write_text(content)
    assert expected in _problem(startup)


def test_missing_folder_is_refused(tmp_path: Path) -> None:
    assert "nope: no such folder; check the path" in _problem(tmp_path / "nope")
