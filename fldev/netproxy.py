"""A faulty network link between a client daemon and the server, for fault tests.

:class:`FaultyLink` is an HTTP CONNECT proxy on 127.0.0.1 that runs in a
thread of the test process. A client daemon started with
``grpc_proxy=<link.url>`` in its environment (gRPC honours it, as a site
behind a corporate proxy would set it) sends every byte to the server
through it, so the test can break that one client's link while the rest of
the cluster is untouched:

* :meth:`FaultyLink.cut`: reset every open connection (TCP RST) and refuse
  new ones until :meth:`FaultyLink.heal`;
* :meth:`FaultyLink.stall`: a black hole: nothing is read or forwarded in
  either direction and nobody is told (no RST, no FIN), until ``heal``
  forwards what was held back;
* :meth:`FaultyLink.limit`: forward at most so many bytes per second in
  each direction (``None``: no limit);
* :meth:`FaultyLink.cut_after_upstream`: cut once so many more bytes went
  from the client to the server, e.g. in the middle of an upload.

The proxy's own sockets use small buffers, so a limited or stalled link
holds back little more than the peers' own buffers would on a real one.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
import time
from collections.abc import Callable, Coroutine
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, TypeVar

T = TypeVar("T")

READ_BYTES = 16 * 1024
SOCKET_BUFFER = 64 * 1024
MAX_REQUEST = 8 * 1024


@dataclass(eq=False)
class _Pipe:
    """One client connection through the link: the client's side and the server's."""

    client: asyncio.StreamWriter
    server: asyncio.StreamWriter | None = None
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def reset(self) -> None:
        """Close both sides with a TCP RST."""
        for writer in (self.client, self.server):
            if writer is None:
                continue
            sock = writer.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()
        for task in self.tasks:
            task.cancel()


class _Pace:
    """Spaces out bytes in one direction so that they average ``rate`` bytes per second."""

    def __init__(self) -> None:
        self.next_free = 0.0

    async def wait(self, size: int, rate: float | None) -> None:
        if rate is None:
            return
        now = time.monotonic()
        self.next_free = max(self.next_free, now) + size / rate
        await asyncio.sleep(self.next_free - now)


class FaultyLink:
    """An HTTP CONNECT proxy whose link the test can cut, stall or slow down."""

    def __init__(self) -> None:
        self.connections = 0
        self.upstream_bytes = 0
        self.downstream_bytes = 0
        self._pipes: set[_Pipe] = set()
        self._cut = False
        self._rate: float | None = None
        self._pace_up = _Pace()
        self._pace_down = _Pace()
        self._trigger: tuple[int, threading.Event] | None = None
        self._loop = asyncio.new_event_loop()
        self._flowing = asyncio.Event()
        self._flowing.set()
        started: Future[int] = Future()
        self._thread = threading.Thread(target=self._run, args=(started,), daemon=True)
        self._thread.start()
        self.port = started.result(10)

    @property
    def url(self) -> str:
        """What ``grpc_proxy`` must be set to for a daemon to use this link."""
        return f"http://127.0.0.1:{self.port}"

    # ------------------------------------------------------------------ what tests call

    def cut(self) -> None:
        """Reset every connection and refuse new ones until :meth:`heal`."""
        self._call(self._do_cut)

    def stall(self) -> None:
        """Stop every byte in both directions, silently, until :meth:`heal`."""
        self._call(self._flowing.clear)

    def heal(self) -> None:
        """Forward again (a stalled link delivers what it held back)."""

        def do() -> None:
            self._cut = False
            self._flowing.set()

        self._call(do)

    def limit(self, bytes_per_second: float | None) -> None:
        """Forward at most this many bytes per second each way (None: as fast as possible)."""

        def do() -> None:
            self._rate = bytes_per_second

        self._call(do)

    def cut_after_upstream(self, size: int) -> threading.Event:
        """Cut the link once ``size`` more bytes went from the client to the server; the
        event is set when it happened."""
        happened = threading.Event()

        def do() -> None:
            self._trigger = (self.upstream_bytes + size, happened)

        self._call(do)
        return happened

    def close(self) -> None:
        """Reset every connection and stop the proxy's thread."""
        if not self._thread.is_alive():
            return
        self._submit(self._shut()).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def __enter__(self) -> FaultyLink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ the proxy's thread

    def _call(self, action: Callable[[], None]) -> None:
        async def run() -> None:
            action()

        self._submit(run()).result(10)

    def _submit(self, coro: Coroutine[Any, Any, T]) -> Future[T]:
        return asyncio.run_coroutine_threadsafe(coro, self._loop)

    def _run(self, started: Future[int]) -> None:
        asyncio.set_event_loop(self._loop)
        listener = socket.socket()
        _small_buffers(listener)  # accepted sockets inherit them
        listener.bind(("127.0.0.1", 0))
        server = self._loop.run_until_complete(
            asyncio.start_server(self._accept, sock=listener, limit=MAX_REQUEST)
        )
        started.set_result(listener.getsockname()[1])
        try:
            self._loop.run_forever()
        finally:
            server.close()
            self._loop.close()

    async def _shut(self) -> None:
        """Reset every connection and let every connection's task end."""
        self._do_cut()
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _do_cut(self) -> None:
        self._cut = True
        self._trigger = None
        for pipe in list(self._pipes):
            pipe.reset()
        self._pipes.clear()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        pipe = _Pipe(writer)
        if self._cut:
            pipe.reset()
            return
        self._pipes.add(pipe)
        self.connections += 1
        try:
            await self._flowing.wait()
            request = await reader.readuntil(b"\r\n\r\n")
            host, _, port = request.split(b" ", 2)[1].decode().rpartition(":")
            server_reader, server_writer = await asyncio.open_connection(host, int(port))
            pipe.server = server_writer
            _small_buffers(server_writer.get_extra_info("socket"))
            writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            up = asyncio.ensure_future(self._forward(reader, server_writer, upstream=True))
            down = asyncio.ensure_future(self._forward(server_reader, writer, upstream=False))
            pipe.tasks = [up, down]
            await asyncio.wait(pipe.tasks, return_when=asyncio.FIRST_COMPLETED)
        except (OSError, ValueError, IndexError, asyncio.IncompleteReadError):
            pass
        finally:
            for task in pipe.tasks:
                task.cancel()
            for side in (writer, pipe.server):
                if side is not None:
                    side.close()
            self._pipes.discard(pipe)

    async def _forward(
        self, source: asyncio.StreamReader, target: asyncio.StreamWriter, upstream: bool
    ) -> None:
        pace = self._pace_up if upstream else self._pace_down
        while True:
            await self._flowing.wait()
            data = await source.read(READ_BYTES)
            if not data:
                with contextlib.suppress(OSError):
                    target.write_eof()
                return
            await self._flowing.wait()
            await pace.wait(len(data), self._rate)
            await self._flowing.wait()
            target.write(data)
            await target.drain()
            if upstream:
                self.upstream_bytes += len(data)
                self._check_trigger()
            else:
                self.downstream_bytes += len(data)

    def _check_trigger(self) -> None:
        if self._trigger is not None and self.upstream_bytes >= self._trigger[0]:
            happened = self._trigger[1]
            self._do_cut()
            happened.set()


def _small_buffers(sock: Any) -> None:
    """Keep what the link holds in flight near what a real hop would (a socket or asyncio's
    wrapper of one)."""
    if sock is None:
        return
    for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, option, SOCKET_BUFFER)
