"""The server's end of each client's control stream: messages down, replies up.

Clients never accept connections, so everything the server has to say to a
client (an admin's command, a task offer, the end of a run) is queued on the
link of its open control stream. Commands carry an id; the client's result
comes back on the same stream and wakes the admin call waiting for it, which
gives up after the admin's timeout.
"""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

from flcore.federation import Command, CommandResult, Downward

_ids = itertools.count(1)


class ClientLink:
    """Queue of messages for one connected client and its pending command calls."""

    def __init__(self, instance: str) -> None:
        self.instance = instance
        self._queue: asyncio.Queue[Downward | None] = asyncio.Queue()
        self._pending: dict[str, asyncio.Future[CommandResult]] = {}
        self.closed = False

    def send(self, message: Downward) -> None:
        """Queue a message for the client."""
        if not self.closed:
            self._queue.put_nowait(message)

    async def next(self) -> Downward | None:
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

    def resolve(self, result: CommandResult) -> None:
        """Deliver a client's result to the call waiting for it (late ones are dropped)."""
        future = self._pending.get(result.command_id)
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
