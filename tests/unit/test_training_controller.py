"""flserverd.training.Training driven directly on an event loop (no gRPC, no daemons)."""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, cast

import numpy as np
import pytest
import safetensors.numpy

from flcore import status as st
from flcore.appconfig import ServerAppConfig
from flcore.federation import SubmitOutcome, TaskKind, TaskOffer, Verdict
from flcore.tensorfile import TensorFile
from fldev.poll import wait_until_async
from flserverd import training as training_module
from flserverd.aggregator import Aggregator, CoordinateWise
from flserverd.runstore import RunStore
from flserverd.statedb import RoundSummary, RunRecord, StateDB
from flserverd.training import (
    PHASE_FINAL_VALIDATION,
    PHASE_TRAINING,
    Refusal,
    RoundState,
    Training,
)

RUN = 1


@dataclass
class RecordingListener:
    """Test double of the TrainingListener protocol: remembers what it was told."""

    offers: list[tuple[list[str], TaskOffer]] = field(default_factory=list)
    changes: int = 0
    ended: list[RunRecord] = field(default_factory=list)

    def offer(self, instances: Iterable[str], offer: TaskOffer) -> None:
        self.offers.append((list(instances), offer))

    def run_changed(self) -> None:
        self.changes += 1

    def run_ended(self, run: RunRecord) -> None:
        self.ended.append(run)


@dataclass
class Scheduled:
    """One call a ManualTimer holds until the test fires it."""

    delay: float
    callback: Callable[[], None]
    cancelled: bool = False
    fired: bool = False

    def cancel(self) -> None:
        self.cancelled = True

    def fire(self) -> None:
        assert not self.cancelled and not self.fired
        self.fired = True
        self.callback()


@dataclass
class ManualTimer:
    """The round timer, driven by the test: nothing fires until the test says so."""

    calls: list[Scheduled] = field(default_factory=list)

    def __call__(self, delay: float, callback: Callable[[], None]) -> Scheduled:
        scheduled = Scheduled(delay, callback)
        self.calls.append(scheduled)
        return scheduled

    @property
    def pending(self) -> list[Scheduled]:
        return [s for s in self.calls if not s.cancelled and not s.fired]


@dataclass
class Setup:
    """Everything a Training needs, on disk in tmp_path."""

    root: Path
    store: RunStore
    db: StateDB
    record: RunRecord
    config: ServerAppConfig
    listener: RecordingListener
    timer: ManualTimer = field(default_factory=ManualTimer)

    def training(self) -> Training:
        manifest = TensorFile(self.store.round_model(RUN, self.record.next_round)).manifest
        return Training(
            self.record,
            self.config,
            manifest,
            self.store,
            self.db,
            self.listener,
            clock=lambda: 1000.0,
            timer=self.timer,
        )

    def update(self, name: str, w: list[float], b: float = 0.0) -> TensorFile:
        path = self.root / "updates" / f"{name}.safetensors"
        path.parent.mkdir(exist_ok=True)
        safetensors.numpy.save_file(
            {"w": np.array(w, dtype=np.float32), "b": np.array([b], dtype=np.float32)}, path
        )
        return TensorFile(path)

    def model(self, path: Path) -> dict[str, np.ndarray[Any, Any]]:
        return safetensors.numpy.load_file(path)

    def metrics_rows(self) -> list[dict[str, Any]]:
        path = self.store.run_dir(RUN) / "metrics.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines()]

    def round_files(self) -> list[str]:
        return sorted(p.name for p in (self.store.run_dir(RUN) / "models").iterdir())


def make_setup(tmp_path: Path, start_round: int = 0, **config: Any) -> Setup:
    store = RunStore(tmp_path)
    store.create_run(RUN)
    model = store.round_model(RUN, start_round)
    model.parent.mkdir(parents=True)
    safetensors.numpy.save_file(
        {"w": np.zeros(4, dtype=np.float32), "b": np.zeros(1, dtype=np.float32)}, model
    )
    db = StateDB(tmp_path / "state.db")
    app = ServerAppConfig(start_round=start_round, **config)
    record = RunRecord(
        run_number=RUN,
        status=st.STARTED,
        phase=PHASE_TRAINING,
        app="app",
        start_round=start_round,
        num_rounds=app.num_rounds,
        next_round=start_round,
    )
    db.save_run(record)
    return Setup(tmp_path, store, db, record, app, RecordingListener())


async def until(condition: Callable[[], bool], timeout: float = 2.0) -> None:
    """Let the loop run until ``condition`` holds (aggregation runs in a task and a thread)."""
    await wait_until_async(condition, timeout, "the condition", interval=0.002)


async def aggregated(training: Training, setup: Setup, rounds: int) -> None:
    """Wait until ``rounds`` rounds are aggregated, their files written and the next round
    offered (the aggregation task is gone then)."""

    def written() -> int:
        path = setup.store.run_dir(RUN) / "metrics.jsonl"
        return len(path.read_text().splitlines()) if path.exists() else 0

    await until(lambda: written() >= rounds and not training._tasks)


async def submit(
    training: Training,
    setup: Setup,
    instance: str,
    round_number: int,
    w: list[float],
    samples: int = 1,
    metrics: dict[str, float] | None = None,
) -> SubmitOutcome:
    update = setup.update(f"{instance}_r{round_number}_{time.monotonic_ns()}", w)
    outcome, _ = await training.accept_update(
        instance, round_number, update, samples, metrics or {}
    )
    return outcome


async def run_round(
    training: Training,
    setup: Setup,
    contributions: dict[str, tuple[list[float], int, dict[str, float]]],
) -> None:
    number = training.round.number
    for instance in contributions:
        training.admit(instance, number)
    for instance, (w, samples, metrics) in contributions.items():
        assert await submit(training, setup, instance, number, w, samples, metrics) is (
            SubmitOutcome.ACCEPTED
        )
    await until(lambda: training.current_round != number)
    await aggregated(training, setup, len(training.history))


# --------------------------------------------------------------------------- closing a round


def test_round_closes_when_max_clients_arrived(tmp_path: Path) -> None:
    setup = make_setup(
        tmp_path, num_rounds=3, min_num_clients=1, max_num_clients=2, wait_after_min_clients=30
    )

    async def scenario() -> None:
        training = setup.training()
        training.admit("c1", 0)
        training.admit("c2", 0)
        assert await submit(training, setup, "c1", 0, [1, 1, 1, 1]) is SubmitOutcome.ACCEPTED
        # min reached, but c2 is still awaited: the round waits for it (or the 30 s timer)
        assert training.round.number == 0 and not training.round.closed
        assert training.awaited() == ["c2"]
        assert [s.delay for s in setup.timer.pending] == [30]
        assert training.round.deadline == 1030.0
        assert await submit(training, setup, "c2", 0, [3, 3, 3, 3]) is SubmitOutcome.ACCEPTED
        await aggregated(training, setup, 1)
        assert training.round.deadline == 0.0
        assert setup.timer.pending == []  # the wait timer was cancelled
        assert setup.model(setup.store.global_model(RUN))["w"].tolist() == [2.0] * 4
        await training.close(1)

    asyncio.run(scenario())


def test_updates_wait_in_the_spool_until_their_round_is_aggregated(tmp_path: Path) -> None:
    """Accepted updates are folded in instance order (flserverd.aggregator.CanonicalFold): a
    later one waits in its file, and the round's files are gone once it is aggregated."""
    setup = make_setup(tmp_path, num_rounds=2, min_num_clients=2, max_num_clients=2)

    async def scenario() -> None:
        training = setup.training()
        training.admit("c1", 0)
        training.admit("c2", 0)
        assert await submit(training, setup, "c2", 0, [3, 3, 3, 3]) is SubmitOutcome.ACCEPTED
        kept = setup.store.spool_dir(RUN) / "round_0"
        assert sorted(p.name for p in kept.iterdir()) == ["c2.safetensors"]
        assert await submit(training, setup, "c1", 0, [1, 1, 1, 1]) is SubmitOutcome.ACCEPTED
        await aggregated(training, setup, 1)
        assert not kept.exists()
        assert setup.model(setup.store.global_model(RUN))["w"].tolist() == [2.0] * 4
        await training.close(1)

    asyncio.run(scenario())


class HeldFold:
    """The round's aggregator, with its folds held until the test lets them go (or failing
    with a full disk while ``full`` is set)."""

    def __init__(self, inner: Aggregator) -> None:
        self.inner = inner
        self.started = threading.Event()
        self.finished = threading.Event()
        self.release = threading.Event()
        self.full = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def fold_due(self, awaited: Collection[str]) -> int:
        self.started.set()
        assert self.release.wait(5), "the test never let the fold go"
        if self.full:
            raise OSError(errno.ENOSPC, "No space left on device")
        done = self.inner.fold_due(awaited)
        self.finished.set()
        return done


def test_the_sender_has_its_verdict_before_its_update_is_folded(tmp_path: Path) -> None:
    """An accepted update is recorded and kept; adding it into the sum (reading it all back)
    happens after the verdict, and the round is written only once it is done."""
    setup = make_setup(tmp_path, num_rounds=2, min_num_clients=2, max_num_clients=2)

    async def scenario() -> None:
        training = setup.training()
        held = HeldFold(training.round.aggregator)
        training.round.aggregator = held
        training.admit("c1", 0)
        training.admit("c2", 0)
        assert await submit(training, setup, "c1", 0, [1, 1, 1, 1]) is SubmitOutcome.ACCEPTED
        await until(held.started.is_set)
        assert not held.finished.is_set()
        assert setup.db.is_folded(RUN, 0, "c1") and training.round.contributed == {"c1": 1}
        assert await submit(training, setup, "c2", 0, [3, 3, 3, 3]) is SubmitOutcome.ACCEPTED
        assert training.round.closed and training.current_round == 0  # written after the fold
        held.release.set()
        await aggregated(training, setup, 1)
        assert held.finished.is_set()
        assert setup.model(setup.store.global_model(RUN))["w"].tolist() == [2.0] * 4
        await training.close(1)

    asyncio.run(scenario())


def test_a_fold_cut_short_by_a_full_disk_pauses_and_the_round_is_rebuilt(tmp_path: Path) -> None:
    setup = make_setup(tmp_path, num_rounds=2, min_num_clients=2, max_num_clients=2)

    async def scenario() -> None:
        training = setup.training()
        held = HeldFold(training.round.aggregator)
        training.round.aggregator = held
        held.full = True
        held.release.set()
        training.ready.update({"c1", "c2"})
        training.admit("c1", 0)
        training.admit("c2", 0)
        assert await submit(training, setup, "c1", 0, [1, 1, 1, 1]) is SubmitOutcome.ACCEPTED
        await until(lambda: bool(training.fault))
        assert training.fault.startswith("server disk full")
        assert training.round.contributed == {"c1": 1}  # counted: its file and record are kept
        assert await submit(training, setup, "c1", 0, [1, 1, 1, 1]) is SubmitOutcome.DUPLICATE
        held.full = False
        [retry] = setup.timer.pending
        retry.fire()
        await until(lambda: not training.fault)
        assert await submit(training, setup, "c2", 0, [3, 3, 3, 3]) is SubmitOutcome.ACCEPTED
        await aggregated(training, setup, 1)
        assert setup.model(setup.store.global_model(RUN))["w"].tolist() == [2.0] * 4
        await training.close(1)

    asyncio.run(scenario())


def test_round_closes_when_min_arrived_and_nobody_else_awaited(tmp_path: Path) -> None:
    setup = make_setup(
        tmp_path, num_rounds=3, min_num_clients=2, max_num_clients=5, wait_after_min_clients=60
    )

    async def scenario() -> None:
        training = setup.training()
        training.client_ready("c1")
        training.client_ready("c2")
        assert await submit(training, setup, "c1", 0, [1, 1, 1, 1]) is SubmitOutcome.ACCEPTED
        assert not training.round.closed  # below min
        assert setup.timer.calls == []
        assert await submit(training, setup, "c2", 0, [3, 3, 3, 3]) is SubmitOutcome.ACCEPTED
        assert training.round.closed
        await aggregated(training, setup, 1)
        assert setup.timer.calls == []  # did not wait the 60 s
        assert training.history[-1].clients == ["c1", "c2"]
        await training.close(1)

    asyncio.run(scenario())


def test_round_closes_after_wait_after_min_clients(tmp_path: Path) -> None:
    setup = make_setup(
        tmp_path, num_rounds=3, min_num_clients=1, max_num_clients=5, wait_after_min_clients=0.2
    )

    async def scenario() -> None:
        training = setup.training()
        training.client_ready("c1")
        training.client_ready("slow")
        assert await submit(training, setup, "c1", 0, [4, 4, 4, 4]) is SubmitOutcome.ACCEPTED
        assert training.awaited() == ["slow"]
        assert training.round.number == 0 and not training.round.closed
        [wait] = setup.timer.pending
        assert wait.delay == 0.2
        assert training.round.deadline == pytest.approx(1000.2)
        wait.fire()
        assert training.round.closed
        await aggregated(training, setup, 1)
        assert training.history[-1].clients == ["c1"]
        # the slow client's update for the aggregated round is now late
        assert await submit(training, setup, "slow", 0, [9, 9, 9, 9]) is SubmitOutcome.LATE
        assert setup.model(setup.store.global_model(RUN))["w"].tolist() == [4.0] * 4
        await training.close(1)

    asyncio.run(scenario())


def test_update_after_aggregation_is_late(tmp_path: Path) -> None:
    setup = make_setup(tmp_path, num_rounds=3, min_num_clients=1, max_num_clients=1)

    async def scenario() -> None:
        training = setup.training()
        await run_round(training, setup, {"c1": ([1, 1, 1, 1], 1, {})})
        assert training.check_submission("c2", RUN, 0) is not None
        verdict = training.check_submission("c2", RUN, 0)
        assert verdict is not None and verdict[0] is SubmitOutcome.LATE
        outcome, message = await training.accept_update(
            "c2", 0, setup.update("late", [5, 5, 5, 5]), 10, {}
        )
        assert outcome is SubmitOutcome.LATE
        assert "already aggregated" in message
        assert training.round.aggregator.count == 0  # not folded into the next round either
        assert not setup.db.is_folded(RUN, 0, "c2")
        # a round this server has not reached (it was restored from a backup) is discarded as
        # late: the site follows the server; another run is rejected
        future = training.check_submission("c1", RUN, 5)
        assert future is not None and future[0] is SubmitOutcome.LATE
        other_run = training.check_submission("c1", RUN + 1, 1)
        assert other_run is not None and other_run[0] is SubmitOutcome.REJECTED
        await training.close(1)

    asyncio.run(scenario())


def test_update_while_round_is_closing_is_late(tmp_path: Path) -> None:
    setup = make_setup(tmp_path, num_rounds=3, min_num_clients=1, max_num_clients=1)

    async def scenario() -> None:
        training = setup.training()
        assert await submit(training, setup, "c1", 0, [1, 1, 1, 1]) is SubmitOutcome.ACCEPTED
        # the aggregation task was spawned but has not run yet
        assert training.round.closed
        assert await submit(training, setup, "c2", 0, [7, 7, 7, 7]) is SubmitOutcome.LATE
        await aggregated(training, setup, 1)
        assert setup.model(setup.store.global_model(RUN))["w"].tolist() == [1.0] * 4
        await training.close(1)

    asyncio.run(scenario())


def test_same_instance_twice_is_duplicate(tmp_path: Path) -> None:
    setup = make_setup(tmp_path, num_rounds=3, min_num_clients=2, max_num_clients=2)

    async def scenario() -> None:
        training = setup.training()
        assert await submit(training, setup, "c1", 0, [1, 1, 1, 1], 5) is SubmitOutcome.ACCEPTED
        assert await submit(training, setup, "c1", 0, [9, 9, 9, 9], 5) is SubmitOutcome.DUPLICATE
        assert training.round.aggregator.count == 1
        assert training.round.contributed == {"c1": 5}
        assert await submit(training, setup, "c2", 0, [3, 3, 3, 3], 5) is SubmitOutcome.ACCEPTED
        await aggregated(training, setup, 1)
        assert setup.model(setup.store.global_model(RUN))["w"].tolist() == [2.0] * 4
        await training.close(1)

    asyncio.run(scenario())


def test_concurrent_updates_fold_once_each(tmp_path: Path) -> None:
    setup = make_setup(
        tmp_path, num_rounds=3, min_num_clients=1, max_num_clients=2, wait_after_min_clients=30
    )

    async def scenario() -> None:
        training = setup.training()
        training.admit("c1", 0)
        training.admit("c2", 0)
        outcomes = await asyncio.gather(
            submit(training, setup, "c1", 0, [1] * 4, 1),
            submit(training, setup, "c2", 0, [5] * 4, 1),
            submit(training, setup, "c3", 0, [100] * 4, 1),
            submit(training, setup, "c1", 0, [100] * 4, 1),
        )
        assert list(outcomes[:2]) == [SubmitOutcome.ACCEPTED, SubmitOutcome.ACCEPTED]
        assert outcomes[2] is SubmitOutcome.LATE  # max_num_clients=2 closed the round
        assert outcomes[3] in (SubmitOutcome.DUPLICATE, SubmitOutcome.LATE)
        await aggregated(training, setup, 1)
        assert setup.model(setup.store.global_model(RUN))["w"].tolist() == [3.0] * 4
        assert training.history[-1].clients == ["c1", "c2"]
        await training.close(1)

    asyncio.run(scenario())


def test_start_round_above_zero(tmp_path: Path) -> None:
    setup = make_setup(tmp_path, start_round=2, num_rounds=3, min_num_clients=1, max_num_clients=1)

    async def scenario() -> None:
        training = setup.training()
        assert training.current_offer() == TaskOffer(RUN, 2, TaskKind.TRAIN)
        with pytest.raises(Refusal):
            training.admit("c1", 0)
        await run_round(training, setup, {"c1": ([6] * 4, 1, {})})
        assert training.run.phase == PHASE_FINAL_VALIDATION
        assert training.current_round == 3
        assert setup.round_files() == ["round_3.safetensors"]
        assert [r["round"] for r in setup.metrics_rows()] == [2]
        await training.close(1)

    asyncio.run(scenario())


def test_zero_samples_rejected(tmp_path: Path) -> None:
    setup = make_setup(tmp_path, num_rounds=3, min_num_clients=1, max_num_clients=2)

    async def scenario() -> None:
        training = setup.training()
        assert await submit(training, setup, "c1", 0, [1, 1, 1, 1], 0) is SubmitOutcome.REJECTED
        assert training.round.aggregator.count == 0
        assert not setup.db.is_folded(RUN, 0, "c1")
        await training.close(1)

    asyncio.run(scenario())


def test_exactly_once_across_restart(tmp_path: Path) -> None:
    setup = make_setup(
        tmp_path, num_rounds=4, min_num_clients=2, max_num_clients=2, wait_after_min_clients=30
    )

    async def first_life() -> None:
        training = setup.training()
        await run_round(training, setup, {"c1": ([1] * 4, 1, {}), "c2": ([3] * 4, 1, {})})
        assert training.round.number == 1
        training.admit("c1", 1)
        training.admit("c2", 1)
        assert await submit(training, setup, "c1", 1, [10] * 4, 1) is SubmitOutcome.ACCEPTED
        assert setup.db.is_folded(RUN, 1, "c1")
        await training.close(1)  # the server stops; the running sum of round 1 is lost

    asyncio.run(first_life())
    setup.db.close()

    db = StateDB(tmp_path / "state.db")
    record = db.get_run(RUN)
    assert record is not None
    assert record.next_round == 1 and record.status == st.STARTED
    assert db.forget_unfinished_folds(RUN, record.next_round, record.num_rounds) == 1
    assert db.is_folded(RUN, 0, "c1")  # completed rounds keep their records
    assert not db.is_folded(RUN, 1, "c1")
    setup.db, setup.record = db, record

    async def second_life() -> None:
        training = setup.training()
        assert training.round.number == 1
        assert [r.round for r in training.history] == [0]
        assert await submit(training, setup, "c1", 0, [5] * 4, 1) is SubmitOutcome.LATE
        assert await submit(training, setup, "c1", 1, [10] * 4, 1) is SubmitOutcome.ACCEPTED
        assert await submit(training, setup, "c1", 1, [10] * 4, 1) is SubmitOutcome.DUPLICATE
        assert training.round.aggregator.count == 1
        training.admit("c2", 1)
        assert await submit(training, setup, "c2", 1, [20] * 4, 3) is SubmitOutcome.ACCEPTED
        await aggregated(training, setup, 2)
        # c1 counted once: (10*1 + 20*3) / 4
        assert setup.model(setup.store.global_model(RUN))["w"].tolist() == [17.5] * 4
        assert training.history[-1].samples == 4
        assert [r.round for r in db.round_records(RUN)] == [0, 1]
        await training.close(1)

    asyncio.run(second_life())
    db.close()


# --------------------------------------------------------------------------- admission, departures


def test_admit_enforces_max_num_clients(tmp_path: Path) -> None:
    setup = make_setup(tmp_path, num_rounds=3, min_num_clients=1, max_num_clients=2)

    async def scenario() -> None:
        training = setup.training()
        model = setup.store.round_model(RUN, 0)
        assert training.admit("c1", 0) == model
        assert training.admit("c2", 0) == model
        with pytest.raises(Refusal, match="max_num_clients=2"):
            training.admit("c3", 0)
        assert training.admit("c1", 0) == model  # an admitted client may fetch again
        assert training.round.participants == {"c1", "c2"}
        with pytest.raises(Refusal, match="round 1 is not open"):
            training.admit("c1", 1)
        # the third client is not awaited: the round closes on the two admitted ones
        assert training.awaited() == ["c1", "c2"]
        await training.close(1)

    asyncio.run(scenario())


def test_max_clients_blocks_unadmitted_update(tmp_path: Path) -> None:
    """At most max_num_clients participate: once the round is full, an update from a
    client that was never admitted must not take an admitted client's place."""
    setup = make_setup(
        tmp_path, num_rounds=3, min_num_clients=2, max_num_clients=2, wait_after_min_clients=30
    )

    async def scenario() -> None:
        training = setup.training()
        training.admit("c1", 0)
        training.admit("c2", 0)
        assert await submit(training, setup, "c1", 0, [1] * 4) is SubmitOutcome.ACCEPTED
        outcome = await submit(training, setup, "c3", 0, [100] * 4)
        assert outcome is not SubmitOutcome.ACCEPTED
        assert training.round.aggregator.count == 1
        await training.close(1)

    asyncio.run(scenario())


def test_client_gone_lets_round_close(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    setup = make_setup(
        tmp_path, num_rounds=3, min_num_clients=1, max_num_clients=3, wait_after_min_clients=60
    )

    async def scenario() -> None:
        training = setup.training()
        training.admit("c1", 0)
        training.admit("c2", 0)
        assert await submit(training, setup, "c1", 0, [2] * 4) is SubmitOutcome.ACCEPTED
        assert not training.round.closed and training.awaited() == ["c2"]
        assert [s.delay for s in setup.timer.pending] == [60]
        with caplog.at_level(logging.WARNING, "flserverd.training"):
            training.client_gone("c2", "training process crashed\n<3>flserverd: forged")
        # The site's words: a newline and <3> forged a journal line of the server's.
        assert caplog.messages == [
            "run 1: site c2 failed: training process crashed\\n<3>flserverd: forged"
        ]
        assert training.round.closed
        await aggregated(training, setup, 1)
        assert training.history[-1].clients == ["c1"]
        assert training.run.failed_sites == ["c2"]
        saved = setup.db.get_run(RUN)
        assert saved is not None and saved.failed_sites == ["c2"]
        assert "c2" not in training.ready
        await training.close(1)

    asyncio.run(scenario())


def test_client_gone_below_min_does_not_close(tmp_path: Path) -> None:
    setup = make_setup(
        tmp_path, num_rounds=3, min_num_clients=2, max_num_clients=3, wait_after_min_clients=0
    )

    async def scenario() -> None:
        training = setup.training()
        training.admit("c1", 0)
        training.admit("c2", 0)
        assert await submit(training, setup, "c1", 0, [2] * 4) is SubmitOutcome.ACCEPTED
        training.client_gone("c2")
        assert training.round.number == 0 and not training.round.closed
        assert setup.timer.calls == []
        assert training.run.failed_sites == []
        await training.close(1)

    asyncio.run(scenario())


def test_offers_go_to_ready_clients(tmp_path: Path) -> None:
    setup = make_setup(tmp_path, num_rounds=3, min_num_clients=2, max_num_clients=2)

    async def scenario() -> None:
        training = setup.training()
        training.ready.update({"c1", "c2"})
        training.begin()
        assert setup.listener.offers == [(["c1", "c2"], TaskOffer(RUN, 0, TaskKind.TRAIN))]
        await run_round(training, setup, {"c1": ([1] * 4, 1, {}), "c2": ([1] * 4, 1, {})})
        assert setup.listener.offers[-1] == (["c1", "c2"], TaskOffer(RUN, 1, TaskKind.TRAIN))
        # a client that already contributed to the current round is not offered it again
        assert await submit(training, setup, "c1", 1, [1] * 4) is SubmitOutcome.ACCEPTED
        count = len(setup.listener.offers)
        training.client_ready("c1")
        assert len(setup.listener.offers) == count
        training.client_ready("c3")
        assert setup.listener.offers[-1] == (["c3"], TaskOffer(RUN, 1, TaskKind.TRAIN))
        assert setup.listener.changes > 0
        await training.close(1)

    asyncio.run(scenario())


# --------------------------------------------------------------------------- end of the run


def test_final_validation_collects_metrics_and_ends_run(tmp_path: Path) -> None:
    setup = make_setup(tmp_path, num_rounds=1, min_num_clients=2, max_num_clients=2)

    async def scenario() -> None:
        training = setup.training()
        await run_round(training, setup, {"c1": ([1] * 4, 1, {}), "c2": ([1] * 4, 1, {})})
        assert training.run.phase == PHASE_FINAL_VALIDATION
        assert training.current_offer() == TaskOffer(RUN, 1, TaskKind.VALIDATE_GLOBAL)
        validate = TaskOffer(RUN, 1, TaskKind.VALIDATE_GLOBAL)
        assert setup.listener.offers[-1] == (["c1", "c2"], validate)
        assert await submit(training, setup, "c1", 0, [1] * 4) is SubmitOutcome.LATE
        assert training.admit("c1", 1) == setup.store.round_model(RUN, 1)
        with pytest.raises(Refusal, match="training is over"):
            training.admit("c1", 0)
        assert training.accept_final_metrics("c1", 1, {"val_accuracy": 0.8}, 10)[0] is (
            SubmitOutcome.ACCEPTED
        )
        assert training.accept_final_metrics("c1", 1, {"val_accuracy": 0.1}, 10)[0] is (
            SubmitOutcome.DUPLICATE
        )
        late = training.accept_final_metrics("c2", 0, {"val_accuracy": 0.1}, 10)
        assert late.outcome is SubmitOutcome.LATE
        assert setup.listener.ended == []
        assert training.accept_final_metrics("c2", 1, {"val_accuracy": 0.6}, 30)[0] is (
            SubmitOutcome.ACCEPTED
        )
        await until(lambda: bool(setup.listener.ended))
        ended = setup.listener.ended
        assert len(ended) == 1
        assert ended[0].status == st.STOPPED and ended[0].reason == "finished"
        assert not training.active
        final = training.history[-1]
        assert final.final is True and final.round == 1
        assert final.clients == ["c1", "c2"]
        assert final.metrics["val_accuracy"] == pytest.approx((0.8 * 10 + 0.6 * 30) / 40)
        saved = setup.db.get_run(RUN)
        assert saved is not None
        assert (saved.status, saved.reason) == (st.STOPPED, "finished")
        rows = setup.metrics_rows()
        assert [r["round"] for r in rows] == [0, 1]
        assert rows[1]["final"] is True

    asyncio.run(scenario())


def test_training_update_during_final_validation_is_late_before_and_after_restart(
    tmp_path: Path,
) -> None:
    """Training is over: an update for round num_rounds is discarded as late, and the
    verdict must not depend on whether the server restarted in between."""
    setup = make_setup(tmp_path, num_rounds=1, min_num_clients=1, max_num_clients=1)
    verdicts: list[Verdict | None] = []

    async def first_life() -> None:
        training = setup.training()
        await run_round(training, setup, {"c1": ([1] * 4, 1, {})})
        verdicts.append(training.check_submission("c1", RUN, 1))
        await training.close(1)

    asyncio.run(first_life())
    record = setup.db.get_run(RUN)
    assert record is not None
    setup.record = record

    async def second_life() -> None:
        training = setup.training()
        verdicts.append(training.check_submission("c1", RUN, 1))
        await training.close(1)

    asyncio.run(second_life())
    outcomes = [v[0] if v else None for v in verdicts]
    assert outcomes == [SubmitOutcome.LATE, SubmitOutcome.LATE], verdicts


def test_final_metrics_during_training_are_late(tmp_path: Path) -> None:
    setup = make_setup(tmp_path, num_rounds=2, min_num_clients=1, max_num_clients=1)

    async def scenario() -> None:
        training = setup.training()
        outcome, _ = training.accept_final_metrics("c1", 2, {"val_accuracy": 1.0}, 5)
        assert outcome is SubmitOutcome.LATE
        await training.close(1)

    asyncio.run(scenario())


def test_final_validation_ends_when_last_validator_leaves(tmp_path: Path) -> None:
    setup = make_setup(tmp_path, num_rounds=1, min_num_clients=2, max_num_clients=2)

    async def scenario() -> None:
        training = setup.training()
        await run_round(training, setup, {"c1": ([1] * 4, 1, {}), "c2": ([1] * 4, 1, {})})
        training.accept_final_metrics("c1", 1, {"val_accuracy": 0.5}, 10)
        training.client_gone("c2", "stopped")
        await until(lambda: bool(setup.listener.ended))
        assert setup.listener.ended[0].reason == "finished"
        assert training.history[-1].clients == ["c1"]

    asyncio.run(scenario())


def restarted_in_final_validation(
    setup: Setup, sites: list[str], reports: dict[str, tuple[float, int]] | None = None
) -> None:
    """Train the run's one round with ``sites``, let ``reports`` (site: accuracy, samples)
    come for the final model, and stop: ``setup`` then makes the next Training from the
    database, as a restarted server does."""

    async def first_life() -> None:
        training = setup.training()
        await run_round(training, setup, {site: ([1] * 4, 1, {}) for site in sites})
        assert training.run.phase == PHASE_FINAL_VALIDATION
        for site, (accuracy, samples) in (reports or {}).items():
            training.accept_final_metrics(site, 1, {"val_accuracy": accuracy}, samples)
        await training.close(1)

    asyncio.run(first_life())
    record = setup.db.get_run(RUN)
    assert record is not None and record.phase == PHASE_FINAL_VALIDATION
    setup.record = record


def test_resume_in_final_validation(tmp_path: Path) -> None:
    setup = make_setup(tmp_path, num_rounds=1, min_num_clients=1, max_num_clients=1)
    restarted_in_final_validation(setup, ["c1"])

    async def second_life() -> None:
        training = setup.training()
        assert training.current_offer() == TaskOffer(RUN, 1, TaskKind.VALIDATE_GLOBAL)
        training.client_ready("c1")
        assert training.accept_final_metrics("c1", 1, {"val_accuracy": 0.7}, 4)[0] is (
            SubmitOutcome.ACCEPTED
        )
        await until(lambda: bool(setup.listener.ended))
        assert setup.listener.ended[0].reason == "finished"

    asyncio.run(second_life())


def test_a_final_validation_resumed_counts_the_reports_recorded_and_waits_for_the_rest(
    tmp_path: Path,
) -> None:
    """c2 had reported, c1 had not, when the server restarted: the reports had died with the
    process, so c2 was asked again (and a site restarted meanwhile validated again)."""
    setup = make_setup(tmp_path, num_rounds=1, min_num_clients=2, max_num_clients=2)
    restarted_in_final_validation(setup, ["c1", "c2"], {"c2": (0.6, 30)})

    async def second_life() -> None:
        training = setup.training()
        training.take_up()
        assert training.awaited() == ["c1"]
        offered = len(setup.listener.offers)
        training.client_ready("c2")  # back, and not asked again
        assert len(setup.listener.offers) == offered
        resent = training.accept_final_metrics("c2", 1, {"val_accuracy": 0.6}, 30)
        assert resent.outcome is SubmitOutcome.DUPLICATE
        training.client_ready("c1")
        training.accept_final_metrics("c1", 1, {"val_accuracy": 0.8}, 10)
        await until(lambda: bool(setup.listener.ended))
        final = training.history[-1]
        assert final.clients == ["c1", "c2"]
        assert final.metrics["val_accuracy"] == pytest.approx((0.8 * 10 + 0.6 * 30) / 40)

    asyncio.run(second_life())


def test_a_final_validation_whose_sites_all_reported_ends_when_taken_up(tmp_path: Path) -> None:
    """Every report was recorded when the server died, the result not yet committed."""
    setup = make_setup(tmp_path, num_rounds=1, min_num_clients=2, max_num_clients=2)
    restarted_in_final_validation(setup, ["c1", "c2"])
    setup.db.record_folded(RUN, 1, "c1", 10, {"val_accuracy": 0.8})
    setup.db.record_folded(RUN, 1, "c2", 30, {"val_accuracy": 0.6})

    async def second_life() -> None:
        offered = len(setup.listener.offers)
        training = setup.training()
        training.take_up()
        await until(lambda: bool(setup.listener.ended))
        assert len(setup.listener.offers) == offered  # nobody was asked
        final = training.history[-1]
        assert final.final and final.clients == ["c1", "c2"]
        assert final.metrics["val_accuracy"] == pytest.approx((0.8 * 10 + 0.6 * 30) / 40)

    asyncio.run(second_life())
    saved = setup.db.get_run(RUN)
    assert saved is not None and (saved.status, saved.reason) == (st.STOPPED, st.FINISHED)


def test_a_final_validation_committed_before_a_crash_is_not_done_again(tmp_path: Path) -> None:
    """The server died after the final validation's result was committed and before the run's
    end was: it took the run up in its final validation and asked every site again."""
    setup = make_setup(tmp_path, num_rounds=1, min_num_clients=1, max_num_clients=1)
    restarted_in_final_validation(setup, ["c1"])
    # What the final validation records and commits before the run's end.
    setup.db.record_folded(RUN, 1, "c1", 4, {"val_accuracy": 0.7})
    record = replace(setup.record, best_round=1, best_value=0.7)
    final = RoundSummary(RUN, 1, 999.0, ["c1"], {"val_accuracy": 0.7}, final=True)
    setup.db.complete_round(record, final)
    setup.record = record

    async def second_life() -> None:
        offered = len(setup.listener.offers)
        training = setup.training()
        training.recover_outputs()
        training.take_up()
        assert [run.reason for run in setup.listener.ended] == [st.FINISHED]
        assert not training.active and len(setup.listener.offers) == offered
        assert setup.timer.pending == []  # the final validation's timeout is cancelled
        training.client_ready("c1")
        assert len(setup.listener.offers) == offered
        await training.close(1)

    asyncio.run(second_life())
    saved = setup.db.get_run(RUN)
    assert saved is not None and (saved.status, saved.reason) == (st.STOPPED, st.FINISHED)
    assert (saved.best_round, saved.best_value) == (1, 0.7)
    assert [r.round for r in setup.db.round_records(RUN)] == [0, 1]
    assert [r["round"] for r in setup.metrics_rows()] == [0, 1]


@pytest.mark.parametrize(
    ("mode", "values", "final", "best_round", "best_value"),
    [
        ("max", [0.5, 0.9, 0.7], 0.6, 1, 0.9),
        ("min", [0.5, 0.9, 0.1], 0.3, 2, 0.1),
        ("max", [0.5, 0.9, 0.7], 0.95, 3, 0.95),
    ],
)
def test_best_model_tracking(
    tmp_path: Path,
    mode: str,
    values: list[float],
    final: float,
    best_round: int,
    best_value: float,
) -> None:
    metric = "val_accuracy" if mode == "max" else "val_loss"
    setup = make_setup(
        tmp_path,
        num_rounds=3,
        min_num_clients=1,
        max_num_clients=1,
        metric_mode=mode,
        validation_metric=metric,
    )

    async def scenario() -> None:
        training = setup.training()
        # round r's update reports the metric of round r's input model
        for r, value in enumerate(values):
            await run_round(training, setup, {"c1": ([float(r + 1)] * 4, 1, {metric: value})})
        assert training.run.phase == PHASE_FINAL_VALIDATION
        training.client_ready("c1")
        training.accept_final_metrics("c1", 3, {metric: final}, 1)
        await until(lambda: bool(setup.listener.ended))

    asyncio.run(scenario())
    saved = setup.db.get_run(RUN)
    assert saved is not None
    assert saved.best_round == best_round
    assert saved.best_value == pytest.approx(best_value)
    # the input model of round r is the average of round r-1: here just w = r
    best = setup.model(setup.store.best_model(RUN))
    assert best["w"].tolist() == [float(best_round)] * 4


def test_checkpoints_global_model_and_metrics(tmp_path: Path) -> None:
    setup = make_setup(tmp_path, num_rounds=3, min_num_clients=2, max_num_clients=2)

    async def scenario() -> None:
        training = setup.training()
        await run_round(
            training,
            setup,
            {
                "c1": ([1.0, 2.0, 3.0, 4.0], 1, {"val_loss": 1.0}),
                "c2": ([5.0, 6.0, 7.0, 8.0], 3, {"val_loss": 3.0}),
            },
        )
        assert setup.round_files() == ["round_1.safetensors"]
        round_1 = setup.store.round_model(RUN, 1)
        global_path = setup.store.global_model(RUN)
        expected = [(1 + 15) / 4, (2 + 18) / 4, (3 + 21) / 4, (4 + 24) / 4]
        assert setup.model(round_1)["w"].tolist() == expected
        assert setup.model(global_path)["w"].tolist() == expected
        assert os.path.samefile(round_1, global_path)
        assert TensorFile(global_path).metadata == {"run": "1", "round": "1"}
        saved = setup.db.get_run(RUN)
        assert saved is not None and saved.next_round == 1

        await run_round(training, setup, {"c1": ([0.0] * 4, 1, {}), "c2": ([4.0] * 4, 1, {})})
        assert setup.round_files() == ["round_2.safetensors"]
        assert setup.model(global_path)["w"].tolist() == [2.0] * 4
        assert not [p for p in setup.store.run_dir(RUN).rglob("*.tmp")]

        rows = setup.metrics_rows()
        assert [(r["run"], r["round"], r["clients"], r["samples"]) for r in rows] == [
            (1, 0, ["c1", "c2"], 4),
            (1, 1, ["c1", "c2"], 2),
        ]
        assert rows[0]["metrics"] == {"val_loss": pytest.approx((1.0 + 9.0) / 4)}
        assert rows[1]["metrics"] == {}
        assert [r.round for r in setup.db.round_records(RUN)] == [0, 1]
        await training.close(1)

    asyncio.run(scenario())


@pytest.mark.parametrize(("keep", "kept"), [(1, [1, 4]), (2, [1, 3, 4]), (5, [0, 1, 2, 3, 4])])
def test_round_models_are_pruned_to_the_last_ones_and_the_best(
    tmp_path: Path, keep: int, kept: list[int]
) -> None:
    """keep_round_models: the latest K round models stay, and the best one (round 1 here, by
    its clients' val_accuracy); the published names are links to them, never copies nor
    leftover temporary links."""
    setup = make_setup(
        tmp_path, num_rounds=4, min_num_clients=1, max_num_clients=1, keep_round_models=keep
    )
    accuracy = [0.5, 0.9, 0.7, 0.8]

    async def scenario() -> None:
        training = setup.training()
        for r, value in enumerate(accuracy):
            await run_round(
                training, setup, {"c1": ([float(r + 1)] * 4, 1, {"val_accuracy": value})}
            )
        await training.close(1)

    asyncio.run(scenario())
    assert setup.round_files() == [f"round_{r}.safetensors" for r in kept]
    run = setup.store.run_dir(RUN)
    assert os.path.samefile(setup.store.best_model(RUN), setup.store.round_model(RUN, 1))
    assert os.path.samefile(setup.store.global_model(RUN), setup.store.round_model(RUN, 4))
    assert sorted(p.name for p in run.iterdir() if p.name.startswith(".")) == [".spool"]


def test_abort_ends_run_and_later_updates_are_late(tmp_path: Path) -> None:
    setup = make_setup(
        tmp_path, num_rounds=3, min_num_clients=1, max_num_clients=3, wait_after_min_clients=0.1
    )

    async def scenario() -> None:
        training = setup.training()
        training.admit("c1", 0)
        training.admit("c2", 0)
        assert await submit(training, setup, "c1", 0, [1] * 4) is SubmitOutcome.ACCEPTED
        [wait] = setup.timer.pending
        training.abort()
        assert len(setup.listener.ended) == 1
        assert setup.listener.ended[0].status == st.STOPPED
        assert setup.listener.ended[0].reason == "aborted by admin"
        assert not training.active
        assert wait.cancelled
        # the wait timer must not aggregate an aborted run, even when its call was already due
        wait.callback()
        assert not training.round.closed
        assert not setup.store.round_model(RUN, 1).exists()
        assert await submit(training, setup, "c2", 0, [1] * 4) is SubmitOutcome.LATE
        with pytest.raises(Refusal, match="not training"):
            training.admit("c3", 0)
        training.abort()  # a second abort changes nothing
        assert len(setup.listener.ended) == 1
        saved = setup.db.get_run(RUN)
        assert saved is not None
        assert (saved.status, saved.reason, saved.next_round) == (
            st.STOPPED,
            "aborted by admin",
            0,
        )
        await training.close(1)

    asyncio.run(scenario())


async def one_round_of_a(setup: Setup) -> None:
    """Site a trains round 0 alone, and the round's outputs are written."""
    training = setup.training()
    training.client_ready("a")
    await submit(training, setup, "a", 0, [1, 1, 1, 1], metrics={"val_accuracy": 0.5})
    await aggregated(training, setup, 1)
    await training.close(1)


def test_a_crash_after_the_commit_loses_no_published_output(tmp_path: Path) -> None:
    """kill -9 between the round's commit and its publishing: a restart catches up."""
    setup = make_setup(tmp_path, num_rounds=5, min_num_clients=1, max_num_clients=1)

    asyncio.run(one_round_of_a(setup))
    run_dir = setup.store.run_dir(RUN)
    # What the crash would have cut off: the published files and the metrics line.
    (run_dir / "global_model.safetensors").unlink()
    (run_dir / "best_global_model.safetensors").unlink()
    (run_dir / "metrics.jsonl").write_text("")
    record = setup.db.get_run(RUN)
    assert record is not None and record.next_round == 1

    async def restart() -> None:
        manifest = TensorFile(setup.store.round_model(RUN, 1)).manifest
        training = Training(record, setup.config, manifest, setup.store, setup.db, setup.listener)
        training.recover_outputs()
        await training.close(1)

    asyncio.run(restart())
    latest = setup.model(run_dir / "global_model.safetensors")
    np.testing.assert_array_equal(latest["w"], np.ones(4, dtype=np.float32))
    best = setup.model(run_dir / "best_global_model.safetensors")
    np.testing.assert_array_equal(best["w"], np.zeros(4, dtype=np.float32))  # round 0's input
    assert [row["round"] for row in setup.metrics_rows()] == [0]


def test_a_rounds_tensorboard_point_is_written_before_its_metrics_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A restart writes again what follows a round whose metrics.jsonl line is missing; the
    line went first, so a crash before the TensorBoard point lost that point for good."""
    setup = make_setup(tmp_path, num_rounds=5, min_num_clients=1, max_num_clients=1)
    events = setup.store.tensorboard_dir(RUN)
    seen: list[bool] = []
    append = RunStore.append_metrics

    def append_metrics(store: RunStore, summary: RoundSummary) -> None:
        seen.append(any(events.glob("events.out.tfevents.*")))
        append(store, summary)

    monkeypatch.setattr(RunStore, "append_metrics", append_metrics)

    asyncio.run(one_round_of_a(setup))
    assert seen == [True]


# --------------------------------------------------------------------------- disk faults


class FullDiskDB(StateDB):
    """The state database on a disk that is full while ``full`` is set (for round commits
    only, while ``commits_full`` is)."""

    full = False
    commits_full = False

    def _write(self, statements: list[tuple[str, tuple[Any, ...]]]) -> int:
        committing = any("round_metrics" in sql for sql, _ in statements)
        if self.full or (self.commits_full and committing):
            error = sqlite3.OperationalError("database or disk is full")
            error.sqlite_errorcode = sqlite3.SQLITE_FULL
            raise error
        return super()._write(statements)


def full_disk_setup(tmp_path: Path) -> tuple[Setup, FullDiskDB]:
    setup = make_setup(tmp_path, num_rounds=2, min_num_clients=2, max_num_clients=2)
    setup.db.close()
    db = FullDiskDB(tmp_path / "state.db")
    setup.db = db
    return setup, db


def test_a_full_disk_at_the_commit_pauses_and_the_retry_commits_the_round(tmp_path: Path) -> None:
    setup, db = full_disk_setup(tmp_path)

    async def scenario() -> None:
        training = setup.training()
        training.ready.update({"c1", "c2"})
        training.admit("c1", 0)
        training.admit("c2", 0)
        assert await submit(training, setup, "c1", 0, [1] * 4) is SubmitOutcome.ACCEPTED
        db.full = True
        assert await submit(training, setup, "c2", 0, [3] * 4) is SubmitOutcome.POSTPONED
        assert training.fault.startswith("server disk full: state database")
        assert training.round.contributed == {"c1": 1}  # the postponed update is not counted
        assert not (setup.store.spool_dir(RUN) / "round_0" / "c2.safetensors").exists()
        db.full = False
        [retry] = setup.timer.pending
        offers = len(setup.listener.offers)
        retry.fire()  # room again: training goes on and asks for the round again
        await until(lambda: not training.fault)
        assert setup.listener.offers[offers:] == [(["c1", "c2"], training.current_offer())]
        db.commits_full = True  # this time the disk fills as the round is committed
        assert await submit(training, setup, "c2", 0, [3] * 4) is SubmitOutcome.ACCEPTED
        await until(lambda: bool(training.fault))
        record = db.get_run(RUN)
        assert record is not None and record.next_round == 0 and training.round.number == 0
        assert await submit(training, setup, "c2", 0, [3] * 4) is SubmitOutcome.DUPLICATE
        db.commits_full = False
        [retry] = setup.timer.pending
        retry.fire()
        await aggregated(training, setup, 1)
        assert not training.fault and training.round.number == 1
        assert setup.model(setup.store.global_model(RUN))["w"].tolist() == [2.0] * 4
        await training.close(1)

    asyncio.run(scenario())


async def a_commit_paused_by_a_full_disk(training: Training, setup: Setup, db: FullDiskDB) -> None:
    """Round 0 of c1 and c2 closes and its commit meets a full disk: training pauses."""
    training.ready.update({"c1", "c2", "c3"})
    training.admit("c1", 0)
    training.admit("c2", 0)
    db.commits_full = True
    assert await submit(training, setup, "c1", 0, [1] * 4) is SubmitOutcome.ACCEPTED
    assert await submit(training, setup, "c2", 0, [3] * 4) is SubmitOutcome.ACCEPTED
    await until(lambda: bool(training.fault) and not training._tasks)
    assert training.round.closed and training.round.number == 0


def test_a_second_write_failing_while_paused_does_not_take_the_commits_place(
    tmp_path: Path,
) -> None:
    """A site failing while a round's commit waited for room saved its run record on the
    same full disk; its retry replaced the commit's, and once the disk had room the round
    stayed closed for good (sites told "round 0 is not open") with nothing left to run."""
    setup, db = full_disk_setup(tmp_path)

    async def scenario() -> None:
        training = setup.training()
        await a_commit_paused_by_a_full_disk(training, setup, db)
        db.full = True
        training.client_gone("c3", "the training process crashed")
        db.full = db.commits_full = False
        [retry] = setup.timer.pending
        retry.fire()
        await aggregated(training, setup, 1)
        assert not training.fault and training.round.number == 1
        record = db.get_run(RUN)
        assert record is not None and record.next_round == 1 and record.failed_sites == ["c3"]
        await training.close(1)

    asyncio.run(scenario())


def test_an_abort_while_a_commit_is_paused_deletes_the_rounds_kept_updates(
    tmp_path: Path,
) -> None:
    """The round was closed, so the abort left its updates to the aggregation, which
    returned without them once the run had ended: the disk being freed kept them."""
    setup, db = full_disk_setup(tmp_path)
    kept = setup.store.spool_dir(RUN) / "round_0"

    async def scenario() -> None:
        training = setup.training()
        await a_commit_paused_by_a_full_disk(training, setup, db)
        assert any(kept.iterdir())
        training.abort()
        [retry] = setup.timer.pending
        retry.fire()
        await until(lambda: not kept.exists() or not any(kept.iterdir()))
        await training.close(1)

    asyncio.run(scenario())


async def retried_then_trained(training: Training, setup: Setup) -> None:
    """The storage retry comes: training goes on, and c1 and c2 train round 0 and the run is
    closed."""
    [retry] = setup.timer.pending
    retry.fire()
    await until(lambda: not training.fault)
    assert await submit(training, setup, "c1", 0, [1] * 4) is SubmitOutcome.ACCEPTED
    assert await submit(training, setup, "c2", 0, [3] * 4) is SubmitOutcome.ACCEPTED
    await aggregated(training, setup, 1)
    await training.close(1)


def test_a_state_database_another_program_locked_pauses_training_until_it_lets_go(
    tmp_path: Path,
) -> None:
    """An sqlite3 shell holding a write lock made the fold's record fail after 5 s of the
    whole server waiting, and the update was "an unexpected error"; now the server waits half
    a second, postpones the update and goes on once the lock is gone."""
    setup = make_setup(tmp_path, num_rounds=2, min_num_clients=2, max_num_clients=2)
    shell = sqlite3.connect(tmp_path / "state.db", isolation_level=None)

    async def scenario() -> None:
        training = setup.training()
        training.admit("c1", 0)
        training.admit("c2", 0)
        shell.execute("BEGIN EXCLUSIVE")
        assert await submit(training, setup, "c1", 0, [1] * 4) is SubmitOutcome.POSTPONED
        assert training.fault == (
            "server state database locked by another program (an sqlite3 shell or a backup "
            "tool; close it): database is locked"
        )
        shell.execute("ROLLBACK")
        await retried_then_trained(training, setup)

    try:
        asyncio.run(scenario())
    finally:
        shell.close()


def test_a_full_disk_as_a_rounds_files_are_written_pauses_and_the_retry_writes_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The retry read the committed rounds in its worker thread, where the loop's SQLite
    connection may not be used: every retry failed, and the run stopped on an unexpected
    error even once the disk had room."""
    setup = make_setup(tmp_path, num_rounds=3, min_num_clients=1, max_num_clients=1)
    written = setup.store.append_metrics
    full = {"now": True}

    def append_metrics(summary: RoundSummary) -> None:
        if full["now"]:
            raise OSError(errno.ENOSPC, "No space left on device")
        written(summary)

    monkeypatch.setattr(setup.store, "append_metrics", append_metrics)

    async def scenario() -> None:
        training = setup.training()
        training.admit("c1", 0)
        assert await submit(training, setup, "c1", 0, [1] * 4) is SubmitOutcome.ACCEPTED
        await until(lambda: bool(training.fault))
        assert training.fault.startswith("server disk full")
        full["now"] = False
        [retry] = setup.timer.pending
        retry.fire()
        await until(lambda: not training.fault)
        assert training.run.status == st.STARTED and training.round.number == 1
        assert [row["round"] for row in setup.metrics_rows()] == [0]
        await training.close(1)

    asyncio.run(scenario())


def test_a_stop_that_cannot_be_recorded_still_reaches_the_clients(tmp_path: Path) -> None:
    setup, db = full_disk_setup(tmp_path)

    async def scenario() -> None:
        training = setup.training()
        db.full = True
        training.abort()
        assert [r.reason for r in setup.listener.ended] == ["aborted by admin"]
        assert db.get_run(RUN).status == st.STARTED  # type: ignore[union-attr]
        db.full = False
        [retry] = setup.timer.pending
        retry.fire()
        await until(lambda: not training.fault)
        assert db.get_run(RUN).status == st.STOPPED  # type: ignore[union-attr]


def test_memory_keeps_the_latest_rounds_and_a_restart_rewrites_every_lost_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A long run must not grow the server: the round records stay in the database and
    metrics.jsonl, and only the rounds the feed shows stay in memory."""
    monkeypatch.setattr(training_module, "HISTORY_SHOWN", 3)
    setup = make_setup(tmp_path, num_rounds=10)
    record = setup.record
    for number in range(5):
        record.next_round = number + 1
        setup.db.complete_round(
            record, RoundSummary(RUN, number, 100.0 + number, ["a"], {"val_accuracy": 0.5})
        )
    # What a power loss left: a torn line, and a byte that is no UTF-8 (which once kept the
    # server from starting at all).
    metrics = setup.store.run_dir(RUN) / "metrics.jsonl"
    metrics.write_bytes(b'{"round": 0, "ti\n\xa9\xfe\n')
    setup.store.round_model(RUN, 0).rename(setup.store.round_model(RUN, record.next_round))

    async def restart() -> None:
        training = setup.training()
        assert [r.round for r in training.history] == [2, 3, 4]
        training.recover_outputs()
        await training.close(1)

    asyncio.run(restart())
    lines = metrics.read_bytes().splitlines()
    assert lines[:2] == [b'{"round": 0, "ti', b"\xa9\xfe"]
    assert [json.loads(line)["round"] for line in lines[2:]] == [0, 1, 2, 3, 4]


# --------------------------------------------------------------------------- robust aggregation


@pytest.mark.parametrize("rule", ["median", "trimmed_mean"])
def test_a_robust_rule_takes_one_update_per_site_whatever_its_instances(
    tmp_path: Path, rule: str
) -> None:
    """A kit may run 4 instances: each was a vote, and one site outvoted the median that
    one site alone cannot move. FedAvg weights by samples, so it takes them all."""
    extra: dict[str, Any] = {"trim_fraction": 0.1} if rule == "trimmed_mean" else {}
    setup = make_setup(
        tmp_path, num_rounds=2, min_num_clients=2, max_num_clients=8, aggregator=rule, **extra
    )

    async def scenario() -> None:
        training = setup.training()
        training.admit("site-a", 0, kit="site-a")
        with pytest.raises(Refusal, match="already has site-a, an instance of kit site-a"):
            training.admit("site-a_1", 0, kit="site-a")
        late = training.check_submission("site-a_2", RUN, 0, kit="site-a")
        assert late is not None and late.outcome is SubmitOutcome.LATE
        assert "takes one update per site" in late.message
        training.admit("site-b", 0, kit="site-b")
        await training.close(1)

    asyncio.run(scenario())


def test_a_round_metric_whose_weighted_mean_overflows_is_left_out() -> None:
    """1e300 from a site of 1e12 samples is finite, and so is -1e300: their weighted mean
    was inf or NaN, and an infinite best value is never beaten again."""
    state = RoundState(0, cast(Aggregator, None), 0.0)
    state.add_metrics("a", {"val_loss": 1e300, "val_accuracy": 0.5}, 1e12)
    state.add_metrics("b", {"val_loss": -1e300, "val_accuracy": 0.7}, 1e12)
    assert state.mean_metrics() == {"val_accuracy": pytest.approx(0.6)}


def test_median_round_keeps_updates_until_written_and_names_the_outlier(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    setup = make_setup(
        tmp_path, num_rounds=2, min_num_clients=3, max_num_clients=3, aggregator="median"
    )
    kept = setup.store.spool_dir(RUN) / "round_0"

    async def scenario() -> None:
        training = setup.training()
        for name in ("c1", "c2", "c3"):
            training.admit(name, 0)
        assert await submit(training, setup, "c1", 0, [1, 2, 3, 4]) is SubmitOutcome.ACCEPTED
        assert await submit(training, setup, "c2", 0, [1, 2, 3, 5], samples=10**6) is (
            SubmitOutcome.ACCEPTED
        )
        assert sorted(p.name for p in kept.iterdir()) == ["c1.safetensors", "c2.safetensors"]
        poisoned = [-100.0, 200, -300, 400]
        assert await submit(training, setup, "c3", 0, poisoned) is SubmitOutcome.ACCEPTED
        await aggregated(training, setup, 1)
        # one vote each, whatever the sample counts: the median, not the weighted mean
        assert setup.model(setup.store.global_model(RUN))["w"].tolist() == [1, 2, 3, 5]
        assert not kept.exists()
        await training.close(1)

    with caplog.at_level("WARNING", logger="flserverd.training"):
        asyncio.run(scenario())
    [row] = setup.metrics_rows()
    scores = {name: stats["score"] for name, stats in row["updates"].items()}
    assert scores["c3"] > 50 and scores["c1"] < 2 and scores["c2"] < 2
    assert row["updates"]["c1"]["norm"] == pytest.approx(np.sqrt(30))
    assert setup.db.round_records(RUN)[0].updates["c3"].score == scores["c3"]
    [warning] = [r.getMessage() for r in caplog.records if "outlier" in r.getMessage()]
    assert "run 1 round 0: the update of c3 is an outlier" in warning


@pytest.mark.parametrize(("min_clients", "max_clients", "warned"), [(2, 10, True), (5, 5, False)])
def test_a_trimmed_mean_round_too_small_to_trim_says_it_was_a_plain_mean(
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    min_clients: int,
    max_clients: int,
    warned: bool,
) -> None:
    """The config is checked at max_num_clients, and a round may close at min_num_clients:
    with 2 updates a trim_fraction of 0.2 trims nothing, and the round's mean took every
    value, an attacker's too."""
    setup = make_setup(
        tmp_path,
        num_rounds=2,
        min_num_clients=min_clients,
        max_num_clients=max_clients,
        wait_after_min_clients=0,
        aggregator="trimmed_mean",
        trim_fraction=0.2,
    )
    names = [f"c{i}" for i in range(min_clients)]

    async def scenario() -> None:
        training = setup.training()
        for name in names:
            training.admit(name, 0)
        for value, name in enumerate(names):
            assert await submit(training, setup, name, 0, [value] * 4) is SubmitOutcome.ACCEPTED
        await aggregated(training, setup, 1)
        await training.close(1)

    with caplog.at_level("WARNING", logger="flserverd.training"):
        asyncio.run(scenario())
    said = [r.getMessage() for r in caplog.records if "trims nothing" in r.getMessage()]
    if warned:
        assert said == [
            "run 1 round 0: trimmed_mean trims nothing from 2 updates (trim_fraction 0.2), so "
            "this round is a plain mean; a min_num_clients of 5 trims every round"
        ]
        assert setup.model(setup.store.global_model(RUN))["w"].tolist() == [0.5] * 4
    else:
        assert said == []
        assert setup.model(setup.store.global_model(RUN))["w"].tolist() == [2.0] * 4


def test_an_update_the_median_could_not_read_is_taken_when_it_is_sent_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its fold record stayed while the read failed: the resend was told "duplicate" and
    the round waited for it for good."""
    setup = make_setup(
        tmp_path, num_rounds=2, min_num_clients=2, max_num_clients=2, aggregator="median"
    )
    read = CoordinateWise._read
    failing = {"once": True}

    def read_failing_once(self: CoordinateWise, *args: Any, **kwargs: Any) -> Any:
        if failing.pop("once", False):
            raise OSError(errno.EIO, "Input/output error")
        return read(self, *args, **kwargs)

    monkeypatch.setattr(CoordinateWise, "_read", read_failing_once)

    async def scenario() -> None:
        training = setup.training()
        training.admit("c1", 0)
        training.admit("c2", 0)
        assert await submit(training, setup, "c1", 0, [1] * 4) is SubmitOutcome.POSTPONED
        assert not setup.db.is_folded(RUN, 0, "c1")
        assert not (setup.store.spool_dir(RUN) / "round_0" / "c1.safetensors").exists()
        await retried_then_trained(training, setup)

    asyncio.run(scenario())


def test_abort_deletes_the_kept_updates_of_the_open_round(tmp_path: Path) -> None:
    setup = make_setup(
        tmp_path, num_rounds=2, min_num_clients=3, max_num_clients=3, aggregator="median"
    )
    kept = setup.store.spool_dir(RUN) / "round_0"

    async def scenario() -> None:
        training = setup.training()
        training.admit("c1", 0)
        assert await submit(training, setup, "c1", 0, [1, 2, 3, 4]) is SubmitOutcome.ACCEPTED
        assert kept.exists()
        training.abort()
        await until(lambda: not kept.exists())
        await training.close(1)

    asyncio.run(scenario())
