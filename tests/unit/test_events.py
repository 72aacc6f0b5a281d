"""flserverd.events: the console's live feed (sequence numbers, log ring, slow consumers)."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import AsyncIterator

import pytest

from flcore.feed import ClientGone, FeedEvent, Heartbeat, LogEntry
from flserverd.events import (
    LAG_LIMIT_S,
    LOG_RING,
    QUEUE_LIMIT,
    BusLogHandler,
    EventBus,
    Overflow,
    Revoked,
    Subscription,
)


def _line(i: int) -> LogEntry:
    return LogEntry(float(i), "INFO", "test", f"line {i}", "server")


def _tick(i: object) -> Heartbeat:
    return Heartbeat(str(i), 0.0)


async def _take(sub: Subscription, count: int, timeout: float = 1.0) -> list[FeedEvent]:
    events: list[FeedEvent] = []

    async def collect() -> None:
        async for event in sub:
            events.append(event)
            if len(events) == count:
                return

    await asyncio.wait_for(collect(), timeout)
    return events


def test_sequence_numbers_and_delivery() -> None:
    async def scenario() -> None:
        bus = EventBus()
        bus.publish(ClientGone("before", "x"))  # before anyone subscribed
        first = bus.subscribe()
        second = bus.subscribe()
        bus.publish(ClientGone("a", "dropped"))
        bus.publish(_tick(1))
        bus.publish(_line(1))
        assert bus.seq == 4
        got = await _take(first, 3)
        assert [(e.seq, type(e.body)) for e in got] == [
            (2, ClientGone),
            (3, Heartbeat),
            (4, LogEntry),
        ]
        assert got[0].body == ClientGone("a", "dropped")
        assert got[2].body == _line(1)
        got2 = await _take(second, 3)
        assert [e.seq for e in got2] == [2, 3, 4]
        assert got2[0].time <= got2[2].time

    asyncio.run(scenario())


def test_log_ring_keeps_only_recent_lines() -> None:
    bus = EventBus()
    for i in range(LOG_RING + 25):
        bus.publish(_line(i))
        bus.publish(_tick(i))  # not a log line: not in the ring
    assert len(bus.logs) == LOG_RING
    assert bus.logs[0] == _line(25)
    assert bus.logs[-1] == _line(LOG_RING + 24)
    assert bus.seq == 2 * (LOG_RING + 25)


def test_slow_subscriber_is_cut_off_without_growing() -> None:
    async def scenario() -> None:
        bus = EventBus()
        slow = bus.subscribe()
        fast = bus.subscribe()
        fast_seen: list[int] = []

        for i in range(QUEUE_LIMIT + 500):
            bus.publish(_tick(i))
            if i % 100 == 0:
                # the fast consumer keeps up
                while not fast._queue.empty():
                    event = fast._queue.get_nowait()
                    assert event is not None
                    fast_seen.append(event.seq)
        assert slow.overflowed
        assert slow._queue.qsize() == QUEUE_LIMIT  # bounded: nothing past the limit queued
        assert slow not in bus._subscribers
        assert not fast.overflowed and fast in bus._subscribers
        bus.publish(_tick("more"))
        assert slow._queue.qsize() == QUEUE_LIMIT

        seen: list[int] = []
        with pytest.raises(Overflow, match="reconnect"):
            async for event in slow:
                seen.append(event.seq)
        # it got what was queued, in order, then the cut-off
        assert seen == list(range(1, QUEUE_LIMIT + 1))
        assert fast_seen == list(range(1, len(fast_seen) + 1))

    asyncio.run(scenario())


def test_close_ends_subscriptions() -> None:
    async def scenario() -> None:
        bus = EventBus()
        sub = bus.subscribe()
        bus.publish(_tick(1))
        bus.close()
        got = [event.seq async for event in sub]
        assert got == [1]
        bus.publish(_tick(2))  # nobody is subscribed any more
        assert bus._subscribers == set()

    asyncio.run(scenario())


def test_close_ends_subscription_with_full_queue() -> None:
    """A console exactly QUEUE_LIMIT events behind at shutdown must not wait forever."""

    async def scenario() -> None:
        bus = EventBus()
        sub = bus.subscribe()
        for i in range(QUEUE_LIMIT):
            bus.publish(_tick(i))
        assert not sub.overflowed
        bus.close()

        async def drain() -> int:
            count = 0
            try:
                async for _ in sub:
                    count += 1
            except Overflow:
                pass
            return count

        assert await asyncio.wait_for(drain(), 1.0) == QUEUE_LIMIT

    asyncio.run(scenario())


def test_cut_off_ends_an_admins_feeds_at_once_and_no_one_elses() -> None:
    """A revoked admin's console stops getting events now, not after its backlog."""

    async def scenario() -> None:
        bus = EventBus()
        bob, alice = ("bob@x.org", 1, None), ("alice@x.org", 2, None)
        revoked, waiting, kept = bus.subscribe(bob), bus.subscribe(bob), bus.subscribe(alice)
        for i in range(5):
            bus.publish(_tick(i))

        async def read_all(sub: Subscription) -> list[int]:
            seen = []
            async for event in sub:
                seen.append(event.seq)
            return seen

        reader = asyncio.ensure_future(read_all(waiting))
        while not waiting._queue.empty():  # the reader drains its queue, then waits for more
            await asyncio.sleep(0)
        bus.cut_off(lambda user, serial, issued: "certificate revoked" if serial == 1 else None)
        with pytest.raises(Revoked, match="certificate revoked"):
            await asyncio.wait_for(read_all(revoked), 1.0)  # 5 events queued, none delivered
        with pytest.raises(Revoked):
            await asyncio.wait_for(reader, 1.0)
        assert bus._subscribers == {kept}
        assert [e.seq for e in await _take(kept, 5)] == [1, 2, 3, 4, 5]

    asyncio.run(scenario())


def test_iterator_exit_unsubscribes() -> None:
    async def scenario() -> None:
        bus = EventBus()
        sub = bus.subscribe()
        bus.publish(_tick(1))
        iterator: AsyncIterator[FeedEvent] = sub.__aiter__()
        assert (await anext(iterator)).seq == 1
        await iterator.aclose()  # type: ignore[attr-defined]
        assert sub not in bus._subscribers

    asyncio.run(scenario())


def test_batches_take_what_queued_in_order_and_at_most_the_limit() -> None:
    async def scenario() -> None:
        bus = EventBus()
        sub = bus.subscribe()
        batches = sub.batches(limit=1000)
        for i in range(2500):
            bus.publish(_tick(i))
        sizes = [len(await anext(batches)) for _ in range(3)]
        assert sizes == [1000, 1000, 500]
        bus.publish(_tick("alone"))
        alone = await anext(batches)  # a reader that keeps up gets each event at once
        assert [e.seq for e in alone] == [2501]
        bus.publish(_line(1))
        bus.publish(ClientGone("a", "dropped"))
        assert [type(e.body) for e in await anext(batches)] == [LogEntry, ClientGone]
        await batches.aclose()
        assert sub not in bus._subscribers

    asyncio.run(scenario())


def test_a_slow_reader_gets_batches_not_a_backlog() -> None:
    """A reader that takes ten turns of the loop per message (a slow write) while a site's
    events come one per turn takes all that queued each time: it is never behind by more
    than one batch, and nothing is lost or reordered."""

    async def scenario() -> None:
        bus = EventBus()
        sub = bus.subscribe()
        published = 1000

        async def publish() -> None:
            for i in range(published):
                bus.publish(_tick(i))
                await asyncio.sleep(0)
            bus.close()

        publisher = asyncio.ensure_future(publish())
        seqs: list[int] = []
        sizes: list[int] = []
        async for batch in sub.batches():
            assert batch[-1].seq == bus.seq  # everything queued was taken
            seqs.extend(e.seq for e in batch)
            sizes.append(len(batch))
            for _ in range(10):  # the write of this batch
                await asyncio.sleep(0)
        await publisher
        assert seqs == list(range(1, published + 1))
        assert len(sizes) < published / 5 and max(sizes) <= 20

    asyncio.run(scenario())


def test_batches_of_a_revoked_admin_stop_before_the_queued_events() -> None:
    async def scenario() -> None:
        bus = EventBus()
        sub = bus.subscribe(("bob@x.org", 1, None))
        batches = sub.batches()
        bus.publish(_tick(1))
        assert [e.seq for e in await anext(batches)] == [1]
        for i in range(5):
            bus.publish(_tick(i))
        bus.cut_off(lambda user, serial, issued: "certificate revoked")
        with pytest.raises(Revoked, match="certificate revoked"):
            await anext(batches)
        assert sub not in bus._subscribers

    asyncio.run(scenario())


def _logger(name: str, handler: logging.Handler) -> logging.Logger:
    logger = logging.getLogger(name)
    logger.handlers = [handler]
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    return logger


def test_bus_log_handler_from_loop_and_other_thread() -> None:
    async def scenario() -> None:
        bus = EventBus()
        sub = bus.subscribe()
        handler = BusLogHandler(bus, asyncio.get_running_loop())
        logger = _logger("flstack.test.events", handler)
        try:
            logger.debug("not forwarded")
            logger.info("from the loop %d", 1)
            assert bus.seq == 1  # published at once on the loop thread

            def work() -> None:
                logger.warning("from a thread %s", "T")

            thread = threading.Thread(target=work)
            thread.start()
            thread.join()
            got = await _take(sub, 2)
        finally:
            logger.handlers = []
        lines = [e.body for e in got if isinstance(e.body, LogEntry)]
        assert len(lines) == len(got)
        assert [(line.level, line.message, line.logger, line.source) for line in lines] == [
            ("INFO", "from the loop 1", "flstack.test.events", "server"),
            ("WARNING", "from a thread T", "flstack.test.events", "server"),
        ]
        assert list(bus.logs) == lines

    asyncio.run(scenario())


def test_bus_log_handler_after_loop_closed_is_silent() -> None:
    bus = EventBus()
    loop = asyncio.new_event_loop()
    handler = BusLogHandler(bus, loop)
    loop.close()
    logger = _logger("flstack.test.events.closed", handler)
    try:
        logger.error("after shutdown")
    finally:
        logger.handlers = []
    assert bus.seq == 0


def test_bus_log_handler_bad_format_does_not_raise() -> None:
    async def scenario() -> None:
        bus = EventBus()
        handler = BusLogHandler(bus, asyncio.get_running_loop())
        logger = _logger("flstack.test.events.bad", handler)
        previous = logging.raiseExceptions
        logging.raiseExceptions = False
        try:
            logger.info("needs two %s %s", "only-one")
        finally:
            logging.raiseExceptions = previous
            logger.handlers = []
        assert bus.seq == 0

    asyncio.run(scenario())


def test_a_subscriber_whose_next_event_waited_too_long_is_cut_off() -> None:
    """Behind by seconds, not only by a count: a console starved of CPU showed a picture
    minutes old as live while its queue stayed far below QUEUE_LIMIT."""

    async def scenario() -> None:
        bus = EventBus()
        sub = bus.subscribe()
        batches = sub.batches()
        sub.push(FeedEvent(1, time.time() - 1, _tick("fresh")))
        assert [e.seq for e in await anext(batches)] == [1]
        sub.push(FeedEvent(2, time.time() - LAG_LIMIT_S - 1, _tick("old")))
        with pytest.raises(Overflow, match="behind"):
            await anext(batches)
        assert sub.overflowed and sub not in bus._subscribers

    asyncio.run(scenario())


def test_a_quiet_feed_ticks_and_then_delivers_what_comes() -> None:
    async def scenario() -> None:
        bus = EventBus()
        sub = bus.subscribe()
        batches = sub.batches(tick_s=0.01)
        assert await anext(batches) == []  # nothing happened: a tick
        bus.publish(_tick(1))
        assert [e.seq for e in await anext(batches)] == [1]
        await batches.aclose()

    asyncio.run(scenario())
