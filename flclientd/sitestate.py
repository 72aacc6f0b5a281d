"""What a client daemon remembers across its own restarts.

Its session token (so a restarted daemon resumes its instance name) and the
run it was training (so a daemon restarted by systemd after a crash rejoins
that run at the server's current round without an admin). Kept in
``<workspace>/state/`` with mode 0600: the token is only useful with the
site's certificate, but it is still nobody else's business.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from flcore.atomic import atomic_write_bytes

log = logging.getLogger(__name__)


@dataclass
class SiteState:
    """Session token and the run in progress (0 when none)."""

    token: str = ""
    training_run: int = 0
    gpus: int = 0

    @classmethod
    def load(cls, path: Path) -> SiteState:
        """Read the state, starting afresh when it is missing or unreadable."""
        try:
            data = json.loads(path.read_text())
            token, run, gpus = data["token"], data["training_run"], data["gpus"]
            if not (isinstance(token, str) and type(run) is int and type(gpus) is int):
                raise TypeError("unexpected value types")
            return cls(token, run, gpus)
        except FileNotFoundError:
            return cls()
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("ignoring unreadable %s (%s)", path, exc)
            return cls()

    def save(self, path: Path) -> None:
        """Write the state atomically, readable by the site's service user only."""
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        atomic_write_bytes(path, json.dumps(asdict(self)).encode(), mode=0o600)


class SiteStore:
    """The site state and the file that keeps it, updated together."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.state = SiteState.load(path)

    def update(self, **changes: Any) -> None:
        """Change some fields and write the file at once."""
        for key, value in changes.items():
            setattr(self.state, key, value)
        self.state.save(self.path)
