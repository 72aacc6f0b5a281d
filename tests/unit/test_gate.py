"""flserverd.gate on a real gRPC server over mutual TLS (a provisioned project's certificates)
with small handlers of its own: revoked certificates, login floods, unexpected errors."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest

from flcore.tls import CHANNEL_OPTIONS, TlsFiles, channel_credentials, server_credentials
from flserverd.gate import Gate
from flserverd.revocation import Revocations
from flserverd.rpc import Context
from flserverd.statedb import StateDB
from flserverd.throttle import Throttle
from provision import extract_kit

SERVICE = "test.Gated"
Scenario = Callable[[grpc.aio.Channel, Revocations], Awaitable[None]]
calls: list[str] = []


async def _boom(request: bytes, context: Context) -> bytes:
    calls.append("boom")
    raise KeyError("run_number")


async def _login(request: bytes, context: Context) -> bytes:
    calls.append("login")
    return b"welcome"


async def _refuse(request: bytes, context: Context) -> bytes:
    await context.abort(grpc.StatusCode.NOT_FOUND, "no such thing")


async def _stream(request: bytes, context: Context) -> AsyncIterator[bytes]:
    yield b"first"
    raise OSError(36, "File name too long")


async def _writer(request: bytes, context: Context) -> None:
    """A streaming handler that writes its messages itself (gRPC's reader/writer API)."""
    await context.write(b"first")
    raise OSError(36, "File name too long")


def _handler() -> grpc.GenericRpcHandler:
    return grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "Boom": grpc.unary_unary_rpc_method_handler(_boom),
            "Login": grpc.unary_unary_rpc_method_handler(_login),
            "Refuse": grpc.unary_unary_rpc_method_handler(_refuse),
            "Stream": grpc.unary_stream_rpc_method_handler(_stream),
            "Writer": grpc.unary_stream_rpc_method_handler(_writer),
        },
    )


def _on_gated_server(provisioned_workspace: Any, tmp_path: Path, scenario: Scenario) -> None:
    root = provisioned_workspace.root
    server_kit = extract_kit(
        root / "packages" / "server.zip",
        _password(provisioned_workspace, "server"),
        tmp_path / "server",
    )
    site_kit = extract_kit(
        root / "packages" / "site-a.zip",
        _password(provisioned_workspace, "site-a"),
        tmp_path / "site-a",
    )

    async def run() -> None:
        db = StateDB(tmp_path / "state.sqlite3")
        revocations = Revocations(db, tmp_path / "crl.pem", server_kit / "rootCA.pem", "server")
        gate = Gate(revocations, Throttle(burst=3, per_second=0.5))
        server = grpc.aio.server(interceptors=[gate])
        server.add_generic_rpc_handlers((_handler(),))
        files = TlsFiles(
            server_kit / "rootCA.pem", server_kit / "server.crt", server_kit / "server.key"
        )
        port = server.add_secure_port("127.0.0.1:0", server_credentials(files))
        await server.start()
        client_files = TlsFiles(
            site_kit / "rootCA.pem", site_kit / "client.crt", site_kit / "client.key"
        )
        channel = grpc.aio.secure_channel(
            f"localhost:{port}", channel_credentials(client_files), options=CHANNEL_OPTIONS
        )
        try:
            await scenario(channel, revocations)
        finally:
            await channel.close()
            await server.stop(0)
            db.close()

    calls.clear()
    asyncio.run(run())


def _password(provisioned_workspace: Any, name: str) -> str:
    return str(provisioned_workspace.password(name))


async def _call(channel: grpc.aio.Channel, method: str) -> bytes:
    call: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(
        f"/{SERVICE}/{method}"
    )
    return await call(b"", timeout=10)


def test_an_unexpected_error_becomes_a_sentence_and_a_logged_traceback(
    provisioned_workspace: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario(channel: grpc.aio.Channel, revocations: Revocations) -> None:
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await _call(channel, "Boom")
        assert failed.value.code() == grpc.StatusCode.INTERNAL
        assert failed.value.details() == (
            "the server could not handle this call (Gated/Boom) because of an unexpected "
            "error; the server's log has the details"
        )
        for streaming in ("Stream", "Writer"):
            call: grpc.aio.UnaryStreamMultiCallable[bytes, bytes] = channel.unary_stream(
                f"/{SERVICE}/{streaming}"
            )
            stream = call(b"", timeout=10)
            received: list[bytes] = []
            with pytest.raises(grpc.aio.AioRpcError) as broken:
                async for message in stream:
                    received.append(message)
            assert received == [b"first"] and broken.value.code() == grpc.StatusCode.INTERNAL
            assert "OSError" not in (broken.value.details() or "")
        with pytest.raises(grpc.aio.AioRpcError) as refused:  # a servicer's own refusal stands
            await _call(channel, "Refuse")
        assert refused.value.code() == grpc.StatusCode.NOT_FOUND
        assert refused.value.details() == "no such thing"

    with caplog.at_level(logging.ERROR, "flserverd.gate"):
        _on_gated_server(provisioned_workspace, tmp_path, scenario)
    traced = [r.exc_info[0] for r in caplog.records if r.exc_info is not None]
    assert traced == [KeyError, OSError, OSError]


def test_a_revoked_certificate_gets_no_call_through(
    provisioned_workspace: Any, tmp_path: Path
) -> None:
    async def scenario(channel: grpc.aio.Channel, revocations: Revocations) -> None:
        assert await _call(channel, "Login") == b"welcome"
        revocations.revoke("site-a", "lead@example.org")
        for method in ("Login", "Boom"):
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await _call(channel, method)
            assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
            assert "site-a was revoked on this server by lead@example.org" in (
                refused.value.details() or ""
            )
        assert calls == ["login"]

    _on_gated_server(provisioned_workspace, tmp_path, scenario)


def test_logins_beyond_the_burst_wait_and_are_told_how_long(
    provisioned_workspace: Any, tmp_path: Path
) -> None:
    async def scenario(channel: grpc.aio.Channel, revocations: Revocations) -> None:
        for _ in range(3):
            assert await _call(channel, "Login") == b"welcome"
        with pytest.raises(grpc.aio.AioRpcError) as throttled:
            await _call(channel, "Login")
        assert throttled.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "too many logins with the certificate of site-a: try again in" in (
            throttled.value.details() or ""
        )
        with pytest.raises(grpc.aio.AioRpcError) as other:  # other calls are not counted
            await _call(channel, "Boom")
        assert other.value.code() == grpc.StatusCode.INTERNAL
        assert calls == ["login"] * 3 + ["boom"]

    _on_gated_server(provisioned_workspace, tmp_path, scenario)
