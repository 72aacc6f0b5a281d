"""The server's state and behaviour, apart from gRPC.

FLServer ties the domain objects together (registry, round controller, run
store, event bus, client links) and offers the operations that the
servicers and the admin commands need. It runs on one asyncio event loop;
blocking work (folding updates, writing checkpoints, building the initial
model) happens in threads or child processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import shutil
import sqlite3
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import NamedTuple

from flcore import faultpoints
from flcore import status as st
from flcore.appconfig import ServerAppConfig, load_app
from flcore.certlife import EndingPeers, kit_lives
from flcore.diskfault import disk_fault
from flcore.federation import (
    ClientHeartbeat,
    Closed,
    CommandResult,
    Hello,
    LogBatch,
    MachineInfo,
    RunEnded,
    StatusChanged,
    TaskOffer,
    Unreadable,
    Upward,
)
from flcore.feed import (
    ClientGone,
    ClientRow,
    Heartbeat,
    LogEntry,
    RunInfo,
    ServerInfo,
    ServerStopping,
    Snapshot,
)
from flcore.identity import KIND_CLIENT, Identity
from flcore.schema import ConfigError
from flcore.sdnotify import notify
from flcore.serverpaths import check_app_paths, checkpoint_folders
from flcore.startup import STARTUP_DIR, ServerStartup
from flcore.status import ClientStatus
from flcore.tensorfile import Manifest, TensorFile, TensorFileError
from flserverd.admins import AdminLogin, AdminLogins
from flserverd.confirm import listing
from flserverd.crossval import CrossValidation
from flserverd.events import BusLogHandler, EventBus
from flserverd.links import ClientLink, call_all
from flserverd.registry import AuthError, ClientRegistry, Login, RegisteredClient
from flserverd.revocation import CRL_STORE, Revocations
from flserverd.runstore import RunStore
from flserverd.statedb import AuditEntry, RunRecord, StateDB
from flserverd.throttle import (
    LOG_LINE_BURST,
    LOG_LINES_PER_SECOND,
    MESSAGE_BURST,
    MESSAGES_PER_SECOND,
    Rarely,
    Throttle,
)
from flserverd.training import (
    HISTORY_SHOWN,
    PHASE_FINAL_VALIDATION,
    PHASE_TRAINING,
    STORAGE_RETRY_S,
    Training,
)
from flserverd.views import best_text, client_row, fit_snapshot, round_record

log = logging.getLogger(__name__)

TRAINING_ON = frozenset({st.STARTING, st.STARTED, st.PAUSED})
"""Statuses of a site that will send an update for the round without an admin's help."""

RUN_NUMBER_KEY = "run_number"
MODEL_INIT_TIMEOUT = 600.0
# How long a command waits for a registered client whose stream is (re)connecting.
RECONNECT_GRACE_S = 5.0
# How long `shutdown server` waits for clients just told to shut down to log out: else a
# restarted server would list them, and wait for them, until their heartbeat timeout.
DEPARTURE_WAIT_S = 3.0
FLOOD_LOG_EVERY_S = 60.0
"""A site that floods its control stream, or sends what the server cannot read, is named in
the log once a minute at most for each."""


class CommandError(Exception):
    """An admin command cannot be carried out; the message tells the admin why."""


class Enforced(NamedTuple):
    """Who a revocation took effect on at once: client instances dropped, admins logged
    out."""

    clients: list[str]
    admins: list[str]


@dataclass(frozen=True)
class RunDeletion:
    """What ``delete_run`` did once the run's history was gone."""

    audit_id: int
    """The audit row written with the history's deletion."""
    left: str = ""
    """What of its folder could not be removed (the next start removes it)."""
    unmoved: str = ""
    """Why its folder could not be moved aside: the command failed after the history went."""


class FLServer:
    """Everything the server knows and does."""

    def __init__(self, workspace: Path, startup: ServerStartup, version: str) -> None:
        self.workspace = workspace
        self.startup = startup
        self.version = version
        self.started_at = time.time()
        state_dir = workspace / "state"
        state_dir.mkdir(mode=0o700, exist_ok=True)
        self.db = StateDB(state_dir / "flserverd.sqlite3")
        self.store = RunStore(workspace)
        self.bus = EventBus()
        self.registry = ClientRegistry(
            self.db, startup.heart_beat_timeout, max_instances=startup.max_instances_per_kit
        )
        self.ending_certificates = EndingPeers()
        self.admins = AdminLogins(on_login=self._certificate_seen)
        self.revocations = Revocations(
            self.db,
            state_dir / CRL_STORE,
            workspace / STARTUP_DIR / startup.ssl_root_cert,
            startup.name,
            workspace / STARTUP_DIR / startup.ssl_cert,
        )
        self._run_number = int(self.db.get_meta(RUN_NUMBER_KEY) or 0)
        self.links: dict[bytes, ClientLink] = {}
        self.training: Training | None = None
        self._crossvals: dict[int, CrossValidation] = {}
        self.starting = False
        self._starting_task: asyncio.Task[None] | None = None
        self.start_error = ""
        self._abort_reason = ""
        self._blocked = ""
        """Why the training run cannot progress, as last published."""
        self.shutdown_requested = asyncio.Event()
        self.stopped_by = ""
        """The admin whose ``shutdown server`` stops the server ("" until one does)."""
        self.shutting_down = False
        """An admin's shutdown was accepted: no other command changes anything now."""
        self._sweeper: asyncio.Task[None] | None = None
        self._resuming: asyncio.Task[None] | None = None
        self.resume_fault = ""
        """Why the interrupted run could not be resumed yet (a full disk); retried."""
        self._links_changed = asyncio.Condition()
        """Notified when a client's stream attaches or a client is dropped."""
        self._leaving: set[bytes] = set()
        """Tokens of clients that agreed to shut down and have not logged out yet."""
        self._background: set[asyncio.Task[None]] = set()
        self._log_handler: BusLogHandler | None = None
        self._messages = Throttle(MESSAGE_BURST, MESSAGES_PER_SECOND)
        self._log_lines = Throttle(LOG_LINE_BURST, LOG_LINES_PER_SECOND)
        self._warned = Rarely(FLOOD_LOG_EVERY_S)
        """When a site was last named in the log for flooding or for an unreadable message."""
        self._revoked_instances: dict[str, str] = {}
        """Instances dropped because their certificate was revoked, and why: an upload of
        theirs still arriving is discarded."""

    # ------------------------------------------------------------------ lifecycle

    async def open(self) -> None:
        """Read the revocation list held, resume an interrupted run and start watching
        heartbeats; ConfigError when the revocation list held cannot be used."""
        self.revocations.open()
        loop = asyncio.get_running_loop()
        self._log_handler = BusLogHandler(self.bus, loop)
        logging.getLogger().addHandler(self._log_handler)
        self.store.clear_leftovers()
        number = self.run_number
        record = self.db.get_run(number) if number else None
        if record is not None and record.status in st.ACTIVE and not self._try_resume(record):
            self._resuming = loop.create_task(self._resume_when_possible(record))
        self._sweeper = loop.create_task(self._sweep())

    def _try_resume(self, record: RunRecord) -> bool:
        """Resume an interrupted run; False when the disk must take writes first (the run
        is then shown paused, with why)."""
        try:
            self._resume(record)
        except (ConfigError, TensorFileError, OSError, sqlite3.Error) as exc:
            self.training = None
            fault = disk_fault(exc, self.workspace)
            if fault is not None:
                if not self.resume_fault:
                    log.error(
                        "cannot resume run %d yet: server %s; it resumes once the disk takes "
                        "writes again (tried every %gs, or at once with start server)",
                        record.run_number,
                        fault,
                        STORAGE_RETRY_S,
                    )
                self.resume_fault = f"server {fault}"
                return False
            if isinstance(exc, sqlite3.Error):
                raise
            # Keep serving: admins can look, fix and start the run again.
            log.error("cannot resume run %d: %s; marking it stopped", record.run_number, exc)
            record.status, record.reason = st.STOPPED, f"could not resume: {exc}"
            self.db.end_run(record)
        self.resume_fault = ""
        return True

    async def _resume_when_possible(self, record: RunRecord) -> None:
        def waiting() -> bool:
            number = record.run_number
            return self.run_number == number and self.training_for(number) is None

        while waiting() and self.resume_fault:
            await asyncio.sleep(STORAGE_RETRY_S)
            if waiting() and self._try_resume(record):
                self.publish_run()

    def _resume(self, record: RunRecord) -> None:
        app = load_app(self.store.server_app(record.run_number))
        if app.server is None:
            raise ConfigError(f"run {record.run_number}: the deployed app has no server config")
        dropped = self._hold(record, app.server)
        self._expect_returning(record)
        log.info(
            "resumed run %d at round %d of %d (%d unfinished updates will be resent by clients)",
            record.run_number,
            record.next_round,
            record.num_rounds,
            dropped,
        )

    def _expect_returning(self, record: RunRecord) -> None:
        """A round taken up after a restart waits for the sites that trained the run when the
        server stopped (their status as the state database kept it), as the round would
        have: those back first must not close it alone. A site already back (the resume
        waited for room on the disk) said so before the server held the run, and says it
        no more: it is ready now, and offered the round. A final validation taken up waits
        for the last round's sites instead (Training)."""
        training = self.training
        if training is None or record.phase != PHASE_TRAINING:
            return
        for instance in sorted(self.registry.on_run(record.run_number, {st.STARTED})):
            client = self.registry.by_instance(instance)
            if client is not None and client.token_key in self.links:
                training.client_ready(instance)
            else:
                training.returning.add(instance)

    def stop_soon(self, user: str) -> None:
        """An admin's ``shutdown server`` was answered: the daemon stops now."""
        self.stopped_by = user
        self.shutdown_requested.set()

    def announce_stop(self, signalled: str) -> None:
        """Tell every console the server stops, and who asked (an admin, else what
        ``signalled`` says), as the last event of its feed."""
        by = self.stopped_by or signalled
        log.info("stopping: asked by %s", by)
        self.bus.publish(ServerStopping(by, admin=bool(self.stopped_by)))
        self.bus.close()

    def end_control_streams(self) -> None:
        """The server stops: end every client's control stream now. They never end by
        themselves, so the RPCs' grace was spent on them in full at every stop (5 s of a
        restart); transfers still under way keep it. Sites reconnect to the next server."""
        for link in self.links.values():
            link.close()

    def _hold(self, record: RunRecord, config: ServerAppConfig) -> int:
        """Take up a run from its last committed round (after a restart, or to continue a
        stopped run); returns how many updates of the unfinished round were forgotten."""
        model = self.store.round_model(record.run_number, record.next_round)
        manifest = TensorFile(model).manifest
        number = record.run_number
        dropped = self.db.forget_unfinished_folds(number, record.next_round, record.num_rounds)
        self.store.clear_spool(number)
        self.training = Training(record, config, manifest, self.store, self.db, self)
        # A final validation taken up waits for the last round's sites: not for one that is no
        # longer registered (dropped, revoked), which would never report.
        self.training.ready &= {client.instance for client in self.registry.clients()}
        self.training.recover_outputs()
        self.training.take_up()
        return dropped

    async def close(self, grace: float) -> None:
        """Stop cleanly: let checkpoint writes land, close streams, keep the run resumable."""
        starting = self._starting_task
        if starting is not None:  # a start still building its model: end it before the database
            self.abort_training("stopped by the server's shutdown")
            with contextlib.suppress(asyncio.CancelledError):
                await starting
        for task in (self._sweeper, self._resuming):
            if task is not None:
                task.cancel()
        if self.training is not None:
            await self.training.close(grace)
        for link in list(self.links.values()):
            link.close()
        self.bus.close()
        if self._log_handler is not None:
            logging.getLogger().removeHandler(self._log_handler)
        self.db.close()

    async def _sweep(self) -> None:
        """Drop clients not heard from within the heartbeat timeout; warn once when the
        revocation list goes stale.

        A sweep that wakes far later than asked found the server itself stood still
        (stopped, its loop blocked): no heartbeat could be read meanwhile, so that gap is
        not the sites' silence (a server stopped for 14s once dropped every site as it
        resumed, "no heartbeat for 32s")."""
        interval = min(1.0, self.startup.heart_beat_timeout / 4)
        swept = time.monotonic()
        while True:
            await asyncio.sleep(interval)
            now = time.monotonic()
            stood = now - swept - interval
            swept = now
            if stood > interval:
                log.warning(
                    "the server stood still for %.0fs; the sites' silence during it is not counted",
                    stood,
                )
                self.registry.excuse(stood)
            for client in self.registry.expired():
                silent = self.registry.silence(client)
                self.drop(client, f"no heartbeat for {silent:.0f}s")
            self.revocations.check_stale()

    # ------------------------------------------------------------------ runs

    @property
    def run_number(self) -> int:
        """The run set by set_run_number (0 when never set)."""
        return self._run_number

    def training_for(self, run_number: int) -> Training | None:
        """The round controller of run ``run_number`` when it is the run this server holds
        (training now, or stopped since it was started or resumed here)."""
        training = self.training
        if training is not None and training.run.run_number == run_number:
            return training
        return None

    def active_training(self) -> Training | None:
        """The round controller of the run that is training or validating now."""
        training = self.training
        return training if training is not None and training.active else None

    @property
    def busy(self) -> bool:
        """Whether a run is starting, training or validating: the run's app and number
        must not change under it."""
        return self.starting or self.active_training() is not None

    def set_run_number(self, number: int) -> bool:
        """Select run N, creating run_N/; returns True when the folder already existed."""
        if self.starting:
            raise CommandError("the server is starting training: wait for it, or abort it")
        active = self.active_training()
        if active is not None:
            raise CommandError(
                f"run {active.run.run_number} is still training: abort it before "
                "setting a new run number"
            )
        if self._resuming is not None and not self._resuming.done() and self.resume_fault:
            # Moving on would leave that run "training started" in its record for good.
            raise CommandError(
                f"run {self.run_number} waits to be taken up again ({self.resume_fault}): "
                f"free space on the server (it goes on within {STORAGE_RETRY_S:g}s, or at "
                "once with start server), then abort it before setting a new run number"
            )
        existed = self.store.create_run(number)
        self.db.set_meta(RUN_NUMBER_KEY, str(number))
        self._run_number = number
        self._forget_settled_crossvals(number)
        if self.training_for(number) is None:
            self.training = None
        self.publish_run()
        self.publish_clients()
        return existed

    def server_status(self) -> str:
        """Status word of the current run, as check_status shows it."""
        if self.starting:
            return st.STARTING
        training = self.training_for(self.run_number)
        if training is not None:
            return st.PAUSED if training.fault and training.active else training.run.status
        record = self.db.get_run(self.run_number) if self.run_number else None
        if record is None:
            return st.NOT_STARTED
        return st.PAUSED if self.resume_fault and record.status in st.ACTIVE else record.status

    @property
    def current_round(self) -> int:
        """The round of the run this server holds (-1 when it holds none)."""
        training = self.training
        return training.current_round if training is not None else -1

    def require_run(self) -> int:
        """The current run number, or a CommandError saying to set one."""
        number = self.run_number
        if not number:
            raise CommandError("FL run number has not been set: use set_run_number <N> first")
        return number

    async def start_training(self, fresh: bool = False) -> str:
        """Begin training the current run from its server app, or continue it from its last
        completed round when it stopped before the end (``fresh``: start over); returns the
        reply text.

        A new start replies as soon as the initial model is being built (in a
        child that imports torch and the app's code: seconds, minutes for a
        large model), so that ``start client`` can start the sites' training
        processes meanwhile instead of after it. A build that fails is
        reported in the run's status (``training not started (last start
        failed: ...)``), the log, and to the sites already started, which stop.
        """
        number = self.require_run()
        paused = self.active_training()
        if paused is not None and paused.retry_paused():
            return f"Run {number} is paused ({paused.fault}): trying the failed write again."
        if self.busy:
            raise CommandError(f"run {number} is already training")
        config = self._deployed_config(number)
        try:
            check_app_paths(
                self.store.server_app(number), config, self.workspace, self.startup.checkpoint_dirs
            )
        except ConfigError as exc:
            raise CommandError(f"the deployed app cannot run on this server: {exc}") from None
        record = None if fresh else self.db.get_run(number)
        if record is not None:
            return self._continue(record, config)
        # A resume still waiting for the disk would take up the old run during the build.
        if self._resuming is not None:
            self._resuming.cancel()
            self._resuming = None
        self.resume_fault = ""
        self.starting = True
        self.start_error = ""
        self.publish_run()
        task = asyncio.get_running_loop().create_task(self._prepare_and_begin(number, config))
        self._starting_task = task
        return "Server training is starting...."

    def _deployed_config(self, number: int) -> ServerAppConfig:
        app_dir = self.store.server_app(number)
        if not app_dir.is_dir():
            raise CommandError(
                f"no app is deployed to the server for run {number}: use deploy <app> server first"
            )
        try:
            app = load_app(app_dir)
        except ConfigError as exc:
            raise CommandError(f"the deployed app is not valid: {exc}") from None
        if app.server is None:
            raise CommandError("the deployed app has no config/config_fed_server.json")
        return app.server

    def metric_modes(self, number: int) -> dict[str, str]:
        """Which way is better for the metrics whose direction the run's app declares (its
        ``validation_metric``: ``max`` or ``min``); empty when its app cannot be read."""
        try:
            config = self._deployed_config(number)
        except CommandError:
            return {}
        return {config.validation_metric: config.metric_mode}

    def _continue(self, record: RunRecord, config: ServerAppConfig) -> str:
        """Go on with a run that stopped before its end (a fault, an abort) from its last
        completed round, with the settings of the app deployed now."""
        number = record.run_number
        again = f"start server fresh trains run {number} again from round {config.start_round}"
        last = self.db.round_records(number, last=1)
        # An older server recorded an abort that came after the final result as the end.
        final = bool(last) and last[0].final and last[0].round == record.num_rounds
        if record.reason == st.FINISHED or final:
            raise CommandError(
                f"run {number} finished all its rounds: {again} (replacing its models and "
                "metrics), or set_run_number <N> starts a new run"
            )
        if record.next_round > config.num_rounds:
            raise CommandError(
                f"run {number} has completed {record.next_round} rounds but the deployed app "
                f"has num_rounds={config.num_rounds}: deploy an app with more rounds, or {again}"
            )
        training_left = record.next_round < config.num_rounds
        record.num_rounds = config.num_rounds
        record.phase = PHASE_TRAINING if training_left else PHASE_FINAL_VALIDATION
        record.status, record.reason, record.failed_sites = st.STARTED, "", []
        record.failures, record.resumed_at, record.ended_at = {}, time.time(), 0.0
        try:
            self._hold(record, config)
            self.db.save_run(record)
        except (OSError, TensorFileError, sqlite3.Error) as exc:
            self.training = None
            fault = disk_fault(exc)
            why = f"server {fault}" if fault else f"its checkpoint cannot be used: {exc}"
            raise CommandError(f"cannot continue run {number}: {why}; {again}") from None
        self.resume_fault = ""
        self._crossvals.pop(number, None)
        self._offer_to_ready(self.training, number)
        where = f"round {record.next_round}" if training_left else "the final validation"
        log.info("run %d continues at %s of %d rounds", number, where, record.num_rounds)
        return f"Server training continues run {number} at {where} (of {record.num_rounds} rounds)."

    def _offer_to_ready(self, training: Training | None, number: int) -> None:
        """Clients already training run ``number`` are ready for its first round now."""
        assert training is not None
        for client in self.registry.clients():
            if client.status.status == st.STARTED and client.status.run_number == number:
                training.ready.add(client.instance)
        self.publish_clients()
        training.begin()

    async def _prepare_and_begin(self, number: int, config: ServerAppConfig) -> None:
        try:
            model = self.store.round_model(number, config.start_round)
            folders = checkpoint_folders(self.workspace, self.startup.checkpoint_dirs)
            await build_initial_model(self.store.server_app(number), model, folders)
            manifest = TensorFile(model).manifest
            self._begin(number, config, manifest)
        except asyncio.CancelledError:
            self.start_error = f"start {self._abort_reason}"
            log.info("run %d: start %s", number, self._abort_reason)
            raise
        except Exception as exc:
            self.start_error = _start_failure(exc)
            # The app's or the checkpoint's fault is said in one line; only a fault of the
            # server's own code earns its traceback.
            expected = isinstance(exc, ModelInitError | ConfigError | TensorFileError | OSError)
            log.error(
                "run %d: cannot start training: %s",
                number,
                self.start_error,
                exc_info=None if expected else exc,
            )
        finally:
            self.starting = False
            self._starting_task = None
            self.publish_run()
            if self.start_error:
                self._start_failed(number)

    def _start_failed(self, number: int) -> None:
        """Sites started for a run whose start failed must not wait for its first round."""
        ended = self._failed_start(number)
        if ended is not None:
            for link in self.links.values():
                link.send(ended)

    def _failed_start(self, number: int) -> RunEnded | None:
        """What a site training run ``number`` is told when its last start failed (None when
        it did not)."""
        if number != self.run_number or not self.start_error or self.busy:
            return None
        if self.db.get_run(number) is not None:
            return None  # an earlier start of the run is what the sites follow
        return RunEnded(
            number, st.STOPPED, f"the server could not start run {number}: {self.start_error}"
        )

    def _begin(self, number: int, config: ServerAppConfig, manifest: Manifest) -> None:
        """The initial model is ready: a fresh run record, and the first round offered.
        The old run's files go first: a crash before the record is replaced leaves the old
        record, whose continuation refuses for want of its model, never a new record beside
        the old run's metrics."""
        self.store.clear_outputs(number, keep_round=config.start_round)
        record = RunRecord(
            run_number=number,
            status=st.STARTED,
            phase=PHASE_TRAINING,
            app=self.store.deployed_app_name(number),
            start_round=config.start_round,
            num_rounds=config.num_rounds,
            next_round=config.start_round,
            metric=config.validation_metric,
            started_at=time.time(),
        )
        self.db.start_over(record)
        self._crossvals[number] = CrossValidation(number, self.store, self.db, self)
        training = Training(record, config, manifest, self.store, self.db, self)
        self.training = training
        log.info(
            "run %d: training started, rounds %d..%d, %d tensors (%.1f MB)",
            number,
            config.start_round,
            config.num_rounds - 1,
            len(manifest.tensors),
            manifest.total_bytes / 1e6,
        )
        self._offer_to_ready(training, number)

    def known_run(self, run_number: int) -> bool:
        """Whether a run number from a peer names a run of this server."""
        return run_number > 0 and self.store.run_dir(run_number).is_dir()

    def has_run(self, run_number: int) -> bool:
        """Whether run N is on this server: its folder, or its record."""
        return self.known_run(run_number) or self.db.get_run(run_number) is not None

    def deletion_refusal(self, number: int) -> str:
        """Why run ``number`` may not be deleted now ("" when it may). Only a run that is
        over goes: not the current one (the next deploy, start or resume uses it), and not
        one a site still trains or validates (its uploads and reports would be refused)."""
        if not self.has_run(number) and not self.store.run_dir(number).is_symlink():
            return f"there is no run {number} on this server (list_runs lists them)"
        then = "and set another run number (set_run_number <N>) before deleting it"
        training = self.training_for(number)
        if number == self.run_number and self.starting:
            return f"run {number} is starting training: abort it (abort server) {then}"
        if training is not None and training.active:
            return f"run {number} is training: abort it (abort server) {then}"
        if number == self.run_number and self._resuming is not None and not self._resuming.done():
            return (
                f"run {number} waits to be resumed ({self.resume_fault}): free space on the "
                f"server, let it resume, abort it (abort server) {then}"
            )
        if number == self.run_number:
            return (
                f"run {number} is the current run: set another run number first "
                "(set_run_number <N>), then delete it"
            )
        crossval = self._crossvals.get(number)
        sites = sorted(
            self.registry.on_run(number, st.ACTIVE)
            | (crossval.validating if crossval is not None else set())
        )
        if sites:
            return (
                f"sites still train or validate run {number} (cross-site validation): "
                f"{listing(sites)}; wait until they are done, or stop them (abort client "
                "<instance>...), then delete it"
            )
        return self.store.aside_problem(number)

    async def delete_run(self, number: int, audit: list[AuditEntry]) -> RunDeletion:
        """Delete run ``number``, or raise CommandError saying why it may not go now.

        Its history leaves the state database first, in one transaction with
        the ``audit`` entries that record the command; then its folder is
        renamed aside at once and removed in a thread, so a crash leaves
        either a folder without history (listed, and deleted again) or a
        renamed folder the next start removes, never history naming files
        that are gone, and never history gone without its deletion audited.
        """
        refusal = self.deletion_refusal(number)
        if refusal:
            raise CommandError(refusal)
        rows, audit_id = self.db.delete_run(number, audit)
        self._crossvals.pop(number, None)
        try:
            aside = self.store.set_aside(number)
        except OSError as exc:
            log.error("run %d: history deleted, its folder not moved aside: %s", number, exc)
            return RunDeletion(
                audit_id,
                unmoved=(
                    f"run {number}'s history is deleted, but its folder could not be moved "
                    f"aside ({exc.strerror or exc}): delete_run {number} again removes it"
                ),
            )
        faultpoints.reached(faultpoints.SERVER_DELETE_RUN)
        log.info("run %d deleted: %d rows of its history, and its folder", number, rows)
        if aside is None:
            return RunDeletion(audit_id)
        try:
            await asyncio.to_thread(shutil.rmtree, aside)
        except OSError as exc:
            log.warning("run %d: %s not removed: %s", number, aside, exc)
            return RunDeletion(
                audit_id,
                left=(
                    f"Part of its folder could not be removed ({exc.strerror or exc}); the "
                    f"server removes {aside} at its next start."
                ),
            )
        return RunDeletion(audit_id)

    def _forget_settled_crossvals(self, current: int) -> None:
        """Hold in memory the cross-site validations of the current run and of runs still
        under way, not of every run this process has seen: a server that lives through
        hundreds of runs kept each one's matrix. A forgotten one is rebuilt from disk and the
        database when a site names its run again, as after a restart."""
        for number, crossval in list(self._crossvals.items()):
            settled = not crossval.validating and crossval.declared <= crossval.submitted
            if number != current and settled:
                del self._crossvals[number]

    def crossval_for(self, run_number: int) -> CrossValidation:
        """The cross-site validation of a run (rebuilt from disk after a restart)."""
        current = self._crossvals.get(run_number)
        if current is None:
            current = CrossValidation(run_number, self.store, self.db, self)
            training = self.training_for(run_number)
            active = training is not None and training.active
            current.training_over = not active and not self.starting
            self._crossvals[run_number] = current
        return current

    def abort_training(self, reason: str) -> bool:
        """Stop the current run's training (or its start), saying why (``aborted by
        <admin>``); False when nothing was training."""
        self._abort_reason = reason
        if self._starting_task is not None:
            self._starting_task.cancel()
            return True
        training = self.active_training()
        if training is None:
            return False
        training.abort(reason)
        return True

    # ------------------------------------------------------------------ TrainingListener

    def offer(self, instances: Iterable[str], offer: TaskOffer) -> None:
        """Send a task offer to clients (TrainingListener, CrossValidationListener)."""
        for instance in instances:
            client = self.registry.by_instance(instance)
            link = self.links.get(client.token_key) if client else None
            if link is not None:
                link.send(offer)

    def run_changed(self) -> None:
        """Publish round progress (TrainingListener)."""
        self.publish_run()

    def run_ended(self, run: RunRecord) -> None:
        """Tell every client the run is over (TrainingListener)."""
        message = RunEnded(run.run_number, run.status, run.reason)
        for link in self.links.values():
            link.send(message)
        self.crossval_for(run.run_number).end_training()
        failed = f"; failed sites: {', '.join(run.failed_sites)}" if run.failed_sites else ""
        log.info("run %d ended (%s)%s", run.run_number, run.reason, failed)

    # ------------------------------------------------------------------ clients

    @functools.cached_property
    def own_certificate_end(self) -> datetime | None:
        """When the server's own certificate ends, read once (a renewed kit takes a
        restart); None when its kit cannot be read (the daemon says so itself, daily)."""
        try:
            lives = kit_lives(self.workspace / STARTUP_DIR, self.startup, self.startup.name)
        except ConfigError:
            return None
        return lives[0].not_after

    def _certificate_seen(self, identity: Identity) -> None:
        """A site or an admin logged in: its certificate and end are recorded (the end is
        watched and shown by check_status server), and warned of if it ends soon."""
        self.revocations.seen(identity)
        self.ending_certificates.logged_in(identity)

    def login(self, identity: Identity | None, token: str, machine: MachineInfo) -> Login:
        """Register a client certificate (or resume its registration); AuthError for any
        other certificate or a token that belongs to another."""
        if identity is None or identity.kind != KIND_CLIENT:
            who = f"{identity.kind} certificate {identity.name!r}" if identity else "no certificate"
            log.warning("refused federation login with %s", who)
            raise AuthError(f"the federation service accepts client certificates only, got {who}")
        login = self.registry.login(identity, token, machine)
        self._certificate_seen(identity)
        client = login.client
        self._revoked_instances.pop(client.instance, None)
        verb = "resumed its registration" if login.resumed else "joined"
        log.info(
            "Client %s %s as instance %s with token %s. Total clients: %d",
            client.client_name,
            verb,
            client.instance,
            client.token_id,
            len(self.registry),
        )
        self.publish_client(client)
        return login

    def attach(self, client: RegisteredClient, status: ClientStatus) -> ClientLink:
        """A client opened its control stream."""
        old = self.links.pop(client.token_key, None)
        if old is not None:
            old.close()
        link = ClientLink(client.instance)
        self.links[client.token_key] = link
        client.connected = True
        self.update_status(client, status, new_stream=True)
        self._spawn_notify()
        return link

    def _spawn_notify(self) -> None:
        async def notify_links_changed() -> None:
            async with self._links_changed:
                self._links_changed.notify_all()

        task = asyncio.get_running_loop().create_task(notify_links_changed())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def detach(self, client: RegisteredClient, link: ClientLink) -> None:
        """A client's control stream ended; it stays registered until the heartbeat timeout."""
        link.close()
        if self.links.get(client.token_key) is link:
            del self.links[client.token_key]
            client.connected = False
            self.registry.stream_closed(client)
            log.info("control stream of %s closed; it stays registered", client.instance)
            self.publish_client(client)

    def update_status(
        self, client: RegisteredClient, status: ClientStatus, new_stream: bool = False
    ) -> None:
        """A client reported its status: keep the round controller and cross-site validation
        in step.

        ``new_stream``: the status is a new control stream's hello. An offer made while
        the client had no stream never reached it, so the task it has not taken up yet is
        offered again (an offer it already took up would only be answered twice).
        """
        previous = client.status
        client.status = status
        self.registry.heard(client)
        if (status.status, status.run_number) != (previous.status, previous.run_number):
            client.status_at = time.time()
        if _lasting(status) != _lasting(previous):
            self.registry.remember(client)
        self.publish_client(client)
        if self.known_run(status.run_number) and self._may_validate(
            client.instance, status.run_number
        ):
            self._follow_crossval(client.instance, previous, status, new_stream)
        training = self.training_for(status.run_number)
        if training is None or not training.active:
            self._end_stale_run(client, status)
            return
        if status.status == st.STARTED:
            if client.instance not in training.ready or previous.status != st.STARTED:
                # New to the run, or a new training process (a daemon restarted within its
                # heartbeat timeout): whatever it was offered before died with the old one.
                training.client_ready(client.instance)
            elif new_stream:
                training.offer_missed(client.instance, status.round)
        elif status.status == st.FAILED:
            training.client_gone(client.instance, failed_reason=status.error or "failed")
        elif status.status != st.STARTING:
            training.client_gone(client.instance)
        if self.blocked(training) != self._blocked:
            self.publish_run()

    def _may_validate(self, instance: str, run_number: int) -> bool:
        """Whether a site's status may take it into a run's cross-site validation. Any site
        opts in to the current run's; an earlier run's only takes a site that took part in
        it (its updates were folded there, or it declared or shared its model), so a kit that
        joined later cannot claim that run's local models by naming it."""
        if run_number == self.run_number:
            return True
        known = self._crossvals.get(run_number)
        if known is not None and instance in known.declared | set(known.withdrawn):
            return True
        return instance in self.db.fold_instances(run_number)

    def _follow_crossval(
        self, instance: str, previous: ClientStatus, status: ClientStatus, new_stream: bool
    ) -> None:
        if status.run_number and previous.run_number != status.run_number:
            earlier = self._crossvals.get(previous.run_number)
            if earlier is not None:
                earlier.withdraw(instance, f"moved on to run {status.run_number}")
        crossval = self.crossval_for(status.run_number)
        if status.cross_validate and status.status != st.FAILED:
            crossval.declare(instance)
        validating = status.status == st.CROSS_VALIDATING
        if validating and (new_stream or instance not in crossval.validating):
            crossval.start_validating(instance)
        elif status.status == st.FAILED:
            crossval.withdraw(instance, f"failed: {status.error or 'unknown error'}")
        elif status.status not in st.ACTIVE and previous.status == st.CROSS_VALIDATING:
            crossval.withdraw(instance, "stopped before sharing its model")

    def _end_stale_run(self, client: RegisteredClient, status: ClientStatus) -> None:
        """A client still trains a run that ended here (e.g. it was restarted meanwhile), or
        whose start failed."""
        if status.status not in (st.STARTING, st.STARTED) or not status.run_number or self.starting:
            return
        link = self.links.get(client.token_key)
        if link is None:
            return
        record = self.db.get_run(status.run_number)
        if record is not None and record.status not in st.ACTIVE:
            link.send(RunEnded(record.run_number, record.status, record.reason or "run ended"))
        elif record is None and (ended := self._failed_start(status.run_number)) is not None:
            link.send(ended)

    def heartbeat(self, client: RegisteredClient, status: ClientStatus) -> None:
        """A heartbeat arrived."""
        changed = status != client.status
        if changed:
            self.update_status(client, status)
        else:
            self.registry.heard(client)
        self.bus.publish(Heartbeat(client.instance, client.last_heartbeat))

    def received(self, client: RegisteredClient, message: Upward | Unreadable) -> bool:
        """A message on a client's control stream, counted against the site's rate whether
        it could be read or not; False once the client is no longer registered (dropped or
        replaced), when its stream should end."""
        if not self.registry.is_current(client):
            return False
        if self._messages.take(client.instance):
            self._flooding(client, f"more than {MESSAGES_PER_SECOND:g} messages a second")
        elif isinstance(message, Unreadable):
            self._warn_rarely(client, "unreadable", f"ignored a message: {message.reason}")
        elif isinstance(message, ClientHeartbeat):
            self.heartbeat(client, message.status)
        elif isinstance(message, StatusChanged):
            self.update_status(client, message.status)
        elif isinstance(message, CommandResult):
            link = self.links.get(client.token_key)
            if link is not None:
                link.resolve(message)
        elif isinstance(message, LogBatch):
            self.client_logs(client, message)
        elif isinstance(message, Hello):
            log.debug("%s sent a second hello on its control stream", client.instance)
        self.registry.heard(client)
        return True

    def _flooding(self, client: RegisteredClient, what: str) -> None:
        """A site sent more than the server takes; what was over is dropped."""
        self._warn_rarely(client, "flood", f"sends {what}: the rest is dropped")

    def _warn_rarely(self, client: RegisteredClient, kind: str, text: str) -> None:
        """Name a misbehaving site in the log, once a minute at most for each ``kind``."""
        said = self._warned.due(client.instance, kind)
        if said is not None:
            log.warning("%s %s%s", client.instance, text, said)

    def client_logs(self, client: RegisteredClient, batch: LogBatch) -> None:
        """Forwarded log lines of a client go to the console's log feed, as many as the
        server takes from one site."""
        shown = [line for line in batch.records if not self._log_lines.take(client.instance)]
        for line in shown:
            self.bus.publish(replace(line, source=client.instance))
        over = len(batch.records) - len(shown)
        if over:
            self._flooding(client, f"more than {LOG_LINES_PER_SECOND:g} log lines a second")
        for count, whose in ((batch.dropped, "client's"), (over, "server's")):
            if count:
                self.bus.publish(
                    LogEntry(
                        time.time(),
                        "WARNING",
                        "flclientd",
                        f"{count} log lines dropped by the {whose} rate limit",
                        client.instance,
                    ),
                )

    def drop(self, client: RegisteredClient, reason: str) -> None:
        """Remove a client (heartbeat timeout, logout, shutdown)."""
        link = self.links.pop(client.token_key, None)
        if link is not None:
            link.send(Closed(reason))
            link.close()
        self.registry.remove(client)
        self._leaving.discard(client.token_key)
        self._spawn_notify()
        log.info("client %s (%s) removed: %s", client.instance, client.client_name, reason)
        self.bus.publish(ClientGone(client.instance, reason))
        if self.training is not None:
            self.training.client_gone(client.instance)
        for crossval in self._crossvals.values():
            crossval.withdraw(client.instance, f"removed: {reason}")

    def enforce_revocations(self) -> Enforced:
        """Apply the revocation list and the names revoked here to everyone logged in now:
        revoked clients are dropped (their control stream closes, an update they are still
        sending is discarded) and revoked admins logged out (their feed ends). Returns who."""
        removed = []
        for client in self.registry.clients():
            reason = self.revocations.refusal(client.client_name, client.serial, client.issued)
            if reason is None:
                continue
            log.warning("client %s: %s", client.instance, reason)
            self._revoked_instances[client.instance] = reason
            client.status = replace(client.status, status=st.REVOKED)
            self.publish_client(client)
            self.drop(client, st.REVOKED)
            removed.append(client.instance)

        def refused(admin: AdminLogin) -> str | None:
            return self.revocations.refusal(admin.user, admin.serial, admin.issued)

        logged_out = self.admins.revoke(refused)
        for reason in logged_out.values():
            log.warning("admin logged out: %s", reason)
        self.bus.cut_off(self.revocations.refusal)
        return Enforced(removed, sorted(logged_out))

    def revoked_sender(self, instance: str) -> str | None:
        """Why an upload of ``instance`` must not be used: its certificate was revoked while
        it was sending (None: it was not)."""
        return self._revoked_instances.get(instance)

    async def call(
        self, clients: list[RegisteredClient], name: str, args: dict[str, object], timeout: float
    ) -> list[tuple[RegisteredClient, CommandResult]]:
        """Send a command to several clients at once and collect their results (one fan-out,
        see :func:`flserverd.links.call_all`); clients whose stream ended moments ago, and
        may be reconnecting, are waited for briefly first. One gone for longer (stopped by its
        site, or its machine down) is answered "not connected" at once: a command to every
        client waited the whole grace for it, every time, until its heartbeat timeout."""
        waits = {
            c.token_key: self.registry.reconnect_wait(c, RECONNECT_GRACE_S)
            for c in clients
            if c.token_key not in self.links
        }
        coming = [c for c in clients if waits.get(c.token_key, 0.0) > 0]
        if coming:
            await self._links_of(coming, min(timeout, max(waits[c.token_key] for c in coming)))
        links = [self.links.get(c.token_key) for c in clients]
        results = await call_all(links, name, dict(args), timeout)
        return list(zip(clients, results, strict=True))

    async def _links_of(self, clients: list[RegisteredClient], wait: float) -> None:
        """Wait up to ``wait`` seconds for these clients' streams to open."""
        async with self._links_changed:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    self._links_changed.wait_for(
                        lambda: all(c.token_key in self.links for c in clients)
                    ),
                    wait,
                )

    def leaving(self, clients: Iterable[RegisteredClient]) -> None:
        """These clients agreed to shut down: each logs out once its training is stopped."""
        self._leaving.update(client.token_key for client in clients)

    async def departures(self, wait: float) -> list[str]:
        """Wait up to ``wait`` seconds for leaving clients to log out; returns those still here.

        A client answers ``shutdown`` before it logs out, so a script that
        shuts the clients down and then the server at once would otherwise
        stop the server with them still registered in the state database.
        """

        def still_here() -> list[str]:
            return [s.instance for s in self.registry.clients() if s.token_key in self._leaving]

        async with self._links_changed:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._links_changed.wait_for(lambda: not still_here()), wait)
        return still_here()

    # ------------------------------------------------------------------ views

    def publish_client(self, client: RegisteredClient) -> None:
        """Send a client's row to consoles."""
        self.bus.publish(self.client_row(client))

    def client_row(self, client: RegisteredClient) -> ClientRow:
        """A client's row as it describes the server's current run (see views.client_row)."""
        return client_row(client, *self._run_scope())

    def _run_scope(self) -> tuple[int, float]:
        """The current run's number and when it last started (0 when it never did)."""
        number = self.run_number
        training = self.training_for(number)
        record = training.run if training is not None else self.db.get_run(number)
        return number, record.last_started if record is not None else 0.0

    def publish_clients(self) -> None:
        """Send every client's row again: the run changed, and with it what the rows say."""
        for client in self.registry.clients():
            self.publish_client(client)

    def publish_run(self) -> None:
        """Send the run's state to consoles and to systemd."""
        view = self.run_view()
        self.bus.publish(view)
        if view.current_round >= 0:
            notify(
                f"STATUS=run {view.run_number} {view.server_status}, round "
                f"{view.current_round}/{view.num_rounds}, {len(self.registry)} clients"
            )

    def blocked(self, training: Training) -> str:
        """Why a training run cannot finish its round, or "" when it can.

        A round needs ``min_num_clients`` updates; the sites that can still
        send one are those that did and those training this run (or
        starting to, or paused by their disk: they go on by themselves).
        Failed sites are named with their error.
        """
        if not training.active or training.run.phase != PHASE_TRAINING:
            return ""
        number, needed = training.run.run_number, training.config.min_num_clients
        if len(training.round.contributed) >= needed:
            return ""  # the round has its updates: no need to ask every site
        able = set(training.round.contributed) | self.registry.on_run(number, TRAINING_ON)
        if len(able) >= needed:
            return ""
        failures = training.run.failures
        why = [f"{site} failed ({error})" for site, error in sorted(failures.items())]
        approving = self.registry.on_run(number, {st.WAITING_APPROVAL}) - set(failures)
        if approving:
            why.append(
                f"{listing(sorted(approving))} wait for their site IT's approval of the "
                f"app's code (site IT: flclientd show-app, then flclientd approve)"
            )
        if why:
            return f"min_num_clients {needed} but only {len(able)} site(s) can train: " + (
                "; ".join(why)
            )
        return (
            f"min_num_clients {needed} but only {len(able)} site(s) are training: "
            "start more clients (start client)"
        )

    def awaited(self, training: Training) -> tuple[str, ...]:
        """Who the run waits for now: those the round waits for, and in training the sites
        of this run on their way to it (starting, or waiting for their IT's approval), which
        the round counts only once they ask for its task."""
        if not training.active:
            return ()
        awaited = training.pending()
        if training.run.phase == PHASE_TRAINING:
            coming = self.registry.on_run(
                training.run.run_number, {st.STARTING, st.WAITING_APPROVAL}
            )
            awaited |= coming - training.round.contributed.keys()
        return tuple(sorted(awaited))

    def run_view(self) -> RunInfo:
        """The run's state now (from the database when it is not training here)."""
        number = self.run_number
        training = self.training_for(number)
        status = self.server_status()
        if training is not None:
            return self._training_view(training, status)
        record = self.db.get_run(number) if number and not self.starting else None
        if record is None:
            app = self.store.deployed_app_name(number) if number else ""
            return RunInfo(number, status, app=app, reason=self.start_error)
        return RunInfo(
            run_number=number,
            server_status=status,
            app=record.app,
            start_round=record.start_round,
            current_round=record.next_round,
            num_rounds=record.num_rounds,
            history=tuple(
                round_record(r) for r in self.db.round_records(number, last=HISTORY_SHOWN)
            ),
            failed_sites=tuple(record.failed_sites),
            best_metric=best_text(record),
            reason=record.reason,
            site_errors=dict(record.failures),
            fault=self.resume_fault,
        )

    def _training_view(self, training: Training, status: str) -> RunInfo:
        run, state = training.run, training.round
        self._blocked = self.blocked(training)
        return RunInfo(
            run_number=run.run_number,
            server_status=status,
            app=run.app,
            phase=run.phase if training.active else "",
            start_round=run.start_round,
            current_round=training.current_round,
            num_rounds=run.num_rounds,
            min_num_clients=training.config.min_num_clients,
            max_num_clients=training.config.max_num_clients,
            updates_received=len(state.contributed),
            contributed=tuple(sorted(state.contributed)),
            awaited=self.awaited(training),
            wait_deadline=state.deadline,
            history=tuple(round_record(r) for r in training.history),
            failed_sites=tuple(run.failed_sites),
            best_metric=best_text(run),
            reason=run.reason or self.start_error,
            site_errors=dict(run.failures),
            blocked=self._blocked,
            fault=training.fault,
        )

    def client_rows(self) -> list[ClientRow]:
        """Every registered client, by instance name."""
        scope = self._run_scope()
        return [client_row(s, *scope) for s in self.registry.clients()]

    def snapshot(self) -> Snapshot:
        """Everything a console shows, as it is now (the first event of its feed)."""
        startup = self.startup
        snapshot = Snapshot(
            server=ServerInfo(
                project=startup.project,
                name=startup.name,
                fed_target=f"{startup.host}:{startup.fed_port}",
                admin_target=f"{startup.host}:{startup.admin_port}",
                started_at=self.started_at,
                version=self.version,
                heart_beat_timeout_s=startup.heart_beat_timeout,
                heartbeat_interval_s=startup.heartbeat_interval,
            ),
            run=self.run_view(),
            clients=tuple(self.client_rows()),
            logs=tuple(self.bus.logs),
        )
        return fit_snapshot(snapshot)


def _start_failure(exc: Exception) -> str:
    """Why a run could not start, as a sentence (the log has the traceback)."""
    if isinstance(exc, ModelInitError | ConfigError | TensorFileError):
        return str(exc)  # build_initial_model's and the model file's words
    if isinstance(exc, OSError):
        return f"the server could not write the initial model: {exc.strerror or exc}"
    return "an unexpected error on the server; its log has the details"


def _lasting(status: ClientStatus) -> tuple[object, ...]:
    """What of a client's status is worth keeping across a server restart (not its round)."""
    return (status.status, status.run_number, status.app, status.cross_validate, status.error)


def without_tracking_secrets(environment: Mapping[str, str]) -> dict[str, str]:
    """The environment of the model-init child: the app's code runs there, and only the
    tracking child needs MLflow's credentials (``MLFLOW_TRACKING_PASSWORD`` and the like)."""
    return {key: value for key, value in environment.items() if not key.startswith("MLFLOW_")}


class ModelInitError(Exception):
    """The model-init child could not build the run's first model: the app's config or code,
    or its checkpoint, is at fault (the message is the child's one-line error)."""


async def build_initial_model(app_dir: Path, target: Path, checkpoint_dirs: Sequence[Path]) -> None:
    """Build the run's first global model in a child process (custom code and torch stay out
    of the server), raising with the child's one-line error on failure; an absolute
    ``initial_checkpoint`` is read only from ``checkpoint_dirs``."""
    folders = [arg for folder in checkpoint_dirs for arg in ("--checkpoint-dir", str(folder))]
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "flapp.runtime.modelinit",
        "--app",
        str(app_dir),
        "--out",
        str(target),
        *folders,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,
        env=without_tracking_secrets(os.environ),
    )
    try:
        _, stderr = await asyncio.wait_for(process.communicate(), MODEL_INIT_TIMEOUT)
    except TimeoutError:
        raise ModelInitError("building the initial model took too long") from None
    finally:
        if process.returncode is None:  # timed out, or the start was aborted
            process.kill()
            await process.wait()
    if process.returncode != 0:
        text = stderr.decode(errors="replace").strip()
        first = next((ln for ln in text.splitlines() if ln.startswith("error:")), text[-500:])
        raise ModelInitError(first.removeprefix("error:").strip() or "model init failed")
