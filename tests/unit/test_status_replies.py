"""``check_status server`` against a real FLServer (no gRPC): the client lines it keeps between
calls are written again whenever a client joins or leaves, and the rows it sends when asked
are never stale (a status change or a heartbeat shows at once)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path

from flcore import status as st
from flcore.federation import MachineInfo
from flcore.identity import KIND_CLIENT, ROLE_SUPER, Identity
from flserverd.commands import AdminCommands, Reply
from flserverd.registry import RegisteredClient
from flserverd.server import FLServer
from tests.unit.serverparts import server_startup


def run_with(
    tmp_path: Path, scenario: Callable[[FLServer, AdminCommands], Awaitable[None]]
) -> None:
    async def go() -> None:
        server = FLServer(tmp_path, server_startup(), "test")
        await server.open()
        try:
            await scenario(server, AdminCommands(server))
        finally:
            await server.close(1)

    asyncio.run(go())


def join(server: FLServer, name: str) -> RegisteredClient:
    client = server.login(Identity(name, "hospital", KIND_CLIENT), "", MachineInfo()).client
    server.attach(client, st.ClientStatus())
    return client


async def status(cmds: AdminCommands, line: str = "check_status server") -> Reply:
    reply = await cmds.execute("admin@lead.org", ROLE_SUPER, line, 5.0, False)
    assert reply.ok, reply.text
    return reply


def listed(reply: Reply) -> list[str]:
    lines = reply.text.splitlines()
    start = lines.index(next(line for line in lines if line.startswith("Registered clients:")))
    return [line.split("\t")[1].removeprefix("instance name:") for line in lines[start + 1 :]]


def test_the_client_lines_follow_every_join_and_removal(tmp_path: Path) -> None:
    async def scenario(server: FLServer, cmds: AdminCommands) -> None:
        b = join(server, "site-b")
        a = join(server, "site-a")
        first = await status(cmds)
        assert "Registered clients: 2" in first.text and listed(first) == ["site-a", "site-b"]
        assert f"client name:site-a\tinstance name:site-a\ttoken: {a.token_id}" in first.text
        assert first.data["registered"] == 2 and "clients" not in first.data
        join(server, "site-c")
        assert listed(await status(cmds)) == ["site-a", "site-b", "site-c"]
        server.drop(b, st.LOGGED_OUT)
        after = await status(cmds)
        assert listed(after) == ["site-a", "site-c"] and after.data["registered"] == 2
        again = join(server, "site-b")  # a new registration: a new token
        assert again.token_id != b.token_id
        assert f"instance name:site-b\ttoken: {again.token_id}" in (await status(cmds)).text

    run_with(tmp_path, scenario)


def test_heartbeats_and_statuses_keep_the_lines_and_the_rows_show_them_at_once(
    tmp_path: Path,
) -> None:
    async def scenario(server: FLServer, cmds: AdminCommands) -> None:
        site = join(server, "site-a")
        kept = cmds.roster.lines(server.registry)
        rows = (await status(cmds, "check_status server clients")).data["clients"]
        assert [r["status"] for r in rows] == [st.NOT_STARTED]
        server.heartbeat(site, st.ClientStatus(status=st.STARTED, run_number=0, round=2))
        site.last_heartbeat = 12345.0
        assert cmds.roster.lines(server.registry) is kept  # nothing listed changed
        (row,) = (await status(cmds, "check_status server clients")).data["clients"]
        assert (row["status"], row["round"], row["last_heartbeat"]) == (st.STARTED, 2, 12345.0)
        assert set(row) >= {"instance", "client_name", "token_id", "detail", "connected"}
        server.detach(site, server.links[site.token_key])
        (row,) = (await status(cmds, "check_status server clients")).data["clients"]
        assert row["connected"] is False

    run_with(tmp_path, scenario)


def test_only_the_word_clients_may_follow_server(tmp_path: Path) -> None:
    async def scenario(server: FLServer, cmds: AdminCommands) -> None:
        for line in ("check_status server client", "check_status server clients x"):
            reply = await cmds.execute("admin@lead.org", ROLE_SUPER, line, 5.0, False)
            assert not reply.ok
            assert reply.text == "usage: check_status server [clients] | client [instance...]"

    run_with(tmp_path, scenario)
