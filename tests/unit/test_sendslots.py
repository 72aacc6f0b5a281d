"""flserverd.sendslots: a few downloads send at once, in turns, and a stalled one lets go."""

from __future__ import annotations

import asyncio
import time
import weakref
from collections.abc import Awaitable, Callable

import pytest

from flcore.progress import TransferStalled
from flserverd.sendslots import CHUNKS_PER_SLOT, SendSlots

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
        slots = SendSlots(2, peer_paced_s=60)
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
        slots = SendSlots(1, stall_s=0.2, peer_paced_s=60)
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
        slots = SendSlots(1, peer_paced_s=0.01)
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
        slots = SendSlots(1)
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


def test_no_slots_is_refused() -> None:
    with pytest.raises(ValueError, match="at least one download"):
        SendSlots(0)


class Chunk:
    """A chunk whose lifetime a test can watch."""


def test_a_download_waiting_for_its_next_turn_holds_none_of_the_chunks_it_sent() -> None:
    sent: list[weakref.ref[Chunk]] = []
    alive_while_waiting: list[bool] = []

    async def scenario() -> None:
        slots = SendSlots(1, peer_paced_s=60)
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
