"""The provisioning workspace on the lead's machine.

::

    WORKSPACE/
      state/          0700: rootCA.key (0600), rootCA.pem, issued.json, revoked.json, .lock
      packages/       0700: one <name>.zip per participant (0600)
      audit.json      every certificate ever issued or revoked here, never a key or password
      crl.pem         the revocation list for the server (public: no secret in it)

``state/`` is what lets a later run add participants under the same CA and
tell who is new; it must be kept (and backed up) as long as the project lives.
``revoked.json`` is the record every CRL is signed from, so a lost crl.pem
is signed again (``flprovision crl``) without forgetting a revocation.
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, NamedTuple

from cryptography import x509

from flcore.configfile import parse_json, read_bounded
from flcore.crl import CRL_FILE
from flcore.kitsig import ROOT_CERT_FILE
from flcore.schema import ConfigError
from flcore.strictmodes import check_folders_to, make_private_folder, trusted_owners
from provision.errors import ProvisionError
from provision.pki import CertifiedKey, cert_pem, key_pem, load_key

STATE_DIR = "state"
PACKAGES_DIR = "packages"
AUDIT_FILE = "audit.json"
CA_KEY_FILE = "rootCA.key"
ISSUED_FILE = "issued.json"
REVOKED_FILE = "revoked.json"
MAX_RECORD_BYTES = 64 * 1024 * 1024
"""audit.json grows with every certificate issued; this is over 100,000 of them."""
FORMAT_VERSION = 1
PRIVATE_DIR_MODE = 0o700
PRIVATE_FILE_MODE = 0o600


def _write_atomic(path: Path, data: bytes, mode: int = 0o644) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as out:
        out.write(data)
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, path)


def _write_json(path: Path, value: Any) -> None:
    _write_atomic(path, (json.dumps(value, indent=2) + "\n").encode())


def _read_json(path: Path) -> Any:
    try:
        return parse_json(read_bounded(path, MAX_RECORD_BYTES), str(path))
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ProvisionError(
            f"{path}: cannot read it ({exc.strerror or exc}); restore it from a backup"
        ) from None
    except ConfigError as exc:
        raise ProvisionError(f"{exc}; restore it from a backup") from None


Entry = dict[str, Any]
"""A certificate as issued.json and audit.json keep it: the participant's fields as issued,
its serial, fingerprint, validity, public key's SHA-256 and kit (``revoked`` once revoked,
``public_key`` when its owner made the key). Kept as JSON: records written by every earlier
version read back as they were written (older ones lack ``public_key_sha256``)."""


@dataclass
class IssuedRecord:
    """issued.json: the project as its kits embed it, and who holds a kit, read once."""

    project: str | None
    """The project's name (None in a record that does not say)."""
    server: dict[str, Any] = field(default_factory=dict)
    """The server section as issued."""
    settings: dict[str, Any] | None = None
    """The settings as issued."""
    server_settings: dict[str, Any] | None = None
    """The settings the server's kit was issued with (None before a server kit)."""
    participants: dict[str, Entry] = field(default_factory=dict)
    """The kit holders' entries, by ``<kind>:<name>``."""

    def as_json(self) -> dict[str, Any]:
        """The record as issued.json holds it."""
        return {
            "format_version": FORMAT_VERSION,
            "project": self.project,
            "server": self.server,
            "settings": self.settings,
            "server_settings": self.server_settings,
            "participants": self.participants,
        }

    @classmethod
    def from_json(cls, value: Mapping[str, Any]) -> IssuedRecord:
        """The record in issued.json's JSON, whose ``participants`` was checked to hold objects."""
        project, server = value.get("project"), value.get("server")
        settings, server_settings = value.get("settings"), value.get("server_settings")
        return cls(
            project=project if isinstance(project, str) else None,
            server=server if isinstance(server, dict) else {},
            settings=settings if isinstance(settings, dict) else None,
            server_settings=server_settings if isinstance(server_settings, dict) else None,
            participants=dict(value["participants"]),
        )


@dataclass(frozen=True)
class RevokedCert:
    """One revoked certificate, as revoked.json and audit.json record it."""

    serial: str
    """Lowercase hex, as audit.json gives it."""
    name: str
    kind: str
    reason: str
    revoked_at: str


_REVOKED_FIELDS = tuple(f.name for f in fields(RevokedCert))


@dataclass(frozen=True)
class RevokedList:
    """revoked.json: every certificate revoked here, and the number of the last CRL signed."""

    crl_number: int = 0
    revoked: tuple[RevokedCert, ...] = ()

    def as_json(self) -> dict[str, object]:
        """The record as revoked.json holds it."""
        return {
            "format_version": FORMAT_VERSION,
            "crl_number": self.crl_number,
            "revoked": [asdict(entry) for entry in self.revoked],
        }

    @staticmethod
    def readable(value: object) -> bool:
        """Whether ``value`` (revoked.json's JSON) is a record flprovision wrote."""
        return (
            isinstance(value, dict)
            and value.get("format_version") == FORMAT_VERSION
            and isinstance(value.get("crl_number"), int)
            and isinstance(value.get("revoked"), list)
            and all(
                isinstance(entry, dict)
                and sorted(entry) == sorted(_REVOKED_FIELDS)
                and all(isinstance(text, str) for text in entry.values())
                for entry in value["revoked"]
            )
        )

    @classmethod
    def from_json(cls, value: Mapping[str, Any]) -> RevokedList:
        """The record in revoked.json's JSON, once :meth:`readable` said it is one."""
        return cls(value["crl_number"], tuple(RevokedCert(**entry) for entry in value["revoked"]))


class Audit(NamedTuple):
    """audit.json's lists, every entry as it was written (empty before the first run)."""

    issued: list[object]
    revoked: list[object]


class Workspace:
    """Paths and files of one provisioning workspace."""

    def __init__(self, root: Path) -> None:
        """Point at ``root``; nothing is created until :meth:`prepare`."""
        self.root = root
        self.state_dir = root / STATE_DIR
        self.packages_dir = root / PACKAGES_DIR
        self.audit_path = root / AUDIT_FILE
        self.crl_path = root / CRL_FILE

    def prepare(self) -> None:
        """Create the folders, keeping the workspace (when created here), ``state/`` and
        ``packages/`` private to the owner; refuse a workspace others may change (they
        could put a CA key of their own in the place of ``state/``)."""
        try:
            make_private_folder(self.root)
            check_folders_to(self.root, f"the project CA's key in {STATE_DIR}/", trusted_owners())
            for folder in (self.state_dir, self.packages_dir):
                folder.mkdir(mode=PRIVATE_DIR_MODE, exist_ok=True)
                folder.chmod(PRIVATE_DIR_MODE)
        except ConfigError as exc:
            raise ProvisionError(str(exc)) from None
        except OSError as exc:
            inside = f"{exc.filename}: " if exc.filename and exc.filename != str(self.root) else ""
            raise ProvisionError(
                f"{self.root}: cannot create the workspace ({inside}{exc.strerror or exc})"
            ) from None

    @contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the workspace for one run; two runs at once would issue conflicting kits."""
        try:
            fd = os.open(self.state_dir / ".lock", os.O_WRONLY | os.O_CREAT, PRIVATE_FILE_MODE)
        except FileNotFoundError:
            raise ProvisionError(
                f"{self.root}: not a provisioning workspace (no {STATE_DIR}/ folder); provision "
                f"the project first: flprovision -p project.yml -w {self.root}"
            ) from None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise ProvisionError(
                    f"{self.root}: another flprovision run is using this workspace"
                ) from None
            yield
        finally:
            os.close(fd)

    def load_ca(self) -> CertifiedKey | None:
        """The project CA, or None before the first run."""
        key_path = self.state_dir / CA_KEY_FILE
        cert_path = self.state_dir / ROOT_CERT_FILE
        if not key_path.exists() and not cert_path.exists():
            return None
        try:
            key = load_key(key_path.read_bytes())
            cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        except TypeError:  # cryptography's word for a key that needs a passphrase
            raise ProvisionError(
                f"{key_path}: the CA key is encrypted with a passphrase, and flprovision uses "
                "it unencrypted (state/ is private to you); restore the unencrypted key from "
                "a backup"
            ) from None
        except (OSError, ValueError) as exc:
            raise ProvisionError(
                f"{self.state_dir}: cannot load the project CA ({exc}); restore state/ from a "
                "backup, or provision into a new workspace and re-issue every kit"
            ) from None
        # Restored from different backups, the pair would sign CRLs and kits no site accepts.
        if key.public_key() != cert.public_key():
            raise ProvisionError(
                f"{key_path}: this key is not the one {cert_path} certifies (restored from "
                "different backups?); restore both from the same backup"
            )
        return CertifiedKey(key, cert)

    def open_state(self) -> tuple[IssuedRecord | None, CertifiedKey | None]:
        """issued.json and the CA, which exist together or not at all (None before a first run).

        Raises:
            ProvisionError: only one of them is there, or either is unreadable.
        """
        record = self.load_issued()
        ca = self.load_ca()
        if (record is None) != (ca is None):
            raise ProvisionError(
                f"{self.state_dir}: holds only part of the project's state (CA and issued.json "
                "go together); restore it from a backup or provision into a new workspace"
            )
        return record, ca

    def require_ca(self) -> CertifiedKey:
        """The project CA of a workspace that was provisioned.

        Raises:
            ProvisionError: nothing was provisioned here yet, or the state is damaged.
        """
        _, ca = self.open_state()
        if ca is None:
            raise ProvisionError(
                f"{self.root}: no project CA here yet; provision the project first: "
                f"flprovision -p project.yml -w {self.root}"
            )
        return ca

    def save_ca(self, ca: CertifiedKey) -> None:
        """Keep the CA for later runs; its key file is readable by the owner only."""
        _write_atomic(self.state_dir / CA_KEY_FILE, key_pem(ca.key), PRIVATE_FILE_MODE)
        _write_atomic(self.state_dir / ROOT_CERT_FILE, cert_pem(ca.cert))

    def load_issued(self) -> IssuedRecord | None:
        """What earlier runs issued (see :meth:`save_issued`), or None before the first run."""
        value = _read_json(self.state_dir / ISSUED_FILE)
        if value is not None and not (
            isinstance(value, dict)
            and value.get("format_version") == FORMAT_VERSION
            and isinstance(value.get("participants"), dict)
            and all(isinstance(entry, dict) for entry in value["participants"].values())
        ):
            raise ProvisionError(f"{self.state_dir / ISSUED_FILE}: not a record flprovision wrote")
        return None if value is None else IssuedRecord.from_json(value)

    def save_issued(self, record: IssuedRecord) -> None:
        """Record the project, its server section and the participants holding kits."""
        _write_json(self.state_dir / ISSUED_FILE, record.as_json())

    def load_audit(self) -> Audit:
        """audit.json's ``issued`` and ``revoked`` lists (empty before the first run)."""
        audit = _read_json(self.audit_path) or {}
        if not isinstance(audit, dict) or not all(
            isinstance(audit.get(key, []), list) for key in ("issued", "revoked")
        ):
            raise ProvisionError(f"{self.audit_path}: not an audit flprovision wrote")
        return Audit(audit.get("issued", []), audit.get("revoked", []))

    def certificates(self) -> list[Entry]:
        """Every certificate issued here, one entry per serial.

        audit.json lists them all; issued.json's holders are read too, since
        a run cut short between saving the two leaves a holder audit.json
        lacks.
        """
        record = self.load_issued()
        holders = record.participants.values() if record is not None else []
        found: dict[str, Entry] = {}
        for entry in [*self.load_audit().issued, *holders]:
            if isinstance(entry, dict) and "serial" in entry:
                found.setdefault(str(entry["serial"]), entry)
        return list(found.values())

    def append_audit(
        self,
        project: str,
        ca: dict[str, str],
        issued: list[Entry],
        revoked: Sequence[RevokedCert] = (),
    ) -> None:
        """Add this run's certificates (and revocations) to audit.json, keeping every entry."""
        earlier = self.load_audit()
        audit = {
            "format_version": FORMAT_VERSION,
            "project": project,
            "ca": ca,
            "issued": [*earlier.issued, *issued],
            "revoked": [*earlier.revoked, *(asdict(entry) for entry in revoked)],
        }
        _write_json(self.audit_path, audit)

    def load_revoked(self) -> RevokedList:
        """Every certificate ever revoked here and the number of the last CRL signed."""
        value = _read_json(self.state_dir / REVOKED_FILE)
        if value is None:
            return RevokedList()
        if not RevokedList.readable(value):
            raise ProvisionError(f"{self.state_dir / REVOKED_FILE}: not a record flprovision wrote")
        return RevokedList.from_json(value)

    def save_revoked(self, record: RevokedList) -> None:
        """Keep the revocations and the CRL number (before the CRL they are signed into)."""
        _write_json(self.state_dir / REVOKED_FILE, record.as_json())

    def write_crl(self, pem: bytes) -> None:
        """Replace crl.pem: public, so readable by everyone who may hand it to the server."""
        _write_atomic(self.crl_path, pem)
