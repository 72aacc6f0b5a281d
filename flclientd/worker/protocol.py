"""What the client daemon and its training child say to each other, and how.

Shared by both sides, so it must not import torch: the daemon never does.

Messages are JSON objects, one per line, over a Unix domain socket whose
path the daemon passes in :data:`SOCKET_ENV`. stdin/stdout are left alone:
torch's launchers do not forward stdin, and stdout belongs to the user's
``print``. Nothing is pickled and models never travel over the socket, only
the paths of safetensors files, so every message is small.

Child to parent:
    ``{"event": "ready", "info": {...}}`` once everything is built, or
    ``{"event": "failed", "error": ..., "traceback": ...}`` if building failed;
    then one reply per request: ``{"id": N, "result": {...}}`` or
    ``{"id": N, "error": ..., "traceback": ...}``.

Parent to child:
    ``{"id": N, "op": "train" | "validate" | "stop", "args": {...}}``.

Log lines: the child writes every line of a log record to stderr as
``LOG_MARK <levelno> <text>`` so that the parent can recover the level;
unmarked lines (a user's prints, a crash's traceback) are passed on at a
default level.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from typing import Any

from flcore.configfile import parse_json

SOCKET_ENV = "FLCLIENTD_WORKER_SOCKET"

OP_TRAIN = "train"
OP_VALIDATE = "validate"
OP_STOP = "stop"

EVENT_READY = "ready"
EVENT_FAILED = "failed"

LOG_MARK = "\x1e"
UNMARKED_STDOUT_LEVEL = logging.INFO
UNMARKED_STDERR_LEVEL = logging.WARNING
MAX_MESSAGE_BYTES = 16 * 1024 * 1024
MAX_TRACEBACK_CHARS = 64 * 1024

BEST_LOCAL_MODEL = "best_local_model.safetensors"


@dataclass(frozen=True)
class WorkerInfo:
    """What the child found when it got ready (the ``info`` of the ``ready`` event)."""

    device: str
    gpu_count: int
    world_size: int
    train_samples: int
    val_samples: int

    def as_message(self) -> dict[str, Any]:
        """The ``info`` part of the ``ready`` event."""
        return asdict(self)

    @classmethod
    def from_message(cls, info: dict[str, Any]) -> WorkerInfo:
        """Read the ``info`` part of a ``ready`` event (KeyError, ValueError when malformed)."""
        return cls(
            device=str(info["device"]),
            gpu_count=int(info["gpu_count"]),
            world_size=int(info["world_size"]),
            train_samples=int(info["train_samples"]),
            val_samples=int(info["val_samples"]),
        )


@dataclass(frozen=True)
class WorkResult:
    """The answer to a train or validate request.

    ``num_samples`` is the FedAvg weight after training (the site's training
    samples) and the number of samples validated after validation.
    """

    num_samples: int
    metrics: dict[str, float]

    def as_message(self) -> dict[str, Any]:
        """The ``result`` part of a reply."""
        return {"num_samples": self.num_samples, "metrics": self.metrics}

    @classmethod
    def from_message(cls, result: dict[str, Any]) -> WorkResult:
        """Read the ``result`` part of a reply (KeyError, ValueError when malformed)."""
        metrics = {str(key): float(value) for key, value in (result.get("metrics") or {}).items()}
        return cls(num_samples=int(result["num_samples"]), metrics=metrics)


def encode(message: dict[str, Any]) -> bytes:
    """One message as a line of JSON (NaN metrics allowed, as Python's json writes them)."""
    return json.dumps(message, separators=(",", ":")).encode() + b"\n"


def decode(line: bytes) -> dict[str, Any]:
    """Parse one line; refuses (ValueError) anything but a JSON object of bounded depth."""
    message = parse_json(line, "message", allow_nan=True)
    if not isinstance(message, dict):
        raise ValueError(f"expected a JSON object, got {type(message).__name__}")
    return message


MAX_LEVEL_DIGITS = 3
"""Digits of a log level in a marked line (logging's levels are 0-50)."""


def mark_log_line(levelno: int, text: str) -> str:
    """A log line as the child writes it."""
    return f"{LOG_MARK}{levelno} {text}"


def parse_log_line(line: str, default_level: int) -> tuple[int, str]:
    """The level and text of a line of the child's output. Only a short run of ASCII digits
    is a level: ``isdigit`` also accepts "²", which ``int`` refuses, and an exception here
    would stop the daemon reading the child's output, until the child blocked writing."""
    if line.startswith(LOG_MARK):
        level, _, text = line[len(LOG_MARK) :].partition(" ")
        if level.isascii() and level.isdigit() and len(level) <= MAX_LEVEL_DIGITS:
            return int(level), text
    return default_level, line


def error_fields(message: str, traceback: str, disk_fault: str = "") -> dict[str, str]:
    """The error part of a reply, with the traceback cut to a bounded size; ``disk_fault``
    says what is wrong with the disk when that is the cause (the daemon pauses then)."""
    if len(traceback) > MAX_TRACEBACK_CHARS:
        traceback = "...\n" + traceback[-MAX_TRACEBACK_CHARS:]
    fields = {"error": message, "traceback": traceback}
    if disk_fault:
        fields["disk_fault"] = disk_fault
    return fields
