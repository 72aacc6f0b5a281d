"""flcore.tls: the server's receive window bounds what an upload it has not read yet holds."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc

from flcore.tls import CHANNEL_OPTIONS, server_options

MIB = 1024 * 1024
METHOD = "/test.Window/Up"


async def _accepted_unread(server_opts: list[tuple[str, Any]]) -> int:
    """MiB a client gets handed to gRPC on one stream the server never reads."""
    unread = asyncio.Event()

    async def up(request_iterator: Any, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        await unread.wait()
        return b""

    handler = grpc.method_handlers_generic_handler(
        "test.Window", {"Up": grpc.stream_unary_rpc_method_handler(up)}
    )
    server = grpc.aio.server(options=server_opts)
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=CHANNEL_OPTIONS)
    call: grpc.aio.StreamUnaryCall[bytes, bytes] = channel.stream_unary(METHOD)()
    accepted = 0
    try:
        while accepted < 16:
            try:
                await asyncio.wait_for(call.write(bytes(MIB)), 1.0)
            except TimeoutError:
                break
            accepted += 1
    finally:
        call.cancel()
        await channel.close()
        await server.stop(0)
    return accepted


def test_an_unread_upload_can_push_at_most_one_message_into_the_server() -> None:
    assert asyncio.run(_accepted_unread(server_options(4096))) <= 1


def test_the_check_can_fail_a_server_with_a_wide_window() -> None:
    wide = [
        (key, 4 * MIB if key == "grpc.http2.lookahead_bytes" else value)
        for key, value in server_options(4096)
    ]
    assert asyncio.run(_accepted_unread(wide)) >= 3
