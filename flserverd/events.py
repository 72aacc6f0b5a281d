"""The live event feed behind the console: sequence-numbered deltas and a log ring.

Events are :mod:`flcore.feed` dataclasses; the admin servicer turns them
into wire messages with :mod:`flcore.feedwire`.

Publishers call ``publish`` from the event loop; each subscriber (one per
connected console) has a bounded queue, read in batches of what queued up
(the admin servicer sends each batch as one message). A console that falls
too far behind is cut off rather than allowed to grow the server's memory or
to show an old picture as live: behind by ``QUEUE_LIMIT`` events, or by
``LAG_LIMIT_S`` seconds (its oldest event waiting that long when the feed
takes the next batch; a console starved of CPU showed rounds one to two
minutes old as current while its queue stayed far below the count). It
reconnects and starts again from a fresh snapshot, which is how it always
shows the true state. A feed with nothing to send for ``TICK_S`` sends a
:class:`~flcore.feed.Tick`, so a quiet server is told apart from a stopped one.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from contextlib import aclosing
from datetime import datetime

from flcore.feed import MAX_BATCH_EVENTS, MAX_TEXT, Body, FeedEvent, LogEntry, clip

QUEUE_LIMIT = 10_000
LAG_LIMIT_S = 10.0
"""A subscriber whose next event waited longer than this is cut off (the console's own
bound, fltui.app.BEHIND_S, is tighter: it sees the delay in the network's buffers too)."""
TICK_S = 1.0
"""A feed with nothing to send for this long sends a tick."""
LOG_RING = 2_000


class CutOff(Exception):
    """The server ended a subscription; the message says why."""


class Overflow(CutOff):
    """A subscriber fell too far behind and was cut off."""


class Revoked(CutOff):
    """The subscriber's admin certificate was revoked."""


FeedOwner = tuple[str, int, datetime | None]
"""Who follows a feed: the admin's name, and the serial and issue time of the certificate it
logged in with."""


class Subscription:
    """One subscriber's queue of events, and whose (None: the server's own, or a test's)."""

    def __init__(self, bus: EventBus, owner: FeedOwner | None = None) -> None:
        self._bus = bus
        self.owner = owner
        self._queue: asyncio.Queue[FeedEvent | None] = asyncio.Queue(QUEUE_LIMIT)
        self.ended: CutOff | None = None
        self._closed = False

    @property
    def overflowed(self) -> bool:
        """Whether the subscriber fell too far behind (its queue was full)."""
        return isinstance(self.ended, Overflow)

    def push(self, event: FeedEvent) -> None:
        """Queue an event; on overflow the subscription ends."""
        if self.ended is not None:
            return
        try:
            self._queue.put_nowait(event)
        except asyncio.QueueFull:
            self.ended = Overflow("event consumer fell behind; reconnect for a fresh snapshot")
            self._bus.unsubscribe(self)

    def cut(self, reason: str) -> None:
        """End the subscription at once, before the events still queued (admin revoked)."""
        self.ended = Revoked(reason)
        self._wake()

    def close(self) -> None:
        """End the subscription (server shutting down), even when its queue is full."""
        self._closed = True
        self._wake()

    def _wake(self) -> None:
        """A reader waiting on an empty queue wakes up; a full queue has no reader waiting."""
        if not self._queue.full():
            self._queue.put_nowait(None)

    async def batches(
        self, limit: int = MAX_BATCH_EVENTS, tick_s: float | None = None
    ) -> AsyncGenerator[list[FeedEvent]]:
        """The events in order, each batch all that queued up (at most ``limit``) since the
        last was taken: a reader slower than the publishers takes more at a time rather
        than falling further behind one event per turn. With ``tick_s``, an empty batch
        when nothing came for that long (the feed sends a tick).

        Raises:
            Overflow: the next event waited longer than ``LAG_LIMIT_S``.
        """
        try:
            while True:
                if isinstance(self.ended, Revoked):
                    raise self.ended
                if self._queue.empty():
                    if self.ended is not None:
                        raise self.ended
                    if self._closed:
                        return
                try:
                    first = await asyncio.wait_for(self._queue.get(), tick_s)
                except TimeoutError:
                    yield []
                    continue
                if first is not None and time.time() - first.time > LAG_LIMIT_S:
                    self.ended = Overflow(
                        f"the console fell more than {LAG_LIMIT_S:g}s behind the server's events;"
                        " reconnect for a fresh snapshot"
                    )
                    raise self.ended
                batch = [] if first is None else [first]
                while len(batch) < limit and not self._queue.empty():
                    event = self._queue.get_nowait()
                    if event is not None:
                        batch.append(event)
                if batch:
                    yield batch
        finally:
            self._bus.unsubscribe(self)

    async def __aiter__(self) -> AsyncIterator[FeedEvent]:
        async with aclosing(self.batches()) as batches:
            async for batch in batches:
                for event in batch:
                    yield event


class EventBus:
    """Fan-out of events to subscribers, plus the recent log lines for snapshots."""

    def __init__(self) -> None:
        self.seq = 0
        self.logs: deque[LogEntry] = deque(maxlen=LOG_RING)
        self._subscribers: set[Subscription] = set()

    def publish(self, body: Body) -> None:
        """Send an event to every subscriber."""
        self.seq += 1
        if isinstance(body, LogEntry):
            self.logs.append(body)
        event = FeedEvent(self.seq, time.time(), body)
        for sub in list(self._subscribers):
            sub.push(event)

    def subscribe(self, owner: FeedOwner | None = None) -> Subscription:
        """Start receiving events published from now on."""
        sub = Subscription(self, owner)
        self._subscribers.add(sub)
        return sub

    def cut_off(self, refusal: Callable[[str, int, datetime | None], str | None]) -> None:
        """End every subscription whose owner ``refusal`` refuses now, with its reason.

        By the admin's certificate, not its login token: a feed outlives the token it was
        opened with (dropped after 12 idle hours, or as the admin's 65th login came).
        """
        for sub in list(self._subscribers):
            reason = None if sub.owner is None else refusal(*sub.owner)
            if reason is not None:
                sub.cut(reason)

    def unsubscribe(self, sub: Subscription) -> None:
        """Stop delivering to a subscriber."""
        self._subscribers.discard(sub)

    def close(self) -> None:
        """End every subscription."""
        for sub in list(self._subscribers):
            sub.close()
        self._subscribers.clear()


class BusLogHandler(logging.Handler):
    """Puts the server's own INFO+ log lines on the event bus."""

    def __init__(self, bus: EventBus, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(logging.INFO)
        self._bus = bus
        self._loop = loop

    def emit(self, record: logging.LogRecord) -> None:
        """Forward a record, from whichever thread logged it."""
        try:
            line = LogEntry(
                record.created,
                record.levelname,
                record.name,
                clip(record.getMessage(), MAX_TEXT),
                "server",
            )
        except Exception:  # a malformed log call must not break the server
            self.handleError(record)
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self._loop:
            self._bus.publish(line)
        elif not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._bus.publish, line)
