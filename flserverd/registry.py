"""The server's registry of clients: login, tokens, instance names, heartbeats.

A client that logs in is registered under a token and an instance name. A
token is bound to the certificate identity that obtained it; presenting it
with another certificate is refused. The registry keeps only each token's
SHA-256 (:func:`flcore.tokens.token_key`): the token itself goes to the
client once, in the login reply, and a copy of the state database (a
backup, a stolen disk) holds nothing a client could log in with.
Registrations are persisted so that, after a server restart, a client that
reconnects with its token keeps its instance name and carries on. A client
that is not heard from for ``heart_beat_timeout`` seconds is dropped. One
kit may run at most ``max_instances`` instances at once, so a stolen or
misused kit cannot fill the server (and every admin's screen) with
registrations.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Callable, Collection
from dataclasses import asdict, dataclass, field, fields, replace
from datetime import datetime
from typing import Any, NamedTuple, TypeVar

from flcore.diskfault import disk_fault
from flcore.federation import MachineInfo
from flcore.identity import Identity, instance_name
from flcore.status import ClientStatus
from flcore.tokens import key_id, new_token, same_key, token_key
from flserverd.statedb import ClientRecord, StateDB

log = logging.getLogger(__name__)


R = TypeVar("R", ClientStatus, MachineInfo)
STATUS_AT = "status_at"
"""Kept beside a client's saved status: when it last changed (see RegisteredClient)."""


def _restored(kind: type[R], saved: dict[str, Any]) -> R:
    """A record read back from the state database; fields of the wrong type are dropped."""
    defaults = kind()
    known = {
        f.name: saved[f.name]
        for f in fields(kind)
        if f.name in saved and type(saved[f.name]) is type(getattr(defaults, f.name))
    }
    return kind(**known)


def _number(value: object) -> float:
    return float(value) if isinstance(value, int | float) else 0.0


class AuthError(PermissionError):
    """A token is unknown or does not belong to the caller's certificate."""


class InstancesFull(AuthError):
    """A kit runs as many instances as the server allows: for now, since one that crashed is
    dropped at its heartbeat timeout (the client tries again; systemd would not restart a
    client that the server refused for good)."""


@dataclass
class RegisteredClient:
    """One logged-in client instance."""

    token_key: bytes
    """The SHA-256 of its token (the token itself is never kept)."""
    client_name: str
    instance: str
    org: str
    connected_at: float
    last_heartbeat: float
    """When it was last heard from, by the wall clock (what people are shown)."""
    connected: bool = False
    status: ClientStatus = field(default_factory=ClientStatus)
    machine: MachineInfo = field(default_factory=MachineInfo)
    status_at: float = 0.0
    """When the client last changed its status word or run (0: not since the server started)."""
    serial: int = 0
    """Serial of the certificate it last presented (0 until it does after a restart)."""
    valid_until: datetime | None = None
    """When the certificate it last presented ends (None until it presents one)."""
    issued: datetime | None = None
    """When the certificate it last presented was issued (None until it presents one)."""
    heard_at: float = 0.0
    """When it was last heard from, by the registry's monotonic clock: what its silence is
    measured on, so that a step of the wall clock (NTP, a resumed VM) drops no one and keeps
    no dead client."""
    stream_closed_at: float = 0.0
    """When its control stream last ended, by the same clock (0: not since the server
    started)."""

    @property
    def token_id(self) -> str:
        """Its token's public name (:func:`flcore.tokens.token_id`)."""
        return key_id(self.token_key)


class Login(NamedTuple):
    """A client's login: its registration, the token it presents from now on, and whether it
    resumed an earlier registration."""

    client: RegisteredClient
    token: str
    resumed: bool


class ClientRegistry:
    """Registered clients by token; instance names are unique among them."""

    def __init__(
        self,
        db: StateDB,
        heart_beat_timeout: float,
        clock: Callable[[], float] = time.time,
        max_instances: int = 4,
        ticks: Callable[[], float] = time.monotonic,
    ) -> None:
        """``clock`` dates what people see; ``ticks`` measures silences."""
        self._db = db
        self.heart_beat_timeout = heart_beat_timeout
        self.max_instances = max_instances
        self._clock = clock
        self._ticks = ticks
        self._clients: dict[bytes, RegisteredClient] = {}
        """By the SHA-256 of the token (flcore.tokens.token_key)."""
        self._by_instance: dict[str, RegisteredClient] = {}
        self.version = 0
        """Counts registrations and removals: what depends only on who is registered (their
        names and tokens) is kept while it stays the same."""
        now = clock()
        states = db.client_states()
        for record in db.load_clients():
            # Restored clients get a full timeout to reconnect after a restart, and show
            # (offline) what they last said until they say it again.
            status, machine = states.get(record.token_key, ({}, {}))
            self._add(
                RegisteredClient(
                    token_key=record.token_key,
                    client_name=record.client_name,
                    instance=record.instance,
                    org=record.org,
                    connected_at=record.created_at,
                    last_heartbeat=now,
                    heard_at=ticks(),
                    status=_restored(ClientStatus, status),
                    machine=_restored(MachineInfo, machine),
                    status_at=_number(status.get(STATUS_AT)),
                )
            )
        if self._clients:
            log.info("restored %d registered clients from the state database", len(self._clients))

    def __len__(self) -> int:
        return len(self._clients)

    def clients(self) -> list[RegisteredClient]:
        """Registered clients ordered by instance name."""
        return sorted(self._clients.values(), key=lambda s: s.instance)

    def on_run(self, number: int, statuses: Collection[str]) -> set[str]:
        """The instances that report one of ``statuses`` for run ``number``: a walk over
        every client at each run-state event, so without :meth:`clients`' sort."""
        return {
            c.instance
            for c in self._clients.values()
            if c.status.run_number == number and c.status.status in statuses
        }

    def _add(self, client: RegisteredClient) -> None:
        self._clients[client.token_key] = client
        self._by_instance[client.instance] = client
        self.version += 1

    def by_instance(self, instance: str) -> RegisteredClient | None:
        """The client registered under an instance name, if any."""
        return self._by_instance.get(instance)

    def is_current(self, client: RegisteredClient) -> bool:
        """Whether the client is still registered (not dropped or replaced)."""
        return self._clients.get(client.token_key) is client

    def _by_token(self, token: str) -> RegisteredClient | None:
        client = self._clients.get(token_key(token)) if token else None
        return client if client is not None and same_key(client.token_key, token) else None

    def login(self, identity: Identity, token: str, machine: MachineInfo) -> Login:
        """Register a verified client certificate, or resume its registration.

        Returns the client, its token and whether it was resumed. A token that belongs
        to another identity is refused. A known token of the same identity
        always resumes its registration, even while the server still thinks the old
        stream is open (after a network blip the client often knows first);
        the new stream then replaces the old one. Two processes of one kit in
        one workspace do not share a token: the client daemon locks its state
        file, so a second process logs in without one and gets a new
        instance name, unless the kit already runs ``max_instances``.
        """
        now = self._clock()
        client = self._by_token(token)
        if client is not None and client.client_name != identity.name:
            raise AuthError(
                f"token belongs to client {client.client_name!r}, "
                f"not to certificate {identity.name!r}"
            )
        if client is not None:
            self.heard(client)
            client.machine = machine
            client.serial, client.valid_until = identity.serial, identity.valid_until
            client.issued = identity.issued
            self.remember(client)
            return Login(client, token, True)
        running = sum(1 for c in self._clients.values() if c.client_name == identity.name)
        if running >= self.max_instances:
            log.warning(
                "refused another instance of %s: it runs %d already", identity.name, running
            )
            raise InstancesFull(
                f"kit {identity.name} already runs {running} instances, the most this server "
                f"allows (max_instances_per_kit in the server's local/fed_server.json): stop "
                f"one, or wait up to {self.heart_beat_timeout:g}s for one that crashed to time out"
            )
        token = new_token()
        client = RegisteredClient(
            token_key=token_key(token),
            client_name=identity.name,
            instance=self._free_instance(identity.name),
            org=identity.org,
            connected_at=now,
            last_heartbeat=now,
            heard_at=self._ticks(),
            machine=machine,
            serial=identity.serial,
            valid_until=identity.valid_until,
            issued=identity.issued,
        )
        self._add(client)
        record = ClientRecord(
            client.token_key, client.client_name, client.instance, client.org, now
        )
        self._saved(lambda: self._db.save_client(record), f"registration of {client.instance}")
        self.remember(client)
        return Login(client, token, False)

    def remember(self, client: RegisteredClient) -> None:
        """Keep what a client last said about itself (not its traceback) and its machine,
        for the rows a restarted server shows until the client is back."""
        status = {**asdict(replace(client.status, traceback="")), STATUS_AT: client.status_at}
        machine = asdict(client.machine)
        self._saved(
            lambda: self._db.save_client_state(client.token_key, status, machine),
            f"status of {client.instance}",
        )

    @staticmethod
    def _saved(write: Callable[[], None], what: str) -> None:
        """Write to the state database; on a full disk the registry goes on in memory (a
        registration not saved is asked for again after a server restart)."""
        try:
            write()
        except sqlite3.Error as exc:
            fault = disk_fault(exc)
            if fault is None:
                raise
            log.warning("%s kept in memory only: server %s", what, fault)

    def _free_instance(self, name: str) -> str:
        number = 0
        while instance_name(name, number) in self._by_instance:
            number += 1
        return instance_name(name, number)

    def authenticate(self, token: str, identity: Identity | None) -> RegisteredClient:
        """The client of a token presented with a certificate; AuthError if they don't match."""
        client = self._by_token(token)
        if client is None:
            raise AuthError("unknown or expired token: log in again")
        if identity is None or identity.name != client.client_name:
            raise AuthError("token was issued to another certificate")
        self.heard(client)
        client.serial, client.valid_until = identity.serial, identity.valid_until
        client.issued = identity.issued
        return client

    def heard(self, client: RegisteredClient) -> None:
        """Note that a client was heard from just now."""
        client.last_heartbeat = self._clock()
        client.heard_at = self._ticks()

    def stream_closed(self, client: RegisteredClient) -> None:
        """Note that the client's control stream ended just now."""
        client.stream_closed_at = self._ticks()

    def reconnect_wait(self, client: RegisteredClient, grace: float) -> float:
        """How much longer, of ``grace`` seconds after its stream ended (or the client was
        last heard from, or the server started), a client without a stream may be coming
        back: a command waits that long for it, and not at all for one gone longer."""
        return grace - (self._ticks() - max(client.heard_at, client.stream_closed_at))

    def silence(self, client: RegisteredClient) -> float:
        """Seconds since the client was last heard from."""
        return self._ticks() - client.heard_at

    def excuse(self, seconds: float) -> None:
        """The server itself stood still for ``seconds`` (stopped, or its loop blocked): the
        sites could not be heard meanwhile, so that time does not count as their silence."""
        now = self._ticks()
        for client in self._clients.values():
            client.heard_at = min(client.heard_at + seconds, now)

    def expired(self) -> list[RegisteredClient]:
        """Clients silent for longer than the heartbeat timeout."""
        limit = self._ticks() - self.heart_beat_timeout
        return [s for s in self._clients.values() if s.heard_at < limit]

    def remove(self, client: RegisteredClient) -> None:
        """Forget a client (dropped, logged out or shut down)."""
        if self._clients.pop(client.token_key, None) is not None:
            self._by_instance.pop(client.instance, None)
            self.version += 1
            self._saved(
                lambda: self._db.delete_client(client.token_key), f"removal of {client.instance}"
            )
