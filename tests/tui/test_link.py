"""The console's own link, told apart from the sites': lost, counting down, shut down on purpose.

Issue 10, defects 4, 5 and 11 (own commands logged once), on a replayed
feed; test_live.py does the same against a real server.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest

from fladmin.client import AdminError, CommandReply
from flcore.feed import ClientRow, CommandSeen, FeedEvent, Heartbeat, ServerStopping, Snapshot
from fldev.poll import wait_for
from fldev.replay import ReplayLink, ok_reply
from fltui.app import ConsoleApp
from fltui.connection import CONNECTED, DISCONNECTED, SHUT_DOWN
from fltui.screens.dialogs import ConfirmScreen
from fltui.serverclock import SAMPLES, ServerClock
from fltui.widgets.clients import ClientsTable
from fltui.widgets.heartbeats import HeartbeatView
from tests.tui.helpers import Clock, burst, console_errors, shown
from tests.tui.recorded import NOW, recorded_events
from tests.tui.test_console import ready

GONE = "cannot connect to the server at fl.example.org:8003: gone"


class DroppingLink(ReplayLink):
    """The recorded run; :meth:`drop` breaks the feed and logins fail until :meth:`heal`."""

    def __init__(self, **kwargs: object) -> None:
        super().__init__(recorded_events(), **kwargs)  # type: ignore[arg-type]
        self.logins = 0
        self.subscriptions = 0
        self._drop = asyncio.Event()
        self._down = False

    def drop(self) -> None:
        self._down = True
        self._drop.set()

    def heal(self) -> None:
        self._down = False
        self._drop.clear()

    async def login(self) -> None:
        self.logins += 1
        if self._down:
            raise AdminError(GONE)

    async def events(self) -> AsyncIterator[FeedEvent]:
        self.subscriptions += 1
        feed = super().events()
        waiter = asyncio.ensure_future(self._drop.wait())
        try:
            while True:
                step = asyncio.ensure_future(anext(feed))
                done, _ = await asyncio.wait({step, waiter}, return_when=asyncio.FIRST_COMPLETED)
                if waiter in done:
                    step.cancel()
                    raise AdminError(GONE)
                yield step.result()
        finally:
            waiter.cancel()


def dropping_console(tmp_path: Path, clock: Clock) -> tuple[DroppingLink, ConsoleApp]:
    """A console on a link the test drops, first trying again after 30 s."""
    link = DroppingLink(transfer_dir=tmp_path / "transfer")
    return link, ConsoleApp(link, clock=clock, flush_s=0.05, retry_first_s=30)


def test_a_lost_console_link_freezes_the_sites_as_unknown_and_counts_down(tmp_path: Path) -> None:
    clock = Clock(NOW)

    async def scenario() -> None:
        link, app = dropping_console(tmp_path, clock)
        async with app.run_test(size=(120, 36)) as pilot:
            await ready(pilot)
            table = app.dashboard.query_one(ClientsTable)
            pane = app.dashboard.query_one("#clients-pane")
            assert str(table.get_cell("flclient1", "health")) == "● online"
            link.drop()
            await wait_for(pilot, lambda: app.link_look is DISCONNECTED)
            # The sites are not lost: the console cannot tell. Their rows say so, not "stale".
            await wait_for(pilot, lambda: str(table.get_cell("flclient1", "health")) == "? unknown")
            assert {str(table.get_cell(i, "health")) for i in table.shown} == {"? unknown"}
            assert str(pane.border_title) == "Clients (5 · unknown since 15:06:40)"
            header = str(app.dashboard.query_one("#header-link").render())
            assert header == "✖ disconnected"
            banner = app.dashboard.query_one("#banner")
            assert "connection lost since 15:06:40" in str(banner.render())
            assert "reconnecting in 30s (attempt 1)" in str(banner.render())
            beat = str(table.get_cell("flclient1", "beat"))
            for left in (29, 20, 1):
                clock.now = NOW + 30 - left
                app.dashboard.tick()
                assert f"reconnecting in {left}s" in str(banner.render())
            # Frozen: ages stop at the moment the link broke, strips stop too.
            assert str(table.get_cell("flclient1", "beat")) == beat
            assert app.dashboard.query_one(HeartbeatView)._clock() == NOW
            link.heal()
            await pilot.press("r")  # no need to wait for the countdown
            await wait_for(pilot, lambda: app.link_look is CONNECTED)
            await wait_for(pilot, lambda: str(table.get_cell("flclient1", "health")) != "? unknown")
            assert str(pane.border_title).startswith("Clients (")
            assert "unknown" not in str(pane.border_title)
            assert not banner.display

    asyncio.run(scenario())


def test_the_round_countdown_stops_where_the_link_was_lost(tmp_path: Path) -> None:
    """The wait-after-min countdown ran on while the link was down, then vanished as if
    the round were aggregated: the console cannot know that, so it stops where it lost sight."""
    clock = Clock(NOW)

    async def scenario() -> None:
        link, app = dropping_console(tmp_path, clock)
        async with app.run_test(size=(120, 36)) as pilot:
            await ready(pilot)
            # The heartbeats stamped NOW were heard: the snapshot alone, stamped 130 s before
            # this console's clock, puts the server's clock 130 s behind (and the link may drop
            # before they come).
            countdown = app.dashboard.query_one("#round-countdown")
            await wait_for(
                pilot,
                lambda: (
                    app.clock.offset == 0.0
                    and str(countdown.render()) == "Aggregating in 8s (wait after min)"
                ),
            )
            link.drop()
            await wait_for(pilot, lambda: app.link_look is DISCONNECTED)
            for later in (5, 20):  # before and after the deadline
                clock.now = NOW + later
                app.dashboard.tick()
                assert str(countdown.render()) == "Aggregating in 8s (wait after min)"

    asyncio.run(scenario())


def test_a_shutdown_by_another_admin_is_said_and_waits_for_r(tmp_path: Path) -> None:
    async def scenario() -> None:
        link = DroppingLink(transfer_dir=tmp_path / "transfer")
        app = ConsoleApp(link, clock=lambda: NOW, flush_s=0.05)
        async with app.run_test(size=(120, 36)) as pilot:
            await ready(pilot)
            # The server's own announcement, not the audit of the command, says who and when.
            link.push(ServerStopping("lead@other.org", admin=True), time=NOW - 1)
            await wait_for(pilot, lambda: app.store.shutdown is not None)
            link.drop()
            await wait_for(pilot, lambda: app.link_look is SHUT_DOWN)
            banner = app.dashboard.query_one("#banner")
            assert str(banner.render()) == (
                "■ server shut down by lead@other.org at 15:06:39 · r reconnect · q quit"
            )
            assert banner.has_class("-calm")
            notes = list(app._notifications)
            assert not any(n.severity == "error" for n in notes), [n.message for n in notes]
            assert any("server shut down by lead@other.org" in n.message for n in notes)
            logins = link.logins
            assert app.state.connection.retry_at == 0.0  # no attempt is planned: it waits for r
            # The footer recomposes after the bindings change, a refresh later.
            await wait_for(
                pilot,
                lambda: "r" in {k.key for k in app.screen.query("FooterKey")},  # type: ignore[attr-defined]
                what="the footer offers r",
            )
            link.heal()
            await pilot.press("r")
            await wait_for(pilot, lambda: app.link_look is CONNECTED)
            assert link.logins == logins + 1 and not banner.display

    asyncio.run(scenario())


def test_our_own_shutdown_is_no_outage_either(tmp_path: Path) -> None:
    def answer(line: str, confirmed: bool) -> CommandReply:
        if line == "shutdown server" and not confirmed:
            return CommandReply(line, False, "", {}, 0, "", "Are you sure (Y/N):")
        return ok_reply(line, confirmed)

    async def scenario() -> None:
        link = DroppingLink(reply=answer, transfer_dir=tmp_path / "transfer")
        app = ConsoleApp(link, clock=lambda: NOW, flush_s=0.05)
        async with app.run_test(size=(120, 36)) as pilot:
            await ready(pilot)
            burst(app, ":shutdown server", "enter")
            await shown(pilot, app, ConfirmScreen)  # keys typed before it shows answer nothing
            await pilot.press("tab", "enter")
            await wait_for(pilot, lambda: ("shutdown server", True) in link.sent)
            link.push(ServerStopping("admin@lead.org", admin=True), time=NOW)  # as the server does
            await wait_for(pilot, lambda: app.store.shutdown is not None)
            link.drop()
            await wait_for(pilot, lambda: app.link_look is SHUT_DOWN)
            banner = str(app.dashboard.query_one("#banner").render())
            assert banner.startswith("■ server shut down by admin@lead.org at 15:06:40")

    asyncio.run(scenario())


def test_a_server_stopped_by_a_signal_is_tried_again(tmp_path: Path) -> None:
    """systemctl restart is no admin's shutdown: the console says so and keeps trying."""

    async def scenario() -> None:
        link = DroppingLink(transfer_dir=tmp_path / "transfer")
        app = ConsoleApp(link, clock=lambda: NOW, flush_s=0.05, retry_first_s=30)
        async with app.run_test(size=(120, 36)) as pilot:
            await ready(pilot)
            link.push(ServerStopping("a signal (systemctl stop, kill or Ctrl+C)"), time=NOW)
            await wait_for(pilot, lambda: app.store.stopped_by != "")
            link.drop()
            await wait_for(pilot, lambda: app.link_look is DISCONNECTED)
            assert app.store.shutdown is None
            banner = str(app.dashboard.query_one("#banner").render())
            assert "the server stopped (a signal (systemctl stop, kill or Ctrl+C))" in banner
            assert app.state.connection.retry_at > 0  # a retry is planned: no waiting for r
            link.heal()
            await pilot.press("r")
            await wait_for(pilot, lambda: app.link_look is CONNECTED, what="a retry")

    asyncio.run(scenario())


def test_own_commands_are_logged_once_and_others_commands_too(tmp_path: Path) -> None:
    """The feed's audit of our own command repeats what the console logged with the reply."""

    class AuditingLink(ReplayLink):
        async def execute(self, line: str, confirmed: bool = False) -> CommandReply:
            self.push(CommandSeen(self.user, line, True))  # the server audits before it replies
            return await super().execute(line, confirmed)

    async def scenario() -> None:
        link = AuditingLink(recorded_events(), transfer_dir=tmp_path / "transfer")
        app = ConsoleApp(link, clock=lambda: NOW, flush_s=0.05)
        async with app.run_test(size=(120, 36)) as pilot:
            await ready(pilot)
            burst(app, ":check_status server", "enter")
            await wait_for(
                pilot, lambda: any("check_status server: done" in e.message for e in app.store.logs)
            )
            link.push(CommandSeen("other@lead.org", "check_status client", True))
            await wait_for(pilot, lambda: any(e.source == "admin" for e in app.store.logs))
            await pilot.pause()
            mentions = [e for e in app.store.logs if "check_status server" in e.message]
            assert [e.message for e in mentions] == [
                "> check_status server",
                "check_status server: done",
            ]
            audits = [e.message for e in app.store.logs if e.source == "admin"]
            assert audits == ["other@lead.org: check_status client (ok)"]

    asyncio.run(scenario())


class FaultyFeedLink(ReplayLink):
    """The recorded run, whose second subscription fails in the console's own code (not the
    link's: no AdminError), as a bug in decoding the feed would; the third works."""

    def __init__(self, **kwargs: object) -> None:
        super().__init__(recorded_events(), **kwargs)  # type: ignore[arg-type]
        self.subscriptions = 0
        self.fail = asyncio.Event()

    async def events(self) -> AsyncIterator[FeedEvent]:
        self.subscriptions += 1
        feed = super().events()
        if self.subscriptions == 1:
            yield await anext(feed)
            await self.fail.wait()
            raise ValueError("no such field 'x' in the event")
        async for event in feed:
            yield event


def test_a_fault_in_the_consoles_own_feed_code_is_said_and_the_feed_taken_again(
    tmp_path: Path,
) -> None:
    """The header never keeps saying "connected" over a feed that stopped: a fault in the
    console's code is a lost link with its reason, and a fresh snapshot follows."""

    async def scenario() -> None:
        link = FaultyFeedLink(transfer_dir=tmp_path / "transfer")
        app = ConsoleApp(link, clock=lambda: NOW, flush_s=0.05, retry_first_s=0.2)
        async with app.run_test(size=(120, 36)) as pilot:
            await ready(pilot)
            link.fail.set()
            await wait_for(pilot, lambda: link.subscriptions == 2, what="a second subscription")
            await wait_for(pilot, lambda: app.link_look is CONNECTED, what="the fresh snapshot")
            said = console_errors(app)
            assert len(said) == 1, said
            assert said[0].startswith(
                "the console could not follow the feed: no such field 'x' in the event (at "
                "test_link.py line "
            )
            assert "ValueError" not in said[0]
            lost = [e.message for e in app.store.logs if e.message.startswith("connection lost")]
            assert lost == [f"connection lost: {said[0]}"]

    asyncio.run(scenario())


def test_an_admin_kit_that_ends_soon_is_said_once_at_the_first_connection(
    tmp_path: Path,
) -> None:
    ending = (
        "this kit's certificate (admin@lead.org) expires on 2025-07-01 12:00 UTC, in 16 days: "
        "ask lead IT for a new kit (flprovision --reissue admin@lead.org) and extract it in "
        "place of this one before then"
    )

    async def scenario() -> None:
        link = DroppingLink(transfer_dir=tmp_path / "transfer")
        link.kit_warnings = [ending]
        app = ConsoleApp(link, clock=lambda: NOW, flush_s=0.05, retry_first_s=0.2)
        async with app.run_test(size=(120, 36)) as pilot:
            await ready(pilot)
            link.drop()
            await wait_for(pilot, lambda: app.link_look is DISCONNECTED)
            link.heal()
            await wait_for(pilot, lambda: app.link_look is CONNECTED, what="the reconnection")
            said = [e.message for e in app.store.logs if e.level == "WARNING"]
            assert said.count(ending) == 1
            notes = [n for n in app._notifications if n.title == "admin kit"]
            assert [n.message for n in notes] == [ending]

    asyncio.run(scenario())


def shifted(events: list[FeedEvent], seconds: float) -> list[FeedEvent]:
    """The recorded feed from a server whose clock is ``seconds`` ahead of the console's."""

    def moved(body: object) -> object:
        if isinstance(body, Heartbeat):
            return replace(body, time=body.time + seconds)
        if isinstance(body, ClientRow):
            return replace(body, last_heartbeat=body.last_heartbeat + seconds)
        if isinstance(body, Snapshot):
            return replace(body, clients=tuple(moved(row) for row in body.clients))  # type: ignore[misc]
        return body

    return [replace(e, time=e.time + seconds, body=moved(e.body)) for e in events]  # type: ignore[arg-type]


@pytest.mark.parametrize("skew", [-300.0, 300.0])
def test_ages_are_the_servers_whatever_this_computers_clock_says(
    tmp_path: Path, skew: float
) -> None:
    """Ages were this computer's time less the server's: a laptop five minutes ahead showed
    every site stale, five minutes behind showed them all heard from in the future."""

    async def scenario() -> None:
        link = ReplayLink(shifted(recorded_events(), skew), transfer_dir=tmp_path / "transfer")
        app = ConsoleApp(link, clock=lambda: NOW, flush_s=0.05)
        async with app.run_test(size=(120, 36)) as pilot:
            await ready(pilot)
            table = app.dashboard.query_one(ClientsTable)
            # The recorded snapshot is stamped two minutes before its heartbeats (a live one is
            # stamped as it is sent): the ages are right once the heartbeats have come.
            await wait_for(pilot, lambda: str(table.get_cell("flclient1", "beat")) == "2s")
            assert str(table.get_cell("flclient1", "health")) == "● online"
            way = "behind" if skew > 0 else "ahead of"
            said = f"this computer's clock is 5m {way} the server's: the console shows the server's"
            said += " time"
            assert [e.message for e in app.store.logs if e.source == "console"] == [said]

    asyncio.run(scenario())


def test_the_server_clock_takes_the_fastest_delivery_and_follows_a_step() -> None:
    local = [1000.0]
    clock = ServerClock(lambda: local[0])
    for delay in (0.4, 0.05, 0.2):  # the server is 60 s ahead; deliveries take their time
        clock.heard(local[0] + 60 - delay)
    assert clock.offset == pytest.approx(59.95) and clock() == pytest.approx(1059.95)
    for broken in (float("nan"), float("inf"), 1e12):
        clock.heard(broken)
    assert clock.offset == pytest.approx(59.95)
    for _ in range(SAMPLES):  # the server's clock was stepped back to this one's
        clock.heard(local[0] - 0.01)
    assert clock.offset == pytest.approx(-0.01) and clock.settled
