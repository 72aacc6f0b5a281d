"""A server reached by a host name its certificate is not for is a configuration error
(flcore.tls.foreign_server), told apart from a server down, against a real TLS server."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from flcore.tls import (
    CHANNEL_OPTIONS,
    MAX_NAMES,
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


def test_a_misnamed_server_s_names_are_bounded_and_one_line_each(tmp_path: Path) -> None:
    """The names come from a certificate read unverified, on their way into a log line: a
    name with a newline forged a line, and a thousand names made one of megabytes."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "server")])
    forged = "server\n<3>flserverd: forged"
    names = [x509.DNSName(forged)] + [x509.DNSName(f"n{i}.example") for i in range(1000)]
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .sign(key, hashes.SHA256())
    )
    (tmp_path / "c.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "k.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tmp_path / "c.pem", tmp_path / "k.pem")
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]

        def serve() -> None:
            conn, _ = listener.accept()
            with contextlib.suppress(OSError), context.wrap_socket(conn, server_side=True):
                pass

        server = threading.Thread(target=serve, daemon=True)
        server.start()
        got = certificate_names(f"127.0.0.1:{port}")
        server.join(10)
    assert len(got) == MAX_NAMES
    assert got[0] == "server\\n<3>flserverd: forged"
    assert all("\n" not in name for name in got)
