"""The signature that seals a kit's ``startup/`` folder.

A kit travels by mail or shared drive and is then unpacked by hand, so a
daemon or the console checks before it starts that ``startup/`` holds exactly
what provisioning wrote: a changed server address, a swapped certificate or a
stray file would otherwise surface later as a confusing TLS failure. The
project CA signs a manifest of SHA-256 digests (``signature.json``); the
check uses the CA certificate shipped in the kit and also makes sure the
participant certificate was issued by that CA. Settings a site may change
belong in ``<workspace>/local/`` (see :mod:`flcore.startup`), never here.
A key the site made itself (the CSR flow) is listed by its public key's
digest, since lead IT never sees the key; the check is otherwise the same.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    PublicFormat,
    load_pem_private_key,
)

from flcore.configfile import parse_json, read_bounded
from flcore.schema import ConfigError
from flcore.startup import KIT_FILES, STARTUP_DIR

SIGNATURE_FILE = "signature.json"
ROOT_CERT_FILE = "rootCA.pem"
PARTICIPANT_CERT_FILES = ("server.crt", "client.crt")
FORMAT_VERSION = 1
ALG_ECDSA = "ecdsa-sha256"
ALG_RSA = "rsa-pkcs1v15-sha256"

MAX_KIT_FILES = 32
PUBLIC_KEY_DIGEST = "public-key-sha256:"
"""Prefix of a manifest entry that seals a private key by its public key (see sign_files)."""

SigningKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
"""The key types a project CA may have."""
PublicKey = ec.EllipticCurvePublicKey | rsa.RSAPublicKey

_FIX = "re-extract the kit from its zip or have it re-issued"


class KitSignatureError(Exception):
    """A kit's startup folder is not what provisioning wrote."""


def _canonical(files: Mapping[str, str]) -> bytes:
    return json.dumps(files, sort_keys=True, separators=(",", ":")).encode()


def public_key_sha256(public_key: PublicKey) -> str:
    """SHA-256 of a public key's SubjectPublicKeyInfo (DER), as lowercase hex.

    Names a key by its public half: in a seal, and in the provisioning
    records, where a key a request brings is known again without any
    private key being kept.
    """
    der = public_key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(der).hexdigest()


def public_key_digest(public_key: PublicKey) -> str:
    """How the manifest lists a private key held at its site: its public key's SHA-256."""
    return f"{PUBLIC_KEY_DIGEST}{public_key_sha256(public_key)}"


def _private_key_digest(pem: bytes) -> str:
    try:
        key = load_pem_private_key(pem, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        return "not a private key"
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        return "not a private key"
    return public_key_digest(key.public_key())


def _digests(files: Mapping[str, bytes], listed: Mapping[str, str] | None = None) -> dict[str, str]:
    """SHA-256 of every file but the manifest itself, as ``listed`` says to take it.

    A file the manifest lists by :func:`public_key_digest` is a private key
    that never left its site: it is sealed by the public key it belongs to.
    """
    listed = listed or {}
    return {
        name: (
            _private_key_digest(data)
            if listed.get(name, "").startswith(PUBLIC_KEY_DIGEST)
            else hashlib.sha256(data).hexdigest()
        )
        for name, data in files.items()
        if name != SIGNATURE_FILE
    }


def sign_files(
    files: Mapping[str, bytes],
    ca_key: SigningKey,
    held_keys: Mapping[str, PublicKey] | None = None,
) -> bytes:
    """Return the ``signature.json`` content sealing ``files`` (name -> content).

    Kits are built in memory so private keys never touch the provisioning
    host's disk outside the encrypted zip; this is the entry point for that.
    ``held_keys`` names the private key files a site made itself (the CSR
    flow) with their public keys: lead IT never sees them, yet the seal
    still covers them, so a swapped key fails the check like any other file.
    """
    digests = _digests(files)
    digests.update({name: public_key_digest(key) for name, key in (held_keys or {}).items()})
    payload = _canonical(digests)
    if isinstance(ca_key, rsa.RSAPrivateKey):
        algorithm = ALG_RSA
        signature = ca_key.sign(payload, padding.PKCS1v15(), hashes.SHA256())
    else:
        algorithm = ALG_ECDSA
        signature = ca_key.sign(payload, ec.ECDSA(hashes.SHA256()))
    manifest = {
        "format_version": FORMAT_VERSION,
        "algorithm": algorithm,
        "files": digests,
        "signature": base64.b64encode(signature).decode(),
    }
    return (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode()


def read_startup(startup_dir: Path) -> dict[str, bytes]:
    """Read every regular file under ``startup_dir``, keyed by its relative POSIX path.

    A kit has a handful of small files: more than :data:`MAX_KIT_FILES`, or
    one above flcore.configfile's size limit, is refused before it is read.
    """
    paths = [path for path in sorted(startup_dir.rglob("*")) if path.is_file()]
    if len(paths) > MAX_KIT_FILES:
        raise KitSignatureError(
            f"{startup_dir}: {len(paths)} files, more than a kit has ({MAX_KIT_FILES}); {_FIX}"
        )
    try:
        return {path.relative_to(startup_dir).as_posix(): read_bounded(path) for path in paths}
    except ConfigError as exc:
        raise KitSignatureError(f"{exc}; {_FIX}") from None


def startup_folder(path: Path) -> Path:
    """The kit's ``startup/`` folder, given either it or the workspace that holds it.

    People give either, and a workspace holds little else: the tools that take a
    ``startup/`` folder take its workspace too rather than call the kit damaged.
    """
    inner = path / STARTUP_DIR
    try:
        return inner if inner.is_dir() and not (path / SIGNATURE_FILE).exists() else path
    except OSError:  # a path that cannot be looked at: reading the kit says why
        return path


def verify_startup(startup_dir: Path) -> None:
    """Check that ``startup_dir`` is exactly what provisioning signed.

    Raises:
        KitSignatureError: naming every altered, missing or unexpected file,
            or saying why the manifest or the certificates do not check out.
    """
    if not startup_dir.is_dir():
        raise KitSignatureError(_no_folder(startup_dir))
    if not any((startup_dir / name).is_file() for name in (SIGNATURE_FILE, *KIT_FILES)):
        raise KitSignatureError(
            f"{startup_dir}: not a kit's {STARTUP_DIR}/ folder (it holds no {SIGNATURE_FILE}, "
            f"no {' or '.join(KIT_FILES)}); check the path"
        )
    verify_files(read_startup(startup_dir), str(startup_dir))


def _no_folder(startup_dir: Path) -> str:
    """Why there is no ``startup_dir`` to check: a wrong path, not a damaged kit, so the
    advice is about the path given."""
    if startup_dir.exists():
        extract = f" (flprovision extract {startup_dir})" if startup_dir.suffix == ".zip" else ""
        return (
            f"{startup_dir}: not a folder; give the kit's {STARTUP_DIR}/ folder, extracted from "
            f"its zip{extract}"
        )
    workspace = startup_dir.parent
    if startup_dir.name == STARTUP_DIR and workspace.is_dir():
        if (workspace / SIGNATURE_FILE).exists():
            return (
                f"{workspace} is a kit's {STARTUP_DIR}/ folder itself: give the workspace, the "
                f"folder that holds {STARTUP_DIR}/ ({workspace.parent})"
            )
        return (
            f"{workspace} holds no {STARTUP_DIR}/ folder: give the workspace the kit was "
            f"extracted into, the folder that holds {STARTUP_DIR}/"
        )
    missing = startup_dir
    while not missing.parent.exists() and missing.parent != missing:
        missing = missing.parent
    return f"{missing}: no such folder; check the path"


def verify_files(files: Mapping[str, bytes], where: str) -> None:
    """Check a kit's startup files (name -> content) against their signature.

    ``where`` names the folder or zip in error messages.
    """
    manifest = _read_manifest(files, where)
    listed: dict[str, str] = manifest["files"]
    actual = _digests(files, listed)
    problems = [
        *(f"altered: {n}" for n in sorted(listed) if n in actual and actual[n] != listed[n]),
        *(f"missing: {n}" for n in sorted(listed) if n not in actual),
        *(f"unexpected: {n}" for n in sorted(actual) if n not in listed),
    ]
    if problems:
        listing = "; ".join(problems)
        raise KitSignatureError(f"{where}: kit does not match its signature ({listing}); {_FIX}")
    ca_cert = _load_cert(files, ROOT_CERT_FILE, where)
    _check_manifest_signature(manifest, ca_cert, where)
    _check_participant_cert(files, ca_cert, where)


def _read_manifest(files: Mapping[str, bytes], where: str) -> dict[str, Any]:
    raw = files.get(SIGNATURE_FILE)
    if raw is None:
        raise KitSignatureError(f"{where}: {SIGNATURE_FILE} is missing; {_FIX}")
    try:
        manifest: dict[str, Any] = parse_json(raw, f"{where}/{SIGNATURE_FILE}")
    except ConfigError as exc:
        raise KitSignatureError(f"{exc}; {_FIX}") from None
    well_formed = (
        isinstance(manifest, dict)
        and manifest.get("format_version") == FORMAT_VERSION
        and manifest.get("algorithm") in (ALG_ECDSA, ALG_RSA)
        and isinstance(manifest.get("signature"), str)
        and isinstance(manifest.get("files"), dict)
        and all(isinstance(v, str) for v in manifest["files"].values())
    )
    if not well_formed:
        raise KitSignatureError(f"{where}: {SIGNATURE_FILE} is malformed; {_FIX}")
    return manifest


def _load_cert(files: Mapping[str, bytes], name: str, where: str) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(files[name])
    except (KeyError, ValueError):
        raise KitSignatureError(f"{where}: {name} is not a PEM certificate; {_FIX}") from None


def _check_manifest_signature(
    manifest: Mapping[str, Any], ca_cert: x509.Certificate, where: str
) -> None:
    try:
        public_key = ca_cert.public_key()
    except UnsupportedAlgorithm:
        raise KitSignatureError(
            f"{where}: {ROOT_CERT_FILE} holds a key of a type flstack does not use; {_FIX}"
        ) from None
    payload = _canonical(manifest["files"])
    try:
        signature = base64.b64decode(manifest["signature"], validate=True)
        if manifest["algorithm"] == ALG_ECDSA and isinstance(public_key, ec.EllipticCurvePublicKey):
            public_key.verify(signature, payload, ec.ECDSA(hashes.SHA256()))
        elif manifest["algorithm"] == ALG_RSA and isinstance(public_key, rsa.RSAPublicKey):
            public_key.verify(signature, payload, padding.PKCS1v15(), hashes.SHA256())
        else:
            raise InvalidSignature
    except (InvalidSignature, binascii.Error):
        raise KitSignatureError(
            f"{where}: {SIGNATURE_FILE} was not signed by the CA in {ROOT_CERT_FILE}; {_FIX}"
        ) from None


def _check_participant_cert(
    files: Mapping[str, bytes], ca_cert: x509.Certificate, where: str
) -> None:
    present = [name for name in PARTICIPANT_CERT_FILES if name in files]
    if not present:
        raise KitSignatureError(f"{where}: no participant certificate (server.crt or client.crt)")
    for name in present:
        cert = _load_cert(files, name, where)
        try:
            cert.verify_directly_issued_by(ca_cert)
        except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
            raise KitSignatureError(
                f"{where}: {name} was not issued by the CA in {ROOT_CERT_FILE}; {_FIX}"
            ) from None
