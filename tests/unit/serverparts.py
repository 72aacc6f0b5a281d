"""What unit tests of the server's domain objects build a server from, without a kit."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from typing import Any

import pytest

from flcore.compression import WireChunk
from flcore.federation import SubmitHeader, Verdict
from flcore.startup import ServerStartup
from flserverd import server as server_module
from flserverd.exchange import ModelExchange
from flserverd.statedb import StateDB


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


def full_state_disk(monkeypatch: pytest.MonkeyPatch) -> dict[str, bool]:
    """The state database's disk is full while the returned ``on`` is set (SQLite says so
    as it does on a real one); the server retries every 10 ms."""
    full = {"on": True}
    write = StateDB._write

    def full_disk(db: StateDB, statements: list[tuple[str, tuple[Any, ...]]]) -> int:
        if full["on"]:
            error = sqlite3.OperationalError("database or disk is full")
            error.sqlite_errorcode = sqlite3.SQLITE_FULL
            raise error
        return write(db, statements)

    monkeypatch.setattr(StateDB, "_write", full_disk)
    monkeypatch.setattr(server_module, "STORAGE_RETRY_S", 0.01)
    return full
