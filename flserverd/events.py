"""The live event feed behind the console: sequence-numbered deltas and a log ring.

Events are :mod:`flcore.feed` dataclasses; the admin servicer turns them
into wire messages with :mod:`flcore.feedwire`.

Publishers call ``publish`` from the event loop; each subscriber (one per
connected console) has a bounded queue. A console that falls too far behind
is cut off rather than allowed to grow the server's memory; it reconnects
and starts again from a fresh snapshot, which is how it always shows the
true state.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import AsyncIterator

from flcore.feed import Body, FeedEvent, LogEntry

QUEUE_LIMIT = 10_000
LOG_RING = 2_000


class Overflow(Exception):
    """A subscriber fell too far behind and was cut off."""


class Subscription:
    """One subscriber's queue of events."""

    def __init__(self, bus: EventBus) -> None:
        self._bus = bus
        self._queue: asyncio.Queue[FeedEvent | None] = asyncio.Queue(QUEUE_LIMIT)
        self.overflowed = False
        self._closed = False

    def push(self, event: FeedEvent) -> None:
        """Queue an event; on overflow the subscription ends."""
        if self.overflowed:
            return
        try:
            self._queue.put_nowait(event)
        except asyncio.QueueFull:
            self.overflowed = True
            self._bus.unsubscribe(self)

    def close(self) -> None:
        """End the subscription (server shutting down), even when its queue is full."""
        self._closed = True
        if not self._queue.full():
            self._queue.put_nowait(None)

    async def __aiter__(self) -> AsyncIterator[FeedEvent]:
        try:
            while True:
                if self._queue.empty():
                    if self.overflowed:
                        raise Overflow("event consumer fell behind; reconnect for a fresh snapshot")
                    if self._closed:
                        return
                event = await self._queue.get()
                if event is None:
                    return
                yield event
        finally:
            self._bus.unsubscribe(self)


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

    def subscribe(self) -> Subscription:
        """Start receiving events published from now on."""
        sub = Subscription(self)
        self._subscribers.add(sub)
        return sub

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
                record.created, record.levelname, record.name, record.getMessage(), "server"
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
