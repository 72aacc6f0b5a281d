"""Experiment tracking with MLflow, for runs whose app asks for it (``"mlflow"`` in
config_fed_server.json).

The server logs each round's global metrics, each site's reported metrics
(as runs nested under the run, tagged with the site) and, when the run
ends, the final and best global models. MLflow is heavy and its tracking
server may be slow or away, so the daemon never imports it: a child process
(:mod:`flserverd.mlflow_child`) does the logging, fed JSON lines through a
bounded queue. Whatever goes wrong there is a warning in the server's log
(and so in the console), never a failed or slower run: when the queue is
full, what does not fit is dropped and said once.

A run the server resumes after a restart goes on logging into the same
MLflow run (the child keeps its id in ``run_N/mlflow_run.json``); a fresh
``start server`` of the same run number starts a new one.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import logging
import sys
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from flcore import status as st
from flcore.federation import (
    MetricsKind,
    MetricsReport,
    SubmitHeader,
    SubmitOutcome,
    UploadKind,
    Verdict,
)
from flcore.feed import Body, RunInfo, Snapshot, ended_on_purpose
from flcore.pipelines import pipe_lines
from flcore.schema import ConfigError
from flcore.serverpaths import tracking_store
from flserverd.server import FLServer

log = logging.getLogger(__name__)

QUEUE_LIMIT = 10_000
"""Messages waiting for the child; a tracking server away for hours loses the newest."""
CLOSE_GRACE_S = 10.0
RECORD_FILE = "mlflow_run.json"
CHILD_MODULE = "flserverd.mlflow_child"
MAX_CHILD_LINE = 64 * 1024
"""A longer line from the MLflow child (a progress bar, a traceback) is read in pieces."""


def end_status(reason: str) -> str:
    """MLflow's word for how a run ended: an admin's abort or shutdown killed it."""
    if reason == st.FINISHED:
        return "FINISHED"
    return "KILLED" if ended_on_purpose(reason) else "FAILED"


@dataclass
class _Tracked:
    """A run being logged."""

    number: int
    num_rounds: int
    last_round: int
    """The newest round already handed to the child."""


class Tracker:
    """The server's side of MLflow tracking: watches the feed and the exchange, feeds the
    child."""

    def __init__(self, server: FLServer, workspace: Path) -> None:
        self._server = server
        self._workspace = workspace
        self._runs: dict[int, _Tracked] = {}
        self._fresh: set[int] = set()
        """Runs seen starting here: they get a new MLflow run, not the recorded one."""
        self._given_up: set[int] = set()
        """Runs whose tracking stopped: tried again only when the run is started again."""
        self._queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(QUEUE_LIMIT)
        self._task: asyncio.Task[None] | None = None
        self._process: asyncio.subprocess.Process | None = None
        self._dropped = False

    # ------------------------------------------------------------------ feed

    def seen(self, body: Body) -> None:
        """Start, follow and end the MLflow run of a tracked run."""
        if isinstance(body, Snapshot):
            self._follow(body.run)
        elif isinstance(body, RunInfo):
            self._follow(body)

    def _follow(self, run: RunInfo) -> None:
        number = run.run_number
        if run.server_status == st.STARTING:
            self._fresh.add(number)
            self._given_up.discard(number)
            self._runs.pop(number, None)
            return
        tracked = self._runs.get(number)
        if tracked is None and run.server_status == st.STARTED:
            tracked = self._begin(run)
        if tracked is None:
            return
        for record in run.history:
            if record.round > tracked.last_round:
                tracked.last_round = record.round
                self._send(
                    op="round",
                    run=number,
                    round=record.round,
                    metrics=record.metrics,
                    clients=record.clients,
                    seconds=record.seconds,
                    outliers=record.outliers,
                )
        if run.server_status == st.STOPPED:
            del self._runs[number]
            store = self._server.store
            self._send(
                op="end",
                run=number,
                status=end_status(run.reason),
                best=run.best_metric,
                models=[str(store.global_model(number)), str(store.best_model(number))],
            )

    def _begin(self, run: RunInfo) -> _Tracked | None:
        training = self._server.training_for(run.run_number)
        settings = training.config.mlflow if training is not None else None
        number = run.run_number
        if training is None or settings is None or number in self._given_up:
            return None
        if importlib.util.find_spec("mlflow") is None:
            self._given_up.add(number)
            log.warning(
                "run %d: its app asks for MLflow tracking, but mlflow is not installed on the "
                "server (pip install 'flstack[mlflow]'); the run goes on without it",
                number,
            )
            return None
        try:
            uri = tracking_store(settings.tracking_uri, self._workspace)
        except ConfigError as exc:  # an app deployed before the server checked its store
            self._given_up.add(number)
            log.warning("run %d: not logged to MLflow: %s; the run goes on without it", number, exc)
            return None
        resumed = number not in self._fresh
        self._fresh.discard(number)
        done = [r.round for r in run.history] if resumed else []
        tracked = _Tracked(number, run.num_rounds, max(done, default=-1))
        self._runs[number] = tracked
        config = training.config
        self._send(
            op="start",
            run=number,
            tracking_uri=uri,
            experiment=settings.experiment or run.app or "flstack",
            run_name=f"run_{number}",
            resume=resumed,
            record=str(self._server.store.run_dir(number) / RECORD_FILE),
            tags={
                "flstack.project": self._server.startup.project,
                "flstack.run_number": str(number),
                "flstack.app": run.app,
            },
            params={
                "app": run.app,
                "start_round": config.start_round,
                "num_rounds": config.num_rounds,
                "min_num_clients": config.min_num_clients,
                "max_num_clients": config.max_num_clients,
                "wait_after_min_clients": config.wait_after_min_clients,
                "validation_metric": config.validation_metric,
                "metric_mode": config.metric_mode,
            },
        )
        log.info("run %d: logging to MLflow at %s", number, _shown(uri))
        return tracked

    # ------------------------------------------------------------------ exchange

    def upload_judged(self, instance: str, header: SubmitHeader | None, verdict: Verdict) -> None:
        """A site's metrics of a round arrive with its update."""
        if (
            header is not None
            and header.kind is UploadKind.UPDATE
            and verdict.outcome is SubmitOutcome.ACCEPTED
            and header.run_number in self._runs
            and header.metrics
        ):
            self._site(instance, header.run_number, header.round, header.metrics)

    def report_judged(self, instance: str, report: MetricsReport, verdict: Verdict) -> None:
        """A site's validation of the final model."""
        if (
            report.kind is MetricsKind.GLOBAL_VALIDATION
            and verdict.outcome is SubmitOutcome.ACCEPTED
            and report.run_number in self._runs
            and report.metrics
        ):
            self._site(instance, report.run_number, report.round, report.metrics)

    def moved(self, outward: bool, what: str, size: int) -> None:
        """Bytes are the metrics endpoint's business."""

    def stalled(self, kind: UploadKind) -> None:
        """So are stalled transfers."""

    def _site(
        self, instance: str, number: int, round_number: int, metrics: dict[str, float]
    ) -> None:
        self._send(
            op="site",
            run=number,
            site=instance,
            round=round_number,
            metrics=metrics,
            time=time.time(),
        )

    # ------------------------------------------------------------------ the child

    def _send(self, **message: Any) -> None:
        try:
            self._queue.put_nowait(message)
        except asyncio.QueueFull:
            if not self._dropped:
                log.warning(
                    "MLflow tracking falls behind (%d messages wait): newer rounds are not "
                    "logged to MLflow; the run itself goes on",
                    QUEUE_LIMIT,
                )
            self._dropped = True
            return
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._feed_child())

    async def _feed_child(self) -> None:
        """Start the child and hand it the queue until it ends (then tracked runs stop)."""
        try:
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                CHILD_MODULE,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                start_new_session=True,
            )
        except OSError as exc:
            self._give_up(f"cannot start its process: {exc.strerror or exc}")
            return
        self._process = process
        assert process.stdin is not None and process.stdout is not None
        assert process.stderr is not None
        last_words: deque[str] = deque(maxlen=5)
        readers = [
            asyncio.ensure_future(self._said(process.stdout)),
            asyncio.ensure_future(_keep_tail(process.stderr, last_words)),
        ]
        try:
            while True:
                message = await self._queue.get()
                process.stdin.write((json.dumps(message) + "\n").encode())
                await process.stdin.drain()
                if message["op"] == "close":
                    break
        except (BrokenPipeError, ConnectionResetError):
            pass
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            process.stdin.close()
        code = await process.wait()
        explained = (await asyncio.gather(*readers, return_exceptions=True))[0] is True
        self._process = None
        if code != 0 and not explained:
            self._give_up((" ".join(last_words) or f"exit code {code}")[-500:])
        else:
            self._give_up("")

    def _give_up(self, why: str) -> None:
        """The child is gone: the runs it logged are not tracked any more."""
        if why and self._runs:
            log.warning("MLflow tracking stopped (%s); the run goes on without it", why)
        self._given_up.update(self._runs)
        self._runs.clear()
        while not self._queue.empty():
            self._queue.get_nowait()

    async def _said(self, stdout: asyncio.StreamReader) -> bool:
        """The child's own words for the server's log; True when it said why it stopped."""
        fatal = False
        async for raw in pipe_lines(stdout, MAX_CHILD_LINE):
            try:
                said = json.loads(raw)
                level, text = str(said["level"]), str(said["message"])[:2000]
            except (ValueError, KeyError, TypeError):
                continue
            fatal = fatal or level == "fatal"
            log.log(logging.INFO if level == "info" else logging.WARNING, "MLflow: %s", text)
        return fatal

    async def close(self) -> None:
        """Let the child log what it has (a few seconds at most), then end it."""
        task = self._task
        if task is None or task.done():
            return
        with contextlib.suppress(asyncio.QueueFull):
            self._queue.put_nowait({"op": "close"})
        done, _ = await asyncio.wait({task}, timeout=CLOSE_GRACE_S)
        if not done:
            log.warning("MLflow tracking did not finish within %gs; stopped", CLOSE_GRACE_S)
            if self._process is not None:
                with contextlib.suppress(ProcessLookupError):
                    self._process.kill()
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def _keep_tail(stream: asyncio.StreamReader, tail: deque[str]) -> None:
    """Keep the child's last lines of stderr (MLflow's own chatter) for a warning."""
    async for raw in pipe_lines(stream, MAX_CHILD_LINE):
        line = raw.decode(errors="replace").strip()
        if line:
            tail.append(line[:500])
            log.debug("MLflow child: %s", line)


def _shown(uri: str) -> str:
    """A tracking URI for the log, without a query (it might carry a token)."""
    parts = urlsplit(uri)
    return parts._replace(query="", fragment="").geturl()
