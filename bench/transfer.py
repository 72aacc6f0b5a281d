"""Model transfer speed against the machine's floor: a plain TLS 1.3 socket moving the same bytes.

One client trains the large model (``fldev.mlpapp``, ~100 MB, one SGD step
per round) for ``--repeats`` + 1 rounds with a real ``flserverd`` and
``flclientd`` on 127.0.0.1: every round the client downloads the global
model and uploads its update through the real path (mutual-TLS gRPC
streams, chunks, the spool files on each side). The client daemon logs one
line per transfer (``flclientd.connection``: bytes and seconds, from its
request to the last chunk written, or to the server's verdict for an
upload); all of them count (the final global model's download too) but
the first download and upload (the training child starts meanwhile).

In the same run, once the rounds are done, a child process and this one
move the same number of bytes over a plain TLS 1.3 socket (Python's
``ssl``, mutual TLS with the project's server and client certificates, the
handshake not timed), ``--repeats`` times each way: "download" is the child
(the server's side) sending to this process, "upload" the reverse, ended by
a one-byte acknowledgement. Reported: MB/s of each (median over the
repeats) and ours as a share of the floor (target: at least 80 %).

The same socket then moves the same bytes file to file: the sender reads
the server's global model file chunk by chunk, the receiver writes each
chunk into a new file (and, for an upload, checks it for NaN and infinity
as the server checks every upload chunk). That is the work our receivers
must do to hold a model of any size in O(chunk) memory, so "TLS socket,
files" is what a transport of our own on this socket could reach at best.

A second reference shows how much of the gap is the transport itself: the
same bytes as a stream of 1 MiB messages over gRPC (``grpc.aio``, the
daemons' TLS credentials and channel options, raw bytes: no protobuf, no
flstack code on the path), a child serving, this process calling; the
upload ends with the server's one-message answer. "ours / gRPC" is the
share of that reference that flstack reaches: what is left of the floor
beyond it is gRPC's own cost.

    .venv/bin/python bench/transfer.py                      # large model, 5 repeats
    .venv/bin/python bench/transfer.py --model small --repeats 3
"""

from __future__ import annotations

import argparse
import asyncio
import re
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import grpc
import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.common import median, table  # noqa: E402
from flcore.tls import (  # noqa: E402
    CHANNEL_OPTIONS,
    TlsFiles,
    channel_credentials,
    server_credentials,
    server_options,
)
from fldev.cluster import ADMIN, Cluster, cluster  # noqa: E402
from fldev.mlpapp import MODELS, start_app_run, write_app  # noqa: E402
from fldev.poll import wait_until  # noqa: E402

TARGET_SHARE = 0.8
CLIENT = "flclient1"
CHUNK = 1 << 20
TRANSFER = re.compile(r"(downloaded|uploaded) \S+: (\d+) bytes in ([\d.]+) s")
DOWNLOAD, UPLOAD, ACK = b"D", b"U", b"K"
FILE_DOWNLOAD, FILE_UPLOAD = b"d", b"u"
BARE_SERVICE = "flbench.Bare"
Seconds = dict[str, list[float]]


def context(purpose: ssl.Purpose, folder: Path, kind: str) -> ssl.SSLContext:
    """A TLS 1.3-only, mutual-TLS context from a kit's startup folder (``kind``: its key's
    file name without the suffix)."""
    ctx = ssl.create_default_context(purpose, cafile=str(folder / "rootCA.pem"))
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.load_cert_chain(folder / f"{kind}.crt", folder / f"{kind}.key")
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def receive_exactly(sock: ssl.SSLSocket, nbytes: int, buffer: memoryview) -> None:
    """Read ``nbytes`` into the (reused) buffer, as a receiver that keeps nothing."""
    left = nbytes
    while left:
        got = sock.recv_into(buffer, min(left, len(buffer)))
        if not got:
            raise ConnectionError("the peer closed the connection mid-transfer")
        left -= got


def send_exactly(sock: ssl.SSLSocket, nbytes: int, payload: memoryview) -> None:
    """Write ``nbytes`` from the (reused) payload in chunks of its size."""
    left = nbytes
    while left:
        step = min(left, len(payload))
        sock.sendall(payload[:step])
        left -= step


def receive_into_file(
    sock: ssl.SSLSocket, nbytes: int, buffer: memoryview, path: Path, check: bool
) -> None:
    """Read ``nbytes`` chunk by chunk into a new file (deleted after), each chunk checked for
    NaN and infinity first when ``check``, as a spool keeps a transfer."""
    with path.open("wb") as out:
        left = nbytes
        while left:
            step = min(left, len(buffer))
            receive_exactly(sock, step, buffer)
            if check:  # its cost is what counts here, not its answer
                np.isfinite(np.frombuffer(buffer[: step - step % 4], np.float32)).all()
            out.write(buffer[:step])
            left -= step
    path.unlink()


def send_from_file(sock: ssl.SSLSocket, nbytes: int, path: Path, buffer: memoryview) -> None:
    """Write the first ``nbytes`` of a file, read chunk by chunk into the (reused) buffer."""
    with path.open("rb") as source:
        left = nbytes
        while left:
            got = source.readinto(buffer[: min(left, len(buffer))])
            if not got:
                raise ValueError(f"{path} holds fewer than {nbytes} bytes")
            sock.sendall(buffer[:got])
            left -= got


def run_peer(folder: Path, model: Path, spool: Path) -> int:
    """The server's side of the floor (a child process): serve requests until closed."""
    listener = socket.create_server(("127.0.0.1", 0))
    print(listener.getsockname()[1], flush=True)
    raw, _ = listener.accept()
    payload = memoryview(bytes(CHUNK))
    buffer = memoryview(bytearray(CHUNK))
    with context(ssl.Purpose.CLIENT_AUTH, folder, "server").wrap_socket(raw, True) as sock:
        while True:
            head = sock.recv(9)
            if not head:
                return 0
            mode, nbytes = head[:1], int.from_bytes(head[1:], "big")
            if mode == DOWNLOAD:
                send_exactly(sock, nbytes, payload)
            elif mode == FILE_DOWNLOAD:
                send_from_file(sock, nbytes, model, buffer)
            else:
                if mode == FILE_UPLOAD:
                    receive_into_file(sock, nbytes, buffer, spool / "upload", check=True)
                else:
                    receive_exactly(sock, nbytes, buffer)
                sock.sendall(ACK)


def tls_floor(c: Cluster, nbytes: int, repeats: int) -> tuple[Seconds, Seconds]:
    """Seconds per transfer of ``nbytes`` each way over a plain TLS 1.3 socket: memory to
    memory, and file to file."""
    model = c.root / "server" / "run_1" / "global_model.safetensors"
    spool = Path(tempfile.mkdtemp(prefix="floor-", dir=c.root))
    peer = subprocess.Popen(
        [
            sys.executable,
            str(Path(__file__).resolve()),
            "--peer",
            str(c.root / "server/startup"),
            str(model),
            str(spool),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert peer.stdout is not None
        port = int(peer.stdout.readline())
        ctx = context(ssl.Purpose.SERVER_AUTH, c.root / CLIENT / "startup", "client")
        payload = memoryview(bytes(CHUNK))
        buffer = memoryview(bytearray(CHUNK))
        seconds: Seconds = {"download": [], "upload": []}
        files: Seconds = {"download": [], "upload": []}
        with (
            socket.create_connection(("127.0.0.1", port)) as raw,
            ctx.wrap_socket(raw, server_hostname="localhost") as sock,
        ):
            size = nbytes.to_bytes(8, "big")
            for _ in range(repeats):
                started = time.perf_counter()
                sock.sendall(DOWNLOAD + size)
                receive_exactly(sock, nbytes, buffer)
                seconds["download"].append(time.perf_counter() - started)
                started = time.perf_counter()
                sock.sendall(UPLOAD + size)
                send_exactly(sock, nbytes, payload)
                if sock.recv(1) != ACK:
                    raise ConnectionError("the peer did not acknowledge the upload")
                seconds["upload"].append(time.perf_counter() - started)
            for _ in range(repeats):
                started = time.perf_counter()
                sock.sendall(FILE_DOWNLOAD + size)
                receive_into_file(sock, nbytes, buffer, spool / "download", check=False)
                files["download"].append(time.perf_counter() - started)
                started = time.perf_counter()
                sock.sendall(FILE_UPLOAD + size)
                send_from_file(sock, nbytes, model, buffer)
                if sock.recv(1) != ACK:
                    raise ConnectionError("the peer did not acknowledge the upload")
                files["upload"].append(time.perf_counter() - started)
        peer.wait(30)
        return seconds, files
    finally:
        peer.kill()
        peer.wait()


def kit_files(folder: Path, kind: str) -> TlsFiles:
    """A kit's CA, certificate and key (``kind``: the key's file name without the suffix)."""
    return TlsFiles(folder / "rootCA.pem", folder / f"{kind}.crt", folder / f"{kind}.key")


def chunks_of(nbytes: int, payload: bytes) -> list[bytes]:
    """``nbytes`` as messages of at most the payload's size (one buffer, sliced once)."""
    whole, rest = divmod(nbytes, len(payload))
    return [payload] * whole + ([payload[:rest]] if rest else [])


async def serve_bare_grpc(folder: Path) -> int:
    """The server's side of the gRPC reference (a child process): serve until stdin closes."""
    payload = bytes(CHUNK)

    async def down(
        request: bytes, _: grpc.aio.ServicerContext[bytes, bytes]
    ) -> AsyncIterator[bytes]:
        for message in chunks_of(int.from_bytes(request, "big"), payload):
            yield message

    async def up(
        requests: AsyncIterator[bytes], _: grpc.aio.ServicerContext[bytes, bytes]
    ) -> bytes:
        async for _message in requests:
            pass
        return ACK

    server = await start_bare_server(folder, down, up)
    await asyncio.to_thread(sys.stdin.read)
    await server.stop(None)
    return 0


async def start_bare_server(
    folder: Path,
    down: Callable[[bytes, grpc.aio.ServicerContext[bytes, bytes]], AsyncIterator[bytes]],
    up: Callable[[AsyncIterator[bytes], grpc.aio.ServicerContext[bytes, bytes]], Awaitable[bytes]],
) -> grpc.aio.Server:
    """The gRPC reference's server (in a child) with the server kit in ``folder``, started; its
    port is the child's first line of output, which the parent reads."""
    server = grpc.aio.server(options=server_options(1024))
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                BARE_SERVICE,
                {
                    "Down": grpc.unary_stream_rpc_method_handler(down),
                    "Up": grpc.stream_unary_rpc_method_handler(up),
                },
            ),
        )
    )
    port = server.add_secure_port("127.0.0.1:0", server_credentials(kit_files(folder, "server")))
    await server.start()
    print(port, flush=True)
    return server


class BareClient:
    """The gRPC reference's client side: the daemons' TLS credentials and channel options, a
    client kit in ``folder``, raw 1 MiB messages."""

    def __init__(self, folder: Path, port: int) -> None:
        self.channel = grpc.aio.secure_channel(
            f"localhost:{port}", channel_credentials(kit_files(folder, "client")), CHANNEL_OPTIONS
        )
        self._down: grpc.aio.UnaryStreamMultiCallable[bytes, bytes] = self.channel.unary_stream(
            f"/{BARE_SERVICE}/Down"
        )
        self._up: grpc.aio.StreamUnaryMultiCallable[bytes, bytes] = self.channel.stream_unary(
            f"/{BARE_SERVICE}/Up"
        )
        self._payload = bytes(CHUNK)

    async def download(self, nbytes: int) -> None:
        """Have the server stream ``nbytes``."""
        got = 0
        async for message in self._down(nbytes.to_bytes(8, "big")):
            got += len(message)
        if got != nbytes:
            raise ConnectionError(f"the gRPC reference sent {got} of {nbytes} bytes")

    async def upload(self, nbytes: int) -> None:
        """Stream ``nbytes`` to the server and wait for its acknowledgement."""

        async def messages() -> AsyncIterator[bytes]:
            for message in chunks_of(nbytes, self._payload):
                yield message

        if await self._up(messages()) != ACK:
            raise ConnectionError("the gRPC reference did not acknowledge the upload")


async def call_bare_grpc(folder: Path, port: int, nbytes: int, repeats: int) -> Seconds:
    """Seconds per transfer of ``nbytes`` each way as gRPC messages of raw bytes."""
    seconds: Seconds = {"download": [], "upload": []}
    client = BareClient(folder, port)
    async with client.channel:
        await client.channel.channel_ready()
        for _ in range(repeats):
            for way, move in (("download", client.download), ("upload", client.upload)):
                started = time.perf_counter()
                await move(nbytes)
                seconds[way].append(time.perf_counter() - started)
    return seconds


def grpc_reference(c: Cluster, nbytes: int, repeats: int) -> Seconds:
    """Seconds per transfer of ``nbytes`` each way over bare gRPC with the daemons' TLS."""
    peer = subprocess.Popen(
        [
            sys.executable,
            str(Path(__file__).resolve()),
            "--grpc-peer",
            str(c.root / "server/startup"),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert peer.stdout is not None and peer.stdin is not None
        port = int(peer.stdout.readline())
        seconds = asyncio.run(call_bare_grpc(c.root / CLIENT / "startup", port, nbytes, repeats))
        peer.stdin.close()
        peer.wait(30)
        return seconds
    finally:
        peer.kill()
        peer.wait()


def transfers(log: str) -> dict[str, list[tuple[int, float]]]:
    """(bytes, seconds) of each download and upload the client daemon logged, in order."""
    found: dict[str, list[tuple[int, float]]] = {"download": [], "upload": []}
    for match in TRANSFER.finditer(log):
        kind = "download" if match[1] == "downloaded" else "upload"
        found[kind].append((int(match[2]), float(match[3])))
    return found


def main(argv: list[str] | None = None) -> int:
    """Train, read the transfers from the client's log, measure the floor, print."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=sorted(MODELS), default="large", help="(large)")
    parser.add_argument("--repeats", type=int, default=5, help="transfers each way (5)")
    parser.add_argument("--workdir", type=Path, help="keep the workspaces here (default: temp)")
    parser.add_argument("--peer", type=Path, nargs=3, help=argparse.SUPPRESS)
    parser.add_argument("--grpc-peer", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.peer:
        return run_peer(*args.peer)
    if args.grpc_peer:
        return asyncio.run(serve_bare_grpc(args.grpc_peer))
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    model = MODELS[args.model]
    rounds = args.repeats + 1
    settings = {"heart_beat_timeout": 60, "heartbeat_interval": 5, "retry_window": 60}
    with tempfile.TemporaryDirectory(prefix="flbench-transfer-") as tmp:
        root = (args.workdir or Path(tmp)) / f"transfer-{args.model}"
        with cluster(root, clients=(CLIENT,), settings=settings) as c:
            write_app(c.root / ADMIN / "transfer", model, clients=1, num_rounds=rounds)
            c.server()
            client = c.client(CLIENT)
            print(f"training {rounds} rounds of the {args.model} model ...", flush=True)
            start_app_run(c)
            wait_until(
                lambda: all(len(v) >= rounds for v in transfers(client.log()).values()),
                120 + 120 * rounds,
                f"{rounds} downloads and uploads",
                interval=0.2,
            )
            ours = {kind: moved[1:] for kind, moved in transfers(client.log()).items()}
            nbytes = ours["download"][0][0]
            print(f"the floor: {nbytes:,} bytes each way over TLS 1.3 ...", flush=True)
            floor, files = tls_floor(c, nbytes, args.repeats)
            print("the gRPC reference: the same bytes as raw gRPC messages ...", flush=True)
            bare = grpc_reference(c, nbytes, args.repeats)
    rows = []
    for kind in ("download", "upload"):
        our_rate = median([b / s for b, s in ours[kind]]) / 1e6
        floor_rate = median([nbytes / s for s in floor[kind]]) / 1e6
        bare_rate = median([nbytes / s for s in bare[kind]]) / 1e6
        files_rate = median([nbytes / s for s in files[kind]]) / 1e6
        share = our_rate / floor_rate
        verdict = "meets" if share >= TARGET_SHARE else "MISSES"
        rows.append(
            [
                kind,
                f"{median([b for b, _ in ours[kind]]) / 1e6:.1f}",
                f"{our_rate:.0f} ({len(ours[kind])})",
                f"{floor_rate:.0f} ({len(floor[kind])})",
                f"{100 * share:.0f} % ({verdict} >= {100 * TARGET_SHARE:.0f} %)",
                f"{bare_rate:.0f} ({len(bare[kind])})",
                f"{100 * our_rate / bare_rate:.0f} %",
                f"{files_rate:.0f} ({len(files[kind])})",
                f"{100 * our_rate / files_rate:.0f} %",
            ]
        )
    print()
    headers = [
        "transfer",
        "MB",
        "flstack MB/s (n)",
        "TLS 1.3 socket MB/s (n)",
        "share of floor",
        "bare gRPC MB/s (n)",
        "ours / gRPC",
        "TLS socket, files MB/s (n)",
        "ours / files",
    ]
    print(table(headers, rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
