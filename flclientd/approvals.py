"""The apps a site's IT approved: ``<workspace>/local/approved_apps.json``.

Custom code from an app runs at a site only when the app's digest
(:mod:`flcore.appreview`) is listed here, or when the site opted into
``trust_custom_code`` in ``local/fed_client.json``. The file belongs to the
site: ``flclientd approve`` adds to it, site IT may edit it, and nothing
from the server ever writes it. Whoever can write it can let code run, so a
file that others than its owner may change is refused (as ssh refuses such
an ``authorized_keys``), and an unreadable file approves nothing.

A running daemon sees a new approval without a restart: while a run waits
for one it looks at the file once a second (:meth:`ApprovalList.wait_for`),
and every start of training reads it again.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from flcore.atomic import atomic_write_bytes
from flcore.configfile import load_json
from flcore.feed import MAX_LABEL, clip
from flcore.schema import ConfigError, Field, one_of, parse_mapping
from flcore.startup import LOCAL_DIR
from flcore.strictmodes import others_may_change, trusted_owners

APPROVALS_FILE = "approved_apps.json"
FORMAT_VERSION = 1
POLL_S = 1.0
"""How often a waiting run looks for its approval: site IT sees it start within a second."""

DIGEST = re.compile(r"[0-9a-f]{64}")


class ApprovalError(Exception):
    """The approvals file or an approval cannot be used; the message says what to do."""


@dataclass(frozen=True)
class Approval:
    """One approved digest, with the app's name and when it was approved (for people)."""

    sha256: str
    app: str
    approved_at: str


def _digest(value: object) -> str | None:
    if isinstance(value, str) and DIGEST.fullmatch(value):
        return None
    return "must be 64 lowercase hex digits (a SHA-256 as flclientd show-app prints it)"


FILE_FIELDS = [
    Field("format_version", int, required=True, check=one_of(FORMAT_VERSION)),
    Field("approved", list, required=True),
]
ENTRY_FIELDS = [
    Field("sha256", str, required=True, check=_digest),
    Field("app", str, default=""),
    Field("approved_at", str, default=""),
]


def parse_digest(text: str) -> str:
    """A digest as people type it (``sha256:`` prefix and upper case allowed), normalised.

    Raises:
        ApprovalError: not a full SHA-256; a prefix of one is refused, so that approving
            means having looked up the whole digest with ``flclientd show-app``.
    """
    digest = text.strip().lower().removeprefix("sha256:")
    if DIGEST.fullmatch(digest):
        return digest
    if re.fullmatch(r"[0-9a-f]{1,63}", digest):
        raise ApprovalError(
            f"{text!r} is only the start of a digest: give all 64 hex digits, as "
            "'flclientd show-app --workspace W <app>' prints them"
        )
    raise ApprovalError(f"{text[:80]!r} is not a SHA-256 digest (64 hex digits)")


class ApprovalList:
    """The approvals file of one workspace."""

    def __init__(self, workspace: Path) -> None:
        self.workspace = workspace
        self.path = workspace / LOCAL_DIR / APPROVALS_FILE

    def _owners(self) -> frozenset[int]:
        """Whose file to trust: this user's and root's, and the workspace owner's, whom the
        daemon runs as (it refuses to start on a workspace of another user): site IT
        running ``flclientd approve`` as root reads the service user's file."""
        return trusted_owners() | {self.workspace.stat().st_uid}

    def load(self) -> list[Approval]:
        """Every approval in the file (none when there is no file).

        Raises:
            ApprovalError: the file is unreadable, malformed, or writable by others.
        """
        try:
            changeable = others_may_change(self.path, self._owners())
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise ApprovalError(f"{self.path}: cannot read it ({exc.strerror or exc})") from None
        if changeable is not None:
            raise ApprovalError(
                f"{self.path}: others than its owner may change it ({changeable.reason}), so "
                f"it approves nothing: run {changeable.fix(self.path)} {self.path.parent}"
            )
        try:
            data = parse_mapping(load_json(self.path), FILE_FIELDS, str(self.path))
            return [
                Approval(**parse_mapping(entry, ENTRY_FIELDS, f"{self.path}: approved[{i}]"))
                for i, entry in enumerate(data["approved"])
            ]
        except ConfigError as exc:
            raise ApprovalError(f"{exc}; fix or remove the file") from None
        except OSError as exc:
            raise ApprovalError(f"{self.path}: cannot read it ({exc.strerror or exc})") from None

    def allows(self, digest: str) -> bool:
        """Whether ``digest`` is approved (ApprovalError when the file cannot be used)."""
        return any(approval.sha256 == digest for approval in self.load())

    def approve(self, digest: str, app: str) -> bool:
        """Add ``digest``, noting ``app`` (cut to MAX_LABEL: it is the names deployed apps
        were given by the server, and past the reader's 1 MiB every approval would be void);
        returns False when it was approved already.

        Held under a lock, so two ``flclientd approve`` at once both land.

        Raises:
            ApprovalError: the existing file cannot be used (it is left as it is).
        """
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lock = os.open(
            self.path.with_name(f".{APPROVALS_FILE}.lock"), os.O_RDWR | os.O_CREAT, 0o600
        )
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)
            approvals = self.load()
            if any(approval.sha256 == digest for approval in approvals):
                return False
            now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            approvals.append(Approval(digest, clip(app, MAX_LABEL), now))
            document = {
                "format_version": FORMAT_VERSION,
                "approved": [asdict(approval) for approval in approvals],
            }
            text = json.dumps(document, indent=2) + "\n"
            # Readable by others: site IT may approve as root, and the daemon reads it as the
            # service's user. Nothing in it is secret; only who may write it matters.
            atomic_write_bytes(self.path, text.encode(), mode=0o644)
            return True
        finally:
            os.close(lock)

    async def wait_for(self, digest: str, on_error: Callable[[ApprovalError], None]) -> None:
        """Return once ``digest`` is approved; a file that cannot be used is reported to
        ``on_error`` once per change of the file, and approves nothing meanwhile."""
        seen: tuple[int, ...] | None = None
        while True:
            signature = self._signature()
            if signature != seen:
                seen = signature
                try:
                    if self.allows(digest):
                        return
                except ApprovalError as exc:
                    on_error(exc)
            await asyncio.sleep(POLL_S)

    def _signature(self) -> tuple[int, ...]:
        """What changes when the file's verdict may: the file itself, and the modes of the
        file and its folder (the ``chmod go-w`` that a refusal advises changes only those,
        and a waiting run stayed waiting after it)."""
        try:
            info, folder = self.path.stat(), self.path.parent.stat()
        except OSError:
            return ()
        return (info.st_ino, info.st_mtime_ns, info.st_size, info.st_mode, folder.st_mode)
