"""Model transfers that move at once, bounded across the whole server.

Each transfer in flight holds memory below Python: for a download the
chunks read ahead, the message gRPC serializes and the frames it keeps
until the peer's socket takes them (about 4.4 MB); for an upload the
frames gRPC received and the decoded message with its data (about 4.6
MB; docs/benchmarks.md §12). At the start of a round every client
downloads at once and at its end every client uploads at once, so that
memory grew with the number of clients. A transfer therefore moves only
while it holds one of a few slots, one pool per direction.

A download takes a slot per batch of chunks, reads them and hands them to
gRPC, and gives it back as soon as gRPC took them: the downloads take
turns (a waiting one queues for the next free slot, not behind a whole
model) and a client that pauses holds nobody up for long.

An upload cannot be paused that way: what a client sends lands in the
server's buffers whether or not the server reads it. So an upload takes a
slot before its client sends any chunk: the client sends its header and
waits for the server's go (:data:`flcore.wire.UPLOAD_TURN`), and the
server gives it when the upload holds a slot. It keeps the slot until the
upload is received, and its client's memory in the server is one stream
with one header until then.

A site (a certificate) has at most one transfer under way in each
direction: its next waits for its last, so one site, hostile or busy,
with several client instances cannot take every slot or place from the
others.

A slot is for this server's CPU and memory, not for a peer's link. A step
(a download's write, an upload's next chunk after its first) that takes
longer than :data:`PEER_PACED_S` waits on the peer (a hospital's 50 Mbit/s link moves
1 MiB in ~170 ms, a local client in ~2 ms), so its slot goes to the next
transfer and the step goes on without it; such a transfer holds what its
link has in flight, and its link keeps that small. Otherwise a handful of
sites on slow links would hold every slot and the others, fast or slow,
would move one handful at a time; sites on slow links all move at once,
each at its link's pace, which is what their links need.

A client that stops reading leaves a download's write pending. After the
transfer stall limit (:data:`flcore.progress.TRANSFER_STALL_S`, the limit
the client applies to its own download) the write is given up with
:class:`flcore.progress.TransferStalled` and the slot is free again, so a
stalled reader delays the others by at most that long, never forever. An
upload that stops sending is given up the same way by the exchange's own
watch, which also gives its slot back. An upload's first chunk is not
paced: it follows the go by a round trip and the client's start, which
say nothing of its link, and a client that got its go and sends nothing
keeps its slot until that watch gives the upload up.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import TypeVar, cast

from flcore.daemon import return_free_memory
from flcore.progress import TRANSFER_STALL_S, ProgressWatch

T = TypeVar("T")

DOWNLOADS_SENDING = 4
"""Downloads that read and send at the same moment, server-wide."""

UPLOADS_RECEIVING = 4
"""Uploads whose clients may send at the same moment, server-wide."""

TRANSFERS_MOVING = 8
"""Downloads, and uploads, under way at once, server-wide, those paced by their peers'
links included: 16 sites on 60 Mbit/s links fill a 1 Gbit/s server link."""

CHUNKS_PER_SLOT = 2
"""Chunks a download reads (in one worker-thread step) and sends per slot held."""

TRIM_EVERY_S = 1.0
"""How often at most the end of a transfer returns freed memory to the system."""

PEER_PACED_S = 0.02
"""A step that takes longer waits on the peer's link, not on this server: it lets its
slot go."""

_END = object()


class Slot:
    """One transfer's hold on a slot of a :class:`TransferSlots`, until it lets go."""

    def __init__(self, free: asyncio.Semaphore, peer_paced_s: float) -> None:
        self._free = free
        self._peer_paced_s = peer_paced_s
        self.held = True

    def release(self) -> None:
        """Give the slot back (once; later calls do nothing)."""
        if self.held:
            self.held = False
            self._free.release()

    async def paced(self, step: Awaitable[T]) -> T:
        """Await ``step``; when it takes longer than the peer-paced limit, the peer sets the
        pace, so the slot goes to another transfer and the step goes on without it."""
        task = asyncio.ensure_future(step)
        loop = asyncio.get_running_loop()
        try:
            while self.held:
                asked = loop.time()
                done, _ = await asyncio.wait({task}, timeout=self._peer_paced_s)
                if done:
                    break
                if loop.time() - asked < 2 * self._peer_paced_s:
                    self.release()
                # else this server's loop was held up past the limit: the wait says nothing
                # of the peer, so it gets another
            return await task
        finally:
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    async def paced_items(self, items: AsyncIterator[T]) -> AsyncIterator[T]:
        """``items`` (what a peer sends), each after the first awaited as a :meth:`paced`
        step."""
        first = True
        while True:
            step = anext(items, _END)
            item = await step if first else await self.paced(step)
            first = False
            if item is _END:
                return
            yield cast(T, item)


class TransferSlots:
    """At most ``size`` transfers move at once, holding a slot, and at most ``moving`` in
    all, those that let their slot go (peer-paced) included; the others wait their turn."""

    def __init__(
        self,
        size: int,
        moving: int,
        stall_s: float = TRANSFER_STALL_S,
        peer_paced_s: float = PEER_PACED_S,
    ) -> None:
        if not 1 <= size <= moving:
            raise ValueError(
                f"at least one transfer must be able to move, and no more with a slot than in"
                f" all (got {size} and {moving})"
            )
        self.stall_s = stall_s
        self.peer_paced_s = peer_paced_s
        self._free = asyncio.Semaphore(size)
        self._places = asyncio.Semaphore(moving)
        self._owners: dict[str, asyncio.Lock] = {}
        self._owner_transfers: collections.Counter[str] = collections.Counter()
        self._trimmed_at = -TRIM_EVERY_S

    @contextlib.asynccontextmanager
    async def slot(self, owner: str | None = None) -> AsyncIterator[Slot]:
        """Wait for a place and a free slot, and hold them until the block ends (the slot
        until it is let go); with ``owner``, also until that owner's earlier transfers are
        done (one at a time)."""
        try:
            async with self._owned(owner), self._places, self._shared() as held:
                yield held
        finally:
            self._ended()

    def _ended(self) -> None:
        """A transfer ended and freed its buffers: give their memory back to the system, at
        most every :data:`TRIM_EVERY_S`."""
        now = time.monotonic()
        if now - self._trimmed_at >= TRIM_EVERY_S:
            self._trimmed_at = now
            return_free_memory()

    @contextlib.asynccontextmanager
    async def _owned(self, owner: str | None) -> AsyncIterator[None]:
        if owner is None:
            yield
            return
        self._owner_transfers[owner] += 1
        try:
            async with self._owners.setdefault(owner, asyncio.Lock()):
                yield
        finally:
            self._owner_transfers[owner] -= 1
            if not self._owner_transfers[owner]:
                del self._owner_transfers[owner], self._owners[owner]

    @contextlib.asynccontextmanager
    async def _shared(self) -> AsyncIterator[Slot]:
        await self._free.acquire()
        held = Slot(self._free, self.peer_paced_s)
        try:
            yield held
        finally:
            held.release()

    async def send_all(
        self,
        what: str,
        items: Iterator[T],
        write: Callable[[T], Awaitable[None]],
        owner: str | None = None,
    ) -> None:
        """Read ``items`` (a blocking, file-reading iterator) in a worker thread and
        ``write`` each, :data:`CHUNKS_PER_SLOT` at a time while holding a slot, all while
        holding a place; with ``owner``, after that owner's earlier transfers.

        Raises TransferStalled (naming ``what``) when one write did not finish within
        the stall limit; the slot is given back first.
        """
        try:
            async with self._owned(owner), self._places:
                while await self._send_batch(what, items, write):
                    pass
        finally:
            self._ended()

    async def _send_batch(
        self, what: str, items: Iterator[T], write: Callable[[T], Awaitable[None]]
    ) -> bool:
        """One slot's turn; False when ``items`` is exhausted. Its own frame, so that the
        chunks it read are freed on return, not kept while the download waits for a slot
        again (heaptrack found 2 MiB per waiting download held that way)."""
        async with self._shared() as held:
            batch = await asyncio.to_thread(lambda: list(itertools.islice(items, CHUNKS_PER_SLOT)))
            for item in batch:
                await held.paced(ProgressWatch(what, self.stall_s).run(write(item)))
            return bool(batch)
