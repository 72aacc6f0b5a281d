"""A site that floods its control stream cannot flood every console: FLServer takes a bounded
number of messages and log lines per instance and drops the rest, saying so."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest

from flcore import status as st
from flcore.federation import LogBatch, MachineInfo, StatusChanged, Unreadable
from flcore.feed import ClientRow, LogEntry
from flcore.identity import KIND_CLIENT, Identity
from flserverd.server import FLServer
from flserverd.throttle import LOG_LINE_BURST, MESSAGE_BURST
from tests.unit.test_exchange import on_server

FLOODER = Identity("site-a", "hospital", KIND_CLIENT, serial=1)
CALM = Identity("site-b", "hospital", KIND_CLIENT, serial=2)


def _drain(feed: object) -> list[object]:
    queue = feed._queue  # type: ignore[attr-defined]
    bodies = []
    while not queue.empty():
        event = queue.get_nowait()
        if event is not None:
            bodies.append(event.body)
    return bodies


def test_statuses_and_log_lines_beyond_the_limits_are_dropped_per_instance(
    tmp_path: Path,
) -> None:
    async def scenario(server: FLServer) -> None:
        flooder = server.login(FLOODER, "", MachineInfo()).client
        calm = server.login(CALM, "", MachineInfo()).client
        feed = server.bus.subscribe()
        for i in range(5 * MESSAGE_BURST):  # as fast as it can, statuses that all differ
            status = st.ClientStatus(status=st.STARTED, round=i)
            assert server.received(flooder, StatusChanged(status))
        assert server.received(calm, StatusChanged(st.ClientStatus(status=st.STARTED)))
        rows = [b for b in _drain(feed) if isinstance(b, ClientRow)]
        from_flooder = [r for r in rows if r.instance == "site-a"]
        assert MESSAGE_BURST <= len(from_flooder) < MESSAGE_BURST + 20
        assert [r.instance for r in rows if r.instance == "site-b"] == ["site-b"]

        # The other site, with messages to spare, sends far more log lines than it may.
        lines = tuple(LogEntry(time.time(), "INFO", "x", f"line {i}", "x") for i in range(500))
        for _ in range(4):
            server.received(calm, LogBatch(lines, 0))
        bodies = [b for b in _drain(feed) if isinstance(b, LogEntry)]
        shown = [b for b in bodies if b.message.startswith("line ")]
        assert LOG_LINE_BURST <= len(shown) < LOG_LINE_BURST + 20
        warnings = [b for b in bodies if "dropped by the server's rate limit" in b.message]
        assert warnings and {b.source for b in shown + warnings} == {"site-b"}
        assert server.registry.is_current(flooder) and server.registry.is_current(calm)

    on_server(tmp_path, scenario)


def test_messages_the_server_cannot_read_count_against_the_rate_and_are_named_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Empty control-stream messages (five bytes each) once bypassed the rate limit and put a
    WARNING line per message in the log and on every console's feed."""

    async def scenario(server: FLServer) -> None:
        flooder = server.login(FLOODER, "", MachineInfo()).client
        feed = server.bus.subscribe()
        for _ in range(10_000):
            assert server.received(flooder, Unreadable("a message with no body"))
        # The unreadable ones used up the site's messages: a status now is dropped too.
        server.received(flooder, StatusChanged(st.ClientStatus(status=st.STARTED, round=7)))
        rows = [b for b in _drain(feed) if isinstance(b, ClientRow) and b.instance == "site-a"]
        assert all(row.round != 7 for row in rows)

    with caplog.at_level(logging.WARNING, logger="flserverd.server"):
        on_server(tmp_path, scenario)
    named = [r.getMessage() for r in caplog.records if r.getMessage().startswith("site-a ")]
    assert named == [
        "site-a ignored a message: a message with no body",
        "site-a sends more than 20 messages a second: the rest is dropped",
    ]
