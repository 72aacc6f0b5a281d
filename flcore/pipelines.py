"""The lines of a child process's output pipe, however long they are.

asyncio's ``readline`` (and ``async for`` over a stream) raises on a line
longer than its 64 KiB limit, and a reader that stops there leaves the child
blocked on its next write once the pipe is full: the training child's run
hung that way, and MLflow's tracking went quiet. Here a line over the bound
comes in pieces instead.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

READ_BYTES = 65536


async def pipe_lines(stream: asyncio.StreamReader, max_line: int) -> AsyncIterator[bytes]:
    """The lines of ``stream``, without their newline, until it ends; a line longer than
    ``max_line`` bytes comes in pieces of about that size."""
    pending = b""
    while chunk := await stream.read(READ_BYTES):
        pending += chunk
        *lines, pending = pending.split(b"\n")
        if len(pending) > max_line:
            lines.append(pending)
            pending = b""
        for line in lines:
            yield line
    if pending:
        yield pending
