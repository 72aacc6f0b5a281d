"""Giving up on a transfer that stopped moving, however long a moving one takes.

Model and app transfers have no deadline: a 100 MB model over a slow link
may take minutes, and a fixed timeout would either cut it or be too long to
notice anything. Instead each side watches the chunks (at most 1 MiB each):
a transfer during which no chunk moved for ``TRANSFER_STALL_S`` seconds is
cancelled with :class:`TransferStalled`, and the caller retries or gives up.
A dead link is usually noticed sooner by gRPC keepalive (``flcore.tls``);
this catches a peer whose connection is alive but that no longer reads or
sends.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable
from typing import TypeVar

T = TypeVar("T")

TRANSFER_STALL_S = 60.0


class TransferStalled(Exception):
    """No chunk of a transfer moved for the allowed time; the message says which transfer."""


class ProgressWatch:
    """Runs a transfer and cancels it when :meth:`moved` was not called for ``limit`` seconds."""

    def __init__(self, what: str, limit: float = TRANSFER_STALL_S) -> None:
        self.what = what
        self.limit = limit
        self._last = time.monotonic()

    def moved(self) -> None:
        """A chunk went through: the transfer is alive."""
        self._last = time.monotonic()

    async def run(self, transfer: Awaitable[T]) -> T:
        """Await ``transfer``; raises TransferStalled (after cancelling it) when it stalls."""
        task = asyncio.ensure_future(transfer)
        self.moved()
        try:
            while True:
                left = self._last + self.limit - time.monotonic()
                if left <= 0:
                    raise TransferStalled(
                        f"{self.what}: nothing moved for {self.limit:g}s; given up"
                    )
                done, _ = await asyncio.wait({task}, timeout=left)
                if done:
                    return task.result()
        finally:
            if not task.done():
                task.cancel()
                # How a transfer we gave up on ended (cancelled, or the RPC's error) changes
                # nothing: the caller gets TransferStalled or its own cancellation.
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
