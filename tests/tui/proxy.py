"""A TCP forwarder between the console and a real server: cut only the console's link.

The sites keep their own connections to the server, so cutting this one
is exactly "the console lost the server, the federation did not". It runs
in the test's event loop, beside the console's ``run_test``.
"""

from __future__ import annotations

import asyncio
import contextlib


class Proxy:
    """Forwards ``localhost:port`` to ``localhost:target``; :meth:`cut` drops everything."""

    def __init__(self, port: int, target: int) -> None:
        self.port = port
        self.target = target
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        """Listen (again, after a cut) on the same port."""
        self._server = await asyncio.start_server(self._serve, "localhost", self.port)

    async def cut(self) -> None:
        """Stop listening and break every forwarded connection at once."""
        if self._server is not None:
            self._server.close()
            self._server = None
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(
                "localhost", self.target
            )
        except OSError:
            writer.transport.abort()
            return
        self._writers |= {writer, upstream_writer}
        await asyncio.gather(
            self._pump(reader, upstream_writer), self._pump(upstream_reader, writer)
        )

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.transport.abort()
        self._writers.discard(writer)
