"""The admin servicer's feed writer: what queued up while it wrote goes out as one message.

The servicer sits on a fake server here (a real event bus, a stand-in for the
logins and the snapshot); the feed through real daemons is tested in
tests/integration and tests/tui.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import grpc
import pytest

from flcore.feed import Heartbeat, LogEntry, RunInfo, ServerInfo, Snapshot
from flcore.feedwire import events_from_proto
from flcore.identity import KIND_ADMIN, Identity
from flcore.proto.gen import flstack_admin_pb2 as admin_pb2
from flserverd import admin_service
from flserverd.admin_service import AdminService
from flserverd.admins import AdminLogin
from flserverd.events import EventBus
from flserverd.rpc import Context
from flserverd.server import FLServer


class _Logins:
    def authenticate(self, token: str, identity: object) -> AdminLogin:
        return AdminLogin(token, "admin@x.org", "super", 0.0)

    def may_follow(self, user: str) -> None:
        """Any number of feeds (flserverd.admins bounds them; tested in test_admins)."""

    @contextmanager
    def watching(self, user: str) -> Iterator[None]:
        yield


class _Server:
    def __init__(self) -> None:
        self.admins = _Logins()
        self.bus = EventBus()

    def snapshot(self) -> Snapshot:
        return Snapshot(ServerInfo("project", "server"), RunInfo())


class _Context:
    def auth_context(self) -> dict[str, Any]:
        return {}


def test_events_queued_behind_a_write_go_out_as_one_batch_in_order() -> None:
    async def scenario() -> None:
        server = _Server()
        service = AdminService(cast(FLServer, server))
        feed = aiter(service.Events(admin_pb2.EventsRequest(token="t"), cast(Context, _Context())))
        assert (await anext(feed)).WhichOneof("body") == "snapshot"
        for i in range(5):  # published while the snapshot was on its way
            server.bus.publish(Heartbeat(f"flclient{i}:1", float(i)))
        server.bus.publish(LogEntry(9.0, "INFO", "x", "line", "server"))
        batch = await anext(feed)
        assert batch.WhichOneof("body") == "batch"
        events = events_from_proto(batch)
        assert [e.seq for e in events] == [1, 2, 3, 4, 5, 6]
        assert isinstance(events[-1].body, LogEntry)
        server.bus.publish(Heartbeat("alone:1", 10.0))
        assert (await anext(feed)).WhichOneof("body") == "heartbeat"
        server.bus.close()
        assert await anext(feed, None) is None

    asyncio.run(asyncio.wait_for(scenario(), 10))


def test_a_console_gone_while_its_snapshot_went_out_leaves_no_subscription() -> None:
    """Only the batches' loop unsubscribed: a feed cancelled during its first message (a
    member's script opening and dropping feeds) stayed on the bus, its queue filling, while
    the count of feeds that bounds them went back down."""

    async def scenario() -> None:
        server = _Server()
        service = AdminService(cast(FLServer, server))
        for _ in range(3):
            feed = cast(
                AsyncGenerator[admin_pb2.Event],
                service.Events(admin_pb2.EventsRequest(token="t"), cast(Context, _Context())),
            )
            assert (await anext(feed)).WhichOneof("body") == "snapshot"
            await feed.aclose()  # gRPC closes the generator of a call that was cancelled
        assert server.bus._subscribers == set()

    asyncio.run(asyncio.wait_for(scenario(), 10))


class _Refused(Exception):
    """What the context's abort raises (gRPC's ends the call the same way)."""


class _EndingContext(_Context):
    async def abort(self, code: grpc.StatusCode, details: str) -> None:
        raise _Refused(code, details)


def test_a_feed_ends_when_its_admins_certificate_does(monkeypatch: pytest.MonkeyPatch) -> None:
    """TLS checked the certificate's end at the handshake only: a console left open kept
    its feed past it, while every other call of that admin was refused."""
    end = datetime.now(UTC) + timedelta(seconds=0.3)
    admin = Identity("admin@x.org", "x.org", KIND_ADMIN, valid_until=end)
    monkeypatch.setattr(admin_service, "peer_identity", lambda _: admin)

    async def scenario() -> tuple[grpc.StatusCode, str]:
        service = AdminService(cast(FLServer, _Server()))
        context = cast(Context, _EndingContext())
        feed = aiter(service.Events(admin_pb2.EventsRequest(token="t"), context))
        assert (await anext(feed)).WhichOneof("body") == "snapshot"
        try:
            while True:
                assert (await anext(feed)).WhichOneof("body") == "tick"
        except _Refused as refused:
            return refused.args[0], refused.args[1]

    code, details = asyncio.run(asyncio.wait_for(scenario(), 10))
    assert code == grpc.StatusCode.PERMISSION_DENIED
    assert details.startswith(f"the certificate of admin@x.org expired on {end:%Y-%m-%d %H:%M}")
