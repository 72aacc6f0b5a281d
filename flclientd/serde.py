"""The client's serde edge: flcore records to protobuf messages, and the server's back.

Only this module and :mod:`flclientd.connection` (the RPC edge) see
generated protobuf; the agent, the uplink and cross-site validation work
with :mod:`flcore.federation` records. Every enum the server sends is
checked: an unknown value raises WireError (or, on the control stream,
becomes :class:`~flcore.federation.Unreadable` with the reason).
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict

from flcore.configfile import parse_json
from flcore.federation import (
    ClientHeartbeat,
    Closed,
    Command,
    CommandResult,
    Downward,
    Hello,
    LogBatch,
    Login,
    MachineInfo,
    MetricsReport,
    ModelRequest,
    RunEnded,
    StatusChanged,
    SubmitHeader,
    TaskOffer,
    Unreadable,
    Upward,
    Verdict,
)
from flcore.feed import MAX_TEXT, clip
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
    WireError,
    enum_from_proto,
    manifest_to_proto,
)

TOKEN_RE = re.compile(r"[A-Za-z0-9_-]{1,256}")
"""What a login token may be: the server issues ``secrets.token_urlsafe(16)`` (22 characters);
one of another shape is no token of an flstack server."""


def machine_to_proto(info: MachineInfo) -> fed_pb2.ClientInfo:
    """What this client says about its machine at login."""
    return fed_pb2.ClientInfo(**asdict(info))


def status_to_proto(status: ClientStatus) -> fed_pb2.ClientStatus:
    """This client's status, as heartbeats, status changes and hellos carry it (its fields
    as they are: each is a plain value, so ``asdict``'s deep copy, at every heartbeat, would
    only cost)."""
    return fed_pb2.ClientStatus(**vars(status))


def login_from_proto(reply: fed_pb2.ClientLoginReply) -> Login:
    """What the server granted at login; WireError for a token that is no short URL-safe
    string: the site keeps it in its state file, which it refuses to read past 1 MiB (a
    megabyte-long token made the site forget its run at its next start)."""
    if not TOKEN_RE.fullmatch(reply.token):
        raise WireError(
            "the server's login reply holds no usable token: a token is 1 to 256 letters, "
            "digits, '-' or '_'"
        )
    return Login(reply.token, reply.instance_name, reply.resumed, reply.upload_turns)


def upward_to_proto(message: Upward) -> fed_pb2.ClientMessage:
    """A message for the control stream."""
    if isinstance(message, Hello):
        hello = fed_pb2.Hello(token=message.token, status=status_to_proto(message.status))
        return fed_pb2.ClientMessage(hello=hello)
    if isinstance(message, ClientHeartbeat):
        heartbeat = fed_pb2.Heartbeat(status=status_to_proto(message.status))
        return fed_pb2.ClientMessage(heartbeat=heartbeat)
    if isinstance(message, StatusChanged):
        return fed_pb2.ClientMessage(status=status_to_proto(message.status))
    if isinstance(message, CommandResult):
        result = fed_pb2.CommandResult(
            command_id=message.command_id,
            ok=message.ok,
            text=message.text,
            data_json=json.dumps(message.data),
        )
        return fed_pb2.ClientMessage(result=result)
    assert isinstance(message, LogBatch)
    records = [
        common_pb2.LogRecord(
            time=x.time, level=x.level, logger=x.logger, message=x.message, source=x.source
        )
        for x in message.records
    ]
    return fed_pb2.ClientMessage(logs=fed_pb2.LogBatch(records=records, dropped=message.dropped))


def _command_from_proto(command: fed_pb2.ServerCommand) -> Command | Unreadable:
    try:
        args = parse_json(command.args_json or "{}", "command arguments")
    except ConfigError:
        args = None
    if not isinstance(args, dict):
        return Unreadable("malformed command arguments", command.command_id)
    return Command(command.command_id, command.name, args)


def downward_from_proto(message: fed_pb2.ServerMessage) -> Downward | Unreadable:
    """A message from the control stream; Unreadable (with the reason) when it cannot be
    read, so that nothing unknown is taken for something known."""
    body = message.WhichOneof("body")
    if body == "command":
        return _command_from_proto(message.command)
    if body == "task":
        task = message.task
        try:
            kind = enum_from_proto(TASK_KINDS, task.kind, "task kind")
            compression = enum_from_proto(COMPRESSIONS, task.compression, "wire compression")
        except WireError as exc:
            return Unreadable(f"task offer for run {task.run_number} ignored: {exc}")
        return TaskOffer(
            task.run_number,
            task.round,
            kind,
            tuple(task.model_owners),
            tuple(task.pending_owners),
            compression,
        )
    if body == "run_ended":
        ended = message.run_ended
        return RunEnded(ended.run_number, ended.server_status, ended.reason)
    if body == "closed":
        return Closed(message.closed.reason)
    return Unreadable("a control-stream message with no body this client knows")


def model_request_to_proto(token: str, request: ModelRequest) -> fed_pb2.ModelRequest:
    """A download request."""
    return fed_pb2.ModelRequest(
        token=token,
        run_number=request.run_number,
        round=request.round,
        kind=MODEL_KINDS[request.kind],
        owner=request.owner,
    )


def submit_header_to_proto(token: str, header: SubmitHeader) -> fed_pb2.SubmitModelMessage:
    """The first message of an upload."""
    return fed_pb2.SubmitModelMessage(
        header=fed_pb2.SubmitHeader(
            token=token,
            run_number=header.run_number,
            round=header.round,
            kind=UPLOAD_KINDS[header.kind],
            num_samples=header.num_samples,
            metrics=header.metrics,
            manifest=manifest_to_proto(header.manifest),
        )
    )


def metrics_report_to_proto(token: str, report: MetricsReport) -> fed_pb2.MetricsReport:
    """A validation report."""
    return fed_pb2.MetricsReport(
        token=token,
        run_number=report.run_number,
        round=report.round,
        kind=METRICS_KINDS[report.kind],
        model_owner=report.owner,
        metrics=report.metrics,
        num_samples=report.num_samples,
        error=report.error,
    )


def verdict_from_proto(reply: fed_pb2.SubmitReply) -> Verdict:
    """The server's verdict on an upload or report; WireError for an outcome this client
    does not know (never read as "rejected" or anything else). The message is cut to what
    the server keeps of an error: the site copies it into its status, which a longer one
    would push past the message limit."""
    outcome = enum_from_proto(SUBMIT_OUTCOMES, reply.result, "submit result")
    return Verdict(outcome, clip(reply.message, MAX_TEXT))
