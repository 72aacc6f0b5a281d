"""flcore.progress: a transfer is given up when it stops moving, never for taking long."""

from __future__ import annotations

import asyncio
import time

import pytest

from flcore.progress import ProgressWatch, TransferStalled

LIMIT = 0.3


async def chunks(watch: ProgressWatch, count: int, gap: float) -> int:
    """A transfer that moves a chunk every ``gap`` seconds."""
    for _ in range(count):
        await asyncio.sleep(gap)
        watch.moved()
    return count


def test_a_slow_transfer_that_keeps_moving_is_never_cut() -> None:
    async def scenario() -> tuple[int, float]:
        watch = ProgressWatch("download of m", LIMIT)
        started = time.monotonic()
        moved = await watch.run(chunks(watch, 12, LIMIT / 3))
        return moved, time.monotonic() - started

    moved, took = asyncio.run(scenario())
    assert moved == 12
    assert took > 3 * LIMIT  # much longer than the limit, in small steps


def test_a_transfer_that_stops_moving_is_cancelled_and_named() -> None:
    cancelled = asyncio.Event()

    async def stops_after_two(watch: ProgressWatch) -> None:
        await chunks(watch, 2, 0.01)
        try:
            await asyncio.Event().wait()  # the peer never sends again
        finally:
            cancelled.set()

    async def scenario() -> float:
        watch = ProgressWatch("upload of update_round_3.safetensors", LIMIT)
        started = time.monotonic()
        with pytest.raises(TransferStalled, match=r"upload of update_\S+: nothing"):
            await watch.run(stops_after_two(watch))
        assert cancelled.is_set()
        return time.monotonic() - started

    took = asyncio.run(scenario())
    assert LIMIT <= took < LIMIT + 2.0


def test_the_transfer_s_own_error_comes_through() -> None:
    async def fails() -> None:
        raise ValueError("the server sent model bytes before the manifest")

    with pytest.raises(ValueError, match="before the manifest"):
        asyncio.run(ProgressWatch("download", LIMIT).run(fails()))
