"""What goes into each startup kit, and the zip that carries it.

A kit is built in memory and sealed (``signature.json``) before it is
written, so a participant's private key only ever exists on the provisioning
host inside its AES-256 zip. A participant that made its own key (the CSR
flow) gets a kit without one: a plain zip, since nothing in it is secret,
whose seal covers the key it will hold by that key's public half. The file
modes are defined here once and used when zipping, extracting and assembling.
"""

from __future__ import annotations

import ipaddress
import multiprocessing
import os
import secrets
import stat
import string
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import pyzipper
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from flcore.identity import KIND_ADMIN, KIND_CLIENT, KIND_SERVER
from flcore.kitsig import ROOT_CERT_FILE, SIGNATURE_FILE, PublicKey, sign_files
from flcore.startup import (
    ADMIN_FILE,
    CLIENT_FILE,
    SERVER_FILE,
    STARTUP_DIR,
    AdminStartup,
    ClientStartup,
    ServerStartup,
    to_json,
)
from provision import templates
from provision.pki import CertifiedKey, PrivateKey, Subject, cert_pem, key_pem
from provision.project import Project

KEY_MODE = 0o600
SCRIPT_MODE = 0o755
FILE_MODE = 0o644
STARTUP_DIR_MODE = 0o700
PASSWORD_LENGTH = 20
_PASSWORD_ALPHABET = string.ascii_letters + string.digits
LOCAL_HOSTS = ("localhost", "127.0.0.1", "::1")
"""Server hosts that mean 'this machine only': the server then listens on localhost."""


def listen_host(host: str) -> str:
    """Where a server dialled at ``host`` listens: localhost, or every address of its family.

    An IPv6 host gets ``[::]`` (bracketed, as flserverd appends the port);
    ``localhost`` covers both ``127.0.0.1`` and ``::1``.
    """
    if host in LOCAL_HOSTS:
        return "localhost"
    try:
        ipv6 = ipaddress.ip_address(host).version == 6
    except ValueError:  # a DNS name
        ipv6 = False
    return "[::]" if ipv6 else "0.0.0.0"  # noqa: S104 - a server listens for its sites


@dataclass(frozen=True)
class Participant:
    """One kit to issue: who it is for and what its certificate names."""

    kind: str
    name: str
    """Kit file name without .zip: server name, client name or admin email."""
    org: str
    common_name: str
    email: str | None = None
    role: str = ""
    csr: bool = False
    """It makes its own key and sends a certificate request; its kit holds no key."""

    @property
    def subject(self) -> Subject:
        """The certificate subject of this participant."""
        return Subject(self.common_name, self.org, self.kind, self.role)


def participants(project: Project) -> list[Participant]:
    """Every participant of ``project``: the server, then clients, then admins."""
    server = project.server
    return [
        Participant(KIND_SERVER, server.name, server.org, common_name=server.host),
        *(
            Participant(KIND_CLIENT, c.name, c.org, c.name, email=c.email, csr=c.csr)
            for c in project.clients
        ),
        *(
            Participant(KIND_ADMIN, a.email, a.org, a.email, a.email, role=a.role, csr=a.csr)
            for a in project.admins
        ),
    ]


def key_file(kind: str) -> str:
    """The name of a kit's private key file (admins' too are called client.key)."""
    return f"{_stem(kind)}.key"


def cert_file(kind: str) -> str:
    """The name of a kit's own certificate file."""
    return f"{_stem(kind)}.crt"


def _stem(kind: str) -> str:
    return "server" if kind == KIND_SERVER else "client"


def file_mode(name: str) -> int:
    """The mode a kit file gets: keys private, scripts executable, the rest readable."""
    if name.endswith(".key"):
        return KEY_MODE
    if name.endswith(".sh"):
        return SCRIPT_MODE
    return FILE_MODE


def new_password() -> str:
    """A random kit password of letters and digits (about 119 bits)."""
    return "".join(secrets.choice(_PASSWORD_ALPHABET) for _ in range(PASSWORD_LENGTH))


def _server_files(project: Project) -> dict[str, str]:
    server, settings = project.server, project.settings
    startup = ServerStartup(
        project=project.name,
        name=server.name,
        host=server.host,
        fed_port=server.fed_port,
        admin_port=server.admin_port,
        listen_host=listen_host(server.host),
        heart_beat_timeout=settings.heart_beat_timeout,
        heartbeat_interval=settings.heartbeat_interval,
    )
    return {
        SERVER_FILE: to_json(startup),
        "start.sh": templates.server_start_script(project.name),
        templates.SERVER_UNIT: templates.server_unit(
            settings.install_prefix, settings.workspace_base, server.name
        ),
    }


def _client_files(project: Project, name: str) -> dict[str, str]:
    settings = project.settings
    startup = ClientStartup(
        project=project.name,
        name=name,
        server_host=project.server.host,
        fed_port=project.server.fed_port,
        heartbeat_interval=settings.heartbeat_interval,
        retry_window=settings.retry_window,
    )
    return {
        CLIENT_FILE: to_json(startup),
        "start.sh": templates.client_start_script(project.name),
        templates.CLIENT_UNIT: templates.client_unit(
            settings.install_prefix, settings.workspace_base
        ),
    }


def _admin_files(project: Project, email: str, role: str) -> dict[str, str]:
    startup = AdminStartup(
        project=project.name,
        email=email,
        role=role,
        server_host=project.server.host,
        admin_port=project.server.admin_port,
    )
    return {
        ADMIN_FILE: to_json(startup),
        "fl_admin.sh": templates.admin_script(project.name, email),
    }


def kit_files(
    project: Project,
    who: Participant,
    ca: CertifiedKey,
    cert: x509.Certificate,
    key: PrivateKey | None = None,
) -> dict[str, bytes]:
    """The sealed content of ``who``'s startup folder (file name -> bytes).

    Without ``key`` (the participant made its own) the kit holds no key file,
    and its seal lists the key file by the certificate's public key.
    """
    if who.kind == KIND_SERVER:
        texts = _server_files(project)
    elif who.kind == KIND_CLIENT:
        texts = _client_files(project, who.name)
    else:
        texts = _admin_files(project, who.name, who.role)
    files = {name: text.encode() for name, text in texts.items()}
    files[ROOT_CERT_FILE] = cert_pem(ca.cert)
    files[cert_file(who.kind)] = cert_pem(cert)
    held: dict[str, PublicKey] = {}
    if key is None:
        public_key = cert.public_key()
        assert isinstance(public_key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey)
        held[key_file(who.kind)] = public_key
    else:
        files[key_file(who.kind)] = key_pem(key)
    files[SIGNATURE_FILE] = sign_files(files, ca.key, held)
    return files


PARALLEL_FROM = 32
"""Zips to write at which :func:`write_kit_zips` spreads them over processes.

Each encrypted entry costs a PBKDF2 key derivation (WinZip AES: 1,000
iterations of HMAC-SHA1, per entry, by the format), about 15 ms of CPU per
kit; starting worker processes costs about half a second, which pays for
itself from a few dozen kits on.
"""


@dataclass(frozen=True)
class KitZip:
    """A kit's zip to write: where, what, under which password (None: plain), dated when."""

    path: Path
    files: Mapping[str, bytes] = field(repr=False)  # a private key among them
    password: str | None = field(repr=False)  # a crash report prints reprs
    when: datetime


def write_kit_zips(zips: Sequence[KitZip]) -> None:
    """Write every zip; many of them in worker processes, one per usable core.

    The workers are spawned (not forked: the caller may hold threads or locks)
    and get the kits' files, keys included, through their pipes, so a key
    still exists only in memory until it is in its encrypted zip. A failure
    in any worker is raised here, as if the zip had been written in this
    process.
    """
    workers = min(len(os.sched_getaffinity(0)), len(zips))
    if len(zips) < PARALLEL_FROM or workers < 2:
        for each in zips:
            _write_one(each)
        return
    chunk = max(1, len(zips) // (4 * workers))
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(workers, mp_context=context) as pool:
        for _ in pool.map(_write_one, zips, chunksize=chunk):
            pass


def _write_one(zip_: KitZip) -> None:
    write_kit_zip(zip_.path, zip_.files, zip_.password, zip_.when)


def write_kit_zip(
    path: Path, files: Mapping[str, bytes], password: str | None, when: datetime
) -> None:
    """Write ``files`` under ``startup/`` into a zip at ``path``, AES-256 with a password.

    A kit without a key (the CSR flow) has no secret and no password: its zip
    is plain. The zip is written beside its final name with mode 0600 and
    renamed into place, so an interrupted run never leaves a truncated kit.
    """
    tmp = path.with_name(f".{path.name}.partial")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, KEY_MODE)
    try:
        with (
            os.fdopen(fd, "wb") as raw,
            pyzipper.AESZipFile(
                raw,
                "w",
                compression=pyzipper.ZIP_DEFLATED,
                encryption=pyzipper.WZ_AES if password is not None else None,
            ) as archive,
        ):
            if password is not None:
                archive.setpassword(password.encode())
                archive.setencryption(pyzipper.WZ_AES, nbits=256)
            for name in sorted(files):
                info = archive.zipinfo_cls(f"{STARTUP_DIR}/{name}", when.timetuple()[:6])
                info.create_system = 3  # unix, so extractors honour the mode bits
                info.external_attr = (stat.S_IFREG | file_mode(name)) << 16
                info.compress_type = pyzipper.ZIP_DEFLATED
                archive.writestr(info, files[name])
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
