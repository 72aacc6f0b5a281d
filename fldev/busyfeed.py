"""A feed as a large federation sends it: 1,000 clients, their heartbeats and a busy log.

The scale test checks that the console keeps up with it and
``bench/console_keys.py`` times keys against it; both use this one feed.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

from flcore.feed import ClientRow, FeedEvent, Heartbeat, LogEntry, RunInfo, ServerInfo, Snapshot
from fldev.replay import ReplayLink

CLIENTS = 1_000
LOG_LINES_PER_S = 200
TICK_S = 0.05
"""Events go out in batches this often: every client beats once a second."""


def instance(i: int) -> str:
    """The instance name of client ``i``."""
    return f"site{i % CLIENTS:04d}"


class BusyLink(ReplayLink):
    """A snapshot of 1,000 clients, then their heartbeats and a stream of log lines."""

    def __init__(self) -> None:
        super().__init__([])
        self.events_sent = 0

    async def events(self) -> AsyncIterator[FeedEvent]:
        """The snapshot, then a batch of heartbeats and log lines every ``TICK_S``."""
        now = time.time()
        rows = tuple(
            ClientRow(
                instance(i),
                instance(i),
                f"{i:08x}-0000",
                status="training started",
                last_heartbeat=now,
                run_number=1,
                round=3,
                samples=1000 + i,
                device="cpu",
            )
            for i in range(CLIENTS)
        )
        server = ServerInfo("scale", "server", heartbeat_interval_s=1.0)
        run = RunInfo(1, "training started", "digits_fedavg", 0, 3, 10, 2, 1000, 10)
        yield FeedEvent(1, now, Snapshot(server, run, rows))
        seq = 1
        batch = int(CLIENTS * TICK_S)
        while True:
            await asyncio.sleep(TICK_S)
            now = time.time()
            start = int(now / TICK_S) * batch % CLIENTS
            for i in range(start, start + batch):
                seq += 1
                yield FeedEvent(seq, now, Heartbeat(instance(i), now))
            for n in range(int(LOG_LINES_PER_S * TICK_S)):
                seq += 1
                entry = LogEntry(
                    now, "INFO", "flclientd", f"round 3 step {n}: loss 0.1", instance(n)
                )
                yield FeedEvent(seq, now, entry)
            self.events_sent = seq
