"""What a client daemon remembers across its own restarts.

Its registration token (so a restarted daemon resumes its instance name) and the
run it was training (so a daemon restarted by systemd after a crash rejoins
that run at the server's current round without an admin). Kept in
``<workspace>/state/`` with mode 0600: the token is only useful with the
site's certificate, but it is still nobody else's business.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from flcore.atomic import atomic_write_bytes
from flcore.configfile import load_json
from flcore.diskfault import disk_fault
from flcore.schema import ConfigError

log = logging.getLogger(__name__)


@dataclass
class SiteState:
    """Registration token and the run in progress (0 when none)."""

    token: str = ""
    training_run: int = 0
    gpus: int = 0

    @classmethod
    def load(cls, path: Path) -> SiteState:
        """Read the state, starting afresh when it is missing or unreadable."""
        try:
            data = load_json(path)  # bounded: a file nested deep was a RecursionError
            token, run, gpus = data["token"], data["training_run"], data["gpus"]
            if not (isinstance(token, str) and type(run) is int and type(gpus) is int):
                raise TypeError("unexpected value types")
            return cls(token, run, gpus)
        except FileNotFoundError:
            return cls()
        except (OSError, ConfigError, KeyError, TypeError) as exc:
            log.warning("ignoring unreadable %s (%s)", path, exc)
            return cls()

    def save(self, path: Path) -> None:
        """Write the state atomically, readable by the site's service user only."""
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        atomic_write_bytes(path, json.dumps(asdict(self)).encode(), mode=0o600)


class SiteStore:
    """The site state and the file that keeps it, updated together.

    The daemon holds a lock on the file for its lifetime. A second daemon of
    the same kit started in the same workspace (a second instance) cannot
    take it: that one keeps its state in memory only, so the two never
    share a token or a run.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            self._lock = os.open(path.with_suffix(".lock"), os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise ConfigError(
                f"cannot keep this site's state in {path.parent}: {exc.strerror or exc}; the "
                "daemon's user must be able to write there (chown it to that user)"
            ) from None
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.warning(
                "another flclientd of this kit already runs in this workspace (it holds %s): "
                "this one joins as one more instance of the kit, trains on the same DATA_ROOT "
                "unless given another, and will not remember its registration; stop it if it "
                "was started twice by mistake",
                path,
            )
            self.owned = False
            self.state = SiteState()
            return
        self.owned = True
        self.state = SiteState.load(path)

    def change(self, **changes: Any) -> None:
        """Change some fields in memory only: the caller writes them with :meth:`save`."""
        for key, value in changes.items():
            setattr(self.state, key, value)

    def save(self) -> None:
        """Write the state now when this daemon owns the file.

        Raises:
            OSError: it could not be written (a full disk: :func:`disk_fault` says).
        """
        if self.owned:
            self.state.save(self.path)

    def update(self, **changes: Any) -> None:
        """Change some fields, and write the file at once when this daemon owns it.

        On a full disk the state stays in memory (the daemon goes on) and is written
        with the next change that can be.
        """
        self.change(**changes)
        try:
            self.save()
        except OSError as exc:
            fault = disk_fault(exc)
            if fault is None:
                raise
            log.error("site state not saved (client %s): kept in memory until it can be", fault)
