"""One kit cannot blind every admin: a cap on its instances, and replies and snapshots that
fit one message however much its instances write (real server, hostile clients over mTLS)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass

import grpc
import pytest

from fladmin.client import AdminClient, load_kit
from flclientd.connection import Connection, ControlStream
from flcore import status as st
from flcore.federation import Command, CommandResult, Hello, LogBatch, MachineInfo
from flcore.feed import MAX_LABEL, MAX_TEXT, MAX_TRACEBACK, LogEntry, Snapshot
from flcore.feedwire import event_from_proto
from flcore.startup import load_client
from flcore.tls import MAX_MESSAGE_BYTES, TlsFiles
from fldev.cluster import ADMIN, Cluster

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

KIT = "flclient1"
BIG = 64 * 1024
TRACE = ("Traceback (most recent call last):\n" + '  File "x.py", line 1\n' * 4000)[:BIG]


@dataclass
class Hostile:
    """One instance of a kit that writes as much as it can wherever it can."""

    conn: Connection
    call: ControlStream
    instance: str
    answering: asyncio.Task[None]

    async def close(self) -> None:
        self.answering.cancel()
        with contextlib.suppress(asyncio.CancelledError, grpc.aio.AioRpcError):
            await self.answering
        self.call.cancel()
        await self.conn.close()


def _connection(cluster: Cluster) -> Connection:
    workspace = cluster.root / KIT
    startup = load_client(workspace)
    return Connection(startup, TlsFiles.named_by(startup, workspace / "startup"))


async def _answer_everything(call: ControlStream) -> None:
    """Answer every command with the most a result may carry and more."""
    async for message in call:
        if isinstance(message, Command):
            data = {"status": st.FAILED, "error": "E" * BIG, "traceback": TRACE, "pad": "p" * BIG}
            await call.write(CommandResult(message.command_id, True, "T" * BIG, data))


async def _hostile(cluster: Cluster, index: int) -> Hostile:
    conn = _connection(cluster)
    login = await conn.login("", MachineInfo(device="D" * BIG, hostname="H" * BIG, pid=index))
    call = conn.open_control()
    status = st.ClientStatus(status=st.FAILED, error="E" * BIG, traceback=TRACE, app="A" * BIG)
    await call.write(Hello(login.token, status))
    lines = tuple(
        LogEntry(time.time(), "ERROR", "L" * 1024, f"{index} " + "m" * 8192, KIT)
        for _ in range(300)
    )
    await call.write(LogBatch(lines, 0))
    answering = asyncio.ensure_future(_answer_everything(call))
    return Hostile(conn, call, login.instance, answering)


async def _admin(cluster: Cluster) -> AdminClient:
    startup = cluster.kit()
    client = AdminClient(startup, load_kit(startup), ADMIN)
    client.timeout = 30
    await client.login()
    return client


async def _snapshot(client: AdminClient) -> tuple[Snapshot, int]:
    """The first event of the console's feed, and its size on the wire."""
    events = client.events()
    message = await anext(events)
    event = event_from_proto(message)
    assert event is not None and isinstance(event.body, Snapshot)
    return event.body, message.ByteSize()


def test_a_kit_runs_four_instances_by_default_and_the_fifth_is_told_why(
    cluster: Cluster,
) -> None:
    server = cluster.server()

    async def log_in_five() -> grpc.aio.AioRpcError:
        conns = [_connection(cluster) for _ in range(5)]
        try:
            for conn in conns[:4]:
                await conn.login("", MachineInfo())
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await conns[4].login("", MachineInfo())
            return refused.value
        finally:
            for conn in conns:
                await conn.close()

    refused = asyncio.run(log_in_five())
    # for now (a crashed instance times out): the client tries again, and is not refused
    # for good (exit 2, which systemd does not restart)
    assert refused.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "kit flclient1 already runs 4 instances" in (refused.details() or "")
    assert "max_instances_per_kit" in (refused.details() or "")
    assert len(cluster.status()["clients"]) == 4 and server.alive()


def test_many_instances_writing_the_most_they_can_do_not_blind_the_admins(
    make_cluster: Callable[..., Cluster],
) -> None:
    cluster = make_cluster(clients=(KIT,), server_local={"max_instances_per_kit": 14})
    server = cluster.server()

    async def scenario() -> None:
        sites = [await _hostile(cluster, i) for i in range(14)]
        admin = await _admin(cluster)
        try:
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await _connection(cluster).login("", MachineInfo())
            assert "already runs 14 instances" in (refused.value.details() or "")

            outcome = await admin.execute("check_status server clients")
            assert outcome.ok and len(outcome.data["clients"]) == 14
            size = len(outcome.text) + len(json.dumps(outcome.data))
            assert size < MAX_MESSAGE_BYTES
            for row in outcome.data["clients"]:
                assert len(row["traceback"]) <= MAX_TRACEBACK and len(row["error"]) <= MAX_TEXT
                assert len(row["device"]) <= MAX_LABEL and len(row["app"]) <= MAX_LABEL

            outcome = await admin.execute("check_status client")
            assert outcome.ok, outcome.text
            rows = outcome.data["clients"]
            assert len(rows) == 14 and {r["status"] for r in rows.values()} == {st.FAILED}
            assert all(len(r["traceback"]) <= MAX_TRACEBACK for r in rows.values())
            assert all("pad" not in r for r in rows.values())  # only what a client may report

            snapshot, wire_bytes = await _snapshot(admin)
            assert len(snapshot.clients) == 14 and snapshot.logs
            assert wire_bytes < MAX_MESSAGE_BYTES
            assert all(len(line.message) <= MAX_TEXT for line in snapshot.logs)
        finally:
            await admin.close()
            for site in sites:
                await site.close()

    asyncio.run(scenario())
    assert server.alive()
    assert not re.search(r" ERROR flserverd", server.log())
