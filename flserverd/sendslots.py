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

A slot is for this server's CPU and memory, not for a peer's link. A write
that gRPC has not taken within :data:`PEER_PACED_S` waits on the peer (its
receive window is full: a hospital's 50 Mbit/s link takes 1 MiB in ~170
ms, a local client in ~2 ms), so its slot goes to the next download and
the write goes on without it. Otherwise a handful of sites on slow links
would hold every slot and the others, fast or slow, would download one
handful at a time; sites on slow links all download at once, each
holding what its receive window lets in flight, which is what their
links need.

A client that stops reading leaves its write pending. After the transfer
stall limit (:data:`flcore.progress.TRANSFER_STALL_S`, the limit the client
applies to its own download) the write is given up with
:class:`flcore.progress.TransferStalled` and the slot is free again, so a
stalled reader delays the others by at most that long, never forever.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import Awaitable, Callable, Iterator
from typing import TypeVar

from flcore.progress import TRANSFER_STALL_S, ProgressWatch

T = TypeVar("T")

DOWNLOADS_SENDING = 4
"""Downloads that read and send at the same moment, server-wide."""

CHUNKS_PER_SLOT = 2
"""Chunks read (in one worker-thread step) and sent per slot held."""

PEER_PACED_S = 0.02
"""A write that takes longer waits on the peer's link, not on this server: it lets its
slot go."""


class SendSlots:
    """At most ``size`` senders read and write at once; the others wait their turn."""

    def __init__(
        self,
        size: int = DOWNLOADS_SENDING,
        stall_s: float = TRANSFER_STALL_S,
        peer_paced_s: float = PEER_PACED_S,
    ) -> None:
        if size < 1:
            raise ValueError(f"at least one download must be able to send (got {size})")
        self.stall_s = stall_s
        self.peer_paced_s = peer_paced_s
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
        await self._free.acquire()
        holding = True
        try:
            batch = await asyncio.to_thread(lambda: list(itertools.islice(items, CHUNKS_PER_SLOT)))
            for item in batch:
                writing = asyncio.ensure_future(ProgressWatch(what, self.stall_s).run(write(item)))
                try:
                    if holding:
                        done, _ = await asyncio.wait({writing}, timeout=self.peer_paced_s)
                        if not done:  # the peer sets the pace: another download may send
                            self._free.release()
                            holding = False
                    await writing
                finally:
                    if not writing.done():
                        writing.cancel()
                        with contextlib.suppress(asyncio.CancelledError):
                            await writing
            return bool(batch)
        finally:
            if holding:
                self._free.release()
