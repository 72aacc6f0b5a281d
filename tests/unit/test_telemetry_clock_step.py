"""The server's metrics judge a site's silence on the monotonic clock.

``flstack_server_clients{state="stale"}`` compared the wall clock with each heartbeat's
wall-clock time: a step of the server's clock (NTP, a resumed VM) an hour forward made every
site stale until it beat again, and an hour back hid a silent one for that hour.
"""

from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace
from typing import cast

import pytest

from flcore.feed import ClientRow, Heartbeat, RunInfo, ServerInfo, Snapshot
from flserverd import telemetry as telemetry_module
from flserverd.server import FLServer
from flserverd.telemetry import ServerTelemetry
from tests.unit.test_telemetry import samples_of, value

HOUR = 3600.0


class WallClock:
    """The server's wall clock, stepped by the test; the monotonic clock runs on."""

    def __init__(self) -> None:
        self.step = 0.0

    def time(self) -> float:
        return time.time() + self.step

    def monotonic(self) -> float:
        return time.monotonic()


def states(telemetry: ServerTelemetry) -> dict[str, float | None]:
    got = samples_of(telemetry)
    return {s: value(got, "flstack_server_clients", state=s) for s in ("online", "stale")}


@pytest.mark.parametrize("step", [HOUR, -HOUR])
def test_a_wall_clock_step_changes_no_site_health(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, step: float
) -> None:
    clock = WallClock()
    monkeypatch.setattr(telemetry_module, "time", clock)
    server = cast(FLServer, SimpleNamespace(workspace=tmp_path, store=None))
    telemetry = ServerTelemetry(server)
    now = clock.time()
    beating = ClientRow("flclient1", "flclient1", connected=True, last_heartbeat=now)
    silent = ClientRow("flclient2", "flclient2", connected=True, last_heartbeat=now - 600)
    info = ServerInfo("p", "server", heartbeat_interval_s=5.0)
    telemetry.seen(Snapshot(info, RunInfo(), clients=(beating, silent)))
    assert states(telemetry) == {"online": 1, "stale": 1}
    clock.step = step
    assert states(telemetry) == {"online": 1, "stale": 1}  # flclient1 beat a moment ago
    telemetry.seen(Heartbeat("flclient1", clock.time()))
    assert states(telemetry) == {"online": 1, "stale": 1}
