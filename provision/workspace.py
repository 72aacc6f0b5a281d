"""The provisioning workspace on the lead's machine.

::

    WORKSPACE/
      state/          0700: rootCA.key (0600), rootCA.pem, issued.json, .lock
      packages/       0700: one <name>.zip per participant (0600)
      audit.json      every certificate ever issued here, never a key or password

``state/`` is what lets a later run add participants under the same CA and
tell who is new; it must be kept (and backed up) as long as the project lives.
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from cryptography import x509

from flcore.kitsig import ROOT_CERT_FILE
from provision.errors import ProvisionError
from provision.pki import CertifiedKey, cert_pem, key_pem, load_key

STATE_DIR = "state"
PACKAGES_DIR = "packages"
AUDIT_FILE = "audit.json"
CA_KEY_FILE = "rootCA.key"
ISSUED_FILE = "issued.json"
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
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ProvisionError(f"{path}: cannot read it ({exc}); restore it from a backup") from None


class Workspace:
    """Paths and files of one provisioning workspace."""

    def __init__(self, root: Path) -> None:
        """Point at ``root``; nothing is created until :meth:`prepare`."""
        self.root = root
        self.state_dir = root / STATE_DIR
        self.packages_dir = root / PACKAGES_DIR
        self.audit_path = root / AUDIT_FILE

    def prepare(self) -> None:
        """Create the folders, keeping ``state/`` and ``packages/`` private to the owner."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            for folder in (self.state_dir, self.packages_dir):
                folder.mkdir(mode=PRIVATE_DIR_MODE, exist_ok=True)
                folder.chmod(PRIVATE_DIR_MODE)
        except OSError as exc:
            raise ProvisionError(f"{self.root}: cannot create the workspace ({exc})") from None

    @contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the workspace for one run; two runs at once would issue conflicting kits."""
        fd = os.open(self.state_dir / ".lock", os.O_WRONLY | os.O_CREAT, PRIVATE_FILE_MODE)
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
            return CertifiedKey(
                load_key(key_path.read_bytes()),
                x509.load_pem_x509_certificate(cert_path.read_bytes()),
            )
        except (OSError, ValueError) as exc:
            raise ProvisionError(
                f"{self.state_dir}: cannot load the project CA ({exc}); restore state/ from a "
                "backup, or provision into a new workspace and re-issue every kit"
            ) from None

    def save_ca(self, ca: CertifiedKey) -> None:
        """Keep the CA for later runs; its key file is readable by the owner only."""
        _write_atomic(self.state_dir / CA_KEY_FILE, key_pem(ca.key), PRIVATE_FILE_MODE)
        _write_atomic(self.state_dir / ROOT_CERT_FILE, cert_pem(ca.cert))

    def load_issued(self) -> dict[str, Any] | None:
        """What earlier runs issued (see :meth:`save_issued`), or None before the first run."""
        value = _read_json(self.state_dir / ISSUED_FILE)
        if value is not None and not (
            isinstance(value, dict)
            and value.get("format_version") == FORMAT_VERSION
            and isinstance(value.get("participants"), dict)
        ):
            raise ProvisionError(f"{self.state_dir / ISSUED_FILE}: not a record flprovision wrote")
        return value

    def save_issued(self, record: dict[str, Any]) -> None:
        """Record the project, its server section and the participants holding kits."""
        _write_json(self.state_dir / ISSUED_FILE, {"format_version": FORMAT_VERSION, **record})

    def append_audit(self, project: str, ca: dict[str, str], entries: list[dict[str, Any]]) -> None:
        """Add this run's certificates to audit.json, keeping every earlier entry."""
        earlier = _read_json(self.audit_path) or {"issued": []}
        if not isinstance(earlier, dict) or not isinstance(earlier.get("issued"), list):
            raise ProvisionError(f"{self.audit_path}: not an audit flprovision wrote")
        audit = {
            "format_version": FORMAT_VERSION,
            "project": project,
            "ca": ca,
            "issued": [*earlier["issued"], *entries],
        }
        _write_json(self.audit_path, audit)
