"""Model downloads that send at once, bounded across the whole server.

Each download in flight holds memory below Python: the chunks read ahead,
the message gRPC serializes and the frames it keeps until the peer's
socket takes them, about 4.4 MB per download (docs/benchmarks.md §12). At
the start of a round every client downloads at once, so that memory grew
with the number of clients. A download therefore sends only while it
holds one of a few slots: it takes a slot to read its next chunks and
hand them to gRPC, and gives it back as soon as gRPC took them. The slot
is held per batch of chunks, not per download, so the downloads take
turns (a waiting one queues for the next free slot, not behind a whole
model) and a client that pauses holds nobody up for long.

A client that stops reading leaves its write pending. After the transfer
stall limit (:data:`flcore.progress.TRANSFER_STALL_S`, the limit the client
applies to its own download) the write is given up with
:class:`flcore.progress.TransferStalled` and the slot is free again, so a
stalled reader delays the others by at most that long, never forever.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Awaitable, Callable, Iterator
from typing import TypeVar

from flcore.progress import TRANSFER_STALL_S, ProgressWatch

T = TypeVar("T")

DOWNLOADS_SENDING = 4
"""Downloads that read and send at the same moment, server-wide."""

CHUNKS_PER_SLOT = 2
"""Chunks read (in one worker-thread step) and sent per slot held."""


class SendSlots:
    """At most ``size`` senders read and write at once; the others wait their turn."""

    def __init__(self, size: int = DOWNLOADS_SENDING, stall_s: float = TRANSFER_STALL_S) -> None:
        if size < 1:
            raise ValueError(f"at least one download must be able to send (got {size})")
        self.stall_s = stall_s
        self._free = asyncio.Semaphore(size)

    async def send_all(
        self, what: str, items: Iterator[T], write: Callable[[T], Awaitable[None]]
    ) -> None:
        """Read ``items`` (a blocking, file-reading iterator) in a worker thread and
        ``write`` each, :data:`CHUNKS_PER_SLOT` at a time while holding a slot.

        Raises TransferStalled (naming ``what``) when one write did not finish within
        the stall limit; the slot is given back first.
        """
        while await self._send_batch(what, items, write):
            pass

    async def _send_batch(
        self, what: str, items: Iterator[T], write: Callable[[T], Awaitable[None]]
    ) -> bool:
        """One slot's turn; False when ``items`` is exhausted. Its own frame, so that the
        chunks it read are freed on return, not kept while the download waits for a slot
        again (heaptrack found 2 MiB per waiting download held that way)."""
        async with self._free:
            batch = await asyncio.to_thread(lambda: list(itertools.islice(items, CHUNKS_PER_SLOT)))
            for item in batch:
                await ProgressWatch(what, self.stall_s).run(write(item))
            return bool(batch)
