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
from collections.abc import Callable
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


class AdminLogins:
    """Logged-in admins by token."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._logins: dict[str, AdminLogin] = {}

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
