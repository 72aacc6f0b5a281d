"""A command to clients waits briefly for one whose control stream just ended (it may be
reconnecting) and not at all for one gone longer: a site stopped by its IT stays registered
until its heartbeat timeout (600 s by default), and every ``deploy`` or ``start client`` to
all clients waited the whole grace for it before saying it was not connected."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from flcore import status as st
from flserverd.commands import AdminCommands
from flserverd.links import NOT_CONNECTED, no_reply
from flserverd.server import RECONNECT_GRACE_S, FLServer
from tests.unit.test_status_replies import join, run_with


def test_a_client_gone_longer_than_the_grace_is_not_waited_for(tmp_path: Path) -> None:
    async def scenario(server: FLServer, cmds: AdminCommands) -> None:
        gone = join(server, "site-a")
        server.detach(gone, server.links[gone.token_key])
        gone.heard_at -= RECONNECT_GRACE_S + 1  # its stream ended, and it was last heard,
        gone.stream_closed_at -= RECONNECT_GRACE_S + 1  # longer ago than the grace
        started = time.monotonic()
        [(_, result)] = await server.call([gone], "check_status", {}, 30.0)
        assert (result.ok, result.text) == (False, NOT_CONNECTED)
        assert time.monotonic() - started < RECONNECT_GRACE_S / 2

    run_with(tmp_path, scenario)


def test_a_client_whose_stream_just_ended_gets_the_command_once_it_is_back(
    tmp_path: Path,
) -> None:
    async def scenario(server: FLServer, cmds: AdminCommands) -> None:
        back = join(server, "site-a")
        server.detach(back, server.links[back.token_key])
        call = asyncio.ensure_future(server.call([back], "check_status", {}, 0.5))
        await asyncio.sleep(0)  # the call runs up to its wait for the stream
        assert not call.done()
        server.attach(back, st.ClientStatus())
        [(_, result)] = await call
        # Sent on the new stream, which this test never answers.
        assert (result.ok, result.text) == (False, no_reply(0.5))

    run_with(tmp_path, scenario)
