"""What no width hides: a long failure leaves the heartbeats their room, and spare columns
go to the texts that are cut (executed review "the console never lies", findings 5)."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path

import pytest

from flcore import status as st
from fldev.poll import wait_for
from fltui.widgets.clients import ClientsTable
from fltui.widgets.roundpane import TEXT_LINES
from tests.tui.recorded import RUN
from tests.tui.test_console import console, ready

SIZES = [(120, 36), (200, 50)]

ERROR = (
    "the training process stopped on an error it did not expect, RuntimeError (review: "
    "deliberate failure at flclient3 (boom) while it read the third batch of the second "
    "epoch of its local data set); the traceback shows where, and the site's log says more"
)


@pytest.mark.parametrize("size", SIZES)
def test_a_long_failure_leaves_the_heartbeats_their_room(
    tmp_path: Path, size: tuple[int, int]
) -> None:
    stopped = replace(
        RUN,
        server_status=st.STOPPED,
        reason="aborted by admin@lead.org",
        site_errors={"flclient3": ERROR},
    )

    async def scenario() -> None:
        app, link = console(tmp_path)
        async with app.run_test(size=size) as pilot:
            await ready(pilot)
            beats = app.dashboard.query_one("#heartbeats")
            room = beats.content_size.height
            link.push(stopped)
            updates = app.dashboard.query_one("#round-updates")
            await wait_for(pilot, lambda: "Failed: flclient3" in str(updates.render()))
            await pilot.pause()
            assert beats.content_size.height >= min(room, 3), (room, beats.content_size)
            lines = str(updates.render()).splitlines()
            assert len(lines) <= 1 + TEXT_LINES, lines  # the ending, then the failure
            assert lines[-1].endswith("…")

    asyncio.run(scenario())


def test_room_a_short_host_leaves_goes_to_a_cut_org(tmp_path: Path) -> None:
    """At 200x50 the org was cut (``org-flclie…``) beside 26 empty columns of host."""
    long_org = "org-flclient1-hospital"

    async def scenario() -> None:
        app, link = console(tmp_path)
        async with app.run_test(size=(200, 50)) as pilot:
            await ready(pilot)
            table = app.dashboard.query_one(ClientsTable)
            rows = app.store.clients
            link.push(*(replace(row, hostname="vm") for row in rows.values()))
            link.push(replace(rows["flclient1"], hostname="vm", org=long_org))
            await wait_for(pilot, lambda: str(table.get_cell("flclient1", "org")) == long_org)
            assert str(table.get_cell("flclient2", "host")) == "vm"

    asyncio.run(scenario())
