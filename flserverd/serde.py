"""Server-side conversions between domain views and protobuf messages."""

from __future__ import annotations

import json

from flcore.proto.gen import flstack_admin_pb2 as admin_pb2
from flcore.proto.gen import flstack_common_pb2 as common_pb2
from flcore.proto.gen import flstack_federation_pb2 as fed_pb2
from flcore.status import ClientStatus
from flserverd.crossval import CrossValidationOffer
from flserverd.events import Event, LogLine
from flserverd.links import Closed, Command, Outbound, RunEnded
from flserverd.registry import MachineInfo
from flserverd.training import Offer, TaskKind
from flserverd.views import ClientView, RunView

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


def log_from_proto(record: common_pb2.LogRecord, source: str) -> LogLine:
    """A forwarded log line, bounded."""
    return LogLine(
        record.time, record.level[:16], record.logger[:128], record.message[:MAX_TEXT], source
    )


def log_to_proto(line: LogLine) -> common_pb2.LogRecord:
    """A log line for the console."""
    return common_pb2.LogRecord(
        time=line.time,
        level=line.level,
        logger=line.logger,
        message=line.message,
        source=line.source,
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


def client_to_proto(view: ClientView) -> admin_pb2.ClientState:
    """One row of the console's clients table."""
    return admin_pb2.ClientState(**view.as_dict())


def run_to_proto(view: RunView) -> admin_pb2.RunState:
    """The console's round pane."""
    history = [
        admin_pb2.RoundMetrics(
            round=record["round"],
            metrics=record.get("metrics", {}),
            clients=len(record.get("clients", [])),
            seconds=record.get("duration_s", 0.0),
        )
        for record in view.history
    ]
    return admin_pb2.RunState(
        run_number=view.run_number,
        server_status=view.server_status,
        app=view.app,
        start_round=view.start_round,
        current_round=view.current_round,
        num_rounds=view.num_rounds,
        min_num_clients=view.min_num_clients,
        max_num_clients=view.max_num_clients,
        updates_received=view.updates_received,
        contributed=list(view.contributed),
        awaited=list(view.awaited),
        wait_deadline=view.wait_deadline,
        history=history,
        failed_sites=list(view.failed_sites),
        phase=view.phase,
        best_metric=view.best_metric,
    )


def event_to_proto(event: Event) -> admin_pb2.Event:
    """A bus event for the console."""
    out = admin_pb2.Event(seq=event.seq, time=event.time)
    payload = event.payload
    if event.kind == "client":
        out.client.CopyFrom(client_to_proto(payload))
    elif event.kind == "client_gone":
        out.client_gone.CopyFrom(admin_pb2.ClientGone(instance=payload[0], reason=payload[1]))
    elif event.kind == "run":
        out.run.CopyFrom(run_to_proto(payload))
    elif event.kind == "log":
        out.log.CopyFrom(log_to_proto(payload))
    elif event.kind == "heartbeat":
        out.heartbeat.CopyFrom(admin_pb2.HeartbeatSeen(instance=payload[0], time=payload[1]))
    elif event.kind == "command":
        out.command.CopyFrom(
            admin_pb2.CommandAudit(user=payload[0], line=payload[1], ok=payload[2])
        )
    return out
