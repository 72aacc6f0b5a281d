"""What unit tests of the server's domain objects build a server from, without a kit."""

from __future__ import annotations

from collections.abc import AsyncIterator

from flcore.compression import WireChunk
from flcore.federation import SubmitHeader, Verdict
from flcore.startup import ServerStartup
from flserverd.exchange import ModelExchange


def server_startup() -> ServerStartup:
    """A server's startup settings as a kit would give them (ports are never opened)."""
    return ServerStartup(
        project="p",
        name="server",
        host="localhost",
        fed_port=1,
        admin_port=2,
        listen_host="localhost",
        heart_beat_timeout=60,
        heartbeat_interval=5,
    )


class Sender:
    """A client's end of an upload: it sends its chunks only after the exchange's go, and
    tells whether it got one."""

    def __init__(self, chunks: AsyncIterator[WireChunk]) -> None:
        self.went = False
        self._chunks = chunks

    async def go(self) -> None:
        self.went = True

    async def chunks(self) -> AsyncIterator[WireChunk]:
        async for chunk in self._chunks:
            assert self.went, "a chunk was read before the upload's go"
            yield chunk


async def upload(
    exchange: ModelExchange, instance: str, header: SubmitHeader, chunks: AsyncIterator[WireChunk]
) -> Verdict:
    """``exchange.receive`` as the servicer calls it, with a sender that waits for its go."""
    sender = Sender(chunks)
    return await exchange.receive(instance, header, sender.chunks(), sender.go, site=instance)
