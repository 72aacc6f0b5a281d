"""Keys that never leave their site: flprovision request, sign and assemble.

The site's key is made in its workspace and never read by lead IT's side;
the kit sent back holds no key and no secret; the assembled startup/ passes
the same seal check as a zip kit and loads as a client's or admin's kit.
"""

from __future__ import annotations

import json
import re
import stat
import zipfile
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID
from hypothesis import given
from hypothesis import strategies as st

from flcore import startup
from flcore.crl import CRL_FILE, read_crl
from flcore.identity import identity_from_certificate
from flcore.kitsig import KitSignatureError, verify_startup
from provision import ProvisionError, extract_kit, parse_project, provision_workspace
from provision.cli import main
from provision.csr import assemble, make_request, read_request, sign_request
from provision.keyrecords import KeyRecords
from provision.kits import kit_files, participants, write_kit_zip
from provision.pki import certify, create_ca, fingerprint, key_pem
from provision.revocation import revoke
from tests.flprovision import flprovision
from tests.fuzz import FUZZ


@pytest.fixture
def csr_mapping(provision_project_mapping: dict[str, Any]) -> dict[str, Any]:
    """The example project with site-b and viewer@example.org making their own keys."""
    provision_project_mapping["clients"][1]["csr"] = True
    provision_project_mapping["admins"][1]["csr"] = True
    return provision_project_mapping


@pytest.fixture
def lead(tmp_path: Path, csr_mapping: dict[str, Any]) -> Any:
    """Lead IT's workspace after a plain run: site-b and the viewer are awaited."""
    project = parse_project(csr_mapping)
    root = tmp_path / "lead"
    result = provision_workspace(project, root)
    assert result.awaiting == ("site-b", "viewer@example.org")
    assert "site-b" not in [kit.name for kit in result.written]
    return project, root


def _subject(cert: x509.Certificate, oid: x509.ObjectIdentifier) -> str:
    return str(cert.subject.get_attributes_for_oid(oid)[0].value)


def _kit_files(zip_path: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(zip_path) as archive:  # plain: no password needed
        return {info.filename: archive.read(info) for info in archive.infolist()}


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.usefixtures("umask_000")
def test_request_makes_a_private_key_and_a_csr(tmp_path: Path) -> None:
    """Under umask 000 the workspace (and any folder above it that was missing) was made
    0777, which assemble then refused, after lead IT had signed the request."""
    made = make_request("site-b", "client", tmp_path / "sites" / "site-b")
    site = tmp_path / "sites" / "site-b"
    assert made.key == site / "request" / "client.key"
    assert made.csr == site / "request" / "site-b.csr"
    folders = (site.parent, site, made.key.parent)
    assert [_mode(path) for path in (*folders, made.key, made.csr)] == [
        0o700,
        0o700,
        0o700,
        0o600,
        0o644,  # sent to lead IT as it is: nothing in it is secret
    ]
    assert b"PRIVATE KEY" not in made.csr.read_bytes()
    csr = read_request(made.csr)
    assert csr.subject.rfc4514_string() == "OU=client,CN=site-b"
    key = serialization.load_pem_private_key(made.key.read_bytes(), None)
    assert csr.public_key() == key.public_key()


@pytest.mark.parametrize(
    ("name", "role", "message"),
    [
        ("global", "client", "'global' cannot be a client name: it must not be a word flstack"),
        ("site_1", "client", "it must not end in '_<digits>'"),
        ("lead", "admin", "'lead' cannot be an admin's email: it must be an email address"),
        ("site-b", "server", "--role must be one of client, admin, got 'server'"),
    ],
)
def test_request_refuses_bad_names_and_roles(
    tmp_path: Path, name: str, role: str, message: str
) -> None:
    with pytest.raises(ProvisionError, match=message):
        make_request(name, role, tmp_path / "ws")
    assert not (tmp_path / "ws").exists()


@pytest.mark.usefixtures("umask_000")
def test_a_request_made_under_umask_000_is_assembled(lead: Any, tmp_path: Path) -> None:
    project, root = lead
    site = tmp_path / "site-b"
    made = make_request("site-b", "client", site)
    signed = sign_request(project, root, made.csr)
    done = assemble(signed.kit.zip_path, site, signed.ca_fingerprint)
    assert startup.load_client(site).name == "site-b"
    assert [_mode(path) for path in (site, done.startup, done.startup / "client.key")] == [
        0o700,
        0o700,
        0o600,
    ]


def test_request_refuses_a_workspace_others_may_write_before_making_a_key(
    tmp_path: Path,
) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    with pytest.raises(ProvisionError, match=f"{shared} has mode 0777.*run chmod go-w {shared}$"):
        make_request("site-b", "client", shared)
    assert list(shared.iterdir()) == []


def test_request_never_overwrites_a_key(tmp_path: Path) -> None:
    first = make_request("site-b", "client", tmp_path)
    key = first.key.read_bytes()
    with pytest.raises(ProvisionError, match="a request was made here already"):
        make_request("site-b", "client", tmp_path)
    assert first.key.read_bytes() == key


def test_a_client_request_signed_and_assembled_is_a_sealed_kit(lead: Any, tmp_path: Path) -> None:
    project, root = lead
    site = tmp_path / "site-b"
    made = make_request("site-b", "client", site)
    key = made.key.read_bytes()
    signed = sign_request(project, root, made.csr)
    kit = signed.kit
    assert (kit.name, kit.kind, kit.password) == ("site-b", "client", None)
    assert kit.password_line() == "===> no password: site-b.zip holds no key; send it as it is"
    files = _kit_files(kit.zip_path)
    assert sorted(files) == [
        "startup/client.crt",
        "startup/fed_client.json",
        "startup/flclientd@.service",
        "startup/rootCA.pem",
        "startup/signature.json",
        "startup/start.sh",
    ]
    assert not any(b"PRIVATE KEY" in data for data in files.values())
    cert = x509.load_pem_x509_certificate(files["startup/client.crt"])
    assert identity_from_certificate(cert).name == "site-b"
    assert _subject(cert, NameOID.ORGANIZATION_NAME) == "hospital-b"  # from project.yml

    done = assemble(kit.zip_path, site, signed.ca_fingerprint)
    assert (done.startup, done.name, done.ca_fingerprint) == (
        site / "startup",
        "site-b",
        signed.ca_fingerprint,
    )
    verify_startup(done.startup)
    assert (done.startup / "client.key").read_bytes() == key
    assert stat.S_IMODE((done.startup / "client.key").stat().st_mode) == 0o600
    assert not made.key.exists()  # one copy of the key, in startup/
    assert startup.load_client(site).name == "site-b"
    record = json.loads((root / "state" / "issued.json").read_text())
    assert record["participants"]["client:site-b"]["csr"] is True
    assert "PUBLIC KEY" in record["participants"]["client:site-b"]["public_key"]


def test_an_admin_request_gets_the_role_project_yml_gives(lead: Any, tmp_path: Path) -> None:
    project, root = lead
    made = make_request("viewer@example.org", "admin", tmp_path / "viewer")
    signed = sign_request(project, root, made.csr)
    done = assemble(signed.kit.zip_path, tmp_path / "viewer")
    cert = x509.load_pem_x509_certificate((done.startup / "client.crt").read_bytes())
    identity = identity_from_certificate(cert)
    assert (identity.name, identity.kind, identity.role) == (
        "viewer@example.org",
        "admin",
        "member",
    )
    assert startup.load_admin(done.startup).role == "member"


def test_a_swapped_key_breaks_the_seal(lead: Any, tmp_path: Path) -> None:
    project, root = lead
    made = make_request("site-b", "client", tmp_path / "site-b")
    done = assemble(sign_request(project, root, made.csr).kit.zip_path, tmp_path / "site-b")
    other = key_pem(ec.generate_private_key(ec.SECP256R1()))
    (done.startup / "client.key").write_bytes(other)
    with pytest.raises(KitSignatureError, match=r"altered: client\.key"):
        verify_startup(done.startup)


def _csr(name: str, kind: str, key: Any) -> bytes:
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, name),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, kind),
        ]
    )
    csr = x509.CertificateSigningRequestBuilder().subject_name(subject).sign(key, hashes.SHA256())
    return csr.public_bytes(serialization.Encoding.PEM)


def _der(pem: bytes) -> bytes:
    return x509.load_pem_x509_csr(pem).public_bytes(serialization.Encoding.DER)


P256 = ec.generate_private_key(ec.SECP256R1())
EC_PUBLIC_KEY_OID = bytes.fromhex("06072a8648ce3d0201")
"""DER of id-ecPublicKey, the key algorithm of an ECDSA request's public key."""


@pytest.mark.parametrize(
    ("csr", "message"),
    [
        (_csr("site-z", "client", P256), "'site-z' is not in project.yml; add it with csr: true"),
        (
            _csr("site-b", "admin", P256),
            "'site-b' is a client in project.yml, but the request is for an admin; ask for a "
            "request with --role client",
        ),
        (_csr("site-a", "client", P256), "'site-a' gets a zip kit with its key from you"),
        (_csr("server", "server", P256), "asks for a 'server' certificate; only client or admin"),
        (_csr("global", "client", P256), "'global' cannot be a client name"),
        (
            _csr(
                "site-b", "client", rsa.generate_private_key(public_exponent=65537, key_size=2048)
            ),
            r"its key is not one flstack accepts \(ecdsa-p256, ecdsa-p384, rsa-3072\)",
        ),
        (
            _csr("site-b", "client", ec.generate_private_key(ec.SECP521R1())),
            "its key is not one flstack accepts",
        ),
        (b"-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n", "not a certificate request"),
        (
            _der(_csr("site-b", "client", P256)).replace(
                EC_PUBLIC_KEY_OID, EC_PUBLIC_KEY_OID[:-1] + b"\x09"
            ),
            "not a certificate request",
        ),
    ],
    # Named ids: the requests are made afresh by each process, and pytest-xdist's
    # workers must collect the same test names.
    ids=[
        "undeclared",
        "wrong-role",
        "zip-kit-site",
        "server-role",
        "reserved-name",
        "rsa-2048",
        "p521",
        "not-a-request",
        "unknown-key-algorithm",
    ],
)
def test_sign_checks_the_request_against_project_yml(
    lead: Any, tmp_path: Path, csr: bytes, message: str
) -> None:
    project, root = lead
    path = tmp_path / "request.csr"
    path.write_bytes(csr)
    with pytest.raises(ProvisionError, match=message):
        sign_request(project, root, path)
    assert not (root / "packages" / "site-b.zip").exists()


def test_sign_refuses_a_forged_request(lead: Any, tmp_path: Path) -> None:
    project, root = lead
    made = make_request("site-b", "client", tmp_path / "site-b")
    der = bytearray(read_request(made.csr).public_bytes(serialization.Encoding.DER))
    der[-5] ^= 0x01  # inside the signature
    forged = tmp_path / "forged.csr"
    forged.write_bytes(bytes(der))
    with pytest.raises(ProvisionError, match="its signature does not match the key in it"):
        sign_request(project, root, forged)


def test_sign_refuses_a_huge_file(lead: Any, tmp_path: Path) -> None:
    project, root = lead
    huge = tmp_path / "huge.csr"
    with huge.open("wb") as out:
        out.truncate(100 * 1024 * 1024)
    with pytest.raises(ProvisionError, match="104,857,600 bytes is more than"):
        sign_request(project, root, huge)


def test_a_second_request_needs_reissue_and_a_new_key(lead: Any, tmp_path: Path) -> None:
    project, root = lead
    first = make_request("site-b", "client", tmp_path / "first")
    old = sign_request(project, root, first.csr)
    old_cert = x509.load_pem_x509_certificate(_kit_files(old.kit.zip_path)["startup/client.crt"])
    with pytest.raises(
        ProvisionError,
        match=r"has a certificate already \(serial [0-9a-f]+\); to replace it .* --reissue",
    ):
        sign_request(project, root, first.csr)
    with pytest.raises(ProvisionError, match="is for the key 'site-b' holds already"):
        sign_request(project, root, first.csr, reissue=True)
    second = make_request("site-b", "client", tmp_path / "second")
    new = sign_request(project, root, second.csr, reissue=True)
    assert new.crl is not None and [r.reason for r in new.crl.revoked] == ["superseded"]
    ca = x509.load_pem_x509_certificate((root / "state" / "rootCA.pem").read_bytes())
    assert read_crl(root / CRL_FILE, ca).revokes(old_cert)
    verify_startup(assemble(new.kit.zip_path, tmp_path / "second").startup)


def test_assemble_refuses_what_does_not_fit(lead: Any, tmp_path: Path) -> None:
    project, root = lead
    site = tmp_path / "site-b"
    made = make_request("site-b", "client", site)
    signed = sign_request(project, root, made.csr)
    elsewhere = tmp_path / "elsewhere"
    with pytest.raises(ProvisionError, match="no key made here"):
        assemble(signed.kit.zip_path, elsewhere)
    make_request("site-b", "client", elsewhere)
    with pytest.raises(ProvisionError, match="its certificate was made for another key than"):
        assemble(signed.kit.zip_path, elsewhere)
    wrong = "ab" * 32
    with pytest.raises(
        ProvisionError, match=r"its project CA has fingerprint [0-9A-F:]+, not the AB:AB"
    ):
        assemble(signed.kit.zip_path, site, wrong)
    with pytest.raises(ProvisionError, match="--ca-fingerprint must be a SHA-256"):
        assemble(signed.kit.zip_path, site, "12:34")
    made.key.chmod(0o644)
    with pytest.raises(ProvisionError, match="the private key may be read by others"):
        assemble(signed.kit.zip_path, site)
    made.key.chmod(0o600)
    zip_kit = root / "packages" / "site-a.zip"
    with pytest.raises(ProvisionError, match="encrypted, so it holds a key of its own"):
        assemble(zip_kit, site)
    assert made.key.exists() and not (site / "startup").exists()  # nothing moved, nothing lost


def test_a_renewal_keeps_the_project_ca_unless_a_fingerprint_names_the_new_one(
    lead: Any, tmp_path: Path, csr_mapping: dict[str, Any]
) -> None:
    """Renewing (startup/ there already) took a kit of any CA without --ca-fingerprint: whoever
    carried it could swap in a CA and a server of their own for the key seen in the plain kit."""
    project, root = lead
    site = tmp_path / "site-b"
    made = make_request("site-b", "client", site)
    assemble(sign_request(project, root, made.csr).kit.zip_path, site)
    trusted = (site / "startup" / "rootCA.pem").read_bytes()
    csr_mapping["server"]["host"] = "evil.example.net"
    evil = parse_project(csr_mapping)
    now = datetime.now(UTC)
    ca = create_ca("demo", "lead", "ecdsa-p256", 30, now)
    who = next(each for each in participants(evil) if each.name == "site-b")
    site_key = read_request(made.csr).public_key()
    assert isinstance(site_key, ec.EllipticCurvePublicKey)
    cert = certify(ca, who.subject, site_key, 30, now)
    swapped = tmp_path / "swapped.zip"
    write_kit_zip(swapped, kit_files(evil, who, ca, cert, None), None, now)
    with pytest.raises(ProvisionError, match=r"its project CA \(fingerprint [0-9A-F:]+\) is not"):
        assemble(swapped, site)
    assert (site / "startup" / "rootCA.pem").read_bytes() == trusted
    assert assemble(swapped, site, fingerprint(ca.cert)).ca_fingerprint == fingerprint(ca.cert)


def test_assemble_refuses_a_certificate_without_a_name(lead: Any, tmp_path: Path) -> None:
    """Its missing CN ended as an IndexError."""
    site = tmp_path / "site-b"
    made = make_request("site-b", "client", site)
    now = datetime.now(UTC)
    ca = create_ca("demo", "lead", "ecdsa-p256", 30, now)
    nameless = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "x")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(nameless)
        .issuer_name(ca.cert.subject)
        .public_key(read_request(made.csr).public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + timedelta(days=1))
        .sign(ca.key, hashes.SHA256())
    )
    kit = tmp_path / "nameless.zip"
    write_kit_zip(kit, {"client.crt": cert.public_bytes(serialization.Encoding.PEM)}, None, now)
    with pytest.raises(ProvisionError, match="its certificate names no single owner"):
        assemble(kit, site)


def test_assemble_refuses_a_tampered_kit(lead: Any, tmp_path: Path) -> None:
    project, root = lead
    site = tmp_path / "site-b"
    made = make_request("site-b", "client", site)
    signed = sign_request(project, root, made.csr)
    tampered = tmp_path / "tampered.zip"
    with zipfile.ZipFile(tampered, "w") as out:
        for name, data in _kit_files(signed.kit.zip_path).items():
            if name == "startup/fed_client.json":
                data = data.replace(b"localhost", b"evil.example.org")
            out.writestr(name, data)
    with pytest.raises(ProvisionError, match=r"altered: fed_client\.json"):
        assemble(tampered, site)
    assert made.key.exists()


def test_force_certifies_the_key_a_site_holds_and_assemble_renews(
    lead: Any, tmp_path: Path, csr_mapping: dict[str, Any]
) -> None:
    project, root = lead
    site = tmp_path / "site-b"
    made = make_request("site-b", "client", site)
    assemble(sign_request(project, root, made.csr).kit.zip_path, site)
    key = (site / "startup" / "client.key").read_bytes()
    again = provision_workspace(project, root, force=True)
    renewed = next(kit for kit in again.written if kit.name == "site-b")
    assert renewed.password is None
    assert again.awaiting == ("viewer@example.org",)
    assemble(renewed.zip_path, site)
    verify_startup(site / "startup")
    assert (site / "startup" / "client.key").read_bytes() == key
    assert sorted(p.name for p in site.iterdir()) == ["local", "request", "startup"]


def test_force_never_certifies_a_revoked_key_again(lead: Any, tmp_path: Path) -> None:
    """A site that makes its own key and was revoked (its key stolen, say): a later --force,
    to renew every kit, certified the same key again with a new serial that no list revokes."""
    project, root = lead
    site = tmp_path / "site-b"
    made = make_request("site-b", "client", site)
    sign_request(project, root, made.csr)
    revoke(root, "site-b", "key-compromise")
    again = provision_workspace(project, root, force=True)
    assert "site-b" not in [kit.name for kit in again.written]
    assert any("site-b's certificate is revoked" in w and "--reissue" in w for w in again.warnings)
    # The site's new key is what gets signed.
    renewed = make_request("site-b", "client", tmp_path / "site-b-new")
    assert sign_request(project, root, renewed.csr, reissue=True).kit.name == "site-b"


def test_force_revokes_a_zip_kit_whose_owner_now_makes_its_own_key(
    tmp_path: Path, provision_project_mapping: dict[str, Any]
) -> None:
    """A super admin with a zip kit made a member who makes their own key: --force left the
    old kit valid (still super) and its record stuck, so sign refused the new request and
    --force changed nothing."""
    root = tmp_path / "lead"
    first = provision_workspace(parse_project(provision_project_mapping), root)
    kit = next(kit for kit in first.written if kit.name == "lead@example.org")
    assert kit.password is not None
    old_kit = extract_kit(kit.zip_path, kit.password, tmp_path / "old-kit")
    old_cert = x509.load_pem_x509_certificate((old_kit / "client.crt").read_bytes())
    provision_project_mapping["admins"][0].update(role="member", csr=True)
    project = parse_project(provision_project_mapping)
    again = provision_workspace(project, root, force=True)
    assert "lead@example.org" in again.awaiting
    ca = x509.load_pem_x509_certificate((root / "state" / "rootCA.pem").read_bytes())
    assert read_crl(root / CRL_FILE, ca).revokes(old_cert)
    made = make_request("lead@example.org", "admin", tmp_path / "lead-admin")
    signed = sign_request(project, root, made.csr)
    cert = x509.load_pem_x509_certificate(_kit_files(signed.kit.zip_path)["startup/client.crt"])
    assert identity_from_certificate(cert).role == "member"


def test_sign_never_certifies_a_revoked_key_again(
    lead: Any, tmp_path: Path, csr_mapping: dict[str, Any]
) -> None:
    """A key whose certificate was revoked (stolen, say) was certified again by sign: under
    --reissue once the site held another key, or after the name left project.yml and came
    back."""
    project, root = lead
    stolen = make_request("site-b", "client", tmp_path / "stolen")
    sign_request(project, root, stolen.csr)
    revoke(root, "site-b", "key-compromise")
    fresh = make_request("site-b", "client", tmp_path / "fresh")
    sign_request(project, root, fresh.csr, reissue=True)
    refused = r"certified before for 'site-b' \(serial [0-9a-f]+\) and that certificate is revoked"
    with pytest.raises(ProvisionError, match=refused):
        sign_request(project, root, stolen.csr, reissue=True)
    revoke(root, "site-b", "key-compromise")
    del csr_mapping["clients"][1]
    provision_workspace(parse_project(csr_mapping), root)
    with pytest.raises(ProvisionError, match=refused):
        sign_request(project, root, fresh.csr)


def _request_with(key: Any, name: str, kind: str, folder: Path) -> Path:
    """A request for ``name`` carrying ``key``, as whoever holds that key can make one."""
    path = folder / f"{name}.csr"
    path.write_bytes(_csr(name, kind, key))
    return path


def _private_key(path: Path) -> Any:
    return serialization.load_pem_private_key(path.read_bytes(), None)


def test_sign_refuses_a_key_made_here_for_a_zip_kit(
    tmp_path: Path, csr_mapping: dict[str, Any], provision_into: Any
) -> None:
    """A zip kit's key was made at lead IT and travelled in the kit: a request bringing it
    (a stolen kit, or a site that kept its old kit's key) was certified, since the record
    kept no key of a zip kit."""
    lead = provision_into(csr_mapping)
    for holder in ("server", "site-a", "lead@example.org"):
        startup = extract_kit(lead.kit(holder), lead.password(holder), tmp_path / holder)
        key_path = startup / ("server.key" if holder == "server" else "client.key")
        request = _request_with(_private_key(key_path), "site-b", "client", tmp_path)
        with pytest.raises(
            ProvisionError,
            match=rf"its key is the one made here for the zip kit of '{holder}' \(serial ",
        ):
            sign_request(lead.project, lead.root, request)
    assert not (lead.root / "packages" / "site-b.zip").exists()
    ca_key = _private_key(lead.root / "state" / "rootCA.key")
    with pytest.raises(ProvisionError, match="its key is the project CA's"):
        sign_request(lead.project, lead.root, _request_with(ca_key, "site-b", "client", tmp_path))


def test_a_key_is_one_participants_only(
    lead: Any, tmp_path: Path, csr_mapping: dict[str, Any]
) -> None:
    """A key certified for site-b's request was certified again for the viewer's: one key,
    two participants. site-b's own request, sent again after site-b left project.yml and came
    back, is still signed: that key was never anyone else's."""
    project, root = lead
    made = make_request("site-b", "client", tmp_path / "site-b")
    sign_request(project, root, made.csr)
    borrowed = _request_with(_private_key(made.key), "viewer@example.org", "admin", tmp_path)
    with pytest.raises(
        ProvisionError,
        match=r"its key was certified before for 'site-b' \(serial [0-9a-f]+\), and a key is "
        "one participant's only",
    ):
        sign_request(project, root, borrowed)
    assert not (root / "packages" / "viewer@example.org.zip").exists()
    left = {**csr_mapping, "clients": csr_mapping["clients"][:1]}
    provision_workspace(parse_project(left), root)
    again = sign_request(project, root, made.csr)
    assert again.kit.name == "site-b" and again.warnings == ()


def _as_an_older_flprovision_left_it(root: Path) -> None:
    """The records without the keys' SHA-256, as versions before it was kept wrote them."""
    audit, issued = root / "audit.json", root / "state" / "issued.json"
    for path, key in ((audit, "issued"), (issued, "participants")):
        record = json.loads(path.read_text())
        entries = record[key] if key == "issued" else record[key].values()
        for entry in [*entries, record.get("ca", {})]:
            entry.pop("public_key_sha256", None)
        path.write_text(json.dumps(record))


def test_an_older_workspace_is_checked_by_what_its_records_keep(
    lead: Any, tmp_path: Path, csr_mapping: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    """Records of an older flprovision keep the public key of a request's certificate, so
    that key is still known again; of a zip kit they keep no key, and sign says so."""
    project, root = lead
    made = make_request("site-b", "client", tmp_path / "site-b")
    sign_request(project, root, made.csr)
    _as_an_older_flprovision_left_it(root)
    borrowed = _request_with(_private_key(made.key), "viewer@example.org", "admin", tmp_path)
    with pytest.raises(ProvisionError, match="its key was certified before for 'site-b'"):
        sign_request(project, root, borrowed)
    (tmp_path / "project.yml").write_text(yaml.safe_dump(csr_mapping))
    viewer = make_request("viewer@example.org", "admin", tmp_path / "viewer")
    argv = ["sign", str(viewer.csr), "-p", str(tmp_path / "project.yml"), "-w", str(root)]
    assert main(argv) == 0
    out, err = capsys.readouterr()
    assert err == (
        "flprovision: the request's key could not be compared with 3 certificate(s) that an "
        "earlier flprovision issued (server, site-a, lead@example.org): it kept no record of "
        "their keys, and their kits are encrypted; certificates issued from now on are on "
        "record\n"
    )
    assert out.startswith("===> no password: viewer@example.org.zip holds no key")
    audit = json.loads((root / "audit.json").read_text())
    assert "public_key_sha256" in audit["issued"][-1]


def test_force_compares_the_key_it_renews_as_sign_compares_a_request(
    lead: Any, tmp_path: Path, csr_mapping: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A sign that compared no revoked keys (as before it did) certified a stolen key again
    for a site that left project.yml and came back; --force renewed that key without
    comparing it with anything, for as long again as the kit lasts."""
    project, root = lead
    stolen = make_request("site-b", "client", tmp_path / "stolen")
    sign_request(project, root, stolen.csr)
    revoke(root, "site-b", "key-compromise")
    provision_workspace(parse_project({**csr_mapping, "clients": csr_mapping["clients"][:1]}), root)
    with monkeypatch.context() as older:
        older.setattr(KeyRecords, "refusal", lambda *_args, **_kwargs: None)
        certified_again = sign_request(project, root, stolen.csr).kit.zip_path
    again = provision_workspace(project, root, force=True)
    assert "site-b" not in [kit.name for kit in again.written]
    (warning,) = [w for w in again.warnings if w.startswith("site-b")]
    assert re.fullmatch(
        r"site-b's certificate is not renewed: its key was certified before for 'site-b' "
        r"\(serial [0-9a-f]+\) and that certificate is revoked, so it is never certified "
        r"again\. Its site makes a new key and request \(flprovision request\), which you "
        r"sign \(flprovision sign REQUEST\.csr\)",
        warning,
    )
    ca = x509.load_pem_x509_certificate((root / "state" / "rootCA.pem").read_bytes())
    cert = x509.load_pem_x509_certificate(_kit_files(certified_again)["startup/client.crt"])
    assert read_crl(root / CRL_FILE, ca).revokes(cert)
    fresh = make_request("site-b", "client", tmp_path / "fresh")
    assert sign_request(project, root, fresh.csr).kit.name == "site-b"


def test_force_says_when_a_key_it_renews_could_not_be_compared(lead: Any, tmp_path: Path) -> None:
    project, root = lead
    made = make_request("site-b", "client", tmp_path / "site-b")
    sign_request(project, root, made.csr)
    _as_an_older_flprovision_left_it(root)
    again = provision_workspace(project, root, force=True)
    assert "site-b" in [kit.name for kit in again.written]
    assert again.warnings == (
        "the key that site-b made, certified again, could not be compared with 3 "
        "certificate(s) that an earlier flprovision issued (server, site-a, lead@example.org): "
        "it kept no record of their keys, and their kits are encrypted; certificates issued "
        "from now on are on record",
    )


def test_a_csr_site_has_no_kit_to_reissue(lead: Any) -> None:
    project, root = lead
    with pytest.raises(
        ProvisionError,
        match=r"makes its own key \(csr: true\), so there is no kit to re-issue here",
    ):
        provision_workspace(project, root, reissue="site-b")


@FUZZ
@given(st.binary(max_size=400))
def test_property_any_file_is_a_request_or_a_clear_error(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "any.csr"
    path.write_bytes(data)
    try:
        read_request(path)
    except ProvisionError as exc:
        assert str(exc).startswith(f"{path}: ")


def test_cli_request_sign_assemble(tmp_path: Path, csr_mapping: dict[str, Any]) -> None:
    (tmp_path / "project.yml").write_text(yaml.safe_dump(csr_mapping))
    done = flprovision("-p", "project.yml", "-w", "ws", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-2:] == [
        "===> awaiting site-b: csr: true, so it sends a request (flprovision sign REQUEST.csr)",
        "===> awaiting viewer@example.org: csr: true, so it sends a request (flprovision sign "
        "REQUEST.csr)",
    ]
    done = flprovision("request", "site-b", "--role", "client", "-w", "site", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout == (
        "wrote the private key site/request/client.key (mode 0600): it stays here\n"
        "wrote the request site/request/site-b.csr: send it to lead IT, who run: flprovision "
        "sign site-b.csr\n"
    )
    done = flprovision("sign", "site/request/site-b.csr", "-w", "ws", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    kit_line, fingerprint_line = done.stdout.splitlines()
    assert kit_line == "===> no password: site-b.zip holds no key; send it as it is"
    fingerprint = fingerprint_line.removeprefix("===> project CA fingerprint (SHA-256): ")
    assert len(fingerprint) == 95
    done = flprovision(
        "assemble", "ws/packages/site-b.zip", "-w", "site", "--ca-fingerprint", fingerprint,
        cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0] == "assembled site/startup for site-b with the key made here"
    assert flprovision("verify", "site", cwd=tmp_path).returncode == 0
    done = flprovision("sign", "site/request/site-b.csr", "-w", "ws", cwd=tmp_path)
    assert done.returncode == 1
    assert done.stderr.startswith("flprovision: error: 'site-b' has a certificate already")


def test_extract_refuses_a_zip_bomb(tmp_path: Path) -> None:
    bomb = tmp_path / "bomb.zip"
    with zipfile.ZipFile(bomb, "w", compression=zipfile.ZIP_DEFLATED) as out:
        out.writestr("startup/fed_client.json", b"\0" * (50 * 1024 * 1024))
    with pytest.raises(ProvisionError, match="would unpack to 52,428,800 bytes"):
        extract_kit(bomb, "x", tmp_path / "dest")
    assert not (tmp_path / "dest").exists()
