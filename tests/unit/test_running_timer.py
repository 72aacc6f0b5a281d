"""The round's timers count the time the server ran, not the time it stood still."""

from __future__ import annotations

import asyncio
import time

from flserverd.training import MAX_STEP_S, loop_timer

WAIT_S = 1.0
STALL_S = 2.0


def test_a_wait_does_not_run_out_while_the_server_stands_still() -> None:
    """A server stopped (SIGSTOP, a frozen VM) longer than ``wait_after_min_clients`` closed
    the round as it went on, before reading the update that waited in its socket: the
    loop's clock had counted the stop as waiting."""

    async def scenario() -> tuple[float, float]:
        loop = asyncio.get_running_loop()
        fired = asyncio.Event()
        loop_timer(WAIT_S, fired.set)
        await asyncio.sleep(0.05)
        time.sleep(STALL_S)  # the loop stands still, as a stopped server's does
        went_on = loop.time()
        await fired.wait()
        return went_on, loop.time()

    went_on, fired_at = asyncio.run(asyncio.wait_for(scenario(), 10))
    # The stall counted one step at most: most of the wait was still to come.
    assert fired_at - went_on >= WAIT_S - 0.05 - MAX_STEP_S - 0.05


def test_a_wait_ends_on_time_when_nothing_stands_still_and_a_cancelled_one_never() -> None:
    async def scenario() -> tuple[float, bool]:
        loop = asyncio.get_running_loop()
        fired = asyncio.Event()
        cancelled = asyncio.Event()
        start = loop.time()
        loop_timer(0.6, fired.set)
        loop_timer(0.3, cancelled.set).cancel()
        await fired.wait()
        return loop.time() - start, cancelled.is_set()

    took, cancelled = asyncio.run(asyncio.wait_for(scenario(), 10))
    assert took >= 0.6 and not cancelled
