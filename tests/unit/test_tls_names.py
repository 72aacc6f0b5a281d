"""A server reached by a host name its certificate is not for is a configuration error
(flcore.tls.foreign_server), told apart from a server down, against a real TLS server."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import grpc

from flcore.tls import (
    CHANNEL_OPTIONS,
    TlsFiles,
    certificate_names,
    channel_credentials,
    foreign_server,
    server_credentials,
)
from fldev.cluster import free_ports
from provision import extract_kit
from tests.unit.conftest import ProvisionedWorkspace


def _failure(site: Path, target: str) -> grpc.aio.AioRpcError | None:
    """How a call from ``site``'s kit to ``target`` fails (None: it reached the server)."""

    async def call() -> grpc.aio.AioRpcError | None:
        files = TlsFiles(site / "rootCA.pem", site / "client.crt", site / "client.key")
        async with grpc.aio.secure_channel(
            target, channel_credentials(files), options=CHANNEL_OPTIONS
        ) as channel:
            nothing: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(
                "/Nothing/Here"
            )
            try:
                await nothing(b"", timeout=10)
            except grpc.aio.AioRpcError as exc:
                return None if exc.code() == grpc.StatusCode.UNIMPLEMENTED else exc
        return None

    return asyncio.run(call())


def _kits(workspace: ProvisionedWorkspace, tmp_path: Path) -> tuple[Path, Path]:
    """The server's and site-a's startup folders (the server's certificate is for
    ``localhost``)."""
    server = extract_kit(workspace.kit("server"), workspace.password("server"), tmp_path / "server")
    site = extract_kit(workspace.kit("site-a"), workspace.password("site-a"), tmp_path / "site")
    return server, site


def test_a_misnamed_server_is_a_configuration_error_and_a_server_down_is_not(
    provisioned_workspace: ProvisionedWorkspace, tmp_path: Path
) -> None:
    server_kit, site = _kits(provisioned_workspace, tmp_path)

    async def scenario() -> tuple[str | None, str | None, int]:
        server = grpc.aio.server()
        files = TlsFiles(
            server_kit / "rootCA.pem", server_kit / "server.crt", server_kit / "server.key"
        )
        port = server.add_secure_port("127.0.0.1:0", server_credentials(files))
        await server.start()
        try:
            said = []
            for host in ("localhost", "127.0.0.1"):
                failed = await asyncio.to_thread(_failure, site, f"{host}:{port}")
                said.append(None if failed is None else foreign_server(failed, f"{host}:{port}"))
            return said[0], said[1], port
        finally:
            await server.stop(0)

    right, wrong, port = asyncio.run(scenario())
    assert right is None  # the call reached the server
    assert wrong is not None
    assert wrong.startswith(f"the server at 127.0.0.1:{port} presents a certificate for ")
    assert "a certificate for localhost, not for 127.0.0.1, the host name this kit dials" in wrong

    (closed,) = free_ports(1)
    down = _failure(site, f"localhost:{closed}")
    assert down is not None and down.code() == grpc.StatusCode.UNAVAILABLE
    assert foreign_server(down, f"localhost:{closed}") is None


def test_a_misnamed_server_whose_certificate_cannot_be_read_again_is_still_named(
    provisioned_workspace: ProvisionedWorkspace, tmp_path: Path
) -> None:
    """Older gRPC says it in other words; the look at the certificate may fail (the server
    went away meanwhile), and the sentence then says what it can."""
    (closed,) = free_ports(1)
    empty = grpc.aio.Metadata()
    older = grpc.aio.AioRpcError(
        grpc.StatusCode.UNAVAILABLE,
        empty,
        empty,
        "failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:1: Peer name "
        "fl.example.org is not in peer certificate",
    )
    assert foreign_server(older, f"fl.example.org:{closed}") == (
        f"the server at fl.example.org:{closed} presents a certificate not for fl.example.org, "
        "the host name this kit dials: the kit names the server wrongly (or the server runs "
        "with a kit for another name); provision the kits with the host name the server's "
        "certificate is for"
    )
    with socket.create_server(("127.0.0.1", 0)) as plain:  # no TLS there: nothing to read
        assert certificate_names(f"127.0.0.1:{plain.getsockname()[1]}") == []
