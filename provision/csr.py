"""Keys that never leave their site: ``flprovision request``, ``sign`` and ``assemble``.

The all-in-one zip has lead IT make every private key. For a participant
marked ``csr: true`` in project.yml it goes the other way:

1. at the site, ``request`` makes a key (0600) and a certificate signing
   request (CSR) in ``<workspace>/request/``; only the CSR is sent;
2. lead IT's ``sign`` checks the CSR against project.yml (the name must be
   declared with ``csr: true``, the role must match, the key must be of a
   type the project allows, and the CSR must be signed by that key) and
   writes a kit without a key: a plain zip, since nothing in it is secret;
3. at the site, ``assemble`` puts that kit and the key together as
   ``startup/``, checked by the same signed manifest as every kit (its seal
   names the key by its public half), and moves the key there.

Whoever carries the kit to the site could swap the CA in it, so ``sign``
prints the CA's fingerprint and ``assemble --ca-fingerprint`` compares it.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from flcore.configfile import read_bounded
from flcore.identity import KIND_ADMIN, KIND_CLIENT
from flcore.kitsig import (
    ROOT_CERT_FILE,
    KitSignatureError,
    PublicKey,
    public_key_sha256,
    verify_files,
)
from flcore.schema import ConfigError
from flcore.startup import STARTUP_DIR, check_private_key
from flcore.strictmodes import check_folders_to, make_private_folder
from provision.engine import (
    WrittenKit,
    check_run,
    finish_run,
    holder_key,
    start,
    write_kit,
)
from provision.errors import ProvisionError
from provision.extract import install_startup, read_kit, refuse_existing
from provision.keyrecords import KeyRecords, held_public_key
from provision.kits import (
    KEY_MODE,
    STARTUP_DIR_MODE,
    cert_file,
    key_file,
    participants,
)
from provision.pki import CertifiedKey, PrivateKey, fingerprint, generate_key, key_pem
from provision.project import KEY_TYPES, Project, admin_email_problem, client_name_problem
from provision.revocation import CRL_DAYS, REISSUE_REASON, CrlWritten, revoke_certificates
from provision.workspace import Workspace

REQUEST_DIR = "request"
REQUEST_ROLES = {"client": KIND_CLIENT, "admin": KIND_ADMIN}
"""``--role`` words and the kind (certificate OU) they ask for."""
MAX_CSR_BYTES = 64 * 1024
_HEX = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class Request:
    """What ``request`` wrote at the site."""

    key: Path
    """Stays here; ``assemble`` moves it into startup/."""
    csr: Path
    """Goes to lead IT."""


@dataclass(frozen=True)
class Signed:
    """What ``sign`` wrote: the kit without a key, and any revocation it did."""

    kit: WrittenKit
    ca_fingerprint: str
    crl: CrlWritten | None
    warnings: tuple[str, ...]
    """What the lead should know: keys of older certificates the request was not compared with."""


@dataclass(frozen=True)
class Assembled:
    """What ``assemble`` built at the site."""

    startup: Path
    name: str
    ca_fingerprint: str


def colon_hex(digest: str) -> str:
    """A SHA-256 as people read it aloud over the phone: ``AB:CD:...``."""
    return ":".join(digest[i : i + 2] for i in range(0, len(digest), 2)).upper()


def key_type_of(key: PublicKey) -> str | None:
    """Which of :data:`provision.project.KEY_TYPES` a public key is, or None for none."""
    if isinstance(key, ec.EllipticCurvePublicKey):
        return {"secp256r1": "ecdsa-p256", "secp384r1": "ecdsa-p384"}.get(key.curve.name)
    if key.key_size == 3072 and key.public_numbers().e == 65537:
        return "rsa-3072"
    return None


# --------------------------------------------------------------------------- at the site


def _name_problem(name: str, kind: str) -> str | None:
    problem = client_name_problem(name) if kind == KIND_CLIENT else admin_email_problem(name)
    if problem is None:
        return None
    what = "a client name" if kind == KIND_CLIENT else "an admin's email"
    return f"{name!r} cannot be {what}: it {problem}"


def _write_new(path: Path, data: bytes, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as out:
        os.fchmod(out.fileno(), mode)  # the umask may have taken bits away
        out.write(data)


def make_request(name: str, role: str, workspace: Path, key_type: str = KEY_TYPES[0]) -> Request:
    """``flprovision request``: a private key (0600) and a CSR in ``workspace/request/``.

    The workspace and ``request/`` are made 0700 whatever the umask, as
    ``extract`` makes them: ``assemble`` puts ``startup/`` beside ``request/``
    and refuses a workspace others may change, so a wide umask here would
    only be found out there. A workspace that exists already keeps its mode,
    but one others may change is refused before any key is made in it.

    Raises:
        ProvisionError: a bad name or role, a kit or a request already there,
            a workspace others may change, or the folder cannot be written.
    """
    kind = REQUEST_ROLES.get(role)
    if kind is None:
        raise ProvisionError(f"--role must be one of {', '.join(REQUEST_ROLES)}, got {role!r}")
    if key_type not in KEY_TYPES:
        raise ProvisionError(f"--key-type must be one of {', '.join(KEY_TYPES)}, got {key_type!r}")
    problem = _name_problem(name, kind)
    if problem:
        raise ProvisionError(problem)
    refuse_existing(workspace)
    folder = workspace / REQUEST_DIR
    key_path, csr_path = folder / key_file(kind), folder / f"{name}.csr"
    if key_path.exists():
        raise ProvisionError(
            f"{key_path}: a request was made here already; send {folder}/*.csr to lead IT, "
            f"or remove {folder} to start over"
        )
    key = generate_key(key_type)
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, name),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, kind),
        ]
    )
    csr = x509.CertificateSigningRequestBuilder().subject_name(subject).sign(key, hashes.SHA256())
    try:
        make_private_folder(workspace)
        check_folders_to(workspace, f"the private key of this request, in {REQUEST_DIR}/")
        folder.mkdir(mode=STARTUP_DIR_MODE, exist_ok=True)
        folder.chmod(STARTUP_DIR_MODE)
        _write_new(key_path, key_pem(key), KEY_MODE)
        _write_new(csr_path, csr.public_bytes(serialization.Encoding.PEM), 0o644)
    except ConfigError as exc:
        raise ProvisionError(str(exc)) from None
    except OSError as exc:
        key_path.unlink(missing_ok=True)
        raise ProvisionError(f"{folder}: cannot write the request ({exc.strerror})") from None
    return Request(key_path, csr_path)


def assemble(kit_zip: Path, workspace: Path, ca_fingerprint: str | None = None) -> Assembled:
    """``flprovision assemble``: the signed kit plus the key made here, as ``startup/``.

    The key moves into ``startup/`` (one copy, never two), only after the
    kit, the key and the seal check out together. A kit lead IT certified
    again for the key already in ``startup/`` (after ``flprovision --force``)
    replaces that ``startup/``, keeping the key.

    Raises:
        ProvisionError: no request was made here, the key is not private, the
            kit is not for this key or fails its seal, or the CA is not the
            one whose fingerprint was given (when renewing without one: not
            the one startup/ trusts).
    """
    wanted = _fingerprint_argument(ca_fingerprint)
    folder = workspace / REQUEST_DIR
    key_name = key_file(KIND_CLIENT)  # admins' keys are called client.key too
    key_path = folder / key_name
    in_use = workspace / STARTUP_DIR / key_name
    renewing = not key_path.exists() and in_use.exists()
    if renewing:
        key_path = in_use
    elif not key_path.exists():
        raise ProvisionError(
            f"{folder}: no key made here; this kit holds none, so it goes with the key that "
            "'flprovision request NAME --role ROLE -w DIR' made in this workspace"
        )
    else:
        refuse_existing(workspace)
    try:
        check_private_key(key_path)
        key = _load_private_key(read_bounded(key_path), key_path)
    except ConfigError as exc:
        raise ProvisionError(str(exc)) from None
    files = read_kit(kit_zip, None)
    if key_path.name in files:
        raise ProvisionError(
            f"{kit_zip}: holds a key of its own; unpack it with flprovision extract"
        )
    name = _kit_owner(files, key, kit_zip, key_path)
    files[key_path.name] = key_pem(key)
    try:
        verify_files(files, str(kit_zip))
    except KitSignatureError as exc:
        raise ProvisionError(str(exc)) from None
    ca = x509.load_pem_x509_certificate(files[ROOT_CERT_FILE])
    found = fingerprint(ca)
    if wanted is not None and found != wanted:
        raise ProvisionError(
            f"{kit_zip}: its project CA has fingerprint {colon_hex(found)}, not the "
            f"{colon_hex(wanted)} you were given: do not use this kit, and ask lead IT"
        )
    if renewing and wanted is None:
        _refuse_new_ca(ca, workspace / STARTUP_DIR / ROOT_CERT_FILE, kit_zip)
    startup = install_startup(files, workspace, replace=renewing)
    if not renewing:
        key_path.unlink()
    return Assembled(startup, name, found)


def _refuse_new_ca(ca: x509.Certificate, trusted: Path, kit_zip: Path) -> None:
    """Without a fingerprint to check, a renewal keeps the project CA the site trusts.

    Whoever carries the kit could otherwise swap in a CA of their own (and a
    server of their own) for the key they saw in the plain kit.
    """
    try:
        held = x509.load_pem_x509_certificate(read_bounded(trusted))
    except (ConfigError, OSError, ValueError):
        held = None
    if held is None or held.public_key() != ca.public_key():
        raise ProvisionError(
            f"{kit_zip}: its project CA (fingerprint {colon_hex(fingerprint(ca))}) is not the "
            f"one in {trusted}; if lead IT made a new CA, run assemble again with "
            "--ca-fingerprint and the fingerprint lead IT gives you by another channel (phone)"
        )


def _fingerprint_argument(text: str | None) -> str | None:
    if text is None:
        return None
    digest = text.replace(":", "").strip().lower().removeprefix("sha256")
    if not _HEX.fullmatch(digest):
        raise ProvisionError(
            f"--ca-fingerprint must be a SHA-256 in hex (64 digits, colons allowed), got {text!r}"
        )
    return digest


def _load_private_key(pem: bytes, path: Path) -> PrivateKey:
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError):
        raise ProvisionError(f"{path}: not an unencrypted PEM private key") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise ProvisionError(f"{path}: not a key of a type flstack uses")
    return key


def _kit_owner(files: dict[str, bytes], key: PrivateKey, kit_zip: Path, key_path: Path) -> str:
    """The name the kit's certificate gives, once it is shown to be for ``key``."""
    try:
        cert = x509.load_pem_x509_certificate(files.get(cert_file(KIND_CLIENT), b""))
    except ValueError:
        raise ProvisionError(f"{kit_zip}: no certificate in it; not a startup kit") from None
    try:
        certified = cert.public_key()
    except UnsupportedAlgorithm:
        certified = None  # not a key type of ours, so not the one made here
    if certified != key.public_key():
        raise ProvisionError(
            f"{kit_zip}: its certificate was made for another key than {key_path}: was the "
            "request sent from this workspace? Ask lead IT for the kit of your request"
        )
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if len(names) != 1:
        raise ProvisionError(
            f"{kit_zip}: its certificate names no single owner (CN); not a kit flprovision "
            "wrote: ask lead IT for the kit of your request"
        )
    return str(names[0].value)


# --------------------------------------------------------------------------- at lead IT


def read_request(path: Path) -> x509.CertificateSigningRequest:
    """A CSR file (PEM or DER), checked to be signed by the key it carries.

    Raises:
        ProvisionError: unreadable, too large, not a CSR, or its signature does not match.
    """
    try:
        data = read_bounded(path, MAX_CSR_BYTES)
    except ConfigError as exc:
        raise ProvisionError(str(exc)) from None
    except OSError as exc:
        raise ProvisionError(f"{path}: cannot read it ({exc.strerror or exc})") from None
    try:
        if data.lstrip().startswith(b"-----BEGIN"):
            csr = x509.load_pem_x509_csr(data)
        else:
            csr = x509.load_der_x509_csr(data)
        valid = csr.is_signature_valid
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise ProvisionError(
            f"{path}: not a certificate request (make one with flprovision request)"
        ) from None
    if not valid:
        raise ProvisionError(
            f"{path}: its signature does not match the key in it: damaged, or not made by "
            "flprovision request; ask for a new request"
        )
    return csr


def _single(csr: x509.CertificateSigningRequest, oid: x509.ObjectIdentifier, path: Path) -> str:
    values = csr.subject.get_attributes_for_oid(oid)
    if len(values) != 1 or not isinstance(values[0].value, str):
        label = "CN (the name)" if oid == NameOID.COMMON_NAME else "OU (the role)"
        raise ProvisionError(
            f"{path}: the request must give exactly one {label}; make it with flprovision request"
        )
    return values[0].value


def sign_request(
    project: Project,
    workspace: Path,
    csr_path: Path,
    reissue: bool = False,
    now: datetime | None = None,
    crl_days: int = CRL_DAYS,
) -> Signed:
    """``flprovision sign``: certify a site's key and write its kit without a key.

    With ``reissue`` a participant that has a certificate gets a new one for
    the new key, and the old ones are revoked in the same step.

    Raises:
        ProvisionError: the request does not match project.yml, its key is
            not one the project allows, or the participant has a certificate
            already (without ``reissue``).
    """
    now = now or datetime.now(UTC)
    csr = read_request(csr_path)
    name = _single(csr, NameOID.COMMON_NAME, csr_path)
    kind = _single(csr, NameOID.ORGANIZATIONAL_UNIT_NAME, csr_path)
    if kind not in REQUEST_ROLES.values():
        raise ProvisionError(f"{csr_path}: asks for a {kind!r} certificate; only client or admin")
    everyone = {each.name: each for each in participants(project)}
    who = everyone.get(name)
    problem = _name_problem(name, kind) if who is None else None
    if problem:
        raise ProvisionError(f"{csr_path}: {problem}")
    if who is None:
        raise ProvisionError(
            f"{csr_path}: {name!r} is not in project.yml; add it with csr: true to sign its request"
        )
    if who.kind != kind:
        raise ProvisionError(
            f"{csr_path}: {name!r} is a{'n' if who.kind == KIND_ADMIN else ''} {who.kind} in "
            f"project.yml, but the request is for a{'n' if kind == KIND_ADMIN else ''} {kind}; "
            f"ask for a request with --role {who.kind}"
        )
    if not who.csr:
        raise ProvisionError(
            f"{csr_path}: {name!r} gets a zip kit with its key from you (project.yml has no "
            "'csr: true' for it); add csr: true to its entry to sign its request instead"
        )
    public_key = csr.public_key()
    if not isinstance(public_key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey) or (
        key_type_of(public_key) is None
    ):
        raise ProvisionError(
            f"{csr_path}: its key is not one flstack accepts ({', '.join(KEY_TYPES)}); ask for "
            "a new request with flprovision request --key-type"
        )
    ws = Workspace(workspace)
    ws.prepare()
    with ws.lock():
        record, ca = ws.open_state()
        if record is not None:
            check_run(project, record, workspace, [who])
        record, ca = start(project, ws, record, ca, now)
        _refuse_ca_key(ws, ca, public_key, csr_path)
        records = KeyRecords(ws)
        refusal = records.refusal(who, public_key)
        if refusal is not None:
            raise ProvisionError(
                f"{csr_path}: {refusal}: the site makes a new key and request (flprovision request)"
            )
        uncompared = records.uncompared("the request's key")
        held = record.participants.get(holder_key(who))
        crl = None
        if held is not None:
            if not reissue:
                raise ProvisionError(
                    f"{name!r} has a certificate already (serial {held['serial']}); to replace "
                    f"it and revoke the old one: flprovision sign {csr_path} --reissue"
                )
            if held_public_key(held) == public_key:
                raise ProvisionError(
                    f"{csr_path}: is for the key {name!r} holds already; a re-issue needs a new "
                    "key: ask for a new request"
                )
            crl = revoke_certificates(ws, ca, name, REISSUE_REASON, now, crl_days)
            record = ws.load_issued() or record
        entry, kit = write_kit(project, ws, ca, who, now, public_key)
        holders = {**record.participants, holder_key(who): entry}
        finish_run(project, ws, ca, holders, record.server_settings, [entry])
        return Signed(kit, fingerprint(ca.cert), crl, () if uncompared is None else (uncompared,))


def _refuse_ca_key(ws: Workspace, ca: CertifiedKey, key: PublicKey, csr_path: Path) -> None:
    """A request signed with the CA's key shows that key has leaked: no kit of the project
    can be trusted any more, so the refusal says to start again, not to send a new key."""
    if public_key_sha256(key) == public_key_sha256(ca.key.public_key()):
        raise ProvisionError(
            f"{csr_path}: its key is the project CA's, and only the holder of the CA key could "
            f"have signed it: the key has left {ws.state_dir}, so this CA cannot be trusted "
            "any more; provision the project into a new workspace and replace every kit"
        )
