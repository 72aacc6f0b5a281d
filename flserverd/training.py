"""The round controller: one run's training on the server, driven by events.

Rounds run from ``start_round`` to ``num_rounds``. Each round starts from the
input model ``models/round_<r>.safetensors``; clients that are training this
run are offered the round, fetch the model (at most ``max_num_clients`` are
admitted), and send back updates that are folded into a running FedAvg sum as
they arrive. The round is aggregated as soon as

* ``max_num_clients`` updates arrived, or
* at least ``min_num_clients`` arrived and nobody else is still awaited, or
* at least ``min_num_clients`` arrived and ``wait_after_min_clients`` passed.

Updates arriving after that are discarded and the sender is told why.
Nothing here polls: rounds advance on uploads, client departures and the one
wait timer. After the last round, every client validates the final model
(``final validation``), then the run ends.

Crash safety: the next round's input model is written (temp, fsync, rename)
before one SQLite transaction moves the round pointer; on restart the run
resumes from the pointer and fold records of the unfinished round are
dropped, so each update is counted exactly once. The files that follow from
the commit (global and best model links, metrics.jsonl, TensorBoard) are
written in one worker-thread step, so their fsyncs never stall the loop.
The final validation is as careful: each site's report is recorded when it
is counted (as a fold record of round ``num_rounds``), its result is
committed before its files are written, and the run's end is recorded last;
a restart counts the reports recorded and asks only the sites missing, and
ends a run whose final result was committed without asking anyone again.

The clock, the ticks and the round timer are injected, so tests drive the
``wait_after_min_clients`` and final-validation timers themselves. Timestamps
(when a round was aggregated, when a run ended) come from the wall clock; a
round's duration comes from the ticks (the monotonic clock), so that a step of
the wall clock (NTP, a resumed VM) never records a negative or inflated one.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import errno
import json
import logging
import math
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol, TypeVar

from flcore import faultpoints
from flcore import status as st
from flcore.appconfig import ROBUST_AGGREGATORS, ServerAppConfig, trimmed_per_end
from flcore.compression import WireCompression
from flcore.diskfault import disk_fault
from flcore.federation import SubmitOutcome, TaskKind, TaskOffer, Verdict
from flcore.logs import one_line
from flcore.metrics import format_metrics
from flcore.tensorfile import Manifest, TensorFile
from flserverd.aggregator import Aggregator, RunningSum, UpdateStats, make_aggregator
from flserverd.runstore import RunStore
from flserverd.statedb import RoundSummary, RunRecord, StateDB, WireTally
from flserverd.tensorboard import ScalarWriter

log = logging.getLogger(__name__)

T = TypeVar("T")

PHASE_TRAINING = "training"
PHASE_FINAL_VALIDATION = "final validation"
STORAGE_RETRY_S = 3.0
"""How often a run paused by a disk fault tries the failed write again."""
OUTLIER_SCORE = 3.0
"""An update this many times farther from the round's aggregate than the median update
is named in the log (when the round has at least MIN_UPDATES_FOR_OUTLIERS)."""
MIN_UPDATES_FOR_OUTLIERS = 3
HISTORY_SHOWN = 100
"""Rounds of metrics in each run-state event (the console's chart shows the latest ones), and
rounds kept in memory: a run of thousands of rounds with many sites must not grow the server."""


FIRST_LINE_CHARS = 200
"""How much of a site's error a run keeps: its first line, for "why did it stop?"."""


def first_line(text: str) -> str:
    """The first non-empty line of an error, at most FIRST_LINE_CHARS characters."""
    line = next((part.strip() for part in text.splitlines() if part.strip()), "")
    return line if len(line) <= FIRST_LINE_CHARS else line[: FIRST_LINE_CHARS - 1] + "…"


class Refusal(Exception):
    """A client asked for something this run cannot give now; the message says why."""


class TimerHandle(Protocol):
    """What a timer returns: a call that can be cancelled before it happens."""

    def cancel(self) -> None:
        """Do not make the call."""


Timer = Callable[[float, Callable[[], None]], TimerHandle]
"""Calls ``callback`` after ``delay`` seconds; the real one is :func:`loop_timer`."""

Step = Callable[[], Awaitable[None]]
"""A write that a disk fault interrupted, tried again until it succeeds."""


TIMER_STEP_S = 0.25
"""How often a waiting round's timer counts the time gone by."""
MAX_STEP_S = 2 * TIMER_STEP_S
"""The most one step counts: a longer gap is the loop standing still, not time it ran."""


class _RunningTimer:
    """Calls back once the event loop has *run* for ``delay`` seconds.

    The loop's clock goes on while the process is stopped (SIGSTOP, a frozen VM) or its
    loop blocked: a wait of 5 s after ``min_num_clients`` that a server stopped for 8 s
    fired the moment it went on, before it read the update waiting in its socket, and
    closed the round without that site ("late: round 41 was already aggregated"). Counted
    in steps, each at most :data:`MAX_STEP_S`, such a gap costs the wait a step.
    """

    def __init__(self, delay: float, callback: Callable[[], None]) -> None:
        self._loop = asyncio.get_running_loop()
        self._left = delay
        self._callback = callback
        self._last = self._loop.time()
        self._handle = self._loop.call_later(min(delay, TIMER_STEP_S), self._step)

    def _step(self) -> None:
        now = self._loop.time()
        self._left -= min(now - self._last, MAX_STEP_S)
        self._last = now
        if self._left <= 0:
            self._callback()
        else:
            self._handle = self._loop.call_later(min(self._left, TIMER_STEP_S), self._step)

    def cancel(self) -> None:
        self._handle.cancel()


def loop_timer(delay: float, callback: Callable[[], None]) -> TimerHandle:
    """The event loop's timer, counting only the time the loop ran (:class:`_RunningTimer`)."""
    return _RunningTimer(delay, callback)


MAX_SAMPLES = 10**12
"""The most training samples an update may report (its weight in FedAvg)."""
MAX_WEIGHTED = 1e30
"""The most that a value of an update times its samples may be: far beyond any trained model
(values near 1, samples in the millions) and far below float32's 3.4e38, so that a round's
sum of any number of updates stays finite. Finite values times a weight had overflowed it:
one site made the global model infinite."""


def refused_weight(num_samples: int, what: str = "update") -> Verdict | None:
    """Refuse an update (or a validation of the final model, ``what``) whose sample count
    cannot weight it: none, or more than :data:`MAX_SAMPLES`. An update's is judged from the
    upload's header, before its bytes arrive, and again when the update is folded."""
    if 0 < num_samples <= MAX_SAMPLES:
        return None
    if num_samples <= 0:
        why = "reports no training samples; it cannot be weighted"
    else:
        why = f"reports {num_samples:,} training samples, more than any site has ({MAX_SAMPLES:,})"
    return Verdict(SubmitOutcome.REJECTED, f"{what} {why}")


def largest_value(num_samples: int) -> float:
    """The largest magnitude a value of an update of ``num_samples`` may have."""
    return MAX_WEIGHTED / max(num_samples, 1)


class TrainingListener(Protocol):
    """What the controller tells the rest of the server."""

    def offer(self, instances: Iterable[str], offer: TaskOffer) -> None:
        """Send a task offer to these client instances."""

    def run_changed(self) -> None:
        """Round progress changed (for the event stream and systemd status)."""

    def run_ended(self, run: RunRecord) -> None:
        """The run stopped (finished, aborted or failed)."""


@dataclass
class RoundState:
    """Progress of the current round."""

    number: int
    aggregator: Aggregator
    started: float
    """When the round began, by the ticks (the monotonic clock): only its duration is shown."""
    participants: set[str] = field(default_factory=set)
    kits: dict[str, str] = field(default_factory=dict)
    """The kit of each participant instance (a kit may run several)."""
    contributed: dict[str, int] = field(default_factory=dict)
    reports: dict[str, tuple[dict[str, float], float]] = field(default_factory=dict)
    closed: bool = False
    deadline: float = 0.0
    wire: WireTally = field(default_factory=WireTally)
    in_turn: asyncio.Lock = field(default_factory=asyncio.Lock)
    """Held by every fold, write and discard of the round's aggregator (each in a worker
    thread), so that they run one at a time, in the order they were asked for (the lock is
    fair). Updates are added under the run's lock, beside a fold (see Aggregator)."""

    async def call(self, method: Callable[..., T], *args: Any) -> T:
        """Call the aggregator in a worker thread, in turn."""
        async with self.in_turn:
            return await asyncio.to_thread(method, *args)

    def add_metrics(self, instance: str, metrics: dict[str, float], weight: float) -> None:
        """Keep a client's metrics and their weight for the round's weighted means."""
        self.reports[instance] = (metrics, weight)

    def mean_metrics(self) -> dict[str, float]:
        """Sample-weighted mean of every metric reported this round, summed in instance
        order (like the updates) so that a repeated run gives the same numbers. A metric
        only sites of weight 0 reported (final validations by sites without training
        samples) is their plain mean: it was measured, and has nothing else to weigh it."""
        sums: dict[str, float] = {}
        weights: dict[str, float] = {}
        plain: dict[str, list[float]] = {}
        for instance in sorted(self.reports):
            metrics, weight = self.reports[instance]
            for key, value in metrics.items():
                sums[key] = sums.get(key, 0.0) + value * weight
                weights[key] = weights.get(key, 0.0) + weight
                plain.setdefault(key, []).append(value)
        means = {
            key: sums[key] / weight if weight > 0 else math.fsum(plain[key]) / len(plain[key])
            for key, weight in weights.items()
        }
        # Finite reports times their weights may overflow: such a mean says nothing, and an
        # infinite best value would never be beaten again.
        return {key: mean for key, mean in means.items() if math.isfinite(mean)}


class Training:
    """A run in progress on the server."""

    def __init__(
        self,
        run: RunRecord,
        config: ServerAppConfig,
        manifest: Manifest,
        store: RunStore,
        db: StateDB,
        listener: TrainingListener,
        clock: Callable[[], float] = time.time,
        timer: Timer = loop_timer,
        ticks: Callable[[], float] = time.monotonic,
    ) -> None:
        self.run = run
        self.config = config
        self.manifest = manifest
        self._store = store
        self._db = db
        self._listener = listener
        self._clock = clock
        self._ticks = ticks
        self._call_later = timer
        self._lock = asyncio.Lock()
        self._timer: TimerHandle | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._tb = ScalarWriter(store.tensorboard_dir(run.run_number))
        self._writing: asyncio.Future[None] | None = None
        self.fault = ""
        """Why training is paused ("server disk full: ..."); empty while it is not."""
        self._failed_steps: list[Step] = []
        """The writes a disk fault stopped, in the order they failed: each is tried again (a
        later fault, such as a site failing while a round's commit waits, adds its own)."""
        self._failures = 0
        self._retry_timer: TimerHandle | None = None
        self.ready: set[str] = set()
        self.returning: set[str] = set()
        """Sites that trained the run when the last server process stopped and have not said
        so to this one yet: a run taken up waits for them as for ready sites, until they come
        back (then they are ready) or are dropped at their heartbeat timeout. Without them
        the first round taken up closed on the first sites back."""
        self.history: collections.deque[RoundSummary] = collections.deque(
            db.round_records(run.run_number, last=HISTORY_SHOWN), maxlen=HISTORY_SHOWN
        )
        """The latest rounds, for the feed; metrics.jsonl and the database have them all."""
        self.final_reports: dict[str, int] = {}
        self._final = RoundState(run.num_rounds, self._aggregator(run.num_rounds), ticks())
        self.round = RoundState(run.next_round, self._aggregator(run.next_round), ticks())
        if run.phase == PHASE_FINAL_VALIDATION:
            self._start_final_validation()
            self._take_up_final_reports()

    def _take_up_final_reports(self) -> None:
        """A final validation taken up again (after a restart, or continuing a stopped run)
        counts the reports recorded before and waits for the rest of the last round's sites,
        not for the first site back only, which would have ended the validation alone (one
        that never comes back is dropped at its heartbeat timeout, or the validation times
        out)."""
        final = self.run.num_rounds
        for _, instance, samples, metrics in self._db.folds(self.run.run_number, final, final):
            self._count_final(instance, json.loads(metrics), samples)
        trained = [r for r in self.history if not r.final]
        if trained:
            self.ready.update(trained[-1].clients)

    def take_up(self) -> None:
        """Go on from what the database holds, once the server took the run up again. A final
        validation whose result was committed ends the run as finished: the last process died
        before it recorded the end, and the sites are not asked again. One whose sites still
        registered have all reported is finished now."""
        if not self.active or self.run.phase != PHASE_FINAL_VALIDATION:
            return
        if self.final_committed:
            log.info(
                "run %d: its final validation was recorded before the server stopped; the run "
                "ends without asking the sites again",
                self.run.run_number,
            )
            self._end(st.STOPPED, st.FINISHED)
        elif self.final_reports:
            self._progress()

    @property
    def final_committed(self) -> bool:
        """Whether the final validation's result is in the state database: the run has
        finished, whatever stops it before its end is recorded."""
        last = self.history[-1] if self.history else None
        return last is not None and last.final and last.round == self.run.num_rounds

    def _aggregator(self, round_number: int) -> Aggregator:
        """The aggregator the app's config asks for, for a round (files opened when used)."""
        number = self.run.run_number
        return make_aggregator(
            self.config,
            self.manifest,
            self._store.round_model(number, round_number),
            self._store.round_updates(number, round_number),
        )

    @property
    def active(self) -> bool:
        """Whether the run still trains or validates."""
        return self.run.status in st.ACTIVE

    @property
    def current_round(self) -> int:
        """The round being trained (num_rounds during final validation)."""
        return self.round.number if self.run.phase == PHASE_TRAINING else self.run.num_rounds

    def awaited(self) -> list[str]:
        """Clients the current round (or final validation) still waits for, by name."""
        return sorted(self.pending())

    def pending(self) -> set[str]:
        """Clients the current round (or final validation) still waits for, in no order:
        what the run's state, published at every update, starts from."""
        if self.run.phase == PHASE_FINAL_VALIDATION:
            return (self.ready | self.returning) - self.final_reports.keys()
        state = self.round
        if len(state.participants) >= self.config.max_num_clients:
            pending = state.participants
        else:
            pending = state.participants | self.ready | self.returning
        return pending - state.contributed.keys()

    def current_offer(self) -> TaskOffer:
        """The task a client joining now should do."""
        if self.run.phase == PHASE_FINAL_VALIDATION:
            return TaskOffer(self.run.run_number, self.run.num_rounds, TaskKind.VALIDATE_GLOBAL)
        return TaskOffer(
            self.run.run_number,
            self.round.number,
            TaskKind.TRAIN,
            compression=self.config.wire_compression,
        )

    @property
    def compression(self) -> WireCompression:
        """How the model a client fetches now travels. The final model goes as stored: its
        validation is the run's last word on the model the server holds."""
        if self.run.phase != PHASE_TRAINING:
            return WireCompression.NONE
        return self.config.wire_compression

    @property
    def tally(self) -> WireTally | None:
        """Where the bytes of the current round's transfers count (None after training)."""
        return self.round.wire if self.run.phase == PHASE_TRAINING else None

    def begin(self) -> None:
        """Offer the current round to every ready client."""
        self._offer_all()
        self._listener.run_changed()

    def _offer_all(self) -> None:
        if self.active and self.ready:
            self._listener.offer(sorted(self.ready), self.current_offer())

    def client_ready(self, instance: str) -> None:
        """A client says it is training this run: offer it the current task (once training
        goes on, when it is paused)."""
        if not self.active:
            return
        self.ready.add(instance)
        self.returning.discard(instance)
        self._offer_undone(instance)
        self._listener.run_changed()

    def offer_missed(self, instance: str, taken_round: int) -> None:
        """A ready client came back on a new control stream, having last taken up the task
        of ``taken_round``: offer it the current task again when that is another one, since
        an offer sent while it had no stream was lost. The final validation is offered again
        whenever this server holds no report of it (one sent to the server that died before
        recording it, or postponed on a full disk): a site that reported waits for no other
        task (it resends what it sent)."""
        if not (self.active and instance in self.ready):
            return
        offer = self.current_offer()
        if taken_round != offer.round or offer.kind is TaskKind.VALIDATE_GLOBAL:
            self._offer_undone(instance)

    def _offer_undone(self, instance: str) -> None:
        offer = self.current_offer()
        done = (
            instance in self.final_reports
            if offer.kind is TaskKind.VALIDATE_GLOBAL
            else instance in self.round.contributed
        )
        if not done and not self.fault:
            self._listener.offer([instance], offer)

    def client_gone(self, instance: str, failed_reason: str = "") -> None:
        """A client stopped, failed or was dropped: stop waiting for it."""
        if failed_reason and instance not in self.run.failed_sites:
            self.run.failed_sites.append(instance)
            self.run.failures[instance] = first_line(failed_reason)
            self._save_record()
            reason = one_line(failed_reason)  # the site's words
            log.warning("run %d: site %s failed: %s", self.run.run_number, instance, reason)
        was_known = instance in self.ready | self.returning or instance in self.round.participants
        self.ready.discard(instance)
        self.returning.discard(instance)
        if self.run.phase == PHASE_TRAINING and instance not in self.round.contributed:
            self.round.participants.discard(instance)
        if was_known and self.active:
            self._progress()
            self._listener.run_changed()

    def admit(self, instance: str, round_number: int, kit: str = "") -> Path:
        """Let a client (instance ``instance`` of kit ``kit``, by default its own) fetch a
        round's input model; raises Refusal when it may not."""
        if not self.active:
            raise Refusal(f"run {self.run.run_number} is not training")
        if self.run.phase == PHASE_FINAL_VALIDATION:
            if round_number != self.run.num_rounds:
                raise Refusal(
                    f"training is over; the final model is round {self.run.num_rounds}",
                )
            self.ready.add(instance)
            return self._store.round_model(self.run.run_number, round_number)
        state = self.round
        if round_number != state.number or state.closed:
            raise Refusal(
                f"round {round_number} is not open; the current round is {state.number}",
            )
        if (
            instance not in state.participants
            and len(state.participants) >= self.config.max_num_clients
        ):
            raise Refusal(
                f"round {state.number} already has max_num_clients="
                f"{self.config.max_num_clients} participants; wait for the next round",
            )
        kit = kit or instance
        twin = self._twin(state, instance, kit)
        if twin is not None:
            raise Refusal(twin)
        self.ready.add(instance)
        state.participants.add(instance)
        state.kits[instance] = kit
        self._listener.run_changed()
        return self._store.round_model(self.run.run_number, round_number)

    def _twin(self, state: RoundState, instance: str, kit: str) -> str | None:
        """Why ``instance`` may not take part in a robust rule's round (None: it may): another
        instance of its kit does. One site, one vote: a kit runs up to 4 instances, which
        would outvote the median that one site alone cannot move."""
        if self.config.aggregator not in ROBUST_AGGREGATORS:
            return None
        twin = next((i for i, k in state.kits.items() if k == kit and i != instance), None)
        if twin is None:
            return None
        return (
            f"round {state.number} already has {twin}, an instance of kit {kit}: the "
            f"{self.config.aggregator} takes one update per site"
        )

    def check_submission(
        self, instance: str, run_number: int, round_number: int, kit: str = ""
    ) -> Verdict | None:
        """Refuse an update (of instance ``instance`` of kit ``kit``, by default its own)
        before its bytes are received, when the verdict is already known."""
        if run_number != self.run.run_number:
            return Verdict(
                SubmitOutcome.REJECTED,
                f"update is for run {run_number}, the server trains run {self.run.run_number}",
            )
        if not self.active:
            return Verdict(
                SubmitOutcome.LATE,
                f"run {self.run.run_number} is no longer training; update discarded",
            )
        state = self.round
        if self.run.phase != PHASE_TRAINING:
            return Verdict(
                SubmitOutcome.LATE, "training is over (final validation); update discarded"
            )
        if round_number == state.number and instance in state.contributed:
            return Verdict(
                SubmitOutcome.DUPLICATE,
                f"update of {instance} for round {round_number} was already counted",
            )
        if round_number < state.number or (round_number == state.number and state.closed):
            return Verdict(
                SubmitOutcome.LATE, f"round {round_number} was already aggregated; update discarded"
            )
        if (
            instance not in state.participants
            and len(state.participants) >= self.config.max_num_clients
        ):
            return Verdict(
                SubmitOutcome.LATE,
                f"round {round_number} already has max_num_clients="
                f"{self.config.max_num_clients} participants; update discarded",
            )
        if round_number > state.number:
            # Only a server that went back in time (restored from a backup) ever offered that
            # round: the site follows this server, as after any round it missed.
            return Verdict(
                SubmitOutcome.LATE,
                f"round {round_number} is ahead of this server's round {state.number} (was "
                "the server restored from a backup?); update discarded",
            )
        if self._db.is_folded(self.run.run_number, round_number, instance):
            return Verdict(
                SubmitOutcome.DUPLICATE,
                f"update of {instance} for round {round_number} was already counted",
            )
        twin = self._twin(state, instance, kit or instance)
        if twin is not None:
            return Verdict(SubmitOutcome.LATE, f"{twin}; update discarded")
        if self.fault:
            return self.postponed()
        return None

    def postponed(self) -> Verdict:
        """The verdict on an update that cannot be stored while training is paused."""
        return Verdict(
            SubmitOutcome.POSTPONED,
            f"{self.fault}; training is paused and asks for it again when it goes on",
        )

    async def accept_update(
        self,
        instance: str,
        round_number: int,
        update: TensorFile,
        num_samples: int,
        metrics: dict[str, float],
        kit: str = "",
    ) -> Verdict:
        """Fold a complete, validated update into the round, exactly once."""
        verdict = refused_weight(num_samples)
        if verdict is not None:
            return verdict
        async with self._lock:
            verdict = self.check_submission(instance, self.run.run_number, round_number, kit)
            if verdict is not None:
                return verdict
            state = self.round
            state.kits[instance] = kit or instance
            fold = asyncio.ensure_future(self._fold(state, instance, update, num_samples, metrics))
            try:
                await asyncio.shield(fold)
            except asyncio.CancelledError:
                # The sender went away mid-fold: the fold still finishes and is recorded
                # (a resend is then a duplicate) before the lock lets anything else in.
                await fold
                raise
            except Exception as exc:
                if not self.storage_failed(exc):
                    raise
                return self.postponed()
        log.info(
            "run %d round %d: update from %s accepted (%d samples; %d received, min %d)",
            self.run.run_number,
            round_number,
            instance,
            num_samples,
            len(state.contributed),
            self.config.min_num_clients,
        )
        self._progress()
        self._listener.run_changed()
        return Verdict(SubmitOutcome.ACCEPTED, f"update for round {round_number} accepted")

    async def _fold(
        self,
        state: RoundState,
        instance: str,
        update: TensorFile,
        num_samples: int,
        metrics: dict[str, float],
    ) -> None:
        """Count an update in the round and record it, as one unit; FedAvg folds it into the
        sum when its turn in the canonical order comes
        (:class:`flserverd.aggregator.CanonicalFold`), after the sender has its verdict."""
        kept = self._store.keep_update(self.run.run_number, state.number, instance, update.path)
        try:
            self._db.record_folded(
                self.run.run_number, state.number, instance, num_samples, metrics
            )
        except BaseException:
            kept.unlink(missing_ok=True)
            raise
        try:
            await asyncio.to_thread(
                state.aggregator.add, instance, TensorFile(kept), float(num_samples)
            )
        except BaseException:
            # Not counted after all (the median reads the whole update here): without its
            # record the resend is taken, where it was told "duplicate" and the round waited.
            self._db.forget_fold(self.run.run_number, state.number, instance)
            kept.unlink(missing_ok=True)
            raise
        state.contributed[instance] = num_samples
        state.participants.add(instance)
        self.ready.add(instance)
        state.add_metrics(instance, metrics, float(num_samples))
        self._spawn(self._fold_due(state))

    async def _fold_due(self, state: RoundState) -> None:
        """Fold the updates whose turn has come, while their senders go on.

        The update is recorded and kept before its verdict, so this is where
        the sum catches up: reading 100 MB back and adding it would otherwise
        hold the sender's verdict (and its upload's end) by as long again. A
        fold that a disk fault cuts short restarts the sum, which the round's
        ``write`` rebuilds from the kept files; training pauses until the disk
        takes writes.
        """
        async with state.in_turn:
            if state.closed or not self.active:
                return  # the round's write folds what is left, or the round is dropped
            try:
                await asyncio.to_thread(state.aggregator.fold_due, self.awaited())
            except Exception as exc:
                if not self.storage_failed(exc):
                    raise

    def accept_final_metrics(
        self, instance: str, round_number: int, metrics: dict[str, float], num_samples: int
    ) -> Verdict:
        """Record a client's validation of the final global model: of a site it was offered
        to (one that trains the run), weighted by a sample count an update could have, or by
        none (0 samples: docs/operations.md, "Apps")."""
        if self.run.phase != PHASE_FINAL_VALIDATION or round_number != self.run.num_rounds:
            return Verdict(
                SubmitOutcome.LATE, "final validation is not in progress; metrics discarded"
            )
        if instance in self.final_reports:
            return Verdict(SubmitOutcome.DUPLICATE, "final validation metrics were already counted")
        if instance not in self.ready:
            return Verdict(
                SubmitOutcome.REJECTED,
                f"{instance} does not take part in run {self.run.run_number}; its validation "
                "of the final model is not counted",
            )
        # A site with no training samples of its own (it holds validation data only, or its
        # training set is empty) still validated the final model on its data: its report is
        # recorded with a weight of 0, not refused (the run then waited for its timeout).
        refused = refused_weight(num_samples, "validation of the final model")
        if refused is not None and num_samples != 0:
            return refused
        try:
            self._db.record_folded(
                self.run.run_number, round_number, instance, num_samples, metrics
            )
        except Exception as exc:
            if not self.storage_failed(exc):
                raise
            return self.postponed()
        self._count_final(instance, metrics, num_samples)
        self._progress()
        self._listener.run_changed()
        return Verdict(SubmitOutcome.ACCEPTED, "final validation metrics accepted")

    def _count_final(self, instance: str, metrics: dict[str, float], num_samples: int) -> None:
        self.final_reports[instance] = num_samples
        self._final.add_metrics(instance, metrics, float(num_samples))

    def _progress(self) -> None:
        """Decide whether the round (or final validation) is complete."""
        if not self.active:
            return
        if self.run.phase == PHASE_FINAL_VALIDATION:
            if not self.awaited():
                self._spawn(self._finish())
            return
        state = self.round
        received = len(state.contributed)
        if state.closed or received == 0:
            return
        enough = received >= self.config.min_num_clients
        if received >= self.config.max_num_clients or (enough and not self.awaited()):
            self._close_round()
        elif enough and self._timer is None:
            wait = self.config.wait_after_min_clients
            if wait <= 0:
                self._close_round()
                return
            state.deadline = self._clock() + wait
            self._timer = self._call_later(wait, self._close_round)

    def _close_round(self) -> None:
        if self.round.closed or not self.active:
            return
        self.round.closed = True
        self._cancel_timer()
        self._spawn(self._aggregate(self.round))

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            exc = task.exception()
            log.error("run %d: %s", self.run.run_number, exc, exc_info=exc)
            self._end(
                st.STOPPED,
                "an unexpected error on the server stopped it; the server's log has the details",
            )

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.round.deadline = 0.0

    def _is_better(self, value: float) -> bool:
        best = self.run.best_value
        if best is None:
            return True
        return value > best if self.config.metric_mode == "max" else value < best

    def _with_best(self, record: RunRecord, model_round: int, metrics: dict[str, float]) -> None:
        """Note a new best model in ``record`` (a copy of the run's, committed before the run
        moves on): the model clients validated is the round's input. The file follows from
        the committed record in :meth:`publish_models`."""
        value = metrics.get(self.config.validation_metric)
        if value is not None and self._is_better(value):
            record.best_round = model_round
            record.best_value = value

    def _adopt(self, record: RunRecord) -> None:
        """The committed record becomes the run's (the object the server holds stays the same)."""
        self.run.next_round = record.next_round
        self.run.best_round = record.best_round
        self.run.best_value = record.best_value

    def publish_models(self) -> None:
        """Make global_model and best_global_model the files the committed record names, and
        delete the round models that are neither among the last ``keep_round_models`` nor
        the best.

        Called after each commit, and on resume: a crash between the commit
        and this leaves the round files in place, so nothing is lost.
        """
        number = self.run.run_number
        latest = self._store.round_model(number, self.run.next_round)
        self._store.publish(latest, self._store.global_model(number))
        keep = {self.run.next_round - back for back in range(self.config.keep_round_models)}
        if self.run.best_round is not None:
            best = self._store.round_model(number, self.run.best_round)
            self._store.publish(best, self._store.best_model(number))
            keep.add(self.run.best_round)
        self._store.drop_round_models(number, keep)

    def recover_outputs(self) -> None:
        """After a restart or a disk fault: republish the models and write the records that
        were cut off.

        metrics.jsonl and the TensorBoard files are appended after the
        database commit; records the database has but the file lacks are
        written now.
        """
        self._rewrite_outputs(self._db.round_records(self.run.run_number))

    def _rewrite_outputs(self, committed: list[RoundSummary]) -> None:
        """The file work of :meth:`recover_outputs`, given what the database committed (read
        on the loop's thread, which the connection belongs to), so that it can run in a
        worker thread."""
        self.publish_models()
        written = self._store.metrics_times(self.run.run_number)
        for summary in committed:
            if summary.time not in written:
                self._tb.add(summary.round, summary.metrics)
                self._store.append_metrics(summary)

    def _write_outputs(self, summary: RoundSummary) -> None:
        """The files that follow from a committed round, fsyncs and all (in a worker thread);
        the round's kept updates go first, which frees the most space."""
        faultpoints.reached(faultpoints.SERVER_OUTPUTS)
        if not summary.final:
            self._store.drop_round_updates(summary.run, summary.round)
        self.publish_models()
        # The metrics line last: a restart writes again what follows a round that has none.
        self._tb.add(summary.round, summary.metrics)
        self._store.append_metrics(summary)

    async def _publish(self, summary: RoundSummary) -> None:
        """Write a committed round's files off the loop: the SQLite commit stays on the loop
        (the connection belongs to the loop's thread, and it is one WAL fsync)."""
        self.history.append(summary)
        writing = asyncio.ensure_future(asyncio.to_thread(self._write_outputs, summary))
        self._writing = writing
        try:
            await asyncio.shield(writing)
        except Exception as exc:
            if not self.storage_failed(exc, self._recover_outputs):
                raise

    async def _recover_outputs(self) -> None:
        async with self._lock:  # no checkpoint is being written while its temp files go
            committed = self._db.round_records(self.run.run_number)
            await asyncio.to_thread(self._rewrite_outputs, committed)

    def _say_if_nothing_trimmed(self, state: RoundState) -> None:
        """A trimmed mean that may close with fewer updates than it was sized for trims
        nothing then: the round is a plain mean, and whoever chose the rule must hear it."""
        config, count = self.config, len(state.contributed)
        if config.aggregator == "trimmed_mean" and not trimmed_per_end(config.trim_fraction, count):
            log.warning(
                "run %d round %d: trimmed_mean trims nothing from %d updates (trim_fraction "
                "%g), so this round is a plain mean; a min_num_clients of %d trims every round",
                self.run.run_number,
                state.number,
                count,
                config.trim_fraction,
                math.ceil(1 / config.trim_fraction),  # above 0: the config check sees to it
            )

    async def _commit_round(self, state: RoundState) -> tuple[RunRecord, RoundSummary] | None:
        """Write the next round's model, then move the round pointer in one transaction;
        None when the run stopped meanwhile. The run itself moves on only once this is done,
        so a disk fault here leaves the round as it was, to be committed again."""
        number = self.run.run_number
        following = state.number + 1
        target = self._store.round_model(number, following)
        metadata = {"run": str(number), "round": str(following)}
        self._say_if_nothing_trimmed(state)
        updates = await state.call(state.aggregator.write, target, metadata)
        if not self.active:
            return None
        faultpoints.reached(faultpoints.SERVER_COMMIT)
        metrics = state.mean_metrics()
        summary = RoundSummary(
            run=number,
            round=state.number,
            time=self._clock(),
            clients=sorted(state.contributed),
            metrics=metrics,
            duration_s=round(self._ticks() - state.started, 4),
            samples=sum(state.contributed.values()),
            updates=updates,
            wire=replace(state.wire, compression=self.config.wire_compression.value),
        )
        record = replace(self.run, next_round=following)
        self._with_best(record, state.number, metrics)
        if following >= record.num_rounds:
            record.phase = PHASE_FINAL_VALIDATION
        self._db.complete_round(record, summary)
        return record, summary

    async def _aggregate(self, state: RoundState) -> None:
        async with self._lock:
            if not self.active and state is self.round:
                # Ended while the round waited for its commit (paused by a disk fault, or
                # behind a fold): nothing will commit it, and its updates fill the disk.
                await state.call(state.aggregator.discard)
            if not self.active or state is not self.round:
                return
            try:
                committed = await self._commit_round(state)
            except Exception as exc:
                if self.storage_failed(exc, lambda: self._aggregate(state)):
                    return
                raise
            if committed is None:
                await state.call(state.aggregator.discard)
                return
            record, summary = committed
            self._adopt(record)
            self._report_outliers(state.number, summary.updates)
            # In memory the run moves on before the files are written, so that an upload
            # arriving meanwhile is judged against the new round. The next round's model is
            # written and committed: sites start on it while the outputs that follow from
            # the round (links, metrics.jsonl, TensorBoard) are written.
            if record.next_round >= self.run.num_rounds:
                self._start_final_validation()
            else:
                self.round = RoundState(
                    record.next_round, self._aggregator(record.next_round), self._ticks()
                )
            if not self.fault:
                self._offer_all()
            await self._publish(summary)
            saving = ""
            if summary.wire is not None and summary.wire.compression != WireCompression.NONE:
                saving = f"; {summary.wire.described()}"
            log.info(
                "run %d round %d aggregated from %d clients in %.2fs: %s%s",
                record.run_number,
                state.number,
                len(state.contributed),
                summary.duration_s,
                format_metrics(summary.metrics),
                saving,
            )
        self._progress()
        self._listener.run_changed()

    def _report_outliers(self, round_number: int, updates: dict[str, UpdateStats]) -> None:
        """Name the updates that stand out from the round's aggregate (console log)."""
        if len(updates) < MIN_UPDATES_FOR_OUTLIERS:
            return
        bound = self.config.clip_update_norm
        for instance, stats in sorted(updates.items()):
            if stats.score < OUTLIER_SCORE:
                continue
            norm = stats.norm
            detail = "" if norm is None else f", distance to the input model {norm:.4g}"
            if norm is not None and bound is not None and norm > bound:
                detail += f", clipped to {bound:g}"
            log.warning(
                "run %d round %d: the update of %s is an outlier (score %.1f%s)",
                self.run.run_number,
                round_number,
                instance,
                stats.score,
                detail,
            )

    def _start_final_validation(self) -> None:
        self.run.phase = PHASE_FINAL_VALIDATION
        self._final = RoundState(
            self.run.num_rounds, self._aggregator(self.run.num_rounds), self._ticks()
        )
        self.final_reports = {}
        self._cancel_timer()
        self._timer = self._call_later(self.config.final_validation_timeout, self._final_timeout)

    def _final_timeout(self) -> None:
        self._timer = None
        if self.active and self.run.phase == PHASE_FINAL_VALIDATION:
            log.warning(
                "run %d: final validation timed out waiting for %s",
                self.run.run_number,
                ", ".join(self.awaited()) or "nobody",
            )
            self._spawn(self._finish())

    async def _finish(self) -> None:
        async with self._lock:
            if not self.active:
                return
            metrics = self._final.mean_metrics()
            if metrics:
                summary = RoundSummary(
                    run=self.run.run_number,
                    round=self.run.num_rounds,
                    time=self._clock(),
                    clients=sorted(self.final_reports),
                    metrics=metrics,
                    final=True,
                )
                record = replace(self.run)
                self._with_best(record, self.run.num_rounds, metrics)
                try:
                    self._db.complete_round(record, summary)
                except Exception as exc:
                    if self.storage_failed(exc, self._finish):
                        return
                    raise
                self._adopt(record)
                await self._publish(summary)
                log.info(
                    "run %d final global model: %s", self.run.run_number, format_metrics(metrics)
                )
            self._end(st.STOPPED, st.FINISHED)

    def abort(self, reason: str = "aborted by admin") -> None:
        """Stop the run now; the last completed round's model stays on disk. A run whose
        final result was committed (its files being written, its end not recorded yet) has
        finished, and ends so: recorded as aborted, a later start offered to continue it "at
        the final validation" and then ended it at once as finished."""
        if not self.active:
            return
        if self.final_committed:
            log.info(
                "run %d: %s came after its final result; the run has finished",
                self.run.run_number,
                reason,
            )
            self._end(st.STOPPED, st.FINISHED)
        else:
            self._end(st.STOPPED, reason)

    def _end(self, status: str, reason: str) -> None:
        """Stop the run. Clients are told even when the database cannot record it (a full
        disk): they must not wait for a round that never comes."""
        if not self.active:
            return
        self._cancel_timer()
        self.run.status = status
        self.run.reason = reason
        self.run.ended_at = self._clock()
        self._close_tensorboard()
        if not self.round.closed:  # a closed round's aggregation deletes its own files
            self._spawn(self._drop_round(self.round))
        log.info("run %d %s: %s", self.run.run_number, status, reason)
        self._listener.run_ended(self.run)
        self._listener.run_changed()
        self._save_record()

    def _save_record(self) -> None:
        """Store the run record (once it ended, with the fold records of the round it ended
        in forgotten); a disk fault pauses (or, once it ended, keeps retrying)."""
        save = self._db.save_run if self.active else self._db.end_run
        try:
            save(self.run)
        except Exception as exc:
            if not self.storage_failed(exc, self._save_record_again):
                raise

    async def _save_record_again(self) -> None:
        self._save_record()

    # ------------------------------------------------------------------ disk faults

    def storage_failed(self, exc: BaseException, step: Step | None = None) -> bool:
        """A write failed. When it failed because of the disk (full, read-only, failing),
        training pauses and ``step`` (or, without one, a check for free space) is tried
        again every STORAGE_RETRY_S seconds and on ``start server``; returns False for any
        other error, which the caller raises."""
        fault = disk_fault(exc, self._store.workspace)
        if fault is None:
            return False
        message = f"server {fault}"
        if message != self.fault:
            log.error(
                "run %d: %s; training is paused and goes on once the write succeeds "
                "(tried again every %gs, or at once with start server)",
                self.run.run_number,
                message,
                STORAGE_RETRY_S,
            )
        self.fault = message
        self._failures += 1
        if step is not None and step not in self._failed_steps:
            self._failed_steps.append(step)
        if self._retry_timer is None:
            self._retry_timer = self._call_later(STORAGE_RETRY_S, self._retry_due)
        self._listener.run_changed()
        return True

    def _retry_due(self) -> None:
        self._retry_timer = None
        self.retry_paused()

    def retry_paused(self) -> bool:
        """Try the write a disk fault stopped, now; False when nothing is paused."""
        if not self.fault:
            return False
        self._spawn(self._retry())
        return True

    async def _retry(self) -> None:
        steps, self._failed_steps = self._failed_steps, []
        failures = self._failures
        for step in steps:
            await step()
        if not steps:
            self._check_room()
        if self._failures == failures and self.fault:
            self._resume_after_fault()

    def _check_room(self) -> None:
        """Without a step to repeat (an upload could not be stored), training goes on once
        there is room for an update, FedAvg's running sum and the next checkpoint."""
        needed = 2 * self.manifest.total_bytes + RunningSum.size_of(self.manifest)
        free = self._store.free_bytes()
        if free < needed:
            self.storage_failed(
                OSError(
                    errno.ENOSPC,
                    f"No space left on device ({free} bytes free, {needed} needed)",
                    str(self._store.workspace),
                )
            )

    def _resume_after_fault(self) -> None:
        log.info("run %d: the disk takes writes again; training goes on", self.run.run_number)
        self.fault = ""
        if self._retry_timer is not None:
            self._retry_timer.cancel()
            self._retry_timer = None
        if self.active:
            self._offer_all()
            self._progress()
        self._listener.run_changed()

    async def _drop_round(self, state: RoundState) -> None:
        """Delete what an abandoned round kept, once no update is being added to it."""
        async with self._lock:
            await state.call(state.aggregator.discard)

    async def close(self, grace: float) -> None:
        """Stop timers and let an aggregation in flight finish, without ending the run.

        Used on SIGTERM: the run resumes from its last completed round when
        the server starts again, so a checkpoint being written is given
        ``grace`` seconds to land rather than being cut off.
        """
        self._cancel_timer()
        if self._retry_timer is not None:
            self._retry_timer.cancel()
            self._retry_timer = None
        if self._tasks:
            _, pending = await asyncio.wait(list(self._tasks), timeout=grace)
            for task in pending:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._close_tensorboard()

    def _close_tensorboard(self) -> None:
        """Close the event file once no round's files are being written."""
        writing = self._writing
        if writing is not None and not writing.done():
            writing.add_done_callback(lambda _: self._tb.close())
        else:
            self._tb.close()
