"""Who watches the server's work from outside it: the metrics endpoint and experiment tracking.

Neither is called by the domain code. They learn what happens at the two
places every change passes anyway: the live feed (the event bus that the
console reads: client rows, run state with its rounds, heartbeats, audited
commands) and the model exchange (each upload's and report's verdict, the
bytes that moved). A watcher runs on the event loop and only notes what it
saw; anything slow (answering a scrape, talking to a tracking server)
happens in a thread or a process of its own, so no watcher can stall a
round.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from flcore.certlife import CertLife
from flcore.exporter import Endpoint, EndpointSettings, serve_metrics
from flcore.feed import Body
from flserverd.events import CutOff
from flserverd.exchange import ExchangeWatcher, ModelExchange
from flserverd.server import FLServer
from flserverd.tracking import Tracker

log = logging.getLogger(__name__)


class Watcher(ExchangeWatcher, Protocol):
    """Something that follows the live feed and the model exchange."""

    def seen(self, body: Body) -> None:
        """An event of the feed (the first is always a snapshot)."""


class Watching:
    """The server's watchers, fed from the live feed and the model exchange."""

    def __init__(self, server: FLServer, exchange: ModelExchange) -> None:
        self._server = server
        self._exchange = exchange
        self._feed: list[Watcher] = []
        self._task: asyncio.Task[None] | None = None
        self.endpoint: Endpoint | None = None
        self.tracker: Tracker | None = None

    def add(self, watcher: Watcher) -> None:
        """Let a watcher see the feed and the exchange."""
        self._feed.append(watcher)
        self._exchange.watchers.append(watcher)

    def start(self) -> None:
        """Begin following the feed."""
        self._task = asyncio.get_running_loop().create_task(self._follow())

    async def _follow(self) -> None:
        """Follow the feed until the server closes it; a watcher that fell behind starts
        again from a fresh snapshot, as a console does."""
        while True:
            subscription = self._server.bus.subscribe()
            self._fan(self._server.snapshot())
            try:
                async for event in subscription:
                    self._fan(event.body)
            except CutOff as exc:
                log.debug("watchers fell behind the feed (%s): starting from a snapshot", exc)
                continue
            return

    def _fan(self, body: Body) -> None:
        for watcher in self._feed:
            try:
                watcher.seen(body)
            except Exception:  # a watcher's defect must not take the feed or the run down
                log.exception("%s failed on a feed event", type(watcher).__name__)

    async def close(self) -> None:
        """Stop following and serving; a tracker gets a few seconds to write what it has."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self.endpoint is not None:
            await asyncio.to_thread(self.endpoint.close)
        if self.tracker is not None:
            await self.tracker.close()


def start_watching(
    server: FLServer,
    exchange: ModelExchange,
    metrics: EndpointSettings | None,
    workspace: Path,
    lives: Sequence[CertLife],
) -> Watching:
    """The tracker (idle until a run's app asks for MLflow) and, when the site turned it on,
    the metrics endpoint (with when the kit's certificates, ``lives``, end); ConfigError when
    the endpoint cannot be served."""
    watching = Watching(server, exchange)
    watching.tracker = Tracker(server, workspace)
    watching.add(watching.tracker)
    if metrics is not None:
        from flserverd.telemetry import ServerTelemetry  # imports prometheus_client

        telemetry = ServerTelemetry(server)
        watching.add(telemetry)
        watching.endpoint = serve_metrics(metrics, telemetry.collectors(), lives)
    watching.start()
    return watching
