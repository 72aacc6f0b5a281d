"""What the app hands down to its screens about the admin and the link.

Screens draw from this and from the store; they never ask the app. The app
replaces the whole record when something in it changes (a login, the link
going down, ``set_timeout``) and hands the new one down.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from fltui.connection import Connection


@dataclass(frozen=True)
class Who:
    """The logged-in admin and the server they reach."""

    project: str
    target: str
    user: str
    role: str


@dataclass(frozen=True)
class ConsoleState:
    """The admin's side of the console: who, with what timeout, and how the link is."""

    who: Who = Who("", "", "not logged in", "")
    timeout: float = 10.0
    transfer_dir: Path | None = None
    save_dir: Path = Path()
    """Where the console writes what an admin asks it to keep (screenshots, saved logs)."""
    connection: Connection = field(default_factory=Connection)

    @property
    def role(self) -> str:
        """``super``, ``member``, or "" before a login."""
        return self.who.role
