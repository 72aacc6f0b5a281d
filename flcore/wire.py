"""Conversions between flcore's types and the generated protobuf messages.

The one serde module: domain code works with flcore dataclasses and never
imports ``*_pb2``; servicers, the client session and the admin client call
these functions at the edge.
"""

from __future__ import annotations

from collections.abc import Iterator

from flcore.proto.gen import flstack_common_pb2 as common_pb2
from flcore.tensorfile import Manifest, TensorFile, TensorFileError, TensorSpec

MAX_TENSORS = 100_000


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
    specs = tuple(TensorSpec(t.name, t.dtype, tuple(t.shape)) for t in message.tensors)
    for spec in specs:
        spec.check()
    if len({s.name for s in specs}) != len(specs):
        raise TensorFileError("manifest names a tensor twice")
    manifest = Manifest(specs)
    if manifest.total_bytes != message.total_bytes:
        raise TensorFileError(
            f"manifest declares {message.total_bytes} bytes but its tensors add up to "
            f"{manifest.total_bytes}"
        )
    return manifest


def tensor_chunks(model: TensorFile) -> Iterator[common_pb2.TensorChunk]:
    """The raw bytes of a model file as chunk messages."""
    for name, offset, data in model.iter_chunks():
        yield common_pb2.TensorChunk(name=name, offset=offset, data=data)
