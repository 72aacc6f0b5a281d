"""What a client daemon does: obey admins' commands and work through the rounds.

Commands and offers arrive through the :class:`~flclientd.uplink.Uplink`
(which keeps the client registered and its control stream open across server
restarts). Training happens in a child process per run
(:mod:`flclientd.runner`): for each round the agent downloads the global
model, has the child validate it and train on it, and streams the update
back, resending it after a reconnect or a server restart until the server
gives a verdict. The server counts every update at most once, so resending
is always safe. After the run, a participating site takes part in
cross-site validation (:mod:`flclientd.crossval`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import socket
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import asdict, dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import grpc

from flclientd.approvals import ApprovalError, ApprovalList
from flclientd.connection import Connection
from flclientd.crossval import CrossSiteValidation
from flclientd.device import DeviceInfo
from flclientd.logforward import LogForwarder
from flclientd.runcontext import RunContext
from flclientd.runner import TrainingProcess, WorkerFailed, tidy_temp_dir
from flclientd.siteapps import (
    DeployedApp,
    aside_name,
    deployed_name,
    instance_apps,
    leftovers,
    own_run_folders,
    retired_apps,
)
from flclientd.sitestate import SiteStore
from flclientd.uplink import Uplink, details
from flcore import status as st
from flcore.appconfig import load_app
from flcore.appreview import AppReview, review_app
from flcore.certlife import kit_lives
from flcore.diskfault import disk_fault, free_bytes
from flcore.federation import (
    MAX_RUN_NUMBER,
    Closed,
    Command,
    CommandResult,
    Downward,
    MachineInfo,
    RunEnded,
    StatusChanged,
    SubmitOutcome,
    TaskKind,
    TaskOffer,
    Unreadable,
    Verdict,
)
from flcore.feed import MAX_LABEL, MAX_TEXT, MAX_TRACEBACK, clip, clip_end
from flcore.folders import FolderError, replace_folder, restore_interrupted
from flcore.logs import one_line
from flcore.metrics import format_metrics
from flcore.progress import TransferStalled
from flcore.schema import ConfigError, name_like, shown
from flcore.startup import STARTUP_DIR, ClientStartup
from flcore.status import ClientStatus
from flcore.tensorfile import TensorFileError
from flcore.tls import TlsFiles
from flcore.version import flstack_version
from flcore.wire import WireError

log = logging.getLogger(__name__)
worker_log = logging.getLogger("flclientd.worker")

# How long a shutdown waits for its own answer to be written before it logs out.
ANSWER_FLUSH_S = 3.0
# A site paused by a full disk looks for room this often, and wants room for two models.
DISK_CHECK_S = 2.0
MIN_ROOM_BYTES = 1 << 20
MAX_RELAUNCHES = 5
"""How many times one step of a run's work (a round, the first start of its child, the start
of cross-site validation) starts the run's child again after pauses. A disk fault that the
probe of the run's folder does not see (another file system full: /tmp, a cache the app
writes) would otherwise start a child every few seconds for good."""
ROUND_FILES = "*_round_*.safetensors"
"""A round's global model (deleted once trained on) and update (kept until the next task)."""
TEMP_FILES = ".*.tmp"
"""What a write cut off leaves beside its file (a killed child's update or best local model):
nothing else removes them."""
FINAL_MODEL = "final_global_model.safetensors"
"""The run's final global model: what a site keeps of a run (docs/operations.md)."""

Sending = Callable[[], Awaitable[Verdict]] | None
"""How to send a round's result again (None when there was nothing to send)."""

STATUS_BOUNDS: dict[str, Callable[[str], str]] = {
    "error": partial(clip, limit=MAX_TEXT),
    "traceback": partial(clip_end, limit=MAX_TRACEBACK),
    "app": partial(clip, limit=MAX_LABEL),
    "detail": partial(clip, limit=MAX_TEXT),
}
"""The bounds of the status's texts, which may quote the server: the status goes with every
heartbeat, and one past the message limit cut the site off its control stream."""


class Refused(Exception):
    """A command cannot be carried out; the message goes back to the admin."""


@dataclass(frozen=True)
class RoundDone:
    """The last round this site trained: from the offer to the server's verdict."""

    round: int
    seconds: float
    finished_at: float
    outcome: SubmitOutcome


Kind = TypeVar("Kind", int, str)
Result = TypeVar("Result")


def _argument(
    command: str,
    args: Mapping[str, object],
    key: str,
    kind: type[Kind],
    default: Kind | None = None,
) -> Kind:
    """An argument of a command from the server, of the type it must have; Refused (a
    sentence for the admin) when it is missing or of another type."""
    hint = "are the server and this client running the same flstack version?"
    if key not in args and default is None:
        raise Refused(f"{command}: the server sent no {key}; {hint}")
    value = args.get(key, default)
    if not isinstance(value, kind) or type(value) is not kind:
        what = "a whole number" if kind is int else "text"
        raise Refused(
            f"{command}: the server sent {key} {str(value)[:40]!r}, which is not {what}; {hint}"
        )
    return value


def _run_number(command: str, args: Mapping[str, object]) -> int:
    """The run a command from the server is for: it names this site's folders, so a number
    the server could never have set (0, -1, twelve digits) is refused."""
    number = _argument(command, args, "run_number", int)
    if not 1 <= number <= MAX_RUN_NUMBER:
        raise Refused(
            f"{command}: the server sent run_number {number}, which is no run number "
            f"(1 to {MAX_RUN_NUMBER})"
        )
    return number


def _disk_fault_of(exc: OSError | WorkerFailed, folder: Path) -> str:
    """What is wrong with the disk when that is why ``exc`` was raised ('' when it is not):
    the training child says so itself, a write of the daemon's is read from its errno."""
    if isinstance(exc, WorkerFailed):
        return exc.disk_fault
    return disk_fault(exc, folder) or ""


def _takes_writes(folder: Path, needed: int) -> bool:
    """Whether ``folder`` has ``needed`` bytes free and a file can be made and removed in it
    (a probe named like the temporary files that a run's start removes, should its removal
    fail)."""
    probe = folder / f".disk_probe.{uuid.uuid4().hex}.tmp"
    try:
        if free_bytes(folder) < needed:
            return False
        probe.write_bytes(b"")
        probe.unlink()
    except OSError:
        return False
    return True


@dataclass(frozen=True)
class Deployed:
    """What ``deploy`` put in place (the JSON part of its answer)."""

    app: str
    run_number: int
    sha256: str


@dataclass(frozen=True)
class Started:
    """The run ``start`` began, on how many GPUs (the JSON part of its answer)."""

    run_number: int
    gpus: int


Answer = tuple[str, Deployed | Started | dict[str, object] | None]
"""A command's text for people and the data for programs: a record, ``check_status``'s
JSON-ready status, or none."""
Handler = Callable[[Mapping[str, object]], Awaitable[Answer]]
"""Carries out a command from its arguments as the server sent them."""


def _json(result: Deployed | Started | dict[str, object] | None) -> dict[str, Any]:
    """An answer's data as it goes on the wire."""
    if result is None:
        return {}
    return dict(result) if isinstance(result, dict) else asdict(result)


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
        self.conn = Connection(startup, files)
        self.status = ClientStatus()
        self.store = SiteStore(workspace / "state" / f"flclientd_{startup.name}.json")
        info = MachineInfo(
            device=device.device,
            gpu_count=device.gpu_count,
            hostname=socket.gethostname(),
            version=flstack_version(),
            pid=os.getpid(),
        )
        self.uplink = Uplink(
            self.conn,
            startup,
            self.store,
            info,
            self._status_now,
            self._dispatch,
            forwarder,
            kit_lives(workspace / STARTUP_DIR, startup, startup.name),
        )
        self.worker: TrainingProcess | None = None
        self.context: RunContext | None = None
        self.offer: TaskOffer | None = None
        self._offers = 0
        self.crossval = CrossSiteValidation(self.uplink, self.conn)
        self.approvals = ApprovalList(workspace)
        self._offer_changed = asyncio.Event()
        self._work: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._stopping: set[TrainingProcess] = set()
        """Training children asked to stop and not gone yet: a shutdown kills them."""
        self._log_out = False
        """An admin shut this client down: its registration ends once the stream is closed."""
        self.last_round: RoundDone | None = None
        self._ending: asyncio.Task[Any] | None = None
        """The end of a run the server ended, while this site winds it down."""
        self._deploys: dict[Path, tuple[asyncio.Lock, int]] = {}
        """Each app folder being deployed: its lock and how many deploys hold or await it."""
        self._removing: set[Path] = set()
        """Apps set aside that this daemon is deleting now."""

    async def run(self) -> int:
        """Serve until shut down; returns the daemon's exit code."""
        tidy_temp_dir()
        state = self.store.state
        if state.training_run:
            self._spawn(self._rejoin(state.training_run, state.gpus))
        self._spawn(self._tidy_apps())
        try:
            return await self.uplink.run()
        finally:
            await self._stop_worker(graceful=False)
            if self._log_out:
                await self._logout()
            await self.conn.close()

    def _spawn(self, coro: Awaitable[Any]) -> asyncio.Task[Any]:
        task: asyncio.Task[Any] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _dispatch(self, message: Downward | Unreadable) -> None:
        if isinstance(message, Command):
            self._spawn(self._command(message))
        elif isinstance(message, TaskOffer):
            self._offer(message)
        elif isinstance(message, RunEnded):
            log.info("server ended run %d: %s", message.run_number, one_line(message.reason))
            if message.run_number == self.status.run_number:
                self._ending = self._spawn(self._end_run())
        elif isinstance(message, Closed):
            log.warning("the server ended this client's registration: %s", one_line(message.reason))
            self.store.update(token="")
        elif message.command_id:
            self.uplink.send(CommandResult(message.command_id, False, message.reason))
        else:
            log.warning("%s", message.reason)

    # ------------------------------------------------------------------ status

    def _status_now(self) -> st.ClientStatus:
        """A copy of the status: what was sent must not change with what comes next."""
        return replace(self.status)

    def _set_status(self, **changes: Any) -> None:
        """Change the status and tell the server; a status other than a wait has no detail,
        and one other than a failure or a pause has no error (the row would show a problem
        that ended with the state it belonged to)."""
        if changes.get("status", st.WAITING_APPROVAL) != st.WAITING_APPROVAL:
            changes.setdefault("detail", "")
        if changes.get("status", st.FAILED) not in (st.FAILED, st.PAUSED):
            changes.setdefault("error", "")
            changes.setdefault("traceback", "")
        for key, value in changes.items():
            bound = STATUS_BOUNDS.get(key)
            setattr(self.status, key, value if bound is None else bound(value))
        self.uplink.send(StatusChanged(self._status_now()))

    def status_data(self) -> dict[str, Any]:
        """The client's status for check_status."""
        data = asdict(self.status)
        data.update(device=self.device.device, gpu_count=self.device.gpu_count)
        return data

    # ------------------------------------------------------------------ commands

    async def _command(self, command: Command) -> None:
        try:
            handler = self._handlers().get(command.name)
            if handler is None:
                raise Refused(f"unknown command {shown(command.name)}")
            text, result = await handler(command.args)
            ok, data = True, _json(result)
        except Refused as exc:
            ok, text, data = False, str(exc), {}
        except Exception:
            log.exception("command %s failed", command.name)
            ok, text, data = (
                False,
                f"the client could not carry out {command.name} because of an unexpected "
                "error; the client's log has the details",
                {},
            )
        self.uplink.send(CommandResult(command.command_id, ok, text, data))
        if command.name == "shutdown" and ok:
            self._spawn(self._shut_down())

    def _handlers(self) -> dict[str, Handler]:
        return {
            "check_status": self._check_status,
            "deploy": self._deploy,
            "start": self._start,
            "abort": self._abort,
            "shutdown": self._shutdown_command,
        }

    async def _check_status(self, args: Mapping[str, object]) -> Answer:
        return self.status.status, self.status_data()

    def run_dir(self, run_number: int) -> Path:
        """This client's folder of a run."""
        return self.workspace / f"run_{run_number}"

    def app_dir(self, run_number: int) -> Path:
        """Where the app deployed for a run lives at this site."""
        return self.run_dir(run_number) / f"app_{self.uplink.instance}"

    def _training(self) -> bool:
        status = self.status.status
        return self.worker is not None or status in st.ACTIVE or status == st.STOPPING

    async def _deploy(self, args: Mapping[str, object]) -> Answer:
        run_number = _run_number("deploy", args)
        app = _argument("deploy", args, "app", str)
        problem = name_like(app)
        if problem:
            # The server refuses such a name at upload: it would go into this site's status,
            # its log and the answer, megabytes of it.
            raise Refused(f"deploy: the app name {shown(app)} {problem}")
        if self._training() and self.status.run_number == run_number:
            raise Refused(f"run {run_number} is training here: abort it before deploying")
        target = self.app_dir(run_number)
        target.parent.mkdir(parents=True, exist_ok=True)
        async with self._one_deploy(target):
            self._remove_leftovers(target)
            staging = aside_name(target)
            try:
                await self.conn.get_app(run_number, app, staging)
                load_app(staging)
                review = await asyncio.to_thread(review_app, staging, app)
                # The run may have started while the app came, its child reading the folder: it
                # is never swapped under a child (whose app is the one the site reviewed).
                if self._training() and self.status.run_number == run_number:
                    raise Refused(
                        f"run {run_number} started training here while {app} came: "
                        "abort it, then deploy again"
                    )
                replace_folder(staging, target)
            except (FolderError, ConfigError, TransferStalled) as exc:
                raise Refused(f"deploy failed: {exc}") from None
            except grpc.aio.AioRpcError as exc:
                raise Refused(f"deploy failed: {exc.details()}") from None
            except OSError as exc:
                raise Refused(f"deploy failed: {exc.strerror or exc} ({target})") from None
            finally:
                shutil.rmtree(staging, ignore_errors=True)  # what was refused, or nothing
        if self.status.run_number == run_number and not self._training():
            # A deploy for another run, or for this one while it trains its app, says nothing
            # of what the site trains now: _start_run names the app when it starts.
            self.status.app = app
        text = f"{app} deployed."
        if not self._allowed(review):
            text += f" It runs custom code that this site has not approved yet ({review.short})."
        log.info("app %s deployed for run %d (%s)", app, run_number, review.short)
        self._retire_apps(run_number)
        return text, Deployed(app, run_number, review.digest)

    def _remove_leftovers(self, target: Path) -> None:
        """Delete what a deploy or a removal of this instance's app that a crash cut off left
        beside ``target``: half an app (up to MAX_APP_BYTES) that nothing would ever read or
        remove. One this daemon is deleting now is left to it."""
        for leftover in leftovers(target):
            if leftover in self._removing:
                continue
            log.info(
                "removing %s, left by a deploy or a removal of an app that did not finish",
                leftover.relative_to(self.workspace),
            )
            shutil.rmtree(leftover, ignore_errors=True)

    async def _tidy_apps(self) -> None:
        """Once logged in after the daemon's start (the folders carry the instance name the
        server gives): remove what a crash left set aside, then the apps the site no longer
        keeps, as a deploy does. A crash in the middle of a removal left its folder until the
        next deploy of that run, and a site that deploys nothing more kept every app."""
        await self.uplink.connected.wait()
        try:
            for run_dir in own_run_folders(self.workspace):
                target = run_dir / f"app_{self.uplink.instance}"
                if target not in self._deploys:  # a deploy removes its own run's
                    self._remove_leftovers(target)
        except OSError as exc:
            log.warning("the runs' folders were not looked at: %s", exc.strerror or exc)
        self._retire_apps()

    def _retire_apps(self, *deployed: int) -> None:
        """Remove the apps the site no longer keeps (flclientd.siteapps), each set aside at
        once and deleted in a thread: no ``start`` finds half an app, and a big one does
        not hold up the heartbeats. An app another deploy is replacing now is left to it."""
        in_use = {*deployed, self.status.run_number, self.store.state.training_run}
        try:
            found = instance_apps(self.workspace, self.uplink.instance)
        except OSError as exc:  # the deploy itself succeeded: its answer says so
            log.warning("the apps of earlier runs were not looked at: %s", exc.strerror or exc)
            return
        mine = [app for app in found if app.folder not in self._deploys]
        for app in retired_apps(mine, in_use, self.startup.keep_deployed_apps):
            aside = aside_name(app.folder)
            try:
                app.folder.rename(aside)
            except OSError as exc:
                log.warning(
                    "the app of run %d could not be removed, left as it is: %s",
                    app.run_number,
                    disk_fault(exc) or exc.strerror or exc,
                )
                continue
            self._removing.add(aside)
            self._spawn(self._remove_app(app, aside))

    async def _remove_app(self, app: DeployedApp, aside: Path) -> None:
        try:
            await asyncio.to_thread(shutil.rmtree, aside, ignore_errors=True)
        finally:
            self._removing.discard(aside)
        if aside.exists():
            log.warning(
                "the app of run %d could not be removed entirely: what is left is %s",
                app.run_number,
                aside,
            )
            return
        log.info(
            "removed the app of run %d (%s): this site keeps the apps of the runs it uses and "
            "of the %d newest others (keep_deployed_apps)",
            app.run_number,
            one_line(app.name) or "no name recorded",
            self.startup.keep_deployed_apps,
        )

    @contextlib.asynccontextmanager
    async def _one_deploy(self, target: Path) -> AsyncIterator[None]:
        """One deploy of an app folder at a time: a second (the same run deployed again at
        once) waits for the first, whose staging folder it would remove as a crash's."""
        lock, users = self._deploys.get(target, (asyncio.Lock(), 0))
        self._deploys[target] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._deploys.pop(target)
            if users > 1:
                self._deploys[target] = (lock, users - 1)

    async def _start(self, args: Mapping[str, object]) -> Answer:
        run_number = _run_number("start", args)
        return await self._start_run(run_number, _argument("start", args, "gpus", int, 0))

    async def _start_run(self, run_number: int, gpus: int) -> Answer:
        """Train run ``run_number`` on ``gpus`` GPUs (0: the app's default of one)."""
        if gpus < 0:
            # It is kept for a rejoin and would go to torchrun as its process count.
            raise Refused(
                f"start: the server sent gpus {gpus}, which is no GPU count (0 for the app's "
                "default, or more)"
            )
        if self.status.status == st.WAITING_APPROVAL:
            raise Refused(
                f"{self.status.detail}: the site's IT approves it with flclientd approve, "
                "and training then starts by itself"
            )
        ending = self._ending
        if ending is not None and not ending.done():
            # The server ended the run a moment ago and its training child is on its way out:
            # a start that follows at once (the next run) waits for that, not refused.
            await asyncio.wait({ending})
        if self._training():
            raise Refused(f"already {self.status.status} (run {self.status.run_number})")
        app_dir = self.app_dir(run_number)
        try:
            # A crash between the two renames of a deploy left the app as .app_<instance>.old.
            restore_interrupted(app_dir)
        except OSError as exc:
            raise Refused(
                f"the app of run {run_number}, set aside by a deploy that a crash cut off, "
                f"cannot be put back: {exc.strerror or exc} ({app_dir})"
            ) from None
        if not app_dir.is_dir():
            raise Refused(f"no app is deployed here for run {run_number}: deploy one first")
        cpu_allowed = self.device.gpu_count == 0 and self.startup.allow_cpu_mgpu
        if gpus and self.device.gpu_count < gpus and not cpu_allowed:
            raise Refused(
                f"this site has {self.device.gpu_count} GPU(s); start_mgpu asked for {gpus}"
                + ("" if self.device.gpu_count else " (and allow_cpu_mgpu is off)")
            )
        cpus = len(os.sched_getaffinity(0))
        if cpu_allowed and gpus > cpus:
            # Each is a process of torchrun's: more than the CPUs would only thrash them.
            raise Refused(
                f"this site trains on its {cpus} CPU(s) (allow_cpu_mgpu); start_mgpu asked "
                f"for {gpus} processes"
            )
        app_name = deployed_name(app_dir)
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
        self.store.change(training_run=run_number, gpus=gpus)  # saved as the work begins
        self.crossval = CrossSiteValidation(self.uplink, self.conn)
        self._work = self._spawn(self._run_training(run_number, app_dir, max(gpus, 1)))
        return "Starting the client...", Started(run_number, gpus)

    async def _rejoin(self, run_number: int, gpus: int) -> None:
        """After a restart of this daemon, go back to the run it was training."""
        log.info("this client was training run %d before it stopped: rejoining", run_number)
        # After the login, so that its folders carry the instance name the server gives.
        await self.uplink.connected.wait()
        try:
            await self._start_run(run_number, gpus)
        except Refused as exc:
            log.warning("cannot rejoin run %d: %s", run_number, exc)
            self.store.update(training_run=0)

    async def _abort(self, args: Mapping[str, object]) -> Answer:
        if not self._training():
            raise Refused("the client is not training")
        run = self.context
        # Paused (a full disk) too: its best local model is kept, and the others wait for it.
        to_crossval = (
            run is not None
            and run.config.cross_validate
            and self.status.status in (st.STARTED, st.PAUSED)
        )
        self._set_status(status=st.STOPPING)
        await self._stop_worker(graceful=False)
        if to_crossval and run is not None:
            log.info("training aborted by an admin: moving to cross-site validation")
            self._work = self._spawn(self._crossval(run))
            return (
                "Aborting the client... (moving to cross-site validation; abort again to stop)",
                None,
            )
        if run is not None:
            self._drop_round_files(run.work_dir)
        self.store.update(training_run=0)
        self._set_status(status=st.STOPPED, round=-1)
        log.info("training aborted by an admin")
        return "Aborting the client...", None

    async def _shutdown_command(self, args: Mapping[str, object]) -> Answer:
        return "Shutdown the client...", None

    async def _shut_down(self) -> None:
        # The admin's answer goes out before the client's stream closes and it logs out.
        if not await self.uplink.flush(ANSWER_FLUSH_S):
            log.warning("the answer to shutdown could not be sent within %gs", ANSWER_FLUSH_S)
        log.info("shutting down at the request of an admin")
        await self._stop_worker(graceful=False)
        self.store.update(training_run=0)
        # The client closes its own stream first, then logs out: the server then has no
        # stream to cut under it, and neither side takes the other's leaving for a fault.
        self._log_out = True
        self.uplink.stop()

    async def _logout(self) -> None:
        try:
            await self.conn.logout()
        except grpc.aio.AioRpcError as exc:
            log.warning(
                "could not log out (%s): the server drops this client after its heartbeat timeout",
                exc.details() or exc.code().name,
            )

    def request_shutdown(self) -> None:
        """SIGTERM: stop the worker and leave (the run resumes when the daemon restarts)."""
        self.uplink.stop()

    # ------------------------------------------------------------------ training

    def _offer(self, task: TaskOffer) -> None:
        if task.run_number != self.status.run_number or self.status.status not in st.ACTIVE:
            return
        if task.kind is TaskKind.CROSS_VALIDATE:
            self.crossval.offered(task)
        else:
            self.offer = task
            self._offers += 1
            self._offer_changed.set()

    async def _next_offer(self, seen: int) -> tuple[TaskOffer, int]:
        """The latest offer once one newer than the ``seen``-th arrived.

        Every offer counts, also one for a round already done: the server
        offers a round again only when it may have lost what it was sent
        (it restarted), and then the answer is to send it again.
        """
        while self.offer is None or self._offers <= seen:
            self._offer_changed.clear()
            await self._offer_changed.wait()
        return self.offer, self._offers

    async def _stop_worker(self, graceful: bool) -> None:
        """End the run's work and its training child, and wait until the child is gone.

        ``graceful`` lets an idle child exit on its own (the run is over); a
        child in the middle of a request is killed all the same: what it
        computes would be discarded, and waiting for it is what kept a site
        training for seconds after an abort.
        """
        worker, self.worker = self.worker, None
        graceful = graceful and worker is not None and not worker.busy
        work, self._work = self._work, None
        if work is not None and work is not asyncio.current_task():
            work.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await work
        if not graceful:
            # A child still on its way out of a graceful stop (the run just ended) goes too.
            for stopping in (worker, *self._stopping):
                if stopping is not None:
                    stopping.kill()
                    await stopping.wait()
        elif worker is not None:
            self._stopping.add(worker)
            try:
                await worker.stop()
            finally:
                self._stopping.discard(worker)

    async def _end_run(self) -> None:
        run = self.context
        if (
            run is not None
            and run.config.cross_validate
            and self.status.status in (st.STARTING, st.STARTED, st.PAUSED)
        ):
            # Starting: the daemon restarted as training ended (or during cross-site
            # validation), and its new process is not up yet; it still shares its best model
            # and validates the others' (a new process is launched for it). Paused: a full
            # disk stopped its round, and the others would wait for it until their timeout.
            work, self._work = self._work, None
            if work is not None:
                work.cancel()
            self._work = self._spawn(self._crossval(run))
            return
        if self.status.status == st.CROSS_VALIDATING:
            return
        failed = self.status.status == st.FAILED
        if self.status.status in st.ACTIVE:
            self._set_status(status=st.STOPPING)
        await self._stop_worker(graceful=True)
        if run is not None:
            self._drop_round_files(run.work_dir)
        self.store.update(training_run=0)
        if not failed:
            self._set_status(status=st.STOPPED, round=-1)

    def _allowed(self, review: AppReview) -> bool:
        """Whether this site lets the app run now."""
        if not review.needs_approval or self.startup.trust_custom_code:
            return True
        try:
            return self.approvals.allows(review.digest)
        except ApprovalError as exc:
            log.error("%s", exc)
            return False

    async def _until_approved(self, run: RunContext) -> None:
        """Return once the site lets the run's app run; meanwhile the status says what
        the site waits for.

        Nothing of the app is imported and no process is started before that.
        An app of built-in components needs nothing; custom code needs its
        digest in ``local/approved_apps.json`` or ``trust_custom_code``.
        """
        name = one_line(self.status.app or run.app_dir.name)
        try:
            review = await asyncio.to_thread(review_app, run.app_dir, name)
        except (FolderError, OSError) as exc:
            if isinstance(exc, OSError) and disk_fault(exc, run.app_dir):
                raise  # the site pauses, and reviews the app again once the disk has room
            raise WorkerFailed(f"the deployed app {name} cannot be reviewed: {exc}") from None
        if not review.needs_approval:
            log.info("app %s (%s) uses built-in components only", name, review.short)
            return
        code = one_line("; ".join(review.custom_code()))
        if self.startup.trust_custom_code:
            log.warning(
                "app %s (%s) runs custom code without approval, since trust_custom_code is on: %s",
                name,
                review.short,
                code,
            )
            return
        if self._allowed(review):
            log.info("app %s (%s) was approved by this site", name, review.short)
            return
        resumed = self.status.status
        self._set_status(status=st.WAITING_APPROVAL, detail=review.waiting)
        log.warning(
            "%s (%s): review it with 'flclientd show-app --workspace %s sha256:%s', then "
            "approve it with 'flclientd approve --workspace %s %s'",
            review.waiting,
            code,
            self.workspace,
            review.digest,
            self.workspace,
            review.digest,
        )
        await self.approvals.wait_for(review.digest, lambda exc: log.error("%s", exc))
        log.info("app %s (%s) approved by this site: starting", name, review.short)
        self._set_status(status=resumed)

    async def _launch(self, run: RunContext) -> TrainingProcess:
        """Start the run's training process once the site lets its app run, and wait until
        it is ready."""
        await self._until_approved(run)
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

    async def _child(self, run: RunContext) -> TrainingProcess:
        """The run's training child, started when none is running: at the run's start or
        rejoin, and for cross-site validation after an abort (or a restart, or an end that
        found the child gone). As a step of the run's work it pauses on a disk fault like a
        round (:meth:`_despite_disk_faults`)."""
        if self.worker is not None and self.worker.running:
            return self.worker
        return await self._launch(run)

    async def _run_training(self, run_number: int, app_dir: Path, nproc: int) -> None:
        """The run's work: start the child, then do each offered task once."""
        try:
            app = load_app(app_dir)
            if app.client is None:
                raise WorkerFailed("the deployed app has no config/config_fed_client.json", "")
            work_dir = self.run_dir(run_number) / f"work_{self.uplink.instance}"
            self._drop_round_files(work_dir)  # a start or a rejoin: nothing is sent again
            run = RunContext(run_number, app_dir, work_dir, nproc, app.client)
            self.context = run
            # A restart rejoins the run the state file names, so the site trains no round of
            # a run it has not noted there: a full disk pauses it until it has.
            await self._despite_disk_faults(self._note_run, self.store.path.parent, relaunch=False)
            # The run's folder, not its work folder: a full disk may keep that from being made.
            worker = await self._despite_disk_faults(partial(self._child, run), work_dir.parent)
            self._set_status(
                status=st.STARTED,
                samples=worker.info.train_samples,
                cross_validate=app.client.cross_validate,
            )
            seen = 0
            sent: dict[tuple[int, TaskKind], Callable[[], Awaitable[Verdict]]] = {}
            while True:
                task, seen = await self._next_offer(seen)
                key = (task.round, task.kind)
                if key in sent:
                    verdict = await self.uplink.retrying(
                        f"resend for round {task.round}", sent[key]
                    )
                    log.info("round %d sent again: %s", task.round, one_line(verdict.message))
                elif task.kind is TaskKind.TRAIN:
                    train = partial(self._train_round, task, app.client.local_epochs, work_dir)
                    send = await self._despite_disk_faults(train, work_dir)
                    if send is not None:
                        sent = {key: send}
                elif task.kind is TaskKind.VALIDATE_GLOBAL:
                    validate = partial(self._validate_final, task, work_dir)
                    send = await self._despite_disk_faults(validate, work_dir)
                    if send is not None:
                        sent = {key: send}
        except Exception as exc:  # whatever stops the run is reported, never swallowed
            self._fail(exc)

    async def _note_run(self) -> None:
        """Write the site's state (the run it trains), as a step of the run's work."""
        self.store.save()

    async def _despite_disk_faults(
        self, step: Callable[[], Awaitable[Result]], folder: Path, relaunch: bool = True
    ) -> Result:
        """Do a step of the run's work (a round, the start of its child, the note of the run
        in the site's state); when the site's disk is full (or failing) pause until ``folder``
        has room again, then do it again, in the status the step began in. The server
        meanwhile goes on with the other sites. Unless ``relaunch`` is off (a step before the
        child's start), a child that ended during the pause, or whose start the fault
        stopped, is started again first, and a start that a disk fault stops pauses again
        like the work itself."""
        relaunches = 0
        fault = ""
        resumed = self.status.status
        while True:
            try:
                if fault:
                    if relaunch and self._no_child():
                        relaunches += 1
                        await self._relaunch(relaunches, fault)
                    self._set_status(status=resumed)
                return await step()
            except (OSError, WorkerFailed) as exc:
                fault = _disk_fault_of(exc, folder)
                if not fault:
                    raise
            message = f"client {fault}"
            log.error(
                "training paused: %s; it goes on once there is room (checked every %gs)",
                message,
                DISK_CHECK_S,
            )
            self._set_status(status=st.PAUSED, error=message)
            await self._until_writable(folder)
            log.info("the disk has room again: training goes on")

    def _no_child(self) -> bool:
        """Whether the run has no running child: a full disk stopped its start, or ended it
        (a full disk at rank 0's save ends torchrun under start_mgpu; the kernel's OOM
        killer ends any child)."""
        return self.worker is None or not self.worker.running

    async def _relaunch(self, attempt: int, fault: str) -> None:
        """Start the run's child again after a pause: the step tried again on the dead child
        failed the run as "training process exited with code 1", the disk never said.

        A start that a disk fault stops raises it (the site pauses again). One that fails for
        another reason (the app, the data) fails the run, saying it was this start; so does
        the start past ``MAX_RELAUNCHES`` in one step of the run's work."""
        run = self.context
        assert run is not None, "a run's work set its context"
        if attempt > MAX_RELAUNCHES:
            raise WorkerFailed(
                f"the training process was started again {MAX_RELAUNCHES} times after the disk "
                f"had room, and a disk fault stopped it each time (last: client {fault}); free "
                "room where that says, then start the client again",
                "",
            )
        if self.worker is None:
            log.info("the disk fault stopped the training process's start: starting it again")
        else:
            log.info("the training process ended while the site was paused: starting it again")
        try:
            await self._launch(run)
        except WorkerFailed as exc:
            if exc.disk_fault:
                raise
            raise WorkerFailed(
                f"the training process could not be started again after the site was paused: {exc}",
                exc.traceback,
            ) from None

    async def _until_writable(self, folder: Path) -> None:
        """Return once ``folder`` has room for two models and takes a write, after at least
        one check's wait: a read-only or failing disk reports free space, and retrying at
        once spun without ever yielding (no heartbeat, no abort, no SIGTERM)."""
        needed = max(2 * self.conn.model_bytes, MIN_ROOM_BYTES)
        while True:
            await asyncio.sleep(DISK_CHECK_S)
            if _takes_writes(folder, needed):
                return

    def _fail(self, exc: Exception) -> None:
        """Report a failure of the run at this site with its traceback, and stop training."""
        if isinstance(exc, grpc.aio.AioRpcError):
            exc = WorkerFailed(f"lost contact with the server: {exc.details()}", "")
        elif isinstance(exc, WireError):
            exc = WorkerFailed(f"the server's answer could not be read: {exc}", "")
        elif not isinstance(exc, WorkerFailed | ConfigError):
            log.error("the run stopped on an unexpected error", exc_info=exc)
            exc = WorkerFailed(
                "an unexpected error in the client daemon stopped the run; the site's log has "
                "the details",
                "",
            )
        trace = getattr(exc, "traceback", "")
        log.error("training failed: %s", one_line(str(exc)))
        if trace:
            log.debug("where the training failed:\n%s", trace)
        self._set_status(status=st.FAILED, error=str(exc), traceback=trace)
        self.store.update(training_run=0)
        worker, self.worker = self.worker, None
        if worker is not None:
            worker.kill()

    async def _crossval(self, run: RunContext) -> None:
        """Take part in cross-site validation, then stop."""
        # Said here too: a site restarted as training ended never said it while started.
        self._set_status(status=st.CROSS_VALIDATING, round=-1, cross_validate=True)
        self._drop_round_files(run.work_dir)
        try:
            # A child an abort stopped, or that a full disk ended (torchrun ends with its rank
            # 0), is started again.
            worker = await self._despite_disk_faults(partial(self._child, run), run.work_dir.parent)
            await self.crossval.run(run, worker)
        except Exception as exc:  # whatever stops it is reported, never swallowed
            self._fail(exc)
            return
        log.info("cross-site validation done")
        await self._stop_worker(graceful=True)
        self.store.update(training_run=0)
        self._set_status(status=st.STOPPED)

    def _models_dir(self, work_dir: Path) -> Path:
        """Where this site keeps the run's models (``run_N/models_<instance>/``)."""
        return work_dir.parent / f"models_{self.uplink.instance}"

    def _drop_round_files(self, work_dir: Path) -> None:
        """Delete the files of earlier rounds: once the server offers something new, the update
        it was sent (kept to be sent again) is counted or no longer wanted. What writes cut
        off left in the run's folders goes too: they piled up with each killed child.

        A file that cannot be deleted (a read-only or failing disk) is logged once and left:
        it only takes room, and raising here left an aborted or ended run stuck in
        ``training stopping`` or ``cross site validation``."""
        models = self._models_dir(work_dir)
        leftovers = [
            *models.glob(ROUND_FILES),
            *models.glob(TEMP_FILES),
            *work_dir.glob(TEMP_FILES),
        ]
        failed: list[OSError] = []
        for old in leftovers:
            try:
                old.unlink(missing_ok=True)
            except OSError as exc:
                failed.append(exc)
        if failed:
            log.warning(
                "%d file(s) of earlier rounds could not be deleted, left as they are: %s",
                len(failed),
                disk_fault(failed[0]) or failed[0].strerror or failed[0],
            )

    async def _train_round(self, task: TaskOffer, epochs: int, work_dir: Path) -> Sending:
        """Train one round and send the update; returns how to send it again (None when
        the round was no longer open)."""
        assert self.worker is not None
        models = self._models_dir(work_dir)
        models.mkdir(exist_ok=True)
        self._drop_round_files(work_dir)
        model = models / f"global_round_{task.round}.safetensors"
        update = models / f"update_round_{task.round}.safetensors"
        started = time.monotonic()
        self._set_status(round=task.round)
        try:
            await self.uplink.retrying(
                f"download of round {task.round}",
                lambda: self.conn.get_model(task.run_number, task.round, model),
            )
        except grpc.aio.AioRpcError as exc:
            log.info("round %d not available: %s", task.round, details(exc))
            return None
        except (TensorFileError, ValueError) as exc:
            raise WorkerFailed(
                f"the global model of round {task.round} is unusable: {exc}", ""
            ) from None
        result = await self.worker.train(
            round=task.round, global_model=model, out=update, epochs=epochs
        )
        model.unlink()  # the child has it; the update is what may be sent again

        def send() -> Awaitable[Verdict]:
            return self.conn.submit_model(
                task.run_number,
                task.round,
                update,
                result.num_samples,
                result.metrics,
                compression=task.compression,
            )

        verdict = await self.uplink.retrying(f"upload of round {task.round}", send)
        self.last_round = RoundDone(
            task.round, time.monotonic() - started, time.time(), verdict.outcome
        )
        log.log(
            logging.WARNING if verdict.outcome is SubmitOutcome.POSTPONED else logging.INFO,
            "round %d update %s: %s (%s)",
            task.round,
            verdict.outcome,
            one_line(verdict.message),
            format_metrics(result.metrics),
        )
        if verdict.outcome is SubmitOutcome.REJECTED:
            raise WorkerFailed(
                f"the server rejected the update of round {task.round}: {verdict.message}", ""
            )
        return send

    async def _validate_final(self, task: TaskOffer, work_dir: Path) -> Sending:
        """Validate the final global model and report it; returns how to report it again."""
        assert self.worker is not None
        model = self._models_dir(work_dir) / FINAL_MODEL
        model.parent.mkdir(exist_ok=True)
        self._drop_round_files(work_dir)
        self._set_status(round=task.round)
        try:
            await self.uplink.retrying(
                "download of the final model",
                lambda: self.conn.get_model(task.run_number, task.round, model),
            )
        except grpc.aio.AioRpcError as exc:
            log.info("final model not available: %s", details(exc))
            return None
        except (TensorFileError, ValueError) as exc:
            raise WorkerFailed(f"the final global model is unusable: {exc}", "") from None
        result = await self.worker.validate(model=model)
        # Weighted by training samples, like the validation metrics of every round.
        samples = self.worker.info.train_samples

        def send() -> Awaitable[Verdict]:
            return self.conn.submit_metrics(task.run_number, task.round, result.metrics, samples)

        verdict = await self.uplink.retrying("final validation report", send)
        log.info(
            "final global model validated: %s (%s)", format_metrics(result.metrics), verdict.outcome
        )
        return send
