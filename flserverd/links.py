"""The server's end of each client's control stream: messages down, replies up.

Clients never accept connections, so everything the server has to say to a
client (an admin's command, a task offer, the end of a run) is queued on the
link of its open control stream. Commands carry an id; the client's result
comes back on the same stream and completes the future waiting for it.

An admin's command to many clients (``check_status client`` to 1,000 of
them) is one fan-out: one command queued on every link, then one wait over
all the futures with one deadline. A task or a timer per client would cost
the server's loop more than the answers themselves.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Sequence
from typing import Any

from flcore.federation import Command, CommandResult, Downward

_ids = itertools.count(1)

NOT_CONNECTED = "client is not connected"
DISCONNECTED = "client disconnected before replying"


def no_reply(timeout: float) -> str:
    """What a client that did not answer in time is reported as."""
    return f"no reply within {timeout:g}s (see set_timeout)"


class ClientLink:
    """Queue of messages for one connected client and its pending commands."""

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

    def ask(self, command: Command) -> asyncio.Future[CommandResult]:
        """Queue a command; its result completes the future, which fails with
        ConnectionError when the link closes first (or is closed already)."""
        future: asyncio.Future[CommandResult] = asyncio.get_running_loop().create_future()
        if self.closed:
            future.set_exception(ConnectionError(f"{self.instance} disconnected"))
            return future
        self._pending[command.command_id] = future
        self.send(command)
        return future

    def forget(self, command_id: str) -> None:
        """Stop waiting for a command's result (a late one is then dropped)."""
        self._pending.pop(command_id, None)

    def resolve(self, result: CommandResult) -> None:
        """Deliver a client's result to the call waiting for it (late ones are dropped)."""
        future = self._pending.pop(result.command_id, None)
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
        self._pending.clear()


async def call_all(
    links: Sequence[ClientLink | None], name: str, args: dict[str, Any], timeout: float
) -> list[CommandResult]:
    """Send one command on every link and collect the results, in the links' order.

    Every client gets up to ``timeout`` seconds from the moment the command
    was queued for all of them; one that does not answer, is not connected
    (None) or disconnects first gets a result that says so, as its own.
    """
    command = Command(f"c{next(_ids)}", name, args)
    futures = [None if link is None else link.ask(command) for link in links]
    try:
        waiting = [f for f in futures if f is not None and not f.done()]
        if waiting:
            await asyncio.wait(waiting, timeout=timeout)
    finally:
        for link in links:
            if link is not None:
                link.forget(command.command_id)
    return [_outcome(future, timeout) for future in futures]


def _outcome(future: asyncio.Future[CommandResult] | None, timeout: float) -> CommandResult:
    if future is None:
        return CommandResult("", False, NOT_CONNECTED)
    if not future.done():
        return CommandResult("", False, no_reply(timeout))
    if future.exception() is not None:
        return CommandResult("", False, DISCONNECTED)
    return future.result()
