"""flserverd.links: the server's end of a client's control stream, and the fan-out of one
command to many of them, on their own (no gRPC)."""

from __future__ import annotations

import asyncio

from flcore.federation import Closed, Command, CommandResult, RunEnded
from flserverd.links import DISCONNECTED, NOT_CONNECTED, ClientLink, call_all, no_reply


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


async def command_on(link: ClientLink) -> Command:
    command = await link.next()
    assert isinstance(command, Command)
    return command


def test_a_call_is_answered_by_the_result_with_its_id() -> None:
    async def scenario() -> None:
        link = ClientLink("site-a")
        call = asyncio.ensure_future(call_all([link], "check_status", {"verbose": True}, 5))
        command = await command_on(link)
        assert (command.name, command.args) == ("check_status", {"verbose": True})
        link.resolve(CommandResult("another-id", False, "not this one"))
        assert not call.done()
        link.resolve(CommandResult(command.command_id, True, "ok", {"status": "x"}))
        assert await call == [CommandResult(command.command_id, True, "ok", {"status": "x"})]

    asyncio.run(scenario())


def test_a_call_times_out_and_a_late_result_is_dropped() -> None:
    async def scenario() -> None:
        link = ClientLink("site-a")
        assert await call_all([link], "deploy", {}, 0.01) == [
            CommandResult("", False, no_reply(0.01))
        ]
        command = await command_on(link)
        link.resolve(CommandResult(command.command_id, True, "late"))  # nobody waits: no error

    asyncio.run(scenario())


def test_closing_fails_pending_calls_and_a_closed_link_is_not_asked() -> None:
    async def scenario() -> None:
        link = ClientLink("site-a")
        call = asyncio.ensure_future(call_all([link], "start", {}, 5))
        await link.next()
        link.close()
        assert await call == [CommandResult("", False, DISCONNECTED)]
        assert await call_all([link], "start", {}, 5) == [CommandResult("", False, DISCONNECTED)]
        assert await link.next() is None  # nothing was queued after the close

    asyncio.run(scenario())


def test_each_fan_out_has_its_own_command_id() -> None:
    async def scenario() -> set[str]:
        link = ClientLink("site-a")
        calls = [asyncio.ensure_future(call_all([link], "x", {}, 5)) for _ in range(3)]
        ids = {(await command_on(link)).command_id for _ in calls}
        link.close()
        await asyncio.gather(*calls)
        return ids

    assert len(asyncio.run(scenario())) == 3


def test_a_fan_out_reports_every_site_in_order_with_one_task_and_one_deadline() -> None:
    """1,000 sites: those that answer, one that never does (reported as timed out, as
    itself), one that disconnects and one with no stream; the wait costs one task, not
    one per site, and one command object is queued on every link."""

    async def scenario() -> None:
        links = [ClientLink(f"site-{i:04d}") for i in range(1000)]
        silent, leaving = links[500], links[900]
        call = asyncio.ensure_future(call_all([*links, None], "check_status", {}, 0.5))
        commands = [await command_on(link) for link in links]
        assert len({id(c) for c in commands}) == 1
        assert len(asyncio.all_tasks()) == 2  # this scenario and the fan-out
        command_id = commands[0].command_id
        leaving.close()
        for link in links:
            if link is not silent and link is not leaving:
                link.resolve(CommandResult(command_id, True, link.instance))
        results = await call
        assert len(results) == 1001
        assert results[0] == CommandResult(command_id, True, "site-0000")
        assert results[999] == CommandResult(command_id, True, "site-0999")
        assert results[500] == CommandResult("", False, no_reply(0.5))
        assert results[900] == CommandResult("", False, DISCONNECTED)
        assert results[1000] == CommandResult("", False, NOT_CONNECTED)
        assert sum(r.ok for r in results) == 998
        silent.resolve(CommandResult(command_id, True, "late"))  # forgotten: dropped

    asyncio.run(scenario())


def test_a_fan_out_that_every_site_answered_returns_without_waiting_for_the_deadline() -> None:
    async def scenario() -> None:
        links = [ClientLink("a"), ClientLink("b")]
        call = asyncio.ensure_future(call_all(links, "check_status", {}, 3600))
        for link in links:
            command = await command_on(link)
            link.resolve(CommandResult(command.command_id, True, link.instance))
        results = await asyncio.wait_for(call, 5)
        assert [r.text for r in results] == ["a", "b"]

    asyncio.run(scenario())
