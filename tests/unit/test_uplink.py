"""flclientd.uplink.Uplink's control stream against a fake connection: what goes out, in
which order, and flush() as the event a shutdown waits for (it used to sleep 0.2 s)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import cast

import grpc
import pytest

from flclientd.connection import Connection
from flclientd.sitestate import SiteStore
from flclientd.uplink import Uplink
from flcore.federation import (
    ClientHeartbeat,
    CommandResult,
    Downward,
    Hello,
    MachineInfo,
    StatusChanged,
    Unreadable,
    Upward,
)
from flcore.progress import TransferStalled
from flcore.startup import ClientStartup
from flcore.status import ClientStatus
from flcore.tls import foreign_server


class FakeStream:
    """A control stream whose writes take as long as the test says."""

    def __init__(self) -> None:
        self.written: list[Upward] = []
        self.open = asyncio.Event()
        self.open.set()

    async def write(self, message: Upward) -> None:
        await self.open.wait()
        self.written.append(message)

    async def __aiter__(self) -> AsyncIterator[Downward | Unreadable]:
        await asyncio.Event().wait()  # the server says nothing
        yield Unreadable("never")

    def cancel(self) -> None:
        pass


class FakeConnection:
    def __init__(self) -> None:
        self.streams: list[FakeStream] = []

    def open_control(self) -> FakeStream:
        self.streams.append(FakeStream())
        return self.streams[-1]


def make_uplink(tmp_path: Path) -> tuple[Uplink, FakeConnection]:
    conn = FakeConnection()
    startup = ClientStartup("p", "site-a", "localhost", 1, heartbeat_interval=3600)
    uplink = Uplink(
        cast(Connection, conn),
        startup,
        SiteStore(tmp_path / "state.json"),
        MachineInfo(),
        lambda: ClientStatus(status="now"),
        lambda message: None,
        None,
    )
    return uplink, conn


def test_flush_waits_until_the_answer_is_written(tmp_path: Path) -> None:
    async def scenario() -> None:
        uplink, conn = make_uplink(tmp_path)
        stream_task = asyncio.ensure_future(uplink._control())
        await uplink.connected.wait()
        stream = conn.streams[0]
        stream.open.clear()  # the network is slow now
        answer = CommandResult("c1", True, "Shutdown the client...")
        uplink.send(answer)
        assert not await uplink.flush(0.05)  # not written yet
        assert answer not in stream.written
        stream.open.set()
        assert await uplink.flush(5)
        assert stream.written[-1] == answer
        uplink.stop()
        await stream_task

    asyncio.run(scenario())


def test_a_new_stream_starts_with_hello_and_keeps_results_not_stale_reports(
    tmp_path: Path,
) -> None:
    async def scenario() -> None:
        uplink, conn = make_uplink(tmp_path)
        old = ClientStatus(status="old")
        uplink.send(StatusChanged(old))
        uplink.send(CommandResult("c1", True, "deployed"))
        uplink.send(ClientHeartbeat(old))
        flushed = asyncio.ensure_future(uplink.flush(5))  # queued while disconnected
        await asyncio.sleep(0)
        assert not flushed.done()
        stream_task = asyncio.ensure_future(uplink._control())
        assert await flushed
        assert conn.streams[0].written == [
            Hello("", ClientStatus(status="now")),
            CommandResult("c1", True, "deployed"),
        ]
        uplink.stop()
        await stream_task

    asyncio.run(scenario())


def test_retries_and_stalled_transfers_are_counted_for_the_metrics(tmp_path: Path) -> None:
    async def scenario() -> None:
        uplink, _ = make_uplink(tmp_path)
        uplink.connected.set()
        failures: list[Exception] = [
            TransferStalled("download of m: nothing moved for 60s; given up"),
            FakeRpcError(grpc.StatusCode.UNAVAILABLE),
        ]

        async def call() -> str:
            if failures:
                raise failures.pop(0)
            return "done"

        assert await uplink.retrying("download of m", call) == "done"
        assert (uplink.retries, uplink.stalls) == (2, 1)

    asyncio.run(scenario())


class FakeRpcError(grpc.aio.AioRpcError):
    """An RPC error of a given status code, as a broken connection gives one."""

    def __init__(self, code: grpc.StatusCode) -> None:
        super().__init__(code, grpc.aio.Metadata(), grpc.aio.Metadata())


def test_only_a_server_certificate_of_another_ca_is_called_the_wrong_kit() -> None:
    """A server down is retried; one whose certificate the kit's CA did not issue is not."""
    empty = grpc.aio.Metadata()

    def failure(code: grpc.StatusCode, details: str) -> grpc.aio.AioRpcError:
        return grpc.aio.AioRpcError(code, empty, empty, details)

    handshake = (
        "failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:18602: "
        "Ssl handshake failed (TSI_PROTOCOL_FAILURE): SSL_ERROR_SSL: error:1000007d:SSL "
        "routines:OPENSSL_internal:CERTIFICATE_VERIFY_FAILED: {}: OK"
    )
    for issuer in (
        "unable to get local issuer certificate",
        "self signed certificate in certificate chain",
    ):
        said = foreign_server(failure(grpc.StatusCode.UNAVAILABLE, handshake.format(issuer)), "h:1")
        assert said == (
            "the server at h:1 presents a certificate not issued by this kit's project CA: "
            "this is the wrong kit for this server, or the wrong host/port"
        )
    for code, details in (
        (grpc.StatusCode.UNAVAILABLE, "Failed to connect to remote host: Connection refused"),
        (grpc.StatusCode.UNAVAILABLE, handshake.format("certificate has expired")),
        (grpc.StatusCode.PERMISSION_DENIED, handshake.format("unable to get issuer certificate")),
    ):
        assert foreign_server(failure(code, details), "h:1") is None


def test_a_call_refused_for_a_dropped_token_goes_again_once_logged_in_again(
    tmp_path: Path,
) -> None:
    """The server drops a site silent past its heartbeat timeout (a frozen VM, a stalled
    link); the upload the site went on with carried the old token and was refused. That
    failed the site's run for good, though the uplink logged in again by itself: an admin
    had to start the site again."""

    async def scenario() -> None:
        uplink, _ = make_uplink(tmp_path)
        uplink.logins = 1
        uplink.connected.set()
        tries: list[int] = []

        async def call() -> str:
            tries.append(uplink.logins)
            if len(tries) == 1:
                raise FakeRpcError(grpc.StatusCode.UNAUTHENTICATED)
            return "accepted"

        retrying = asyncio.ensure_future(uplink.retrying("upload of round 3", call))
        for _ in range(3):
            await asyncio.sleep(0)  # the call is refused; the upload waits for a login
        assert not retrying.done() and tries == [1]
        uplink.connected.clear()  # its control stream is refused too: the uplink logs in
        uplink.logins += 1
        stream = asyncio.ensure_future(uplink._control())
        assert await retrying == "accepted"
        assert tries == [1, 2]  # once with each login's token
        uplink.stop()
        await stream

    asyncio.run(scenario())


def test_a_token_refused_with_no_login_after_it_is_the_answer(tmp_path: Path) -> None:
    async def scenario() -> None:
        uplink, _ = make_uplink(tmp_path)
        uplink.startup = replace(uplink.startup, retry_window=0.05)
        uplink.connected.set()

        async def call() -> str:
            raise FakeRpcError(grpc.StatusCode.UNAUTHENTICATED)

        with pytest.raises(grpc.aio.AioRpcError):
            await uplink.retrying("upload of round 3", call)

    asyncio.run(scenario())
