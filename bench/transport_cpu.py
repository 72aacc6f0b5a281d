"""What moving model bytes costs the machine's CPU, transport by transport: the floor under
every round on a machine whose cores the server and its sites share.

``bench/transfer.py`` compares rates; on two cores shared by a server and its sites a
round is bound by CPU, so this script measures the CPU seconds that 100 MiB cost, both
ends together, on five transports between two processes on 127.0.0.1 (the server's
side is the receiver unless the name says ``down``):

* ``tcp``: a plain TCP socket, blocking, 1 MiB writes, ``recv_into`` a reused buffer:
  the kernel's copies alone;
* ``tls``: the same over TLS 1.3 with mutual TLS and the project's certificates
  (Python's ``ssl``, i.e. OpenSSL): the floor of any transport that keeps mutual TLS;
* ``tls+loop``: the same socket, but the receiver is an asyncio loop that reads each
  1 MiB chunk into a new buffer in a worker thread (``run_in_executor``): what a
  transport of our own would cost inside the daemons, whose transfers are driven from
  their event loop (docs/data-plane.md);
* ``grpc up`` and ``grpc down``: ``grpc.aio`` with the daemons' TLS credentials and
  channel options, raw 1 MiB messages (no protobuf, no flstack code), as a client stream
  (an upload) and as a server stream (a download): the transport flstack uses.

Each repeat starts a fresh server and client process, moves ``--transfers`` × 100 MiB,
and reads each process's user + system CPU (``getrusage``) from the connection made to
the last byte acknowledged; the table shows the median over ``--repeats`` of the CPU
per 100 MiB and of the rate, and what the ``L/8`` round's 16 transfers of the large
model (100 MB each, 8 down, 8 up) cost at that CPU per byte.

    .venv/bin/python bench/transport_cpu.py                    # 5 repeats of 10 transfers
    .venv/bin/python bench/transport_cpu.py --repeats 3 --transfers 5
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.common import median, table  # noqa: E402
from bench.transfer import (  # noqa: E402
    ACK,
    CHUNK,
    BareClient,
    chunks_of,
    context,
    start_bare_server,
)
from provision import extract_kit, parse_project, provision_workspace  # noqa: E402

TRANSPORTS = ("tcp", "tls", "tls+loop", "grpc up", "grpc down")
TRANSFER_BYTES = 100 * CHUNK
L8_TRANSFERS = 16
"""An L/8 round: the 100 MB model down to 8 sites and 8 updates back."""
L8_BYTES = 100_000_000


def own_cpu() -> float:
    """User + system CPU seconds of this process so far."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def receive_exactly(sock: socket.socket, nbytes: int, buffer: memoryview) -> None:
    """Read ``nbytes`` into ``buffer`` (``nbytes`` at most its length)."""
    got = 0
    while got < nbytes:
        step = sock.recv_into(buffer[got:], nbytes - got)
        if not step:
            raise ConnectionError("the peer closed the connection mid-transfer")
        got += step


def serve_socket(startup: Path, transport: str, transfers: int) -> None:
    """The server's side (a child), receiving: take ``transfers`` × 100 MiB, acknowledge each, print
    this process's CPU."""
    listener = socket.create_server(("127.0.0.1", 0))
    print(listener.getsockname()[1], flush=True)
    raw, _ = listener.accept()
    sock: socket.socket = raw
    if transport != "tcp":
        sock = context(ssl.Purpose.CLIENT_AUTH, startup, "server").wrap_socket(raw, True)
    with sock:
        before = own_cpu()
        if transport == "tls+loop":

            def read_chunk() -> bytearray:
                chunk = bytearray(CHUNK)
                receive_exactly(sock, CHUNK, memoryview(chunk))
                return chunk

            async def receive_all() -> None:
                loop = asyncio.get_running_loop()
                for _ in range(transfers):
                    for _ in range(TRANSFER_BYTES // CHUNK):
                        await loop.run_in_executor(None, read_chunk)
                    sock.sendall(ACK)

            asyncio.run(receive_all())
        else:
            buffer = memoryview(bytearray(CHUNK))
            for _ in range(transfers):
                for _ in range(TRANSFER_BYTES // CHUNK):
                    receive_exactly(sock, CHUNK, buffer)
                sock.sendall(ACK)
        print(own_cpu() - before, flush=True)


def send_socket(startup: Path, transport: str, port: int, transfers: int) -> None:
    """The client's side (a child), sending: ``transfers`` × 100 MiB in 1 MiB writes, each
    acknowledged; prints this process's CPU and the wall time."""
    payload = memoryview(bytes(CHUNK))
    raw = socket.create_connection(("127.0.0.1", port))
    sock: socket.socket = raw
    if transport != "tcp":
        ctx = context(ssl.Purpose.SERVER_AUTH, startup, "client")
        sock = ctx.wrap_socket(raw, server_hostname="localhost")
    with sock:
        before, started = own_cpu(), time.perf_counter()
        for _ in range(transfers):
            for _ in range(TRANSFER_BYTES // CHUNK):
                sock.sendall(payload)
            if sock.recv(1) != ACK:
                raise ConnectionError("the receiver did not acknowledge the transfer")
        print(own_cpu() - before, time.perf_counter() - started, flush=True)


async def serve_grpc(startup: Path, transfers: int) -> None:
    """The server's side over gRPC (a child): ``Up`` takes and acknowledges a client stream,
    ``Down`` sends a server stream; prints this process's CPU once ``transfers`` ended."""
    ended = asyncio.Event()
    count = 0

    def one_more() -> None:
        nonlocal count
        count += 1
        if count == transfers:
            ended.set()

    async def up(
        requests: AsyncIterator[bytes], _: grpc.aio.ServicerContext[bytes, bytes]
    ) -> bytes:
        async for _message in requests:
            pass
        one_more()
        return ACK

    payload = bytes(CHUNK)

    async def down(
        request: bytes, _: grpc.aio.ServicerContext[bytes, bytes]
    ) -> AsyncIterator[bytes]:
        for message in chunks_of(int.from_bytes(request, "big"), payload):
            yield message
        one_more()

    server = await start_bare_server(startup, down, up)
    before = own_cpu()
    await ended.wait()
    print(own_cpu() - before, flush=True)
    await server.stop(1)


async def call_grpc(startup: Path, transport: str, port: int, transfers: int) -> None:
    """The client's side over gRPC (a child): ``transfers`` uploads or downloads of 100 MiB;
    prints this process's CPU and the wall time."""
    client = BareClient(startup, port)
    move = client.download if transport == "grpc down" else client.upload
    async with client.channel:
        await client.channel.channel_ready()
        before, started = own_cpu(), time.perf_counter()
        for _ in range(transfers):
            await move(TRANSFER_BYTES)
        print(own_cpu() - before, time.perf_counter() - started, flush=True)


def measure(kits: Path, transport: str, transfers: int) -> tuple[float, float, float]:
    """One repeat: (server CPU s, client CPU s, wall s) for ``transfers`` × 100 MiB, each
    from the connection made to the last byte acknowledged."""
    this = str(Path(__file__).resolve())
    server = subprocess.Popen(
        [sys.executable, this, "--server", transport, str(kits / "server/startup"), str(transfers)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        port = server.stdout.readline().strip()
        client_args = [transport, str(kits / "flclient1/startup"), port, str(transfers)]
        client = subprocess.run(
            [sys.executable, this, "--client", *client_args],
            check=True,
            timeout=600,
            stdout=subprocess.PIPE,
            text=True,
        )
        server_cpu = float(server.stdout.readline())
        server.wait(30)
        client_cpu, wall = (float(value) for value in client.stdout.split())
        return server_cpu, client_cpu, wall
    finally:
        server.kill()
        server.wait()


def provision(root: Path) -> Path:
    """A server's and a site's startup kits from the project's own provisioning."""
    project = parse_project(
        {
            "api_version": 1,
            "name": "transportcpu",
            "server": {
                "name": "server",
                "host": "localhost",
                "fed_port": 1,
                "admin_port": 2,
                "org": "lead",
            },
            "clients": [{"name": "flclient1", "org": "site"}],
            "admins": [{"email": "admin@example.org", "org": "lead", "role": "super"}],
        }
    )
    for kit in provision_workspace(project, root / "provision").written:
        if kit.name in ("server", "flclient1"):
            assert kit.password is not None
            extract_kit(kit.zip_path, kit.password, root / kit.name)
    return root


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--transfers", type=int, default=10, help="100 MiB transfers per repeat")
    parser.add_argument("--server", nargs=3, metavar=("TRANSPORT", "STARTUP", "N"))
    parser.add_argument("--client", nargs=4, metavar=("TRANSPORT", "STARTUP", "PORT", "N"))
    args = parser.parse_args(argv)
    if args.server:
        transport, startup, count = args.server
        if transport.startswith("grpc"):
            asyncio.run(serve_grpc(Path(startup), int(count)))
        else:
            serve_socket(Path(startup), transport, int(count))
        return 0
    if args.client:
        transport, startup, port, count = args.client
        if transport.startswith("grpc"):
            asyncio.run(call_grpc(Path(startup), transport, int(port), int(count)))
        else:
            send_socket(Path(startup), transport, int(port), int(count))
        return 0

    samples: dict[str, list[tuple[float, float, float]]] = {name: [] for name in TRANSPORTS}
    with tempfile.TemporaryDirectory(prefix="transport-cpu-") as folder:
        kits = provision(Path(folder))
        for _ in range(args.repeats):  # interleaved, so that a slow moment hits every transport
            for transport in TRANSPORTS:
                samples[transport].append(measure(kits, transport, args.transfers))
    ms_per_100mib = 1000 / args.transfers  # CPU seconds of a repeat -> ms per 100 MiB
    rows = []
    for transport, runs in samples.items():
        server = median([r for r, _, _ in runs]) * ms_per_100mib
        client = median([s for _, s, _ in runs]) * ms_per_100mib
        total = [(r + s) * ms_per_100mib for r, s, _ in runs]
        rate = [TRANSFER_BYTES * args.transfers / wall / 1e6 for _, _, wall in runs]
        l8 = median(total) / 1000 * L8_TRANSFERS * L8_BYTES / TRANSFER_BYTES
        rows.append(
            (
                transport,
                f"{median(rate):.0f} ({min(rate):.0f}-{max(rate):.0f})",
                f"{server:.0f}",
                f"{client:.0f}",
                f"{median(total):.0f} ({min(total):.0f}-{max(total):.0f})",
                f"{l8:.2f}",
            )
        )
    print(
        f"{args.repeats} repeats of {args.transfers} x 100 MiB, medians (min-max), "
        "timed from the connection made to the last byte acknowledged"
    )
    print(
        table(
            (
                "transport",
                "MB/s",
                "server CPU ms / 100 MiB",
                "client",
                "both",
                "CPU s per L/8 round (16 x 100 MB)",
            ),
            rows,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
