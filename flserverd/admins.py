"""Admins that are logged in: who may log in, and which token belongs to whom.

Admins are identified by their certificate: it must be an admin certificate
of the project (OU=admin) whose CN is the email the admin typed. Tokens are
kept in memory only; after a server restart the console simply logs in
again. Every ``fltui --cmd`` logs in afresh, so an admin keeps at most
:data:`MAX_LOGINS_PER_ADMIN` tokens: a script that loops cannot grow the
server's memory, and the token least recently used goes first.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime

from flcore.identity import KIND_ADMIN, ROLES, Identity
from flcore.listingrecords import AdminActivity
from flcore.tokens import new_token, same_token, token_id, token_key
from flserverd.registry import AuthError

log = logging.getLogger(__name__)

# An admin token unused this long is forgotten (every fltui --cmd logs in afresh).
ADMIN_LOGIN_IDLE_S = 12 * 3600
MAX_LOGINS_PER_ADMIN = 64
MAX_FEEDS_PER_ADMIN = 8
"""Live feeds one admin may follow at once (each holds a subscription's queue)."""
MAX_COMMANDS_PER_ADMIN = 8
"""Commands of one admin under way at once: a script that fires fan-outs without waiting
for their replies cannot keep every site's control stream busy."""
MAX_USER_SHOWN = 100
"""A typed user name is the peer's text: logs and replies show this much of it."""


class AdminBusy(Exception):
    """An admin has as many feeds or commands under way as one admin may: the reason."""


@dataclass
class AdminLogin:
    """A logged-in admin."""

    token: str
    user: str
    role: str
    last_used: float
    """When it was last used, by the wall clock (what list_admins shows)."""
    serial: int = 0
    """Serial of the certificate it logged in with."""
    issued: datetime | None = None
    """When that certificate was issued."""
    used_tick: float = 0.0
    """When it was last used, by the monotonic clock: its idleness is measured on it, so
    that a step of the wall clock (NTP, a resumed VM) logs no one out and keeps no idle
    token."""


class AdminLogins:
    """Logged-in admins by token, with what each admin did last."""

    def __init__(
        self,
        clock: Callable[[], float] = time.time,
        on_login: Callable[[Identity], None] = lambda _: None,
        ticks: Callable[[], float] = time.monotonic,
    ) -> None:
        """``on_login`` hears of every admitted admin's certificate (its end is checked)."""
        self._clock = clock
        self._ticks = ticks
        self._on_login = on_login
        self._logins: dict[bytes, AdminLogin] = {}
        """By the SHA-256 of the token (flcore.tokens.token_key)."""
        self._feeds: dict[str, int] = {}
        self._running: dict[str, int] = {}
        self._last: dict[str, tuple[str, float, bool]] = {}

    def login(self, identity: Identity | None, user: str) -> tuple[str, AdminLogin]:
        """Admit a provisioned admin whose certificate matches the typed user name;
        returns the new token. AuthError says why an admin is refused."""
        if identity is None or identity.kind != KIND_ADMIN or identity.role not in ROLES:
            who = f"{identity.kind} certificate {identity.name!r}" if identity else "no certificate"
            log.warning("refused admin login as %r with %s", user[:MAX_USER_SHOWN], who)
            raise AuthError(
                f"not an admin certificate ({who}): use the startup kit of a provisioned admin"
            )
        if user != identity.name:
            shown = user[:MAX_USER_SHOWN]
            log.warning("refused admin login: user %r with certificate of %r", shown, identity.name)
            raise AuthError(f"user name {shown!r} does not match the certificate ({identity.name})")
        tick = self._ticks()
        self._logins = {
            k: s for k, s in self._logins.items() if tick - s.used_tick < ADMIN_LOGIN_IDLE_S
        }
        mine = sorted((s.used_tick, k) for k, s in self._logins.items() if s.user == identity.name)
        for _, key in mine[: max(0, len(mine) - MAX_LOGINS_PER_ADMIN + 1)]:
            del self._logins[key]
        self._on_login(identity)
        token = new_token()
        admin = AdminLogin(
            token,
            identity.name,
            identity.role,
            self._clock(),
            identity.serial,
            identity.issued,
            tick,
        )
        self._logins[token_key(token)] = admin
        log.info(
            "admin %s logged in (role %s, token %s)", identity.name, identity.role, token_id(token)
        )
        return token, admin

    def authenticate(self, token: str, identity: Identity | None) -> AdminLogin:
        """The admin of a token presented with its certificate; AuthError otherwise."""
        key = token_key(token)
        admin = self._logins.get(key)
        tick = self._ticks()
        if admin is not None and tick - admin.used_tick >= ADMIN_LOGIN_IDLE_S:
            del self._logins[key]  # idle too long: pruned only at a login before
            admin = None
        if (
            admin is None
            or not same_token(admin.token, token)
            or identity is None
            or identity.name != admin.user
        ):
            raise AuthError("not logged in: log in again")
        admin.last_used, admin.used_tick = self._clock(), tick
        return admin

    def _live(self) -> list[AdminLogin]:
        tick = self._ticks()
        return [a for a in self._logins.values() if tick - a.used_tick < ADMIN_LOGIN_IDLE_S]

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

    def may_follow(self, user: str) -> None:
        """Whether ``user`` may open one more live feed now.

        Raises:
            AdminBusy: the admin follows :data:`MAX_FEEDS_PER_ADMIN` feeds already.
        """
        if self._feeds.get(user, 0) >= MAX_FEEDS_PER_ADMIN:
            raise AdminBusy(
                f"{user[:MAX_USER_SHOWN]} follows the live feed in {MAX_FEEDS_PER_ADMIN} "
                "consoles already, the most at once: close one"
            )

    def command_started(self, user: str) -> None:
        """One of ``user``'s commands is under way (:meth:`command_ended` when it is done).

        Raises:
            AdminBusy: the admin has :data:`MAX_COMMANDS_PER_ADMIN` commands under way.
        """
        if self._running.get(user, 0) >= MAX_COMMANDS_PER_ADMIN:
            raise AdminBusy(
                f"{user[:MAX_USER_SHOWN]} has {MAX_COMMANDS_PER_ADMIN} commands under way "
                "already, the most at once: wait for their replies"
            )
        self._running[user] = self._running.get(user, 0) + 1

    def command_ended(self, user: str) -> None:
        """One of ``user``'s commands is done."""
        self._running[user] -= 1
        if not self._running[user]:
            del self._running[user]

    @contextmanager
    def watching(self, user: str) -> Iterator[None]:
        """While an admin's console follows the live feed (:meth:`may_follow` said it may)."""
        self._feeds[user] = self._feeds.get(user, 0) + 1
        try:
            yield
        finally:
            self._feeds[user] -= 1
            if not self._feeds[user]:
                del self._feeds[user]

    def revoke(self, refused: Callable[[AdminLogin], str | None]) -> dict[str, str]:
        """Log out every admin whose certificate is now refused; returns who (by user, once
        however many logins each had) and why."""
        out = {}
        for key, admin in list(self._logins.items()):
            reason = refused(admin)
            if reason is not None:
                del self._logins[key]
                out[admin.user] = reason
        return out
