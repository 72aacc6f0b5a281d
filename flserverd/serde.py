"""Server-side conversions of federation messages (the feed's are in flcore.feedwire)."""

from __future__ import annotations

import json

from flcore.feed import LogEntry
from flcore.proto.gen import flstack_common_pb2 as common_pb2
from flcore.proto.gen import flstack_federation_pb2 as fed_pb2
from flcore.status import ClientStatus
from flserverd.crossval import CrossValidationOffer
from flserverd.links import Closed, Command, Outbound, RunEnded
from flserverd.registry import MachineInfo
from flserverd.training import Offer, TaskKind

MAX_TEXT = 4096

_TASK_KINDS = {
    TaskKind.TRAIN: fed_pb2.TASK_KIND_TRAIN,
    TaskKind.VALIDATE_GLOBAL: fed_pb2.TASK_KIND_VALIDATE_GLOBAL,
}


def status_from_proto(message: fed_pb2.ClientStatus) -> ClientStatus:
    """A client's self-report, with its free text bounded."""
    return ClientStatus(
        status=message.status[:64],
        run_number=message.run_number,
        round=message.round,
        samples=message.samples,
        error=message.error[:MAX_TEXT],
        traceback=message.traceback[: 16 * MAX_TEXT],
        app=message.app[:128],
        gpus_in_use=message.gpus_in_use,
        cross_validate=message.cross_validate,
    )


def machine_from_proto(info: fed_pb2.ClientInfo) -> MachineInfo:
    """What a client says about its machine."""
    return MachineInfo(
        device=info.device[:128] or "unknown",
        gpu_count=info.gpu_count,
        hostname=info.hostname[:256],
        version=info.version[:64],
        pid=info.pid,
    )


def log_from_proto(record: common_pb2.LogRecord, source: str) -> LogEntry:
    """A forwarded log line, bounded, with the source the server knows it by."""
    return LogEntry(
        record.time, record.level[:16], record.logger[:128], record.message[:MAX_TEXT], source
    )


def outbound_to_proto(message: Outbound) -> fed_pb2.ServerMessage:
    """A message for a client's Session stream."""
    if isinstance(message, Command):
        return fed_pb2.ServerMessage(
            command=fed_pb2.ServerCommand(
                command_id=message.command_id, name=message.name, args_json=json.dumps(message.args)
            )
        )
    if isinstance(message, CrossValidationOffer):
        return fed_pb2.ServerMessage(
            task=fed_pb2.TaskOffer(
                run_number=message.run_number,
                kind=fed_pb2.TASK_KIND_CROSS_VALIDATE,
                model_owners=list(message.owners),
                pending_owners=list(message.pending),
            )
        )
    if isinstance(message, Offer):
        return fed_pb2.ServerMessage(
            task=fed_pb2.TaskOffer(
                run_number=message.run_number, round=message.round, kind=_TASK_KINDS[message.kind]
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
    return fed_pb2.ServerMessage(closed=fed_pb2.SessionClosed(reason=message.reason))
