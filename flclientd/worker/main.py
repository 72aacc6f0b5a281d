"""The training child's life: connect, build, report ready, serve requests until told to stop.

Every rank runs this. Rank 0 connects to the daemon and reports for all:
a failure on any rank while building is gathered to rank 0 and sent as the
``failed`` event with that rank's traceback. Requests that touch every rank
(train, stop) are passed on from rank 0; validation runs on rank 0 alone.

In a single process a failed request is answered with its error and the
child carries on (a model from another site that does not fit must not end
the run). With several ranks a failure may leave them out of step inside a
collective, so the child exits and the daemon starts a new one.
"""

from __future__ import annotations

import argparse
import logging
import os
import threading
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from flclientd.worker.channel import ParentChannel
from flclientd.worker.logsetup import setup_child_logging
from flclientd.worker.protocol import (
    EVENT_FAILED,
    EVENT_READY,
    OP_STOP,
    OP_TRAIN,
    OP_VALIDATE,
    SOCKET_ENV,
    WorkResult,
    error_fields,
)
from flclientd.worker.ranks import NoGpuError, RankGroup, Ranks, choose_device
from flclientd.worker.workbench import Workbench
from flcore.diskfault import disk_fault
from flcore.schema import ConfigError
from flcore.tensorfile import TensorFileError

logger = logging.getLogger(__name__)

# Failures whose message is written for people; others are put in a sentence that names what
# was raised (the app's own code is the usual source, and its author needs the type).
EXPECTED_ERRORS = (ConfigError, TensorFileError, NoGpuError)


class _StartFailed(Exception):
    """Building failed on some rank; ``fields`` is the error to report."""

    def __init__(self, fields: dict[str, str]) -> None:
        super().__init__(fields["error"])
        self.fields = fields


def _error(exc: BaseException) -> dict[str, str]:
    fault = disk_fault(exc)
    if fault:
        message = f"client {fault}"
    elif isinstance(exc, EXPECTED_ERRORS):
        message = str(exc)
    else:
        detail = f" ({str(exc)[:500]})" if str(exc) else ""
        message = (
            f"the training process stopped on an error it did not expect, "
            f"{type(exc).__name__}{detail}; the traceback shows where"
        )
    return error_fields(message, traceback.format_exc(), fault or "")


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m flclientd.worker")
    parser.add_argument("--app", type=Path, required=True, help="the run's app folder")
    parser.add_argument("--data-root", type=Path, default=None, help="the site's DATA_ROOT")
    parser.add_argument("--work-dir", type=Path, required=True, help="where local models go")
    parser.add_argument("--allow-cpu-multiprocess", action="store_true")
    return parser.parse_args(argv)


def _build(args: argparse.Namespace, ranks: Ranks) -> tuple[Workbench, RankGroup | None]:
    device = choose_device(ranks, args.allow_cpu_multiprocess)
    group = RankGroup(ranks, device) if ranks.distributed else None
    failure: dict[str, str] = {}
    bench: Workbench | None = None
    try:
        bench = Workbench(args.app, args.data_root, args.work_dir, ranks, device)
    except Exception as exc:
        failure = _error(exc)
    if group is not None:
        for rank, status in enumerate(group.exchange(failure)):
            if status:
                prefix = f"rank {rank}: " if rank else ""
                raise _StartFailed({**status, "error": prefix + status["error"]})
    if bench is None:
        raise _StartFailed(failure)
    return bench, group


def _handle(bench: Workbench, request: dict[str, Any]) -> WorkResult:
    op, args = request.get("op"), request.get("args") or {}
    if op == OP_TRAIN:
        return bench.train(
            int(args["round"]), Path(args["global_model"]), Path(args["out"]), int(args["epochs"])
        )
    if op == OP_VALIDATE:
        return bench.validate(Path(args["model"]))
    raise ValueError(f"unknown request {op!r}")


def _serve(bench: Workbench, channel: ParentChannel | None, group: RankGroup | None) -> int:
    while True:
        request = channel.next_request() if channel is not None else None
        if group is not None and (request is None or request.get("op") != OP_VALIDATE):
            request = group.broadcast_json(request)
        assert request is not None
        if request.get("op") == OP_STOP:
            logger.info("stopping on request")
            if channel is not None:
                channel.send({"id": request.get("id"), "result": {}})
                channel.close()
            if group is not None:
                group.close()
            return 0
        try:
            result = _handle(bench, request)
        except Exception as exc:
            if channel is not None:
                channel.send({"id": request.get("id"), **_error(exc)})
            else:
                logger.exception("%s failed", request.get("op"))
            if group is not None:
                return 1
            continue
        if channel is not None:
            channel.send({"id": request.get("id"), "result": result.as_message()})


def _leave_the_report_to_rank_0() -> None:
    """Wait to be stopped, as a rank other than 0 that found too few GPUs.

    Every rank sees the same devices, so rank 0 fails the same check and
    tells the daemon why. A rank that ended first would have torchrun stop
    rank 0 before it could, and the site would only see an exit code.
    """
    logger.info("rank 0 reports the missing GPUs; waiting to be stopped")
    threading.Event().wait()


def main(argv: Sequence[str] | None = None) -> int:
    """Run one rank of the training child; returns its exit code."""
    args = _parse_args(argv)
    ranks = Ranks.from_environment()
    setup_child_logging(ranks.rank)
    channel = ParentChannel(os.environ[SOCKET_ENV]) if ranks.is_main else None
    try:
        bench, group = _build(args, ranks)
    except _StartFailed as exc:
        if channel is not None:
            channel.send({"event": EVENT_FAILED, **exc.fields})
        return 1
    except Exception as exc:
        if channel is not None:
            channel.send({"event": EVENT_FAILED, **_error(exc)})
        elif isinstance(exc, NoGpuError):
            _leave_the_report_to_rank_0()
        else:
            logger.exception("could not start")
        return 1
    if channel is not None:
        channel.send({"event": EVENT_READY, "info": bench.info().as_message()})
    return _serve(bench, channel, group)
