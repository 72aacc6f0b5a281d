"""What a site says when it cannot connect: its own certificate that ended, said as at
start (exit 2) rather than a retry window of "Socket closed" and a restart for ever; a
server that closes every handshake named as refusing the kit, and a server down not."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import cast

import grpc
import pytest

from flclientd.connection import Connection
from flclientd.sitestate import SiteStore
from flclientd.uplink import CLOSED_HINT, EXIT_REFUSED, EXIT_RETRY_WINDOW, Uplink
from flcore.certlife import CertLife, participant_renewal
from flcore.federation import MachineInfo
from flcore.startup import ClientStartup
from flcore.status import ClientStatus

CLOSED = (
    "failed to connect to all addresses; last error: UNAVAILABLE: ipv4:127.0.0.1:1: Socket closed"
)
DOWN = (
    "failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:1: Failed to "
    "connect to remote host: Connection refused"
)


class Unreachable:
    """A server every login to fails as ``details`` says."""

    def __init__(self, details: str) -> None:
        self.details = details

    async def login(self, token: str, info: MachineInfo) -> object:
        raise grpc.aio.AioRpcError(
            grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), grpc.aio.Metadata(), self.details
        )


def run_uplink(tmp_path: Path, details: str, lives: list[CertLife]) -> int:
    startup = ClientStartup(
        "p", "site-a", "localhost", 1, heartbeat_interval=3600, retry_window=1.0
    )
    uplink = Uplink(
        cast(Connection, Unreachable(details)),
        startup,
        SiteStore(tmp_path / "state.json"),
        MachineInfo(),
        lambda: ClientStatus(status="now"),
        lambda message: None,
        None,
        lives,
    )
    return asyncio.run(uplink.run())


def test_a_site_whose_certificate_ended_says_so_at_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    now = datetime.now(UTC)
    ended = CertLife(
        "this kit's certificate (site-a)",
        now - timedelta(days=360),
        now - timedelta(minutes=1),
        participant_renewal("site-a"),
    )
    with caplog.at_level(logging.WARNING, "flclientd.uplink"):
        assert run_uplink(tmp_path, CLOSED, [ended]) == EXIT_REFUSED
    [said] = [r.getMessage() for r in caplog.records]
    assert said == ended.problem(now)


@pytest.mark.parametrize(("details", "hinted"), [(CLOSED, True), (DOWN, False)])
def test_a_server_that_closes_every_handshake_is_told_from_one_that_is_down(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, details: str, hinted: bool
) -> None:
    now = datetime.now(UTC)
    valid = CertLife("this kit's certificate (site-a)", now, now + timedelta(days=30), "")
    with caplog.at_level(logging.ERROR, "flclientd.uplink"):
        assert run_uplink(tmp_path, details, [valid]) == EXIT_RETRY_WINDOW
    [said] = [r.getMessage() for r in caplog.records]
    assert said.startswith("server unreachable for ")
    assert said.endswith(CLOSED_HINT) is hinted
