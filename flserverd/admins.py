"""Admins that are logged in: who may log in, and which token belongs to whom.

Admins are identified by their certificate: it must be an admin certificate
of the project (OU=admin) whose CN is the email the admin typed. Tokens are
kept in memory only; after a server restart the console simply logs in
again.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from flcore.identity import KIND_ADMIN, ROLES, Identity
from flserverd.registry import AuthError

log = logging.getLogger(__name__)

# An admin token unused this long is forgotten (every fltui --cmd logs in afresh).
ADMIN_LOGIN_IDLE_S = 12 * 3600


@dataclass
class AdminLogin:
    """A logged-in admin."""

    user: str
    role: str
    last_used: float


@dataclass(frozen=True)
class AdminActivity:
    """What ``list_admins`` says of one admin: logins, open consoles, the last command."""

    role: str
    logins: int
    consoles: int
    """Live feeds open (a full-screen console each)."""
    last_used: float
    last_command: str = ""
    last_command_at: float = 0.0
    last_ok: bool = False


class AdminLogins:
    """Logged-in admins by token, with what each admin did last."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._logins: dict[str, AdminLogin] = {}
        self._feeds: dict[str, int] = {}
        self._last: dict[str, tuple[str, float, bool]] = {}

    def login(self, identity: Identity | None, user: str) -> tuple[str, AdminLogin]:
        """Admit a provisioned admin whose certificate matches the typed user name;
        returns the new token. AuthError says why an admin is refused."""
        if identity is None or identity.kind != KIND_ADMIN or identity.role not in ROLES:
            who = f"{identity.kind} certificate {identity.name!r}" if identity else "no certificate"
            log.warning("refused admin login as %r with %s", user, who)
            raise AuthError(
                f"not an admin certificate ({who}): use the startup kit of a provisioned admin"
            )
        if user != identity.name:
            log.warning("refused admin login: user %r with certificate of %r", user, identity.name)
            raise AuthError(f"user name {user!r} does not match the certificate ({identity.name})")
        now = self._clock()
        self._logins = {
            t: s for t, s in self._logins.items() if now - s.last_used < ADMIN_LOGIN_IDLE_S
        }
        token = str(uuid.uuid4())
        admin = AdminLogin(identity.name, identity.role, now)
        self._logins[token] = admin
        log.info("admin %s logged in (role %s)", identity.name, identity.role)
        return token, admin

    def authenticate(self, token: str, identity: Identity | None) -> AdminLogin:
        """The admin of a token presented with its certificate; AuthError otherwise."""
        admin = self._logins.get(token)
        if admin is None or identity is None or identity.name != admin.user:
            raise AuthError("not logged in: log in again")
        admin.last_used = self._clock()
        return admin

    def _live(self) -> list[AdminLogin]:
        now = self._clock()
        return [a for a in self._logins.values() if now - a.last_used < ADMIN_LOGIN_IDLE_S]

    def users(self) -> list[str]:
        """Admins logged in now (a token used within the idle limit, or a console open)."""
        live = {a.user for a in self._live()}
        return sorted(live | {user for user, count in self._feeds.items() if count})

    def seen(self, user: str) -> AdminActivity:
        """What one admin is doing: logins, consoles, when last seen, the last command."""
        mine = [a for a in self._live() if a.user == user]
        line, at, ok = self._last.get(user, ("", 0.0, False))
        return AdminActivity(
            role=mine[0].role if mine else "",
            logins=len(mine),
            consoles=self._feeds.get(user, 0),
            last_used=max((a.last_used for a in mine), default=0.0),
            last_command=line,
            last_command_at=at,
            last_ok=ok,
        )

    def ran(self, user: str, line: str, ok: bool) -> None:
        """An admin's command was carried out (or refused)."""
        self._last[user] = (line, self._clock(), ok)

    @contextmanager
    def watching(self, user: str) -> Iterator[None]:
        """While an admin's console follows the live feed."""
        self._feeds[user] = self._feeds.get(user, 0) + 1
        try:
            yield
        finally:
            self._feeds[user] -= 1
            if not self._feeds[user]:
                del self._feeds[user]
