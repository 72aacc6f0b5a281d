"""The console never shows an old picture as live, against a real server and two sites.

A console that falls behind its feed refreshes instead of drawing the past as
current; a stopped server (SIGSTOP) shows as a silent server, not as silent
sites, and does not drop the sites for its own pause once continued; a site
the server dropped shows no training state it can no longer know. Each at
two terminal sizes.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from fladmin.link import AdminLink
from flcore.feed import FeedEvent
from fldev.cluster import ADMIN, Cluster, Daemon
from fldev.poll import wait_for
from fltui.app import BEHIND_S, ConsoleApp
from fltui.connection import CONNECTED, SILENT
from fltui.widgets.clients import ClientsTable
from tests.tui.conftest import two_sites

pytestmark = [
    pytest.mark.integration,
    pytest.mark.timeout(180),
    pytest.mark.xdist_group("tui-truth-cluster"),
]

SIZES = [(120, 36), (200, 50)]
TIMEOUT_S = 3
"""The cluster's heartbeat timeout: shorter than the console takes to call a server silent."""


@pytest.fixture(scope="module")
def quick(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """A real server that drops a site after 3 silent seconds, and two sites."""
    yield from two_sites(tmp_path_factory.mktemp("truth"), TIMEOUT_S)


def daemon(cluster: Cluster, name: str) -> Daemon:
    return next(d for d in cluster.daemons if d.name == name)


class GatedLink(AdminLink):
    """The real link, whose events the console handles only while the gate is open: a
    closed gate is a console that gets no CPU, its feed piling up in the network."""

    def __init__(self, startup: Path, user: str) -> None:
        super().__init__(startup, user)
        self.gate = asyncio.Event()
        self.gate.set()
        self.logins = 0

    async def login(self) -> None:
        self.logins += 1
        await super().login()

    async def events(self) -> AsyncIterator[FeedEvent]:
        async for event in super().events():
            await self.gate.wait()
            yield event


def title(app: ConsoleApp) -> str:
    return str(app.dashboard.query_one("#clients-pane").border_title)


def cell(app: ConsoleApp, instance: str, column: str) -> str:
    return str(app.dashboard.query_one(ClientsTable).get_cell(instance, column))


def banner(app: ConsoleApp) -> str:
    return str(app.dashboard.query_one("#banner").render())


def console_lines(app: ConsoleApp) -> list[str]:
    return [entry.message for entry in app.store.logs if entry.source == "console"]


async def both_online(pilot: Any, app: ConsoleApp) -> None:
    await wait_for(pilot, lambda: app.link_look is CONNECTED, 30, "the feed")
    await wait_for(
        pilot,
        lambda: all(cell(app, i, "health") == "● online" for i in ("flclient1", "flclient2")),
        30,
        "both sites online",
    )


@pytest.mark.parametrize("size", SIZES)
def test_a_console_behind_its_feed_refreshes_instead_of_showing_the_past(
    quick: Cluster, size: tuple[int, int]
) -> None:
    async def scenario() -> None:
        link = GatedLink(quick.kit(), ADMIN)
        app = ConsoleApp(link, flush_s=0.1)
        async with app.run_test(size=size) as pilot:
            await both_online(pilot, app)
            logins = link.logins
            link.gate.clear()
            held = time.time()
            # The sites heartbeat every second meanwhile: the feed piles up behind the gate.
            await wait_for(pilot, lambda: time.time() - held > BEHIND_S + 2, 30, "a backlog")
            # Nothing came through for seconds: the header does not say connected meanwhile.
            assert app.link_look is SILENT
            assert "nothing from the server since" in banner(app)
            assert cell(app, "flclient1", "health") == "? unknown"
            assert "unknown since" in title(app)
            link.gate.set()
            await wait_for(
                pilot,
                lambda: any("behind the server's events" in line for line in console_lines(app)),
                30,
                "the console to say it fell behind",
            )
            await wait_for(pilot, lambda: link.logins > logins, 30, "a fresh subscription")
            await both_online(pilot, app)
            # The lag was never taken for this computer's clock being ahead (one host).
            assert abs(app.clock.offset) < 2
            assert not any("this computer's clock" in line for line in console_lines(app))
            assert "2/2 online" in title(app)

    asyncio.run(scenario())


@pytest.mark.parametrize("size", SIZES)
def test_a_stopped_server_is_silent_not_its_sites_and_keeps_them(
    quick: Cluster, size: tuple[int, int]
) -> None:
    server = daemon(quick, "server")

    async def scenario() -> None:
        app = ConsoleApp(AdminLink(quick.kit(), ADMIN), flush_s=0.1)
        async with app.run_test(size=size) as pilot:
            await both_online(pilot, app)
            logged = len(server.log())
            server.signal(signal.SIGSTOP)
            stopped = time.monotonic()
            try:
                await wait_for(pilot, lambda: app.link_look is SILENT, 20, "a silent server")
                header = str(app.dashboard.query_one("#header-link").render())
                assert "server silent" in header, header
                assert "nothing from the server since" in banner(app)
                for instance in ("flclient1", "flclient2"):
                    assert cell(app, instance, "health") == "? unknown"
                assert "unknown since" in title(app)
                assert time.monotonic() - stopped > TIMEOUT_S  # past the heartbeat timeout
            finally:
                server.signal(signal.SIGCONT)
            # The server's sweep, woken late, either forgives its own pause or drops the sites.
            await asyncio.to_thread(server.wait_log, "stood still for|no heartbeat for", 30, logged)
            assert "no heartbeat for" not in server.log()[logged:]
            await wait_for(pilot, lambda: app.link_look is CONNECTED, 30, "the server to talk")
            await both_online(pilot, app)
            assert not app.store.gone

    asyncio.run(scenario())


@pytest.mark.parametrize("size", SIZES)
def test_a_lost_site_shows_no_training_state(quick: Cluster, size: tuple[int, int]) -> None:
    site = daemon(quick, "flclient2")

    async def scenario() -> None:
        app = ConsoleApp(AdminLink(quick.kit(), ADMIN), flush_s=0.1)
        async with app.run_test(size=size) as pilot:
            await both_online(pilot, app)
            site.signal(signal.SIGSTOP)
            try:
                await wait_for(
                    pilot, lambda: cell(app, "flclient2", "health") == "✖ lost", 20, "a lost site"
                )
                assert cell(app, "flclient2", "training") == "? unknown"
                assert cell(app, "flclient1", "health") == "● online"
                assert "1/2 online" in title(app)
            finally:
                site.signal(signal.SIGCONT)
            await both_online(pilot, app)

    asyncio.run(scenario())
