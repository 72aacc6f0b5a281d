"""Which project a daemon's ``state/`` belongs to, so that a kit of another project does not
take it over.

A server workspace copied for a new project, with ``startup/`` replaced by the new
project's kit, would otherwise start as that project with the first one's runs,
registrations, audit and refusals: its sites' tokens and revoked names would meet
certificates of another CA. A site's workspace given another project's kit would run that
project's apps under the first one's approvals and ``local/`` settings (the code it
trusts). ``state/project.json`` records the project's name and the
SHA-256 fingerprint of its CA certificate, written at the first start (and by a state
from before the record, which adopts the kit it starts with); a start with a kit of a
different CA or name is refused. A project that deliberately moved to a new CA deletes
the file once, and the state adopts the new kit.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from flcore.atomic import atomic_write_bytes
from flcore.configfile import parse_json, read_bounded
from flcore.schema import ConfigError

log = logging.getLogger(__name__)

PROJECT_FILE = "project.json"
PROJECT_KEYS = ("name", "ca_sha256")


@dataclass(frozen=True)
class Project:
    """A project as the state records it."""

    name: str
    ca_sha256: str

    @property
    def shown(self) -> str:
        """The project as a message names it: its name and CA fingerprint, as people read
        a fingerprint aloud (``AB:CD:…``)."""
        digest = self.ca_sha256.upper()
        return (
            f"{self.name} (CA fingerprint {':'.join(digest[i : i + 2] for i in range(0, 64, 2))})"
        )


def kit_project(name: str, ca_path: Path) -> Project:
    """The project of the server's kit: its name and its CA certificate's fingerprint.

    Raises:
        ConfigError: the CA certificate cannot be read.
    """
    try:
        cert = x509.load_pem_x509_certificate(ca_path.read_bytes())
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "strerror", None) or exc
        raise ConfigError(f"cannot read the project CA certificate {ca_path}: {reason}") from None
    der = cert.public_bytes(serialization.Encoding.DER)
    return Project(name, hashlib.sha256(der).hexdigest())


def claim_state(state_dir: Path, kit: Project, holds: str, remedy: str) -> None:
    """Refuse a state that belongs to another project; record the kit's project in a state
    that names none (a new workspace, or one from before the record). ``holds`` is what a
    kit of another project would take over, ``remedy`` what to do instead, as the refusal
    says them.

    Raises:
        ConfigError: the state belongs to another project, or its record cannot be read.
    """
    path = state_dir / PROJECT_FILE
    if not path.exists():
        data = {"name": kit.name, "ca_sha256": kit.ca_sha256}
        atomic_write_bytes(path, json.dumps(data, indent=1).encode() + b"\n", mode=0o600)
        log.info("%s records that this state belongs to project %s", path, kit.shown)
        return
    held = _read(path)
    if held != kit:
        raise ConfigError(
            f"this workspace's state belongs to project {held.shown}, but its startup kit is "
            f"of project {kit.shown}: a kit of another project would take over {holds}. "
            f"{remedy}; only if this project deliberately moved to a new CA, delete {path} "
            "and start again"
        )


def _read(path: Path) -> Project:
    where = str(path)
    try:
        data = parse_json(read_bounded(path, where=where), where)
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror or exc}") from None
    name, digest = (data.get(key) if isinstance(data, dict) else None for key in PROJECT_KEYS)
    if not isinstance(name, str) or not isinstance(digest, str) or len(digest) != 64:
        raise ConfigError(
            f"{path} is damaged (it must name the project and its CA's SHA-256): restore it "
            "from a backup, or delete it to let the kit the daemon starts with adopt the state"
        )
    return Project(name, digest.lower())
