"""Conversions between flcore's types and the generated protobuf messages, shared by
both daemons' serde edges (``flserverd/serde.py``, ``flclientd/serde.py``).

Domain code works with flcore dataclasses and never imports ``*_pb2``. Enums
read from the wire go through :func:`enum_from_proto`: proto3 lets any
number through, so a value this side does not know is refused with a reason
instead of being read as a default.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator, Mapping
from typing import Protocol, TypeVar

from flcore.compression import WireChunk, WireCompression, encoded_chunks
from flcore.federation import MetricsKind, ModelKind, SubmitOutcome, TaskKind, UploadKind
from flcore.proto.gen import flstack_common_pb2 as common_pb2
from flcore.proto.gen import flstack_federation_pb2 as fed_pb2
from flcore.tensorfile import Manifest, TensorFile, TensorFileError, TensorSpec

MAX_TENSORS = 100_000

UPLOAD_TURN_KEY = "flstack-upload-turn"
"""Initial-metadata key of an upload's go: the server gives it, with :data:`UPLOAD_TURN_GO`,
when the upload may send its chunks (``ClientLoginReply.upload_turns``)."""
UPLOAD_TURN_GO = "go"

E = TypeVar("E", bound=enum.Enum)


class WireError(ValueError):
    """A peer sent a message this side cannot read; the message says what was wrong."""


TASK_KINDS: Mapping[TaskKind, fed_pb2.TaskKind.ValueType] = {
    TaskKind.TRAIN: fed_pb2.TASK_KIND_TRAIN,
    TaskKind.VALIDATE_GLOBAL: fed_pb2.TASK_KIND_VALIDATE_GLOBAL,
    TaskKind.CROSS_VALIDATE: fed_pb2.TASK_KIND_CROSS_VALIDATE,
}
MODEL_KINDS: Mapping[ModelKind, fed_pb2.ModelKind.ValueType] = {
    ModelKind.GLOBAL: fed_pb2.MODEL_KIND_GLOBAL,
    ModelKind.BEST_GLOBAL: fed_pb2.MODEL_KIND_BEST_GLOBAL,
    ModelKind.LOCAL: fed_pb2.MODEL_KIND_LOCAL,
}
UPLOAD_KINDS: Mapping[UploadKind, fed_pb2.UploadKind.ValueType] = {
    UploadKind.UPDATE: fed_pb2.UPLOAD_KIND_UPDATE,
    UploadKind.BEST_LOCAL: fed_pb2.UPLOAD_KIND_BEST_LOCAL,
}
METRICS_KINDS: Mapping[MetricsKind, fed_pb2.MetricsKind.ValueType] = {
    MetricsKind.GLOBAL_VALIDATION: fed_pb2.METRICS_KIND_GLOBAL_VALIDATION,
    MetricsKind.CROSS_VALIDATION: fed_pb2.METRICS_KIND_CROSS_VALIDATION,
}
SUBMIT_OUTCOMES: Mapping[SubmitOutcome, fed_pb2.SubmitResult.ValueType] = {
    SubmitOutcome.ACCEPTED: fed_pb2.SUBMIT_RESULT_ACCEPTED,
    SubmitOutcome.DUPLICATE: fed_pb2.SUBMIT_RESULT_DUPLICATE,
    SubmitOutcome.LATE: fed_pb2.SUBMIT_RESULT_LATE,
    SubmitOutcome.POSTPONED: fed_pb2.SUBMIT_RESULT_POSTPONED,
    SubmitOutcome.REJECTED: fed_pb2.SUBMIT_RESULT_REJECTED,
}

COMPRESSIONS: Mapping[WireCompression, common_pb2.WireCompression.ValueType] = {
    WireCompression.NONE: common_pb2.WIRE_COMPRESSION_NONE,
    WireCompression.BF16: common_pb2.WIRE_COMPRESSION_BF16,
    WireCompression.FP16: common_pb2.WIRE_COMPRESSION_FP16,
    WireCompression.INT8: common_pb2.WIRE_COMPRESSION_INT8,
}


def enum_from_proto(table: Mapping[E, int], value: int, what: str) -> E:
    """The member of ``table`` that ``value`` stands for; WireError for any other number."""
    for member, number in table.items():
        if number == value:
            return member
    known = ", ".join(member.value for member in table)
    raise WireError(f"unknown {what} {value} (this side knows {known})")


def manifest_to_proto(manifest: Manifest) -> common_pb2.ModelManifest:
    """Describe a model for the other side."""
    return common_pb2.ModelManifest(
        tensors=[
            common_pb2.TensorSpec(name=t.name, dtype=t.dtype, shape=list(t.shape))
            for t in manifest.tensors
        ],
        total_bytes=manifest.total_bytes,
    )


def manifest_from_proto(message: common_pb2.ModelManifest) -> Manifest:
    """Read a declared manifest, refusing anything inconsistent before allocation."""
    if len(message.tensors) > MAX_TENSORS:
        raise TensorFileError(f"manifest declares {len(message.tensors)} tensors, too many")
    manifest = Manifest(tuple(TensorSpec(t.name, t.dtype, tuple(t.shape)) for t in message.tensors))
    manifest.check()
    if manifest.total_bytes != message.total_bytes:
        raise TensorFileError(
            f"manifest declares {message.total_bytes} bytes but its tensors add up to "
            f"{manifest.total_bytes}"
        )
    return manifest


def chunk_to_proto(chunk: WireChunk) -> common_pb2.TensorChunk:
    """One tensor chunk as it travels."""
    return common_pb2.TensorChunk(
        name=chunk.name,
        offset=chunk.offset,
        data=chunk.data,
        encoding=COMPRESSIONS[chunk.encoding],
        scale=chunk.scale,
        zero_point=chunk.zero_point,
    )


class CarriesChunk(Protocol):
    """A message with a ``chunk`` field (an upload's or a download's)."""

    @property
    def chunk(self) -> common_pb2.TensorChunk:
        """The tensor chunk it carries."""


M = TypeVar("M", bound=CarriesChunk)


def with_chunk(message: M, chunk: WireChunk) -> M:
    """``message`` carrying ``chunk``, its fields set in place.

    protobuf (upb) copies a submessage given to a constructor about 50 times
    more slowly than it sets the same fields (5.5 ms against 0.1 ms per MiB
    chunk, docs/benchmarks.md section 12), so chunk messages are never built
    as ``Message(chunk=...)``.
    """
    target = message.chunk
    target.name = chunk.name
    target.offset = chunk.offset
    target.data = chunk.data
    target.encoding = COMPRESSIONS[chunk.encoding]
    target.scale = chunk.scale
    target.zero_point = chunk.zero_point
    return message


def chunk_from_proto(message: common_pb2.TensorChunk) -> WireChunk:
    """A received tensor chunk; TensorFileError for an encoding this side does not know (the
    model it belongs to cannot be used)."""
    try:
        encoding = enum_from_proto(COMPRESSIONS, message.encoding, "chunk encoding")
    except WireError as exc:
        raise TensorFileError(f"tensor {message.name[:80]!r}: {exc}") from None
    return WireChunk(
        message.name, message.offset, message.data, encoding, message.scale, message.zero_point
    )


def tensor_chunks(
    model: TensorFile, compression: WireCompression = WireCompression.NONE
) -> Iterator[common_pb2.TensorChunk]:
    """A model file as chunk messages, floating-point chunks compressed as asked."""
    for chunk, _ in encoded_chunks(model, compression):
        yield chunk_to_proto(chunk)
