"""What a fan-out to 1,000 control streams costs in gRPC itself, with no flstack code on the path.

``check_status client`` with 1,000 clients (``bench/churn.py --no-churn``)
sends one command down each client's control stream and waits for every
answer. This script measures the same exchange over bare ``grpc.aio`` in
the shape the daemons use, so that what flstack adds can be told from what
the transport costs on this machine:

* a server child (the daemons' TLS credentials and server options, their
  malloc arenas and garbage-collector settings) serves one bidirectional
  method; each stream has a queue its handler yields from (as
  ``flserverd``'s control stream does) and a task reading what comes up;
* one client process (as ``churn.py``'s simulated fleet: one interpreter)
  opens ``--clients`` mutual-TLS channels, one stream each, with an outbox
  and a writer task per stream (as ``flclientd``'s uplink does); each sends
  a heartbeat every second, and answers a command at once;
* once every stream is open and has settled, the server times
  ``--fanouts`` fan-outs, one a second: a 64-byte command queued on every
  stream, until the last 512-byte answer is read. Raw bytes, no protobuf.

Reported: the fan-out's wall time (median, p90) and the server's and the
clients' CPU per fan-out beyond what the heartbeats cost (measured over a
quiet stretch before), beside the same figures of ``churn.py`` for
flstack. What flstack's fan-out costs beyond these is its own code.

    .venv/bin/python bench/fanout_floor.py                 # 1,000 clients, 10 fan-outs
    .venv/bin/python bench/fanout_floor.py --clients 300 --fanouts 20
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import IO

import grpc

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.common import median, percentile, table  # noqa: E402
from bench.transfer import kit_files  # noqa: E402
from flcore.daemon import (  # noqa: E402
    collect_garbage_in_bulk,
    limit_malloc_arenas,
    raise_open_files,
)
from flcore.tls import (  # noqa: E402
    CHANNEL_OPTIONS,
    channel_credentials,
    server_credentials,
    server_options,
)
from fldev.cluster import Cluster  # noqa: E402

METHOD = "/flbench.Fanout/Link"
HELLO, HEARTBEAT, COMMAND, ANSWER = b"O", b"H", b"C", b"A"
COMMAND_BYTES, ANSWER_BYTES, HEARTBEAT_BYTES = 64, 512, 96
SETTLE_S = 3.0
QUIET_S = 3.0


class Fanouts:
    """The server's side: every open stream's queue, and the answers of the fan-out under
    way."""

    def __init__(self, clients: int) -> None:
        self.clients = clients
        self.queues: list[asyncio.Queue[bytes]] = []
        self.all_open = asyncio.Event()
        self.answers = 0
        self.all_answered = asyncio.Event()

    async def link(
        self, requests: AsyncIterator[bytes], _: grpc.aio.ServicerContext[bytes, bytes]
    ) -> AsyncIterator[bytes]:
        queue: asyncio.Queue[bytes] = asyncio.Queue()
        self.queues.append(queue)
        if len(self.queues) == self.clients:
            self.all_open.set()
        reader = asyncio.get_running_loop().create_task(self._read(requests))
        try:
            while True:
                yield await queue.get()
        finally:
            reader.cancel()

    async def _read(self, requests: AsyncIterator[bytes]) -> None:
        async for message in requests:
            if message[:1] == ANSWER:
                self.answers += 1
                if self.answers == self.clients:
                    self.all_answered.set()

    async def fan_out(self) -> tuple[float, float]:
        """One command to every stream; wall and CPU seconds until every answer is in."""
        command = COMMAND + bytes(COMMAND_BYTES - 1)
        self.answers = 0
        self.all_answered.clear()
        cpu, started = time.process_time(), time.perf_counter()
        for queue in self.queues:
            queue.put_nowait(command)
        await self.all_answered.wait()
        return time.perf_counter() - started, time.process_time() - cpu


async def serve(folder: Path, clients: int, fanouts: int) -> int:
    """The server child: print its port, time the fan-outs, print them as JSON."""
    limit_malloc_arenas()
    server = grpc.aio.server(options=server_options(raise_open_files()))
    state = Fanouts(clients)
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                "flbench.Fanout",
                {"Link": grpc.stream_stream_rpc_method_handler(state.link)},
            ),
        )
    )
    port = server.add_secure_port("127.0.0.1:0", server_credentials(kit_files(folder, "server")))
    await server.start()
    collect_garbage_in_bulk()
    print(port, flush=True)
    await state.all_open.wait()
    await asyncio.sleep(SETTLE_S)
    cpu = time.process_time()
    await asyncio.sleep(QUIET_S)
    background = (time.process_time() - cpu) / QUIET_S
    timed = []
    for _ in range(fanouts):
        timed.append(await state.fan_out())
        await asyncio.sleep(1)
    print(json.dumps({"background": background, "fanouts": timed}), flush=True)
    await asyncio.to_thread(sys.stdin.read)
    await server.stop(None)
    return 0


async def one_client(channel: grpc.aio.Channel) -> None:
    """A client's stream: hello, a heartbeat a second, an answer to every command."""
    call: grpc.aio.StreamStreamCall[bytes, bytes] = channel.stream_stream(METHOD)()
    outbox: asyncio.Queue[bytes] = asyncio.Queue()
    answer = ANSWER + bytes(ANSWER_BYTES - 1)
    heartbeat = HEARTBEAT + bytes(HEARTBEAT_BYTES - 1)

    async def write() -> None:
        while True:
            await call.write(await outbox.get())

    async def beat() -> None:
        while True:
            await asyncio.sleep(1)
            outbox.put_nowait(heartbeat)

    outbox.put_nowait(HELLO)
    tasks = [asyncio.ensure_future(write()), asyncio.ensure_future(beat())]
    try:
        async for message in call:
            if message[:1] == COMMAND:
                outbox.put_nowait(answer)
    finally:
        for task in tasks:
            task.cancel()


async def run_clients(folder: Path, port: int, clients: int) -> None:
    """The fleet (this process): every client's channel and stream, until cancelled."""
    raise_open_files()
    credentials = channel_credentials(kit_files(folder, "client"))
    channels = [
        grpc.aio.secure_channel(f"localhost:{port}", credentials, CHANNEL_OPTIONS)
        for _ in range(clients)
    ]
    tasks = [asyncio.ensure_future(one_client(c)) for c in channels]
    try:
        await asyncio.gather(*tasks)
    finally:
        for channel in channels:
            await channel.close()


Timed = tuple[float, list[tuple[float, float]]]
"""The server's CPU for heartbeats alone (cores), and each fan-out's wall and CPU seconds."""


def measure(root: Path, clients: int, fanouts: int) -> Timed:
    """Run the server child and the fleet; the fan-outs' figures."""
    cluster = Cluster(root)
    server_kit, client_kit = cluster.root / "server/startup", cluster.root / "flclient1/startup"
    child = subprocess.Popen(
        [
            sys.executable,
            str(Path(__file__).resolve()),
            "--serve",
            str(server_kit),
            "--clients",
            str(clients),
            "--fanouts",
            str(fanouts),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None and child.stdin is not None
        port = int(child.stdout.readline())

        async def fleet(reply: IO[str]) -> Timed:
            task = asyncio.ensure_future(run_clients(client_kit, port, clients))
            line = await asyncio.to_thread(reply.readline)
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            timed = json.loads(line)
            return float(timed["background"]), [(wall, cpu) for wall, cpu in timed["fanouts"]]

        result = asyncio.run(fleet(child.stdout))
        child.stdin.close()
        child.wait(30)
        return result
    finally:
        child.kill()
        child.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=1000, help="streams (1000)")
    parser.add_argument("--fanouts", type=int, default=10, help="fan-outs timed (10)")
    parser.add_argument("--serve", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve is not None:
        return asyncio.run(serve(args.serve, args.clients, args.fanouts))
    with tempfile.TemporaryDirectory(prefix="flbench-fanout-") as tmp:
        background, timed = measure(Path(tmp), args.clients, args.fanouts)
    walls = [1000 * wall for wall, _ in timed]
    cpus = [1000 * (cpu - background * wall) for wall, cpu in timed]
    print(
        table(
            ["measure", "value"],
            [
                ["streams, fan-outs timed", f"{args.clients}, {len(walls)}"],
                [
                    "fan-out wall, median (p90)",
                    f"{median(walls):.1f} ({percentile(walls, 90):.1f}) ms",
                ],
                ["server CPU per fan-out beyond heartbeats, median", f"{median(cpus):.1f} ms"],
                ["server CPU for heartbeats alone", f"{background:.3f} cores"],
            ],
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
