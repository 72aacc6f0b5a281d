"""Sites of an earlier flstack keep working with this server (tests/unit/test_wire_contract.py
pins the wire; this is the one name it keeps for sites of 2026-12-06 and -07)."""

from __future__ import annotations

import asyncio

import pytest

from flclientd.connection import Connection
from flcore.federation import MachineInfo
from flcore.proto.gen import flstack_federation_pb2 as fed_pb2
from flcore.startup import load_client
from flcore.tls import TlsFiles
from fldev.cluster import Cluster
from fldev.poll import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


def test_a_site_of_december_opens_its_control_stream_by_its_name_then(cluster: Cluster) -> None:
    """Those sites called the control stream Control, and a server that knew only Session
    answered "Method not found!": they logged in, and never got a task."""
    cluster.server()
    workspace = cluster.root / "flclient1"
    startup = load_client(workspace)

    async def scenario() -> None:
        conn = Connection(startup, TlsFiles.named_by(startup, workspace / "startup"))
        try:
            await conn.login("", MachineInfo(device="cpu"))
            control = conn._channel.stream_stream(
                "/flstack.v1.Federation/Control",
                request_serializer=fed_pb2.ClientMessage.SerializeToString,
                response_deserializer=fed_pb2.ServerMessage.FromString,
            )()
            await control.write(fed_pb2.ClientMessage(hello=fed_pb2.Hello(token=conn.token)))
            await asyncio.to_thread(  # the admin's status runs a loop of its own
                wait_until,
                lambda: any(c["connected"] for c in cluster.status()["clients"]),
                30,
                "the site's stream to be open",
            )
            control.cancel()
        finally:
            await conn.close()

    asyncio.run(scenario())
