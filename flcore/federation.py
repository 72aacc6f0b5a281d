"""What the server and client daemons say to each other, as plain data.

Both daemons work with these records only. Their serde edges
(``flserverd/serde.py``, ``flclientd/serde.py``, with the enum tables of
:mod:`flcore.wire`) turn them into protobuf messages and back, so the
meaning of a field lives here once and the wire format in one place per side.

The control stream (the ``Control`` RPC) carries :data:`Upward` messages
from a client and :data:`Downward` messages from the server; models, apps
and metrics move over their own calls.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from flcore.compression import WireCompression
from flcore.feed import LogEntry
from flcore.status import ClientStatus
from flcore.tensorfile import Manifest

GLOBAL_OWNER = "global"
"""The owner name of the best global model in cross-site validation."""
MAX_RUN_NUMBER = 999_999_999
"""Run numbers go from 1 to this, nine digits: they name folders on the server and at every
site, and are SQLite integers."""


class SubmitOutcome(enum.StrEnum):
    """What became of an uploaded model or a metrics report."""

    ACCEPTED = "accepted"
    DUPLICATE = "duplicate"
    LATE = "late"
    REJECTED = "rejected"
    POSTPONED = "postponed"
    """Not stored now (the server's disk is full); the server offers the round again once it
    can take updates, and the client then sends the same update again."""


class Verdict(NamedTuple):
    """The server's answer to an upload: the outcome and why, in words for people."""

    outcome: SubmitOutcome
    message: str


class TaskKind(enum.Enum):
    """What a client is asked to do next."""

    TRAIN = "train"
    VALIDATE_GLOBAL = "validate global"
    CROSS_VALIDATE = "cross-validate"


class ModelKind(enum.Enum):
    """Which model a client downloads."""

    GLOBAL = "global"
    """The global model a round (or the final validation) starts from."""
    BEST_GLOBAL = "best global"
    LOCAL = "local"
    """A participant's best local model, for cross-site validation."""


class UploadKind(enum.Enum):
    """What a client uploads."""

    UPDATE = "update"
    """A training update for a round."""
    BEST_LOCAL = "best local"
    """The site's best local model, for cross-site validation."""


class MetricsKind(enum.Enum):
    """What a metrics report is about."""

    GLOBAL_VALIDATION = "global validation"
    CROSS_VALIDATION = "cross validation"


@dataclass
class MachineInfo:
    """What a client says about its machine at login."""

    device: str = "unknown"
    gpu_count: int = 0
    hostname: str = ""
    version: str = ""
    pid: int = 0


@dataclass(frozen=True)
class Login:
    """What the server granted at login."""

    token: str
    instance: str
    resumed: bool
    upload_turns: bool = False
    """The server gives uploads turns (:data:`flcore.wire.UPLOAD_TURN_KEY`)."""


@dataclass(frozen=True)
class ModelRequest:
    """A download: a round's global model, or a model to cross-validate."""

    run_number: int
    round: int
    kind: ModelKind
    owner: str = ""


@dataclass(frozen=True)
class SubmitHeader:
    """What an upload declares before its bytes."""

    run_number: int
    round: int
    kind: UploadKind
    num_samples: int
    metrics: dict[str, float]
    manifest: Manifest


@dataclass(frozen=True)
class MetricsReport:
    """A validation: of the final global model, or one cell of the cross-site matrix."""

    run_number: int
    round: int
    kind: MetricsKind
    owner: str
    metrics: dict[str, float]
    num_samples: int
    error: str = ""


# ---------------------------------------------------------------- control stream, downward


@dataclass(frozen=True)
class TaskOffer:
    """Work offered to clients of a run; for cross-site validation, the models ready
    (``owners``) and those still expected (``pending``)."""

    run_number: int
    round: int
    kind: TaskKind
    owners: tuple[str, ...] = ()
    pending: tuple[str, ...] = ()
    compression: WireCompression = WireCompression.NONE
    """How a training round's update goes on the wire (its global model comes the same way)."""


@dataclass(frozen=True)
class Command:
    """An admin command for one client."""

    command_id: str
    name: str
    args: dict[str, Any]


@dataclass(frozen=True)
class RunEnded:
    """The server ended a run."""

    run_number: int
    server_status: str
    reason: str


@dataclass(frozen=True)
class Closed:
    """The server ended this client's registration (replaced or removed)."""

    reason: str


@dataclass(frozen=True)
class Unreadable:
    """A message this side could not read, and why; a command's id when it was one,
    so that the admin still gets an answer."""

    reason: str
    command_id: str = ""


Downward = Command | TaskOffer | RunEnded | Closed


# ---------------------------------------------------------------- control stream, upward


@dataclass(frozen=True)
class Hello:
    """The first message of every control stream."""

    token: str
    status: ClientStatus


@dataclass(frozen=True)
class ClientHeartbeat:
    """Sent every ``heartbeat_interval``; carries the status so a lost change heals."""

    status: ClientStatus


@dataclass(frozen=True)
class StatusChanged:
    """The client's status changed."""

    status: ClientStatus


@dataclass(frozen=True)
class CommandResult:
    """A client's answer to a command (``data`` is the JSON part for programs)."""

    command_id: str
    ok: bool
    text: str
    data: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class LogBatch:
    """Forwarded log lines, and how many the client's rate limit dropped before them."""

    records: tuple[LogEntry, ...]
    dropped: int = 0


Upward = Hello | ClientHeartbeat | StatusChanged | CommandResult | LogBatch
