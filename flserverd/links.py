"""The server's end of each client's Session stream: messages down, replies up.

Clients never accept connections, so everything the server has to say to a
client (an admin's command, a task offer, the end of a run) is queued on the
link of its open stream. Commands carry an id; the client's result comes back
on the same stream and wakes the admin call waiting for it, which gives up
after the admin's timeout.
"""

from __future__ import annotations

import asyncio
import itertools
from dataclasses import dataclass
from typing import Any

from flserverd.crossval import CrossValidationOffer
from flserverd.training import Offer


@dataclass(frozen=True)
class Command:
    """An admin command for one client."""

    command_id: str
    name: str
    args: dict[str, Any]


@dataclass(frozen=True)
class CommandResult:
    """A client's answer to a command."""

    ok: bool
    text: str
    data: dict[str, Any]


@dataclass(frozen=True)
class RunEnded:
    """Tells clients the server ended a run."""

    run_number: int
    server_status: str
    reason: str


@dataclass(frozen=True)
class Closed:
    """Tells a client its session is over."""

    reason: str


Outbound = Command | Offer | CrossValidationOffer | RunEnded | Closed

_ids = itertools.count(1)


class ClientLink:
    """Queue of messages for one connected client and its pending command calls."""

    def __init__(self, instance: str) -> None:
        self.instance = instance
        self._queue: asyncio.Queue[Outbound | None] = asyncio.Queue()
        self._pending: dict[str, asyncio.Future[CommandResult]] = {}
        self.closed = False

    def send(self, message: Outbound) -> None:
        """Queue a message for the client."""
        if not self.closed:
            self._queue.put_nowait(message)

    async def next(self) -> Outbound | None:
        """The next message to write, or None once the link is closed."""
        return await self._queue.get()

    async def call(self, name: str, args: dict[str, Any], timeout: float) -> CommandResult:
        """Send a command and wait for its result; TimeoutError after ``timeout``."""
        if self.closed:
            raise ConnectionError(f"{self.instance} disconnected")
        command = Command(f"c{next(_ids)}", name, args)
        future: asyncio.Future[CommandResult] = asyncio.get_running_loop().create_future()
        self._pending[command.command_id] = future
        self.send(command)
        try:
            return await asyncio.wait_for(future, timeout)
        finally:
            self._pending.pop(command.command_id, None)

    def resolve(self, command_id: str, result: CommandResult) -> None:
        """Deliver a client's result to the call waiting for it (late ones are dropped)."""
        future = self._pending.get(command_id)
        if future is not None and not future.done():
            future.set_result(result)

    def close(self) -> None:
        """Stop the stream writer and fail pending calls."""
        if self.closed:
            return
        self.closed = True
        self._queue.put_nowait(None)
        for future in self._pending.values():
            if not future.done():
                future.set_exception(ConnectionError(f"{self.instance} disconnected"))
