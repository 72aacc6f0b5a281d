"""The server's registry of client sessions: login, tokens, instance names, heartbeats.

A token is bound to the certificate identity that obtained it; presenting it
with another certificate is refused. Sessions are persisted so that, after a
server restart, a client that reconnects with its token keeps its instance
name and carries on. A session that is not heard from for
``heart_beat_timeout`` seconds is dropped.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

from flcore.identity import Identity
from flcore.status import ClientStatus
from flserverd.statedb import SessionRecord, StateDB

log = logging.getLogger(__name__)


class AuthError(PermissionError):
    """A token is unknown or does not belong to the caller's certificate."""


@dataclass
class MachineInfo:
    """What a client said about its machine at login."""

    device: str = "unknown"
    gpu_count: int = 0
    hostname: str = ""
    version: str = ""
    pid: int = 0


@dataclass
class ClientSession:
    """One logged-in client instance."""

    token: str
    client_name: str
    instance: str
    org: str
    connected_at: float
    last_heartbeat: float
    connected: bool = False
    status: ClientStatus = field(default_factory=ClientStatus)
    machine: MachineInfo = field(default_factory=MachineInfo)


class ClientRegistry:
    """Sessions by token; instance names are unique among live sessions."""

    def __init__(
        self,
        db: StateDB,
        heart_beat_timeout: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._db = db
        self.heart_beat_timeout = heart_beat_timeout
        self._clock = clock
        self._sessions: dict[str, ClientSession] = {}
        self._by_instance: dict[str, ClientSession] = {}
        now = clock()
        for record in db.load_sessions():
            # Restored sessions get a full timeout to reconnect after a restart.
            self._add(
                ClientSession(
                    token=record.token,
                    client_name=record.client_name,
                    instance=record.instance,
                    org=record.org,
                    connected_at=record.created_at,
                    last_heartbeat=now,
                )
            )
        if self._sessions:
            log.info("restored %d client sessions from the state database", len(self._sessions))

    def __len__(self) -> int:
        return len(self._sessions)

    def sessions(self) -> list[ClientSession]:
        """Live sessions ordered by instance name."""
        return sorted(self._sessions.values(), key=lambda s: s.instance)

    def _add(self, session: ClientSession) -> None:
        self._sessions[session.token] = session
        self._by_instance[session.instance] = session

    def by_instance(self, instance: str) -> ClientSession | None:
        """The session of an instance name, if it is registered."""
        return self._by_instance.get(instance)

    def is_current(self, session: ClientSession) -> bool:
        """Whether the session is still registered (not dropped or replaced)."""
        return self._sessions.get(session.token) is session

    def login(
        self, identity: Identity, token: str, machine: MachineInfo
    ) -> tuple[ClientSession, bool]:
        """Start or resume a session for a verified client certificate.

        Returns the session and whether it was resumed. A token that belongs
        to another identity is refused. A known token of the same identity
        always resumes its session, even while the server still thinks the old
        stream is open (after a network blip the client often knows first);
        the new stream then replaces the old one. Two processes of one kit in
        one workspace do not share a token: the client daemon locks its state
        file, so a second process logs in without one and gets a new
        instance name.
        """
        now = self._clock()
        if token:
            session = self._sessions.get(token)
            if session is not None and session.client_name != identity.name:
                raise AuthError(
                    f"token belongs to client {session.client_name!r}, "
                    f"not to certificate {identity.name!r}"
                )
            if session is not None:
                session.last_heartbeat = now
                session.machine = machine
                return session, True
        session = ClientSession(
            token=str(uuid.uuid4()),
            client_name=identity.name,
            instance=self._free_instance(identity.name),
            org=identity.org,
            connected_at=now,
            last_heartbeat=now,
            machine=machine,
        )
        self._add(session)
        self._db.save_session(
            SessionRecord(session.token, session.client_name, session.instance, session.org, now)
        )
        return session, False

    def _free_instance(self, name: str) -> str:
        taken = self._by_instance
        if name not in taken:
            return name
        n = 1
        while f"{name}_{n}" in taken:
            n += 1
        return f"{name}_{n}"

    def authenticate(self, token: str, identity: Identity | None) -> ClientSession:
        """The session of a token presented with a certificate; AuthError if they don't match."""
        session = self._sessions.get(token)
        if session is None:
            raise AuthError("unknown or expired token: log in again")
        if identity is None or identity.name != session.client_name:
            raise AuthError("token was issued to another certificate")
        session.last_heartbeat = self._clock()
        return session

    def heard(self, session: ClientSession) -> None:
        """Note that a client was heard from just now."""
        session.last_heartbeat = self._clock()

    def expired(self) -> list[ClientSession]:
        """Sessions silent for longer than the heartbeat timeout."""
        limit = self._clock() - self.heart_beat_timeout
        return [s for s in self._sessions.values() if s.last_heartbeat < limit]

    def remove(self, session: ClientSession) -> None:
        """Forget a session (dropped, logged out or shut down)."""
        if self._sessions.pop(session.token, None) is not None:
            self._by_instance.pop(session.instance, None)
            self._db.delete_session(session.token)
