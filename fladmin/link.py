"""A session that follows the server's live feed, and the protocol a console needs of it.

A console talks to a :class:`Link`: log in, run a command line, follow the
live feed as :mod:`flcore.feed` data. :class:`AdminLink` is the real one,
over :class:`~fladmin.client.AdminClient`; the console's tests give it a
link that replays a recorded feed instead, which is how the dashboard's
look is pinned without a server.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Protocol

from fladmin.client import (
    DEFAULT_TIMEOUT_S,
    AdminClient,
    AdminError,
    CommandReply,
    kit_warnings,
    load_kit,
)
from flcore.feed import FeedEvent
from flcore.feedwire import events_from_proto


class Link(Protocol):
    """A (possibly not yet logged-in) session with a server."""

    startup: Path
    user: str
    role: str
    project: str
    target: str
    transfer_dir: Path
    timeout: float
    kit_warnings: list[str]
    """What the admin should hear of the kit at the first login (its certificate ends soon)."""

    async def login(self) -> None:
        """Log in (again); AdminError says why not, ``refused`` when retrying cannot help."""

    async def execute(self, line: str, confirmed: bool = False) -> CommandReply:
        """Run one command line; AdminError when the server is gone."""

    def events(self) -> AsyncIterator[FeedEvent]:
        """The live feed, snapshot first; AdminError when it breaks."""

    async def close(self) -> None:
        """Let go of the connection."""


class AdminLink:
    """A link over :class:`~fladmin.client.AdminClient` (mutual TLS gRPC).

    The client, and with it the gRPC channel, is made on the first
    :meth:`login`, which runs on the app's event loop: a channel made before
    ``App.run()`` would belong to another loop.
    """

    def __init__(self, startup: Path, user: str | None = None) -> None:
        """Read the admin kit now, so a wrong folder is reported before any screen opens.

        Raises:
            AdminError: the kit is missing, tampered with or unreadable.
        """
        self.startup = startup.resolve()
        self.kit = load_kit(self.startup)
        self.kit_warnings = kit_warnings(self.startup, self.kit)
        self.user = user or self.kit.email
        self.role = self.kit.role
        self.project = self.kit.project
        self.target = self.kit.admin_target
        self.transfer_dir = self.startup.parent / "transfer"
        self.timeout = DEFAULT_TIMEOUT_S
        self._client: AdminClient | None = None

    def _session(self) -> AdminClient:
        if self._client is None:
            raise AdminError("not logged in")
        return self._client

    async def login(self) -> None:
        """Log in, creating the channel the first time."""
        if self._client is None:
            # A console that follows the feed is a screen: it confirms whatever stops training.
            self._client = AdminClient(self.startup, self.kit, self.user, interactive=True)
            self._client.timeout = self.timeout
        await self._client.login()
        self.role, self.project = self._client.role, self._client.project

    async def execute(self, line: str, confirmed: bool = False) -> CommandReply:
        """Run a command; ``timeout`` follows ``set_timeout`` (the console shows it)."""
        client = self._session()
        reply = await client.execute(line, confirmed)
        self.timeout = client.timeout
        return reply

    async def events(self) -> AsyncIterator[FeedEvent]:
        """The feed, converted from the wire, batches opened; unknown event kinds are skipped."""
        async for message in self._session().events():
            for event in events_from_proto(message):
                yield event

    async def close(self) -> None:
        """Close the channel."""
        if self._client is not None:
            await self._client.close()
            self._client = None
