"""flserverd.transferslots: a few transfers move at once, in turns; a stalled or peer-paced
one lets go."""

from __future__ import annotations

import asyncio
import time
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from flcore.progress import TransferStalled
from flserverd.transferslots import CHUNKS_PER_SLOT, TransferSlots

CHUNKS = 3 * CHUNKS_PER_SLOT


class Senders:
    """Writes that take a little while, recording who wrote what and how many at once."""

    def __init__(self) -> None:
        self.writing: set[str] = set()
        self.most_at_once = 0
        self.order: list[tuple[str, int]] = []

    def write(self, name: str) -> Callable[[int], Awaitable[None]]:
        async def write(item: int) -> None:
            self.writing.add(name)
            self.most_at_once = max(self.most_at_once, len(self.writing))
            await asyncio.sleep(0.005)
            self.order.append((name, item))
            self.writing.discard(name)

        return write


def test_at_most_the_slots_send_at_once_and_downloads_take_turns() -> None:
    senders = Senders()

    async def scenario() -> None:
        slots = TransferSlots(2, 8, peer_paced_s=60)
        await asyncio.gather(
            *(
                slots.send_all(f"download to {name}", iter(range(CHUNKS)), senders.write(name))
                for name in ("a", "b", "c")
            )
        )

    asyncio.run(scenario())
    assert senders.most_at_once == 2
    for name in ("a", "b", "c"):
        assert [item for who, item in senders.order if who == name] == list(range(CHUNKS))
    # The third download got a slot long before the first one had sent its whole model.
    assert senders.order.index(("c", 0)) < senders.order.index(("a", CHUNKS - 1))


def test_a_reader_that_stalls_gives_its_slot_back_after_the_limit() -> None:
    senders = Senders()

    async def never_taken(item: int) -> None:
        await asyncio.Event().wait()  # the client stopped reading

    async def scenario() -> float:
        slots = TransferSlots(1, 8, stall_s=0.2, peer_paced_s=60)
        stalled = asyncio.create_task(
            slots.send_all("download of m.safetensors to s1", iter(range(CHUNKS)), never_taken)
        )
        await asyncio.sleep(0)  # the stalled download takes the only slot first
        started = time.monotonic()
        await slots.send_all("download to s2", iter(range(CHUNKS)), senders.write("s2"))
        waited = time.monotonic() - started
        with pytest.raises(TransferStalled, match=r"download of m\.safetensors to s1: nothing"):
            await stalled
        return waited

    waited = asyncio.run(scenario())
    assert [item for _, item in senders.order] == list(range(CHUNKS))
    assert 0.2 <= waited < 2.2


def test_a_download_paced_by_a_slow_link_lets_the_others_send() -> None:
    """A site on a slow link does not hold a slot while its link drains: the fast download
    beside it is done before the slow one's first chunk is through."""
    senders = Senders()
    link_drained = asyncio.Event()

    async def slow_link(item: int) -> None:
        await link_drained.wait()
        senders.order.append(("slow", item))

    async def scenario() -> None:
        slots = TransferSlots(1, 8, peer_paced_s=0.01)
        slow = asyncio.create_task(
            slots.send_all("download to slow", iter(range(CHUNKS)), slow_link)
        )
        await asyncio.sleep(0)  # the slow download takes the only slot first
        await asyncio.wait_for(
            slots.send_all("download to fast", iter(range(CHUNKS)), senders.write("fast")), 5
        )
        link_drained.set()
        await asyncio.wait_for(slow, 5)

    asyncio.run(scenario())
    assert senders.order[:CHUNKS] == [("fast", item) for item in range(CHUNKS)]
    assert senders.order[CHUNKS:] == [("slow", item) for item in range(CHUNKS)]


def test_a_download_that_fails_gives_its_slot_back_at_once() -> None:
    senders = Senders()

    async def cancelled_by_client(item: int) -> None:
        raise ConnectionResetError("the client went away")

    async def scenario() -> None:
        slots = TransferSlots(1, 8)
        failed = asyncio.create_task(
            slots.send_all("download to s1", iter(range(CHUNKS)), cancelled_by_client)
        )
        await asyncio.sleep(0)
        await asyncio.wait_for(
            slots.send_all("download to s2", iter(range(CHUNKS)), senders.write("s2")), 5
        )
        with pytest.raises(ConnectionResetError):
            await failed

    asyncio.run(scenario())
    assert len(senders.order) == CHUNKS


def test_no_slots_or_more_slots_than_places_is_refused() -> None:
    with pytest.raises(ValueError, match="at least one transfer must be able to move"):
        TransferSlots(0, 1)
    with pytest.raises(ValueError, match=r"no more with a slot than in all \(got 5 and 4\)"):
        TransferSlots(5, 4)


class Chunk:
    """A chunk whose lifetime a test can watch."""


def test_a_download_waiting_for_its_next_turn_holds_none_of_the_chunks_it_sent() -> None:
    sent: list[weakref.ref[Chunk]] = []
    alive_while_waiting: list[bool] = []

    async def scenario() -> None:
        slots = TransferSlots(1, 8, peer_paced_s=60)
        other_writing = asyncio.Event()
        let_go = asyncio.Event()

        async def remember(item: Chunk) -> None:
            sent.append(weakref.ref(item))

        async def hold(item: Chunk) -> None:
            other_writing.set()
            await let_go.wait()

        chunks = (Chunk() for _ in range(2 * CHUNKS_PER_SLOT))
        first = asyncio.create_task(slots.send_all("download to s1", chunks, remember))
        await asyncio.sleep(0)  # s1 takes the slot
        others = (Chunk() for _ in range(CHUNKS_PER_SLOT))
        second = asyncio.create_task(slots.send_all("download to s2", others, hold))
        await other_writing.wait()  # s1 sent its first batch and waits for its next turn
        alive_while_waiting.extend(ref() is not None for ref in sent)
        let_go.set()
        await asyncio.gather(first, second)

    asyncio.run(scenario())
    assert alive_while_waiting == [False] * CHUNKS_PER_SLOT
    assert len(sent) == 2 * CHUNKS_PER_SLOT


async def arriving(items: list[int], link: asyncio.Event | None = None) -> AsyncIterator[int]:
    """What a peer sends: each item once ``link`` (when given) carries it."""
    for item in items:
        if link is not None:
            await link.wait()
        yield item


def test_an_upload_holds_its_slot_until_received_and_the_next_waits() -> None:
    order: list[str] = []

    async def receive(slots: TransferSlots, name: str) -> None:
        async with slots.slot() as held:
            order.append(f"{name} turn")
            async for item in held.paced_items(arriving(list(range(CHUNKS)))):
                order.append(f"{name} {item}")
                await asyncio.sleep(0)  # the chunk's processing yields to the loop
        order.append(f"{name} done")

    async def scenario() -> None:
        slots = TransferSlots(1, 8, peer_paced_s=60)
        await asyncio.gather(receive(slots, "a"), receive(slots, "b"))

    asyncio.run(scenario())
    a = ["a turn", *(f"a {item}" for item in range(CHUNKS)), "a done"]
    assert order == a + [entry.replace("a", "b") for entry in a]


def test_an_upload_paced_by_a_slow_link_lets_the_next_one_in() -> None:
    """A site whose link is slow gives its slot up while it waits for its next chunk (not its
    first, which follows the go by a round trip): the fast upload queued behind it is
    received before the slow one's second chunk arrives."""
    order: list[str] = []
    link = asyncio.Event()

    async def slow_link() -> AsyncIterator[int]:
        yield 0
        await link.wait()
        yield 1

    async def receive(slots: TransferSlots, name: str, sent: AsyncIterator[int]) -> None:
        async with slots.slot(name) as held:
            async for item in held.paced_items(sent):
                order.append(f"{name} {item}")

    async def scenario() -> None:
        slots = TransferSlots(1, 8, peer_paced_s=0.01)
        slow = asyncio.create_task(receive(slots, "slow", slow_link()))
        await asyncio.sleep(0)  # the slow upload takes the only slot first
        await asyncio.wait_for(receive(slots, "fast", arriving([0, 1])), 5)
        link.set()
        await asyncio.wait_for(slow, 5)

    asyncio.run(scenario())
    assert order == ["slow 0", "fast 0", "fast 1", "slow 1"]


def test_a_site_holds_one_slot_and_its_next_upload_waits_for_its_last() -> None:
    order: list[str] = []

    async def receive(slots: TransferSlots, site: str, name: str, link: asyncio.Event) -> None:
        async with slots.slot(site) as held:
            order.append(f"{name} turn")
            async for _ in held.paced_items(arriving([0], link)):
                pass
        order.append(f"{name} done")

    async def scenario() -> None:
        slots = TransferSlots(3, 8, peer_paced_s=60)
        first, second, other = asyncio.Event(), asyncio.Event(), asyncio.Event()
        uploads = [
            asyncio.create_task(receive(slots, "a", "a-1", first)),
            asyncio.create_task(receive(slots, "a", "a-2", second)),
            asyncio.create_task(receive(slots, "b", "b-1", other)),
        ]
        while len(order) < 2:  # a-1 and b-1 take their turns; a-2 waits behind a-1
            await asyncio.sleep(0)
        for link in (other, second, first):
            link.set()
        await asyncio.wait_for(asyncio.gather(*uploads), 5)
        async with slots.slot("a"), slots.slot("b"):  # nothing of the sites is left over
            pass

    asyncio.run(scenario())
    assert order[:2] == ["a-1 turn", "b-1 turn"]
    assert order.index("a-2 turn") > order.index("a-1 done")


def test_a_transfer_cancelled_while_it_waits_or_holds_leaves_every_slot_free() -> None:
    async def scenario() -> int:
        slots = TransferSlots(1, 8, peer_paced_s=60)
        holding = asyncio.Event()

        async def hold_forever() -> None:
            async with slots.slot() as held:
                holding.set()
                async for _ in held.paced_items(arriving([0], asyncio.Event())):
                    pass

        async def wait_for_turn() -> None:
            async with slots.slot():
                pass

        holder = asyncio.create_task(hold_forever())
        await holding.wait()
        waiter = asyncio.create_task(wait_for_turn())
        await asyncio.sleep(0)  # the waiter queues for the only slot
        for task in (waiter, holder):
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        turns = 0
        for _ in range(3):
            async with slots.slot():
                turns += 1
        return turns

    assert asyncio.run(asyncio.wait_for(scenario(), 5)) == 3


def test_transfers_paced_by_their_links_are_bounded_too() -> None:
    """Slow links let their slots go but keep their places: a third upload waits for a place
    although the slot is free, and moves once a slow one is done."""
    order: list[str] = []
    links = {"slow-1": asyncio.Event(), "slow-2": asyncio.Event()}

    async def slow(name: str) -> AsyncIterator[int]:
        yield 0
        await links[name].wait()
        yield 1

    async def receive(slots: TransferSlots, name: str, sent: AsyncIterator[int]) -> None:
        async with slots.slot(name) as held:
            async for item in held.paced_items(sent):
                order.append(f"{name} {item}")
        order.append(f"{name} done")

    async def scenario() -> None:
        slots = TransferSlots(1, 2, peer_paced_s=0.01)
        uploads = [asyncio.create_task(receive(slots, name, slow(name))) for name in links]
        while order.count("slow-1 0") + order.count("slow-2 0") < 2:
            await asyncio.sleep(0.01)  # both slow uploads paced: the slot is free again
        third = asyncio.create_task(receive(slots, "fast", arriving([0])))
        await asyncio.sleep(0.05)
        assert "fast 0" not in order  # no place for it yet
        links["slow-1"].set()
        await asyncio.wait_for(third, 5)
        links["slow-2"].set()
        await asyncio.wait_for(asyncio.gather(*uploads), 5)

    asyncio.run(scenario())
    assert order.index("fast 0") > order.index("slow-1 done")


def test_a_step_that_outlasted_the_limit_only_while_this_servers_loop_was_busy_keeps_the_slot() -> (
    None
):
    async def scenario() -> bool:
        slots = TransferSlots(1, 8, peer_paced_s=0.01)
        loop = asyncio.get_running_loop()
        async with slots.slot() as held:
            arrived: asyncio.Future[int] = loop.create_future()
            loop.call_soon(time.sleep, 0.05)  # this server's loop is held up past the limit
            loop.call_later(0.055, arrived.set_result, 1)  # the peer's chunk, soon after
            assert await held.paced(arrived) == 1
            return held.held

    assert asyncio.run(scenario())


def test_a_sites_downloads_go_one_after_another() -> None:
    senders = Senders()

    async def scenario() -> None:
        slots = TransferSlots(2, 8, peer_paced_s=60)
        await asyncio.gather(
            *(
                slots.send_all(
                    f"download to {name}", iter(range(CHUNKS)), senders.write(name), site
                )
                for name, site in (("a-1", "a"), ("a-2", "a"), ("b-1", "b"))
            )
        )

    asyncio.run(scenario())
    a_1 = [index for index, (who, _) in enumerate(senders.order) if who == "a-1"]
    a_2 = [index for index, (who, _) in enumerate(senders.order) if who == "a-2"]
    assert max(a_1) < min(a_2)  # a-2 waited for a-1, while b-1 sent beside a-1
    assert senders.most_at_once == 2
