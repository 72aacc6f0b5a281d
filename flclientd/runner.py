"""The client daemon's handle on its training child (see :mod:`flclientd.worker`).

The child runs the app's custom code and owns the GPU; the daemon only
starts it, sends it small JSON requests over a private Unix socket, reads
its log lines, and kills it. One process trains on one device; for
``start_mgpu`` the child is ``torchrun --nproc_per_node N`` and its ranks
train with DistributedDataParallel. The child starts in a process group of
its own so an abort kills it with everything it started: torchrun gives
each rank a session of its own, which a ``killpg`` of the launcher does not
reach, so :meth:`TrainingProcess.kill` also kills every descendant it finds
in /proc, ranks and their DataLoader workers included.

This module must not import torch: the daemon stays small and cannot be
taken down by CUDA.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import itertools
import logging
import os
import shutil
import signal
import sys
import sysconfig
import tempfile
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

from flclientd.worker.protocol import (
    BEST_LOCAL_MODEL,
    EVENT_FAILED,
    EVENT_READY,
    MAX_MESSAGE_BYTES,
    MAX_TRACEBACK_CHARS,
    OP_STOP,
    OP_TRAIN,
    OP_VALIDATE,
    SOCKET_ENV,
    UNMARKED_STDERR_LEVEL,
    UNMARKED_STDOUT_LEVEL,
    WorkerInfo,
    WorkResult,
    decode,
    encode,
    parse_log_line,
)
from flcore import faultpoints
from flcore.feed import MAX_TEXT, clip, clip_end
from flcore.pipelines import pipe_lines
from flcore.proctable import descendants

logger = logging.getLogger(__name__)

PRIVATE_DIR_PREFIX = "flworker-"
"""The child's private folder (its IPC socket) in the temp dir; removed when it ends, and by
any daemon of this user starting, or starting a child, once the daemon that made it is gone."""
ORPHAN_AGE_S = 60.0
"""How old a private folder nobody locks must be to be taken for a dead daemon's: the one
moment a live daemon's folder is not locked is between its creation and the lock."""

LogCallback = Callable[[int, str], None]

# The folder holding the flclientd package. When it is not where the
# interpreter finds installed packages (a source checkout, an editable
# install), it goes on the child's PYTHONPATH so the child runs this very code.
SOURCE_ROOT = Path(__file__).resolve().parent.parent
TAIL_LINES = 200
MAX_LINE_CHARS = 64 * 1024
DRAIN_TIMEOUT = 1.0


class WorkerFailed(Exception):
    """The training child could not do what was asked; ``traceback`` says where, and
    ``disk_fault`` what is wrong with the disk when that is why ("disk full: ...")."""

    def __init__(self, message: str, traceback: str = "", disk_fault: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.traceback = traceback
        self.disk_fault = disk_fault

    @classmethod
    def from_message(cls, message: dict[str, Any]) -> WorkerFailed:
        """The error of a child's reply or ``failed`` event, as long as the child itself
        would make it (its app code may write the reply by hand)."""
        return cls(
            clip(str(message["error"]), MAX_TEXT),
            clip_end(str(message.get("traceback", "")), MAX_TRACEBACK_CHARS),
            clip(str(message.get("disk_fault", "")), MAX_TEXT),
        )


# What a reply the child wrote by hand can raise when read: a result that is no object,
# metrics that are no numbers, an infinite sample count.
MALFORMED = (KeyError, ValueError, TypeError, AttributeError, OverflowError)


def _work_result(result: Any) -> WorkResult:
    """The result of a train or validate reply; WorkerFailed, naming the child, when it
    cannot be read (the app's code failed, not this daemon)."""
    try:
        return WorkResult.from_message(result)
    except MALFORMED as exc:
        raise WorkerFailed(
            f"the training process sent a result that cannot be read: {exc}"
        ) from None


def _child_environment(socket_path: Path) -> dict[str, str]:
    env = dict(os.environ)
    env[SOCKET_ENV] = str(socket_path)
    env["PYTHONUNBUFFERED"] = "1"
    # The child runs in the run's work folder: without this, a module an earlier app left
    # there (json.py, argparse.py) would be imported before the standard library's, in a
    # later app that needs no approval. Apps' own code comes from resources/ only.
    env["PYTHONSAFEPATH"] = "1"
    # cuBLAS matrix products are deterministic only with a fixed workspace (the training
    # child turns on torch's deterministic algorithms: flclientd.worker.workbench).
    env.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    installed = {str(Path(sysconfig.get_path(kind)).resolve()) for kind in ("purelib", "platlib")}
    if str(SOURCE_ROOT) not in installed:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SOURCE_ROOT), env.get("PYTHONPATH")]))
    return env


def private_folder() -> tuple[Path, int]:
    """A new private folder (0700) in the temp dir for a child's socket, and the descriptor
    whose lock says a live daemon uses it: a daemon killed with SIGKILL outside systemd's
    PrivateTmp cannot remove it, and the lock is how a later daemon knows (the kernel
    drops it with the daemon).

    Raises:
        OSError: the folder cannot be made.
    """
    folder = Path(tempfile.mkdtemp(prefix=PRIVATE_DIR_PREFIX))
    held = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    fcntl.flock(held, fcntl.LOCK_EX)
    return folder, held


def remove_orphans(temp_dir: Path) -> int:
    """Remove the private folders in ``temp_dir`` that this user's daemons made and left
    (killed with SIGKILL): those no daemon locks, older than :data:`ORPHAN_AGE_S`. Returns
    how many went; one that cannot be looked at is left alone."""
    removed = 0
    for folder in temp_dir.glob(f"{PRIVATE_DIR_PREFIX}*"):
        try:
            info = folder.lstat()
            if info.st_uid != os.geteuid() or time.time() - info.st_mtime < ORPHAN_AGE_S:
                continue
            probe = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            continue  # a live daemon's
        else:
            shutil.rmtree(folder, ignore_errors=True)
            removed += 1
        finally:
            os.close(probe)
    return removed


def tidy_temp_dir() -> None:
    """Remove the private folders that dead daemons of this user left in the temp dir (see
    :func:`remove_orphans`): as the daemon starts, and as each child does."""
    temp_dir = Path(tempfile.gettempdir())
    left = remove_orphans(temp_dir)
    if left:
        logger.info(
            "removed %d training process folder(s) left in %s by daemons killed before they "
            "could remove them",
            left,
            temp_dir,
        )


class TrainingProcess:
    """A running training child; create it with :meth:`start`."""

    def __init__(
        self, work_dir: Path, folder: Path, on_log: LogCallback | None, folder_lock: int = -1
    ) -> None:
        self.work_dir = work_dir
        self._folder = folder
        self._folder_lock = folder_lock
        self._on_log = on_log
        self._proc: asyncio.subprocess.Process | None = None
        self._pgid: int | None = None
        self._ready: asyncio.Future[WorkerInfo] = asyncio.get_running_loop().create_future()
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._ids = itertools.count(1)
        self._lock = asyncio.Lock()
        self._server: asyncio.Server | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self._pumps: list[asyncio.Task[None]] = []
        self._tail: deque[str] = deque(maxlen=TAIL_LINES)
        self._stopping = False
        self._failure: WorkerFailed | None = None
        self._exited = asyncio.Event()
        self._monitor: asyncio.Task[None] | None = None
        self._info: WorkerInfo | None = None

    @classmethod
    async def start(
        cls,
        *,
        app_dir: Path,
        data_root: Path | None,
        work_dir: Path,
        nproc: int = 1,
        allow_cpu_multiprocess: bool = False,
        on_log: LogCallback | None = None,
        ready_timeout: float = 300,
    ) -> TrainingProcess:
        """Start the child and wait until it has built the model and loaded the data.

        Args:
            app_dir: The run's app folder (config/ and resources/).
            data_root: The site's DATA_ROOT, passed to the dataset component.
            work_dir: The run's folder on this client; the child's working
                directory, and where the best local model is kept.
            nproc: Processes (GPUs) to train with; more than one means DDP.
            allow_cpu_multiprocess: Allow several processes on a site without
                GPUs (gloo on the CPU; for tests).
            on_log: Called with (level, text) for every line the child logs or
                prints; by default the lines go to this module's logger.
            ready_timeout: Seconds to wait for the child to get ready.

        Raises:
            WorkerFailed: The child could not get ready (bad config, error in
                custom code, missing data, not enough GPUs...); no process is
                left behind.
        """
        if nproc < 1:
            raise ValueError(f"nproc must be at least 1, got {nproc}")
        work_dir.mkdir(parents=True, exist_ok=True)
        tidy_temp_dir()
        folder, folder_lock = private_folder()
        self = cls(work_dir, folder, on_log, folder_lock)
        try:
            socket_path = self._folder / "ipc.sock"
            self._server = await asyncio.start_unix_server(
                self._on_connect, path=str(socket_path), limit=MAX_MESSAGE_BYTES
            )
            try:
                await self._spawn(app_dir, data_root, nproc, allow_cpu_multiprocess, socket_path)
            finally:
                self._monitor = asyncio.create_task(self._watch(), name="training-child-monitor")
            try:
                self._info = await asyncio.wait_for(asyncio.shield(self._ready), ready_timeout)
            except TimeoutError:
                raise WorkerFailed(
                    f"training process was not ready within {ready_timeout:g} s", self._tail_text()
                ) from None
        except BaseException:
            if self._monitor is None:
                self._close()
                self._exited.set()
            self.kill()
            await asyncio.shield(self._exited.wait())
            raise
        return self

    async def _spawn(
        self,
        app_dir: Path,
        data_root: Path | None,
        nproc: int,
        allow_cpu_multiprocess: bool,
        socket_path: Path,
    ) -> None:
        worker = ["-m", "flclientd.worker", "--app", str(app_dir.resolve())]
        worker += ["--work-dir", str(self.work_dir.resolve())]
        if data_root is not None:
            worker += ["--data-root", str(data_root.resolve())]
        if allow_cpu_multiprocess:
            worker.append("--allow-cpu-multiprocess")
        env = _child_environment(socket_path)
        launcher: list[str] = []
        if nproc > 1:
            launcher = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
            # Ranks on the CPU would otherwise each start a thread per core.
            env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            *launcher,
            *worker,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            cwd=self.work_dir,
            env=env,
            process_group=0,
        )
        self._proc = proc
        self._pgid = proc.pid
        assert proc.stdout is not None and proc.stderr is not None
        for stream, level in (
            (proc.stdout, UNMARKED_STDOUT_LEVEL),
            (proc.stderr, UNMARKED_STDERR_LEVEL),
        ):
            self._pumps.append(asyncio.create_task(self._pump(stream, level)))

    @property
    def info(self) -> WorkerInfo:
        """What the child reported when it got ready."""
        assert self._info is not None, "TrainingProcess.start() sets this"
        return self._info

    @property
    def running(self) -> bool:
        """Whether any process of the child is still alive."""
        return (
            not self._exited.is_set() and self._proc is not None and self._proc.returncode is None
        )

    @property
    def pgid(self) -> int | None:
        """The process group of every process of the child."""
        return self._pgid

    @property
    def best_local_model(self) -> Path | None:
        """The best model this site trained in this run, once there is one."""
        path = self.work_dir / BEST_LOCAL_MODEL
        return path if path.is_file() else None

    async def train(self, *, round: int, global_model: Path, out: Path, epochs: int) -> WorkResult:
        """One round of local training on the global model.

        The child validates the global model on the local validation split
        (``val_accuracy``, ``val_loss``), trains ``epochs`` epochs
        (``train_loss``), writes the update to ``out`` as safetensors,
        validates it (``local_val_accuracy``, ``local_val_loss``) and keeps it
        as the best local model when it beats the ones before.

        Returns:
            The site's training sample count (the FedAvg weight) and the metrics.

        Raises:
            WorkerFailed: Training failed or the child died.
        """
        result = await self._call(
            OP_TRAIN,
            {
                "round": round,
                "global_model": str(global_model.resolve()),
                "out": str(out.resolve()),
                "epochs": epochs,
            },
        )
        return _work_result(result)

    async def validate(self, *, model: Path) -> WorkResult:
        """Metrics of any model file on the local validation split (cross-site validation)."""
        return _work_result(await self._call(OP_VALIDATE, {"model": str(model.resolve())}))

    async def stop(self, grace: float = 3.0) -> None:
        """Ask the child to exit; kill its process group if it has not within ``grace`` seconds."""
        if not self._exited.is_set():
            self._stopping = True
            self._send({"id": next(self._ids), "op": OP_STOP})
            try:
                await asyncio.wait_for(asyncio.shield(self._exited.wait()), grace)
            except TimeoutError:
                logger.warning("training process did not stop within %g s; killing it", grace)
                self.kill()
        await self.wait()

    @property
    def busy(self) -> bool:
        """Whether a request (training, validating) is in flight: a stop would wait for it."""
        return bool(self._pending)

    async def wait(self) -> None:
        """Until every process of the child is gone."""
        await asyncio.shield(self._exited.wait())

    def kill(self) -> None:
        """SIGKILL every process of the child now (abort); calls in flight raise WorkerFailed.

        The private folder goes at once too, so nothing is left behind even
        when the caller does not wait for the end (a daemon shutting down).
        """
        if self._pgid is not None and not self._exited.is_set():
            kill_tree(self._pgid)
            self._remove_folder()

    async def _call(self, op: str, args: dict[str, Any]) -> dict[str, Any]:
        async with self._lock:
            if self._failure is not None:
                raise WorkerFailed(self._failure.message, self._failure.traceback)
            if self._exited.is_set():
                raise WorkerFailed("training process is not running")
            request_id = next(self._ids)
            reply: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
            self._pending[request_id] = reply
            try:
                self._send({"id": request_id, "op": op, "args": args})
                if op == OP_TRAIN:
                    faultpoints.reached(faultpoints.CLIENT_TRAIN)
                message = await reply
            finally:
                self._pending.pop(request_id, None)
        if "error" in message:
            raise WorkerFailed.from_message(message)
        result: dict[str, Any] = message.get("result") or {}
        return result

    def _send(self, message: dict[str, Any]) -> None:
        """Send a message; a child that cannot be reached is killed, which fails its callers."""
        try:
            if self._writer is None or self._writer.is_closing():
                raise ConnectionError("not connected")
            self._writer.write(encode(message))
        except OSError as exc:
            logger.warning("cannot reach the training process (%s); killing it", exc)
            self.kill()

    def _on_connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """The child dialled in: read its messages in a task of our own.

        Not in the task asyncio makes for a coroutine callback: when that one
        is cancelled (a daemon shutting down), Python 3.11's streams module
        asks it for its exception and logs the CancelledError as an ERROR.
        """
        if self._writer is not None:
            writer.close()
            return
        self._writer = writer
        if self._server is not None:
            self._server.close()
        self._reader_task = asyncio.create_task(self._read(reader, writer), name="training-child")

    async def _read(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while line := await reader.readline():
                self._dispatch(line)
            if not self._stopping:
                self.kill()  # it hung up without being asked to stop: it cannot be trusted
        except (OSError, *MALFORMED) as exc:
            logger.error("training process broke the protocol (%s); killing it", exc)
            self.kill()
        finally:
            writer.close()

    def _dispatch(self, line: bytes) -> None:
        message = decode(line)
        event = message.get("event")
        if event == EVENT_READY and not self._ready.done():
            self._ready.set_result(WorkerInfo.from_message(message["info"]))
        elif event == EVENT_FAILED and not self._ready.done():
            self._ready.set_exception(WorkerFailed.from_message(message))
        else:
            reply = self._pending.get(message.get("id", -1))
            if reply is not None and not reply.done():
                reply.set_result(message)

    async def _pump(self, stream: asyncio.StreamReader, default_level: int) -> None:
        async for raw in pipe_lines(stream, MAX_LINE_CHARS):
            self._emit(raw, default_level)

    def _emit(self, raw: bytes, default_level: int) -> None:
        level, text = parse_log_line(raw.decode(errors="replace").rstrip("\r"), default_level)
        self._tail.append(text)
        if self._on_log is None:
            logger.log(level, "training process: %s", text)
            return
        try:
            self._on_log(level, text)
        except Exception:
            logger.exception("on_log failed for a line of the training process")

    def _tail_text(self) -> str:
        return "\n".join(self._tail)

    async def _watch(self) -> None:
        """Notice the end of the child, make sure all of it ends, and fail what waits on it."""
        message = "training process stopped"
        if self._proc is not None:
            code = await self._proc.wait()
            if not self._stopping:
                message = _ended(code)
            # Whatever is left (ranks, DataLoader workers, custom code's children) goes too.
            self.kill()
        tasks = [task for task in [self._reader_task, *self._pumps] if task is not None]
        if tasks:
            _, late = await asyncio.wait(tasks, timeout=DRAIN_TIMEOUT)
            for task in late:
                task.cancel()
        if not self._stopping:
            self._failure = WorkerFailed(message, self._tail_text())
        failure = self._failure or WorkerFailed(message)
        if not self._ready.done():
            self._ready.set_exception(failure)
            self._ready.exception()  # retrieved: start() may have stopped waiting for it
        for reply in self._pending.values():
            if not reply.done():
                reply.set_exception(WorkerFailed(failure.message, failure.traceback))
        self._close()
        self._exited.set()

    def _close(self) -> None:
        if self._server is not None:
            self._server.close()
        if self._writer is not None:
            self._writer.close()
        self._remove_folder()

    def _remove_folder(self) -> None:
        """Remove the private folder, then give up its lock (-1: none held, or given up
        already: the kill and the end both come here)."""
        shutil.rmtree(self._folder, ignore_errors=True)
        if self._folder_lock >= 0:
            os.close(self._folder_lock)
            self._folder_lock = -1


def _ended(code: int) -> str:
    """Why the child ended, as the site's status says it. Killed without an abort, most
    often it took more memory than the machine or the service may give (the unit's
    MemoryMax)."""
    if code == -signal.SIGKILL:
        return (
            "training process was killed (SIGKILL): by an abort, or else most often for taking "
            "more memory than the machine or the service's MemoryMax allows (journalctl -k "
            "says)"
        )
    return f"training process exited with code {code}"


def kill_tree(leader: int) -> None:
    """SIGKILL a process group and every descendant of its leader, wherever they moved.

    Descendants are collected before anything dies (orphans would be
    re-parented out of reach), then their process groups and themselves are
    killed; a second pass catches anything started meanwhile.
    """
    for _ in range(2):
        victims = descendants(leader)
        groups = {leader}
        for pid in victims:
            with contextlib.suppress(OSError):
                groups.add(os.getpgid(pid))
        for group in groups:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(group, signal.SIGKILL)
        for pid in victims:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
