"""flserverd.links.ClientLink: the server's end of a client's control stream, on its own."""

from __future__ import annotations

import asyncio

import pytest

from flcore.federation import Closed, Command, CommandResult, RunEnded
from flserverd.links import ClientLink


def test_messages_go_out_in_order_until_the_link_closes() -> None:
    async def scenario() -> None:
        link = ClientLink("site-a")
        link.send(RunEnded(1, "training stopped", "finished"))
        link.send(Closed("removed"))
        assert await link.next() == RunEnded(1, "training stopped", "finished")
        assert await link.next() == Closed("removed")
        link.close()
        link.send(Closed("too late"))  # dropped: nobody writes the stream any more
        assert await link.next() is None
        assert link.closed

    asyncio.run(scenario())


def test_a_call_is_answered_by_the_result_with_its_id() -> None:
    async def scenario() -> None:
        link = ClientLink("site-a")
        call = asyncio.ensure_future(link.call("check_status", {"verbose": True}, timeout=5))
        command = await link.next()
        assert isinstance(command, Command)
        assert (command.name, command.args) == ("check_status", {"verbose": True})
        link.resolve(CommandResult("another-id", False, "not this one"))
        assert not call.done()
        link.resolve(CommandResult(command.command_id, True, "ok", {"status": "x"}))
        assert await call == CommandResult(command.command_id, True, "ok", {"status": "x"})

    asyncio.run(scenario())


def test_a_call_times_out_and_a_late_result_is_dropped() -> None:
    async def scenario() -> None:
        link = ClientLink("site-a")
        with pytest.raises(TimeoutError):
            await link.call("deploy", {}, timeout=0.01)
        command = await link.next()
        assert isinstance(command, Command)
        link.resolve(CommandResult(command.command_id, True, "late"))  # nobody waits: no error

    asyncio.run(scenario())


def test_closing_fails_pending_calls_and_refuses_new_ones() -> None:
    async def scenario() -> None:
        link = ClientLink("site-a")
        call = asyncio.ensure_future(link.call("start", {}, timeout=5))
        await link.next()
        link.close()
        with pytest.raises(ConnectionError, match="site-a disconnected"):
            await call
        with pytest.raises(ConnectionError, match="site-a disconnected"):
            await link.call("start", {}, timeout=5)

    asyncio.run(scenario())


def test_command_ids_differ() -> None:
    async def scenario() -> set[str]:
        link = ClientLink("site-a")
        calls = [asyncio.ensure_future(link.call("x", {}, timeout=5)) for _ in range(3)]
        ids = set()
        for _ in calls:
            command = await link.next()
            assert isinstance(command, Command)
            ids.add(command.command_id)
        link.close()
        await asyncio.gather(*calls, return_exceptions=True)
        return ids

    assert len(asyncio.run(scenario())) == 3
