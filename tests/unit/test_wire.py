"""flcore.wire: manifests and chunks on the wire, refused before anything is allocated."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import safetensors.numpy

from flcore import wire
from flcore.compression import WireChunk, WireCompression
from flcore.proto.gen import flstack_common_pb2 as common_pb2
from flcore.proto.gen import flstack_federation_pb2 as fed_pb2
from flcore.tensorfile import Manifest, SpoolWriter, TensorFile, TensorFileError, TensorSpec

MANIFEST = Manifest(
    (
        TensorSpec("layer.weight", "F32", (3, 4)),
        TensorSpec("layer.bias", "BF16", (3,)),
        TensorSpec("steps", "I64", ()),
        TensorSpec("empty", "F16", (0, 2)),
    )
)


def _proto(specs: list[tuple[str, str, list[int]]], total: int) -> common_pb2.ModelManifest:
    return common_pb2.ModelManifest(
        tensors=[common_pb2.TensorSpec(name=n, dtype=d, shape=s) for n, d, s in specs],
        total_bytes=total,
    )


def test_manifest_round_trip() -> None:
    message = wire.manifest_to_proto(MANIFEST)
    assert message.total_bytes == 48 + 6 + 8
    assert [t.name for t in message.tensors] == [t.name for t in MANIFEST.tensors]
    assert list(message.tensors[0].shape) == [3, 4]
    parsed = wire.manifest_from_proto(
        common_pb2.ModelManifest.FromString(message.SerializeToString())
    )
    assert parsed == MANIFEST


@pytest.mark.parametrize("declared", [0, 47, 63, 10**15, -1])
def test_total_bytes_mismatch_refused(declared: int) -> None:
    message = _proto([("a", "F32", [4, 4]), ("b", "I8", [2])], declared)
    with pytest.raises(TensorFileError, match=f"declares {declared} bytes .* add up to 66"):
        wire.manifest_from_proto(message)


def test_duplicate_names_refused() -> None:
    message = _proto([("a", "F32", [1]), ("b", "F32", [1]), ("a", "F32", [1])], 12)
    with pytest.raises(TensorFileError, match="names a tensor twice"):
        wire.manifest_from_proto(message)


@pytest.mark.parametrize("dtype", ["F8", "f32", "", "FLOAT", "C64"])
def test_unknown_dtype_refused(dtype: str) -> None:
    message = _proto([("a", "F32", [1]), ("x", dtype, [2])], 12)
    with pytest.raises(TensorFileError, match=f"tensor 'x': unknown dtype {dtype!r}"):
        wire.manifest_from_proto(message)


@pytest.mark.parametrize("shape", [[-1], [4, -2], [-(2**40), -(2**40)]])
def test_negative_dims_refused(shape: list[int]) -> None:
    # A product of two negatives is positive: the check must look at each dimension.
    message = _proto([("x", "F32", shape)], 0)
    with pytest.raises(TensorFileError, match="negative dimension"):
        wire.manifest_from_proto(message)


def _many(count: int) -> common_pb2.ModelManifest:
    """A manifest of ``count`` one-byte tensors, built from bytes (fast for 100k tensors)."""
    raw = b"".join(
        common_pb2.ModelManifest(
            tensors=[common_pb2.TensorSpec(name=f"t{i}", dtype="U8", shape=[1])]
        ).SerializeToString()
        for i in range(count)
    )
    raw += common_pb2.ModelManifest(total_bytes=count).SerializeToString()
    return common_pb2.ModelManifest.FromString(raw)


def test_too_many_tensors_refused() -> None:
    count = wire.MAX_TENSORS + 1
    message = _many(count)
    assert len(message.tensors) == count
    with pytest.raises(TensorFileError, match=f"{count} tensors, too many"):
        wire.manifest_from_proto(message)


def test_max_tensors_accepted() -> None:
    count = wire.MAX_TENSORS
    manifest = wire.manifest_from_proto(_many(count))
    assert len(manifest.tensors) == count
    assert manifest.total_bytes == count


def test_empty_manifest_accepted() -> None:
    assert wire.manifest_from_proto(_proto([], 0)) == Manifest(())


def test_tensor_chunks_rebuild_the_file(tmp_path: Path) -> None:
    source = tmp_path / "m.safetensors"
    values: dict[str, np.ndarray[Any, Any]] = {
        "a": np.arange(300_000, dtype=np.float32),
        "b": np.arange(7, dtype=np.int16),
    }
    safetensors.numpy.save_file(values, source)
    model = TensorFile(source)
    chunks = list(wire.tensor_chunks(model))
    assert len(chunks) >= 2  # 1.2 MB does not fit one chunk
    assert all(len(c.data) <= 1024 * 1024 for c in chunks)

    declared = wire.manifest_from_proto(wire.manifest_to_proto(model.manifest))
    writer = SpoolWriter(tmp_path / "copy.safetensors", declared)
    for chunk in chunks:
        received = common_pb2.TensorChunk.FromString(chunk.SerializeToString())
        writer.write(received.name, received.offset, received.data)
    loaded = safetensors.numpy.load_file(writer.finish().path)
    np.testing.assert_array_equal(loaded["a"], values["a"])
    np.testing.assert_array_equal(loaded["b"], values["b"])


@pytest.mark.parametrize("container", [fed_pb2.SubmitModelMessage, fed_pb2.ModelMessage])
def test_a_chunk_set_in_place_travels_as_one_given_to_the_constructor(container: Any) -> None:
    chunk = WireChunk("layer.weight", 4096, b"\x01\x02" * 8, WireCompression.INT8, 0.5, 3)
    message = wire.with_chunk(container(), chunk)
    assert message.WhichOneof("body") == "chunk"
    expected = container(chunk=wire.chunk_to_proto(chunk)).SerializeToString()
    assert message.SerializeToString() == expected
    assert wire.chunk_from_proto(container.FromString(expected).chunk) == chunk
