"""A round's duration survives a step of the server's wall clock (NTP, a resumed VM).

The review saw ``run 4 round 4 aggregated from 1 clients in -3578.78s`` after the clock was
set back an hour mid-round: the duration was a difference of wall-clock readings. It is
measured on the monotonic clock now; the round's timestamp stays wall-clock.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from flcore.tensorfile import TensorFile
from flserverd.training import Training
from tests.unit.test_training_controller import RUN, aggregated, make_setup, submit

STARTED = 1_800_000_000.0
STEPPED_BACK = STARTED - 3600.0


class SteppedClock:
    """The wall clock of a server whose time is set back an hour once the round has begun."""

    def __init__(self) -> None:
        self.now = STARTED

    def __call__(self) -> float:
        return self.now


def test_a_wall_clock_step_back_mid_round_records_a_true_duration(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    setup = make_setup(tmp_path, num_rounds=2, min_num_clients=1, max_num_clients=1)
    clock = SteppedClock()

    async def scenario() -> None:
        manifest = TensorFile(setup.store.round_model(RUN, 0)).manifest
        training = Training(
            setup.record,
            setup.config,
            manifest,
            setup.store,
            setup.db,
            setup.listener,
            clock=clock,
            timer=setup.timer,
        )
        training.admit("c1", 0)
        clock.now = STEPPED_BACK
        with caplog.at_level(logging.INFO, logger="flserverd.training"):
            await submit(training, setup, "c1", 0, [1, 1, 1, 1])
            await aggregated(training, setup, 1)
        await training.close(1)

    asyncio.run(scenario())
    (row,) = setup.metrics_rows()
    assert 0.0 <= row["duration_s"] < 60.0
    assert row["time"] == STEPPED_BACK
    (logged,) = [r.getMessage() for r in caplog.records if "aggregated from" in r.getMessage()]
    assert " in -" not in logged
