"""The server's serde edge for the federation service: protobuf in, flcore records out,
and back (the feed's conversions are in flcore.feedwire, shared ones in flcore.wire).

Everything a client controls is bounded here, before the server stores or
relays it; enums are checked (an unknown value raises WireError).
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Any

from flcore.compression import WireChunk
from flcore.configfile import MAX_DEPTH, parse_json
from flcore.federation import (
    ClientHeartbeat,
    Closed,
    Command,
    CommandResult,
    Downward,
    Hello,
    LogBatch,
    MachineInfo,
    MetricsReport,
    ModelRequest,
    RunEnded,
    StatusChanged,
    SubmitHeader,
    TaskOffer,
    Unreadable,
    UploadKind,
    Upward,
    Verdict,
)
from flcore.feed import MAX_LABEL, MAX_TEXT, MAX_TRACEBACK, LogEntry, clip, clip_end
from flcore.proto.gen import flstack_common_pb2 as common_pb2
from flcore.proto.gen import flstack_federation_pb2 as fed_pb2
from flcore.schema import ConfigError
from flcore.status import ClientStatus
from flcore.wire import (
    COMPRESSIONS,
    METRICS_KINDS,
    MODEL_KINDS,
    SUBMIT_OUTCOMES,
    TASK_KINDS,
    UPLOAD_KINDS,
    chunk_from_proto,
    enum_from_proto,
    manifest_from_proto,
)

MAX_LOG_BATCH = 500
MAX_OWNER = 128
MAX_VALIDATION_ERROR = 2000
MAX_RESULT_JSON = 64 * 1024
"""A command result's data: what check_status reports is a few hundred bytes; one reply
carries every client's, so each must stay small."""
MAX_STATUS = 64


def status_from_proto(message: fed_pb2.ClientStatus) -> ClientStatus:
    """A client's self-report, with its free text bounded."""
    return ClientStatus(
        status=message.status[:MAX_STATUS],
        run_number=message.run_number,
        round=message.round,
        samples=message.samples,
        error=clip(message.error, MAX_TEXT),
        traceback=clip_end(message.traceback, MAX_TRACEBACK),
        app=message.app[:MAX_LABEL],
        gpus_in_use=message.gpus_in_use,
        cross_validate=message.cross_validate,
        detail=message.detail[:MAX_TEXT],
    )


def machine_from_proto(info: fed_pb2.ClientInfo) -> MachineInfo:
    """What a client says about its machine."""
    return MachineInfo(
        device=info.device[:MAX_LABEL] or "unknown",
        gpu_count=info.gpu_count,
        hostname=info.hostname[: 2 * MAX_LABEL],
        version=info.version[:64],
        pid=info.pid,
    )


LOG_BEHIND_S = 30 * 86400.0
LOG_AHEAD_S = 60.0
"""How far from the server's clock a site's log line may be dated: lines a site kept while
it was away may be old, but the console orders lines by time, so one dated ahead would stay
below every later line, and a NaN or year 30,000,000 is no time to draw."""


def log_from_proto(record: common_pb2.LogRecord, source: str, now: float) -> LogEntry:
    """A forwarded log line, bounded, with the source the server knows it by; dated ``now``
    (when it arrived) where the site's time cannot be right."""
    sane = now - LOG_BEHIND_S <= record.time <= now + LOG_AHEAD_S
    return LogEntry(
        record.time if sane else now,
        record.level[:16],
        record.logger[:MAX_LABEL],
        clip(record.message, MAX_TEXT),
        source,
    )


SITE_DATA_DEPTH = MAX_DEPTH - 4
"""How deep a site's result data may nest: a reply to admins carries it a few levels down
(``{"clients": {instance: data}}``), and a reply deeper than any JSON may be is unreadable,
so one site nested to the limit blanked every site's data in it."""


def _result_data(data_json: str) -> dict[str, Any]:
    """The JSON part of a command result; a client that sends anything but an object, more
    than :data:`MAX_RESULT_JSON`, or text that is no Unicode (an escaped lone surrogate,
    which no reply to an admin could then carry), sends nothing."""
    if len(data_json) > MAX_RESULT_JSON:
        return {}
    try:
        data = (
            parse_json(data_json, "command result", SITE_DATA_DEPTH, allow_nan=True)
            if data_json
            else {}
        )
        json.dumps(data, ensure_ascii=False).encode()
    except (ConfigError, UnicodeEncodeError):
        return {}
    return data if isinstance(data, dict) else {}


def upward_from_proto(message: fed_pb2.ClientMessage, source: str) -> Upward | Unreadable:
    """A message on a client's control stream (``source``: the instance it comes from);
    Unreadable (with the reason) for one this server does not know, which still counts
    against the site's message rate."""
    body = message.WhichOneof("body")
    if body == "hello":
        return Hello(message.hello.token, status_from_proto(message.hello.status))
    if body == "heartbeat":
        return ClientHeartbeat(status_from_proto(message.heartbeat.status))
    if body == "status":
        return StatusChanged(status_from_proto(message.status))
    if body == "result":
        result = message.result
        return CommandResult(
            result.command_id,
            result.ok,
            clip(result.text, MAX_TEXT),
            _result_data(result.data_json),
        )
    if body == "logs":
        records = message.logs.records[:MAX_LOG_BATCH]
        # A count of lines the client dropped: never below none (a peer's int64).
        dropped = max(0, message.logs.dropped)
        now = time.time()
        return LogBatch(tuple(log_from_proto(r, source, now) for r in records), dropped)
    return Unreadable("a control-stream message with no body this server knows")


class _LastCommand:
    """The message of the last command converted, kept for the same :class:`Command` object.

    A fan-out (:func:`flserverd.links.call_all`) queues one ``Command`` on
    every link, and each stream's writer converts what it takes from its
    queue: 1,000 conversions of one command, ~25 µs each. gRPC serializes
    what a handler yields and never changes it, so the streams can share
    one message. The key is the object itself (``is``), never its id alone,
    so a new command, even an equal one, gets its own message.
    """

    command: Command | None = None
    message = fed_pb2.ServerMessage()


def _command_to_proto(command: Command) -> fed_pb2.ServerMessage:
    if _LastCommand.command is not command:
        _LastCommand.message = fed_pb2.ServerMessage(
            command=fed_pb2.ServerCommand(
                command_id=command.command_id, name=command.name, args_json=json.dumps(command.args)
            )
        )
        _LastCommand.command = command
    return _LastCommand.message


def downward_to_proto(message: Downward) -> fed_pb2.ServerMessage:
    """A message for a client's control stream."""
    if isinstance(message, Command):
        return _command_to_proto(message)
    if isinstance(message, TaskOffer):
        return fed_pb2.ServerMessage(
            task=fed_pb2.TaskOffer(
                run_number=message.run_number,
                round=message.round,
                kind=TASK_KINDS[message.kind],
                model_owners=list(message.owners),
                pending_owners=list(message.pending),
                compression=COMPRESSIONS[message.compression],
            )
        )
    if isinstance(message, RunEnded):
        return fed_pb2.ServerMessage(
            run_ended=fed_pb2.RunEnded(
                run_number=message.run_number,
                server_status=message.server_status,
                reason=message.reason,
            )
        )
    assert isinstance(message, Closed)
    return fed_pb2.ServerMessage(closed=fed_pb2.Closed(reason=message.reason))


def model_request_from_proto(message: fed_pb2.ModelRequest) -> ModelRequest:
    """A download request; WireError for a model kind this server does not know."""
    return ModelRequest(
        run_number=message.run_number,
        round=message.round,
        kind=enum_from_proto(MODEL_KINDS, message.kind, "model kind"),
        owner=message.owner[:MAX_OWNER],
    )


BEST_LOCAL_OF_DECEMBER = 2
"""What sites of 2026-12-06 and -07 sent for a best local model: UploadKind had given it a
number of its own, which later took back ModelKind's 3 (the number sites before sent)."""


def submit_header_from_proto(message: fed_pb2.SubmitHeader) -> SubmitHeader:
    """What an upload declares; WireError for an unknown kind, TensorFileError for a
    manifest that contradicts itself."""
    return SubmitHeader(
        run_number=message.run_number,
        round=message.round,
        kind=UploadKind.BEST_LOCAL
        if message.kind == BEST_LOCAL_OF_DECEMBER
        else enum_from_proto(UPLOAD_KINDS, message.kind, "upload kind"),
        num_samples=message.num_samples,
        metrics=dict(message.metrics),
        manifest=manifest_from_proto(message.manifest),
    )


async def chunks_from_proto(
    messages: AsyncIterator[fed_pb2.SubmitModelMessage],
) -> AsyncIterator[WireChunk]:
    """The tensor chunks that follow an upload's header (TensorFileError for one in an
    encoding this server does not know)."""
    async for message in messages:
        yield chunk_from_proto(message.chunk)


def metrics_report_from_proto(message: fed_pb2.MetricsReport) -> MetricsReport:
    """A validation report, bounded; WireError for an unknown kind."""
    return MetricsReport(
        run_number=message.run_number,
        round=message.round,
        kind=enum_from_proto(METRICS_KINDS, message.kind, "metrics kind"),
        owner=message.model_owner[:MAX_OWNER],
        metrics=dict(message.metrics),
        num_samples=message.num_samples,
        error=message.error[:MAX_VALIDATION_ERROR],
    )


def verdict_to_proto(verdict: Verdict, current_round: int) -> fed_pb2.SubmitReply:
    """The answer to an upload or a metrics report."""
    return fed_pb2.SubmitReply(
        result=SUBMIT_OUTCOMES[verdict.outcome],
        message=verdict.message,
        current_round=current_round,
    )
