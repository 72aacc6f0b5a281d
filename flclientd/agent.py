"""What a client daemon does: keep its session, obey commands, work through rounds.

The agent keeps one Session stream open (heartbeats and statuses up,
commands and offers down) and reconnects by itself when the server goes
away, giving up only after the retry window (then the daemon exits non-zero
and systemd restarts it). Training happens in a child process per run
(``flclientd.runner``); the agent downloads each round's model, hands it to
the child, and streams the update back, resending it after a reconnect or a
server restart until the server gives a verdict. The server counts every
update at most once, so resending is always safe.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TypeVar

import grpc

from flclientd.connection import Connection
from flclientd.device import DeviceInfo
from flclientd.logforward import LogForwarder
from flclientd.runner import TrainingProcess, WorkerFailed
from flclientd.sitestate import SiteState
from flcore import status as st
from flcore.appconfig import ClientAppConfig, load_app
from flcore.folders import FolderError
from flcore.proto.gen import flstack_common_pb2 as common_pb2
from flcore.proto.gen import flstack_federation_pb2 as fed_pb2
from flcore.schema import ConfigError
from flcore.startup import ClientStartup
from flcore.status import ClientStatus
from flcore.tensorfile import TensorFileError
from flcore.tls import TlsFiles
from flcore.version import flstack_version

log = logging.getLogger(__name__)
worker_log = logging.getLogger("flclientd.worker")

T = TypeVar("T")

EXIT_RETRY_WINDOW = 3
EXIT_REFUSED = 2
LOG_FLUSH_S = 0.5
TRANSIENT = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.CANCELLED,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.UNKNOWN,
    grpc.StatusCode.INTERNAL,
}


@dataclass(frozen=True)
class Task:
    """An offer from the server: train a round, validate the final model, or cross-validate."""

    run_number: int
    round: int
    kind: int
    owners: tuple[str, ...] = ()
    pending: tuple[str, ...] = ()


@dataclass(frozen=True)
class RunContext:
    """The run this client trains, and where its files are."""

    run_number: int
    app_dir: Path
    work_dir: Path
    nproc: int
    config: ClientAppConfig


class Refused(Exception):
    """A command cannot be carried out; the message goes back to the admin."""


class Agent:
    """The client daemon's behaviour."""

    def __init__(
        self,
        workspace: Path,
        startup: ClientStartup,
        files: TlsFiles,
        data_root: Path | None,
        device: DeviceInfo,
        forwarder: LogForwarder | None,
    ) -> None:
        self.workspace = workspace
        self.startup = startup
        self.data_root = data_root
        self.device = device
        self.forwarder = forwarder
        self.conn = Connection(startup, files)
        self.instance = startup.name
        self.status = ClientStatus()
        self.worker: TrainingProcess | None = None
        self.context: RunContext | None = None
        self.offer: Task | None = None
        self.crossval_offer: Task | None = None
        self.exit_code = 0
        self._state_file = workspace / "state" / f"flclientd_{startup.name}.json"
        self.site = SiteState.load(self._state_file)
        self._outbox: asyncio.Queue[fed_pb2.ClientMessage] = asyncio.Queue()
        self._offer_changed = asyncio.Event()
        self._crossval_changed = asyncio.Event()
        self._connected = asyncio.Event()
        self._shutdown = asyncio.Event()
        self._work: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    # ------------------------------------------------------------------ session upkeep

    def _remember(self, **changes: Any) -> None:
        for key, value in changes.items():
            setattr(self.site, key, value)
        self.site.save(self._state_file)

    def _info(self) -> fed_pb2.ClientInfo:
        return fed_pb2.ClientInfo(
            device=self.device.device,
            gpu_count=self.device.gpu_count,
            hostname=socket.gethostname(),
            version=flstack_version(),
            pid=os.getpid(),
        )

    async def run(self) -> int:
        """Stay connected until shut down, or until the retry window runs out."""
        lost_since = time.monotonic()
        delay = 0.2
        if self.site.training_run:
            self._spawn(self._rejoin(self.site.training_run, self.site.gpus))
        try:
            while not self._shutdown.is_set():
                try:
                    login = await self.conn.login(self.site.token, self._info())
                except grpc.aio.AioRpcError as exc:
                    if exc.code() == grpc.StatusCode.PERMISSION_DENIED:
                        log.error("the server refused this client: %s", exc.details())
                        return EXIT_REFUSED
                    log.warning(
                        "Could not connect to server %s: %s",
                        self.startup.server_target,
                        exc.details() or exc.code().name,
                    )
                else:
                    delay = 0.2
                    self._logged_in(login.token, login.instance, login.resumed)
                    await self._session()
                    if self._shutdown.is_set():
                        break
                    lost_since = time.monotonic()
                waited = time.monotonic() - lost_since
                if waited > self.startup.retry_window:
                    log.error(
                        "server unreachable for %.0fs (retry window %.0fs): exiting so that the "
                        "service manager restarts this client",
                        waited,
                        self.startup.retry_window,
                    )
                    return EXIT_RETRY_WINDOW
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._shutdown.wait(), delay)
                delay = min(delay * 2, 2.0)
            return self.exit_code
        finally:
            await self._stop_worker(kill=True)
            await self.conn.close()

    def _logged_in(self, token: str, instance: str, resumed: bool) -> None:
        self.instance = instance
        self._remember(token=token)
        if resumed:
            log.info("Resumed session as %s with token %s", instance, token)
        else:
            log.info(
                "Successfully registered client %s as instance %s. Got token: %s",
                self.startup.name,
                instance,
                token,
            )

    async def _session(self) -> None:
        """Run one Session stream until it breaks or the daemon shuts down."""
        call = self.conn.open_session()
        helpers: list[asyncio.Task[Any]] = []
        try:
            hello = fed_pb2.SessionHello(token=self.site.token, status=self._status_proto())
            await call.write(fed_pb2.ClientMessage(hello=hello))
            self._connected.set()
            loop = asyncio.get_running_loop()
            jobs = [
                self._read(call),
                self._write_outbox(call),
                self._heartbeats(),
                self._shutdown.wait(),
            ]
            if self.forwarder is not None:
                jobs.append(self._forward_logs(self.forwarder))
            helpers = [loop.create_task(job) for job in jobs]
            # Any of them ending (stream broken, write failed, shutdown) ends the session.
            await asyncio.wait(helpers, return_when=asyncio.FIRST_COMPLETED)
        except grpc.aio.AioRpcError as exc:
            log.warning("lost the session with the server: %s", exc.details() or exc.code().name)
        finally:
            self._connected.clear()
            call.cancel()
            for task in helpers:
                task.cancel()
            for task in helpers:
                try:
                    await task
                except asyncio.CancelledError:
                    pass
                except Exception as exc:  # a broken stream must never take the daemon down
                    log.debug("session task ended with %r", exc)

    async def _read(self, call: Any) -> None:
        try:
            async for message in call:
                self._dispatch(message)
            log.warning("the server closed the session stream")
        except grpc.aio.AioRpcError as exc:
            log.warning("lost the session with the server: %s", exc.details() or exc.code().name)

    async def _write_outbox(self, call: Any) -> None:
        """Send queued messages; returns when the stream can take no more (it ended)."""
        while True:
            message = await self._outbox.get()
            try:
                await call.write(message)
            except (asyncio.InvalidStateError, grpc.aio.AioRpcError):
                # The next session starts with a hello that carries the current status.
                return

    async def _heartbeats(self) -> None:
        while True:
            await asyncio.sleep(self.startup.heartbeat_interval)
            heartbeat = fed_pb2.Heartbeat(status=self._status_proto())
            self._outbox.put_nowait(fed_pb2.ClientMessage(heartbeat=heartbeat))

    async def _forward_logs(self, forwarder: LogForwarder) -> None:
        while True:
            await asyncio.sleep(LOG_FLUSH_S)
            if not forwarder.pending():
                continue
            lines, dropped = forwarder.take()
            records = [
                common_pb2.LogRecord(
                    time=x.time,
                    level=x.level,
                    logger=x.logger,
                    message=x.message,
                    source=self.instance,
                )
                for x in lines
            ]
            batch = fed_pb2.LogBatch(records=records, dropped=dropped)
            self._outbox.put_nowait(fed_pb2.ClientMessage(logs=batch))

    def _spawn(self, coro: Awaitable[Any]) -> asyncio.Task[Any]:
        task: asyncio.Task[Any] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _dispatch(self, message: fed_pb2.ServerMessage) -> None:
        body = message.WhichOneof("body")
        if body == "command":
            self._spawn(self._command(message.command))
        elif body == "task":
            task = message.task
            self._offer(
                Task(
                    task.run_number,
                    task.round,
                    task.kind,
                    tuple(task.model_owners),
                    tuple(task.pending_owners),
                )
            )
        elif body == "run_ended":
            ended = message.run_ended
            log.info("server ended run %d: %s", ended.run_number, ended.reason)
            if ended.run_number == self.status.run_number:
                self._spawn(self._end_run())
        elif body == "closed":
            log.warning("the server closed this session: %s", message.closed.reason)
            self._remember(token="")

    # ------------------------------------------------------------------ status

    def _status_proto(self) -> fed_pb2.ClientStatus:
        return fed_pb2.ClientStatus(**asdict(self.status))

    def _set_status(self, **changes: Any) -> None:
        for key, value in changes.items():
            setattr(self.status, key, value)
        self._outbox.put_nowait(fed_pb2.ClientMessage(status=self._status_proto()))

    def status_data(self) -> dict[str, Any]:
        """The client's status for check_status."""
        data = asdict(self.status)
        data.update(device=self.device.device, gpu_count=self.device.gpu_count)
        return data

    # ------------------------------------------------------------------ commands

    async def _command(self, command: fed_pb2.ServerCommand) -> None:
        try:
            args = json.loads(command.args_json or "{}")
            if not isinstance(args, dict):
                raise Refused("malformed command arguments")
            handler = self._handlers().get(command.name)
            if handler is None:
                raise Refused(f"unknown command {command.name!r}")
            ok, text, data = True, *await handler(args)
        except Refused as exc:
            ok, text, data = False, str(exc), {}
        except Exception as exc:
            log.exception("command %s failed", command.name)
            ok, text, data = False, f"{type(exc).__name__}: {exc}", {}
        result = fed_pb2.CommandResult(
            command_id=command.command_id, ok=ok, text=text, data_json=json.dumps(data)
        )
        self._outbox.put_nowait(fed_pb2.ClientMessage(result=result))
        if command.name == "shutdown" and ok:
            self._spawn(self._shut_down())

    def _handlers(
        self,
    ) -> dict[str, Callable[[dict[str, Any]], Awaitable[tuple[str, dict[str, Any]]]]]:
        return {
            "check_status": self._check_status,
            "deploy": self._deploy,
            "start": self._start,
            "abort": self._abort,
            "shutdown": self._shutdown_command,
        }

    async def _check_status(self, args: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        return self.status.status, self.status_data()

    def run_dir(self, run_number: int) -> Path:
        """This client's folder of a run."""
        return self.workspace / f"run_{run_number}"

    def app_dir(self, run_number: int) -> Path:
        """Where the app deployed for a run lives at this site."""
        return self.run_dir(run_number) / f"app_{self.instance}"

    def _training(self) -> bool:
        return self.worker is not None or self.status.status in st.ACTIVE

    async def _deploy(self, args: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        run_number, app = int(args["run_number"]), str(args["app"])
        if self._training() and self.status.run_number == run_number:
            raise Refused(f"run {run_number} is training here: abort it before deploying")
        target = self.app_dir(run_number)
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            await self.conn.get_app(run_number, app, target)
            load_app(target)
        except (FolderError, ConfigError) as exc:
            raise Refused(f"deploy failed: {exc}") from None
        except grpc.aio.AioRpcError as exc:
            raise Refused(f"deploy failed: {exc.details()}") from None
        self.status.app = app
        log.info("app %s deployed for run %d", app, run_number)
        return f"{app} deployed.", {"app": app, "run_number": run_number}

    async def _start(self, args: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        run_number, gpus = int(args["run_number"]), int(args.get("gpus", 0))
        if self._training():
            raise Refused(f"already {self.status.status} (run {self.status.run_number})")
        app_dir = self.app_dir(run_number)
        if not app_dir.is_dir():
            raise Refused(f"no app is deployed here for run {run_number}: deploy one first")
        cpu_allowed = self.device.gpu_count == 0 and self.startup.allow_cpu_mgpu
        if gpus and self.device.gpu_count < gpus and not cpu_allowed:
            raise Refused(
                f"this site has {self.device.gpu_count} GPU(s); start_mgpu asked for {gpus}"
                + ("" if self.device.gpu_count else " (and allow_cpu_mgpu is off)")
            )
        app_name = (
            (app_dir / ".app_name").read_text().strip() if (app_dir / ".app_name").exists() else ""
        )
        self.offer = None
        self._set_status(
            status=st.STARTING,
            run_number=run_number,
            round=-1,
            error="",
            traceback="",
            app=app_name,
            gpus_in_use=gpus,
        )
        self._remember(training_run=run_number, gpus=gpus)
        self._work = self._spawn(self._run_training(run_number, app_dir, max(gpus, 1)))
        self.crossval_offer = None
        return "Starting the client...", {"run_number": run_number, "gpus": gpus}

    async def _rejoin(self, run_number: int, gpus: int) -> None:
        """After a restart of this daemon, go back to the run it was training."""
        log.info("this client was training run %d before it stopped: rejoining", run_number)
        try:
            await self._start({"run_number": run_number, "gpus": gpus})
        except Refused as exc:
            log.warning("cannot rejoin run %d: %s", run_number, exc)
            self._remember(training_run=0)

    async def _abort(self, args: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        if not self._training():
            raise Refused("the client is not training")
        run = self.context
        to_crossval = (
            run is not None and run.config.cross_validate and self.status.status == st.STARTED
        )
        await self._stop_worker(kill=True)
        if to_crossval and run is not None:
            log.info("training aborted by an admin: moving to cross-site validation")
            self._work = self._spawn(self._crossval(run, relaunch=True))
            return (
                "Aborting the client... (moving to cross-site validation; abort again to stop)",
                {},
            )
        self._remember(training_run=0)
        self._set_status(status=st.STOPPED, round=-1)
        log.info("training aborted by an admin")
        return "Aborting the client...", {}

    async def _shutdown_command(self, args: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        return "Shutdown the client...", {}

    async def _shut_down(self) -> None:
        await asyncio.sleep(0.2)  # let the result reach the server first
        log.info("shutting down at the request of an admin")
        await self._stop_worker(kill=True)
        self._remember(training_run=0)
        await self.conn.logout()
        self._shutdown.set()

    def request_shutdown(self) -> None:
        """SIGTERM: stop the worker and leave."""
        self._shutdown.set()

    # ------------------------------------------------------------------ training

    def _offer(self, task: Task) -> None:
        if task.run_number != self.status.run_number or self.status.status not in st.ACTIVE:
            return
        if task.kind == fed_pb2.TASK_KIND_CROSS_VALIDATE:
            self.crossval_offer = task
            self._crossval_changed.set()
        else:
            self.offer = task
            self._offer_changed.set()

    async def _next_task(self, done: set[tuple[int, int]]) -> Task:
        while True:
            task = self.offer
            if task is not None and (task.round, task.kind) not in done:
                return task
            self._offer_changed.clear()
            await self._offer_changed.wait()

    async def _stop_worker(self, kill: bool) -> None:
        work, self._work = self._work, None
        if work is not None and work is not asyncio.current_task():
            work.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await work
        worker, self.worker = self.worker, None
        if worker is not None:
            if kill:
                worker.kill()
            else:
                await worker.stop()

    async def _end_run(self) -> None:
        run = self.context
        if (
            run is not None
            and run.config.cross_validate
            and self.worker is not None
            and self.status.status == st.STARTED
        ):
            work, self._work = self._work, None
            if work is not None:
                work.cancel()
            self._work = self._spawn(self._crossval(run, relaunch=False))
            return
        if self.status.status == st.CROSS_VALIDATING:
            return
        await self._stop_worker(kill=False)
        self._remember(training_run=0)
        if self.status.status != st.FAILED:
            self._set_status(status=st.STOPPED, round=-1)

    async def _launch(self, run: RunContext) -> TrainingProcess:
        """Start the run's training process and wait until it is ready."""
        self.worker = await TrainingProcess.start(
            app_dir=run.app_dir,
            data_root=self.data_root,
            work_dir=run.work_dir,
            nproc=run.nproc,
            allow_cpu_multiprocess=self.startup.allow_cpu_mgpu,
            on_log=lambda level, line: worker_log.log(level, "%s", line),
        )
        info = self.worker.info
        log.info(
            "training process ready on %s: %d training, %d validation samples",
            info.device,
            info.train_samples,
            info.val_samples,
        )
        return self.worker

    async def _run_training(self, run_number: int, app_dir: Path, nproc: int) -> None:
        """The run's work: start the child, then do each offered task once."""
        try:
            app = load_app(app_dir)
            if app.client is None:
                raise WorkerFailed("the deployed app has no config/config_fed_client.json", "")
            work_dir = self.run_dir(run_number) / f"work_{self.instance}"
            work_dir.mkdir(parents=True, exist_ok=True)
            run = RunContext(run_number, app_dir, work_dir, nproc, app.client)
            self.context = run
            worker = await self._launch(run)
            self._set_status(
                status=st.STARTED,
                samples=worker.info.train_samples,
                cross_validate=app.client.cross_validate,
            )
            done: set[tuple[int, int]] = set()
            while True:
                task = await self._next_task(done)
                if task.kind == fed_pb2.TASK_KIND_TRAIN:
                    await self._train_round(task, app.client.local_epochs, work_dir)
                elif task.kind == fed_pb2.TASK_KIND_VALIDATE_GLOBAL:
                    await self._validate_final(task, work_dir)
                done.add((task.round, task.kind))
        except (WorkerFailed, ConfigError, grpc.aio.AioRpcError) as exc:
            self._fail(exc)

    def _fail(self, exc: Exception) -> None:
        """Report a failure of the run at this site with its traceback, and stop training."""
        if isinstance(exc, grpc.aio.AioRpcError):
            exc = WorkerFailed(f"lost contact with the server: {exc.details()}", "")
        trace = getattr(exc, "traceback", "")
        log.error("training failed: %s%s", exc, f"\n{trace}" if trace else "")
        self._set_status(status=st.FAILED, error=str(exc), traceback=trace)
        self._remember(training_run=0)
        worker, self.worker = self.worker, None
        if worker is not None:
            worker.kill()

    async def _crossval(self, run: RunContext, relaunch: bool) -> None:
        """Share the best local model, then validate the others' as they come."""
        self.crossval_offer = None
        self._set_status(status=st.CROSS_VALIDATING, round=-1)
        try:
            worker = await self._launch(run) if relaunch or self.worker is None else self.worker
            await self._share_local_model(run, worker)
            await self._validate_peers(run, worker, work_dir=run.work_dir)
        except (WorkerFailed, ConfigError, grpc.aio.AioRpcError) as exc:
            self._fail(exc)
            return
        log.info("cross-site validation done")
        await self._stop_worker(kill=False)
        self._remember(training_run=0)
        self._set_status(status=st.STOPPED)

    async def _share_local_model(self, run: RunContext, worker: TrainingProcess) -> None:
        best = worker.best_local_model
        if best is None:
            reason = "no local model to share: this site never finished a round"
            log.warning("%s", reason)
            await self._report_crossval(run, self.instance, {}, 0, reason)
            return
        verdict = await self._retrying(
            "upload of the local model",
            lambda: self.conn.submit_model(
                run.run_number, -1, best, worker.info.train_samples, {}, local=True
            ),
        )
        log.info("best local model shared for cross-site validation: %s", verdict.message)

    async def _validate_peers(
        self, run: RunContext, worker: TrainingProcess, work_dir: Path
    ) -> None:
        """Validate every offered model once; stop when nothing more is expected, or give up
        after ``cross_validation_timeout`` seconds without news."""
        done: set[str] = set()
        timeout = run.config.cross_validation_timeout
        while True:
            offer = self.crossval_offer
            todo = [o for o in offer.owners if o not in done] if offer else []
            if offer is not None and not todo and not offer.pending:
                return
            if not todo:
                self._crossval_changed.clear()
                try:
                    await asyncio.wait_for(self._crossval_changed.wait(), timeout)
                except TimeoutError:
                    await self._give_up(run, offer.pending if offer else ("global",), timeout)
                    return
                continue
            for owner in todo:
                await self._validate_peer(run, worker, owner, work_dir)
                done.add(owner)

    async def _validate_peer(
        self, run: RunContext, worker: TrainingProcess, owner: str, work_dir: Path
    ) -> None:
        model = work_dir / f"crossval_{owner}.safetensors"
        error, metrics, samples = "", {}, 0
        try:
            await self._retrying(
                f"download of {owner}'s model",
                lambda: self.conn.get_model(run.run_number, -1, model, owner=owner),
            )
            result = await worker.validate(model=model)
            metrics, samples = result.metrics, result.num_samples
        except grpc.aio.AioRpcError as exc:
            error = f"cannot fetch the model: {exc.details()}"
        except WorkerFailed as exc:
            error = f"validation failed: {exc}"
        finally:
            model.unlink(missing_ok=True)
        shown = error or ", ".join(f"{k}={v:.4f}" for k, v in sorted(metrics.items()))
        log.info("cross-site validation of %s's model: %s", owner, shown)
        await self._report_crossval(run, owner, metrics, samples, error)

    async def _give_up(self, run: RunContext, pending: tuple[str, ...], timeout: float) -> None:
        reason = f"gave up after waiting {timeout:g}s for this model"
        log.warning(
            "cross-site validation: gave up waiting for the models of %s after %gs",
            ", ".join(pending),
            timeout,
        )
        for owner in pending:
            await self._report_crossval(run, owner, {}, 0, reason)

    async def _report_crossval(
        self, run: RunContext, owner: str, metrics: dict[str, float], samples: int, error: str
    ) -> None:
        """Send one cell of the cross-site matrix (metrics, or why there are none)."""
        await self._retrying(
            "cross-site report",
            lambda: self.conn.submit_metrics(
                run.run_number, -1, metrics, samples, error=error, owner=owner
            ),
        )

    async def _retrying(self, what: str, call: Callable[[], Awaitable[T]]) -> T:
        """Retry a call across reconnects; the retry window bounds it (the daemon exits)."""
        while True:
            await self._connected.wait()
            try:
                return await call()
            except grpc.aio.AioRpcError as exc:
                if exc.code() not in TRANSIENT:
                    raise
                log.warning("%s interrupted (%s); retrying after reconnect", what, exc.code().name)
                await asyncio.sleep(0.5)

    async def _train_round(self, task: Task, epochs: int, work_dir: Path) -> None:
        assert self.worker is not None
        models = work_dir.parent / f"models_{self.instance}"
        models.mkdir(exist_ok=True)
        model = models / f"global_round_{task.round}.safetensors"
        update = models / f"update_round_{task.round}.safetensors"
        self._set_status(round=task.round)
        try:
            await self._retrying(
                f"download of round {task.round}",
                lambda: self.conn.get_model(task.run_number, task.round, model),
            )
        except grpc.aio.AioRpcError as exc:
            log.info("round %d not available: %s", task.round, exc.details())
            return
        except (TensorFileError, ValueError) as exc:
            raise WorkerFailed(
                f"the global model of round {task.round} is unusable: {exc}", ""
            ) from None
        result = await self.worker.train(
            round=task.round, global_model=model, out=update, epochs=epochs
        )
        verdict = await self._retrying(
            f"upload of round {task.round}",
            lambda: self.conn.submit_model(
                task.run_number, task.round, update, result.num_samples, result.metrics
            ),
        )
        shown = ", ".join(f"{k}={v:.4f}" for k, v in sorted(result.metrics.items()))
        log.info("round %d update %s: %s (%s)", task.round, verdict.result, verdict.message, shown)
        if verdict.result == "rejected":
            raise WorkerFailed(
                f"the server rejected the update of round {task.round}: {verdict.message}", ""
            )
        for old in models.glob("*_round_*.safetensors"):
            if not old.name.endswith(f"_round_{task.round}.safetensors"):
                old.unlink(missing_ok=True)

    async def _validate_final(self, task: Task, work_dir: Path) -> None:
        assert self.worker is not None
        model = work_dir.parent / f"models_{self.instance}" / "final_global_model.safetensors"
        model.parent.mkdir(exist_ok=True)
        self._set_status(round=task.round)
        try:
            await self._retrying(
                "download of the final model",
                lambda: self.conn.get_model(task.run_number, task.round, model),
            )
        except grpc.aio.AioRpcError as exc:
            log.info("final model not available: %s", exc.details())
            return
        result = await self.worker.validate(model=model)
        # Weighted by training samples, like the validation metrics of every round.
        samples = self.worker.info.train_samples
        verdict = await self._retrying(
            "final validation report",
            lambda: self.conn.submit_metrics(task.run_number, task.round, result.metrics, samples),
        )
        shown = ", ".join(f"{k}={v:.4f}" for k, v in sorted(result.metrics.items()))
        log.info("final global model validated: %s (%s)", shown, verdict.result)
