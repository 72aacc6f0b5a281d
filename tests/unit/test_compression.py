"""Wire compression of tensor chunks: error bounds of each encoding, the int8 scale's edge
cases, what is never compressed, and the receiver's bounds on what a peer sends."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
import safetensors.numpy

from flcore import wire
from flcore.compression import (
    MAX_DECODED_CHUNK,
    MIN_CHUNK,
    WireChunk,
    WireCompression,
    bf16_bits,
    decode,
    decoded_size,
    encode,
    encoded_chunks,
    receive,
)
from flcore.proto.gen import flstack_common_pb2 as common_pb2
from flcore.tensorfile import Manifest, SpoolWriter, TensorFile, TensorFileError, TensorSpec

Array = npt.NDArray[Any]
NONE, BF16, FP16, INT8 = (
    WireCompression.NONE,
    WireCompression.BF16,
    WireCompression.FP16,
    WireCompression.INT8,
)


def spec_of(values: Array, dtype: str = "F32") -> TensorSpec:
    return TensorSpec("w", dtype, (values.size,))


def round_trip(values: Array, compression: WireCompression) -> tuple[WireChunk, Array]:
    """Encode float32 values and decode them again."""
    spec = spec_of(values)
    chunk = encode(spec, 0, values.astype(np.float32).tobytes(), compression)
    assert decoded_size(spec, chunk) == values.size * 4
    return chunk, np.frombuffer(decode(spec, chunk), dtype=np.float32)


def weights(seed: int = 0, size: int = 50_000) -> Array:
    """Values like a model's: mostly small, some large, some tiny, a few exact zeros."""
    rng = np.random.default_rng(seed)
    values = rng.standard_normal(size) * np.exp(rng.uniform(-12, 4, size))
    values[::97] = 0.0
    return values.astype(np.float32)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_bf16_and_fp16_stay_within_their_rounding_error(seed: int) -> None:
    values = weights(seed)
    chunk, got = round_trip(values, BF16)
    assert chunk.encoding is BF16 and len(chunk.data) == values.size * 2
    assert (np.abs(got - values) <= np.abs(values) * 2.0**-8).all()

    values = values[np.abs(values) < 60_000]
    chunk, got = round_trip(values, FP16)
    assert chunk.encoding is FP16 and len(chunk.data) == values.size * 2
    bound = np.maximum(np.abs(values) * 2.0**-11, 2.0**-25)
    assert (np.abs(got - values) <= bound).all()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_int8_stays_within_half_a_step_and_keeps_zeros(seed: int) -> None:
    values = weights(seed)
    chunk, got = round_trip(values, INT8)
    assert chunk.encoding is INT8 and len(chunk.data) == values.size
    span = max(float(values.max()), 0.0) - min(float(values.min()), 0.0)
    assert chunk.scale >= span / 255
    assert chunk.scale == pytest.approx(span / 255, rel=1e-6)
    error = np.abs(got.astype(np.float64) - values)
    assert (error <= chunk.scale / 2 + np.abs(values) * 2.0**-24).all()
    assert (got[values == 0] == 0).all()


def test_int8_of_one_sided_values_uses_the_whole_range() -> None:
    values = np.linspace(0.5, 2.0, 1000, dtype=np.float32)  # e.g. BatchNorm's running_var
    chunk, got = round_trip(values, INT8)
    assert chunk.zero_point == 0 and chunk.scale == pytest.approx(2.0 / 255, rel=1e-6)
    assert np.abs(got - values).max() <= chunk.scale / 2 * (1 + 1e-6)
    chunk, got = round_trip(-values, INT8)
    assert chunk.zero_point == 255
    assert np.abs(got + values).max() <= chunk.scale / 2 * (1 + 1e-6)


def test_int8_of_an_all_zero_tensor_is_exact() -> None:
    values = np.zeros(1000, dtype=np.float32)
    chunk, got = round_trip(values, INT8)
    assert chunk.encoding is INT8 and chunk.scale == 0.0 and chunk.zero_point == 0
    assert (got == 0).all() and not np.signbit(got).any()


def test_int8_of_a_constant_tensor_is_within_half_a_step() -> None:
    values = np.ones(1000, dtype=np.float32)  # e.g. a fresh BatchNorm weight
    chunk, got = round_trip(values, INT8)
    assert np.abs(got - 1.0).max() <= chunk.scale / 2


def test_int8_of_huge_values_decodes_finite_values_within_the_bound() -> None:
    largest = float(np.finfo(np.float32).max)
    values = np.array([-largest, -1e38, 0.0, 1.0, 3e38, largest], dtype=np.float32)
    chunk, got = round_trip(values, INT8)
    assert chunk.encoding is INT8 and np.isfinite(chunk.scale)
    assert np.isfinite(got).all()
    error = np.abs(got.astype(np.float64) - values.astype(np.float64))
    assert (error <= chunk.scale / 2 * (1 + 1e-6)).all()


def test_int8_of_tiny_values_keeps_their_scale() -> None:
    values = np.array([1e-44, -3e-45, 0.0, 5e-45], dtype=np.float32)  # subnormal float32
    chunk, got = round_trip(values, INT8)
    assert chunk.encoding is INT8 and chunk.scale > 0
    assert np.abs(got - values).max() <= chunk.scale


@pytest.mark.parametrize("compression", [BF16, FP16, INT8])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_values_go_as_stored_and_are_refused_where_checked(
    tmp_path: Path, compression: WireCompression, bad: float
) -> None:
    values = np.array([1.0, bad, 2.0], dtype=np.float32)
    chunk = encode(spec_of(values), 0, values.tobytes(), compression)
    assert chunk.encoding is NONE and chunk.data == values.tobytes()
    spool = SpoolWriter(tmp_path / "u.safetensors", Manifest((spec_of(values),)))
    with pytest.raises(TensorFileError, match="NaN or infinite"):
        receive(spool, chunk)
    spool.discard()


def test_a_nan_sent_compressed_is_refused_after_decoding(tmp_path: Path) -> None:
    """A peer may put a NaN into bfloat16 or half precision bits itself."""
    spec = TensorSpec("w", "F32", (2,))
    for chunk in (
        WireChunk("w", 0, np.array([0x3F80, 0x7FC0], dtype="<u2").tobytes(), BF16),
        WireChunk("w", 0, np.array([1.0, np.inf], dtype="<f2").tobytes(), FP16),
    ):
        spool = SpoolWriter(tmp_path / "u.safetensors", Manifest((spec,)))
        with pytest.raises(TensorFileError, match="NaN or infinite"):
            receive(spool, chunk)
        spool.discard()


def test_values_beyond_half_precision_go_as_stored() -> None:
    values = np.array([1.0, 70_000.0], dtype=np.float32)
    assert encode(spec_of(values), 0, values.tobytes(), FP16).encoding is NONE
    largest = np.array([np.finfo(np.float32).max], dtype=np.float32)
    assert encode(spec_of(largest), 0, largest.tobytes(), BF16).encoding is NONE
    fits = np.array([1.0, 3e38], dtype=np.float32)
    assert encode(spec_of(fits), 0, fits.tobytes(), BF16).encoding is BF16


def test_only_wider_float_tensors_are_compressed() -> None:
    ints = np.arange(10, dtype=np.int64)
    for compression in WireCompression:
        chunk = encode(TensorSpec("n", "I64", (10,)), 0, ints.tobytes(), compression)
        assert chunk.encoding is NONE and chunk.data == ints.tobytes()
    halves = np.linspace(-1, 1, 10).astype(np.float16)
    spec = TensorSpec("h", "F16", (10,))
    assert encode(spec, 0, halves.tobytes(), BF16).encoding is NONE
    assert encode(spec, 0, halves.tobytes(), FP16).encoding is NONE
    assert encode(spec, 0, halves.tobytes(), INT8).encoding is INT8


@pytest.mark.parametrize("dtype", ["F64", "F16", "BF16"])
@pytest.mark.parametrize("compression", [BF16, FP16, INT8])
def test_every_float_dtype_decodes_to_itself(dtype: str, compression: WireCompression) -> None:
    values = np.linspace(-3, 3, 301)
    stored: Array
    if dtype == "BF16":
        stored = bf16_bits(values.astype(np.float32))
        exact = (stored.astype(np.uint32) << 16).view(np.float32).astype(np.float64)
    else:
        stored = values.astype(np.float64 if dtype == "F64" else np.float16)
        exact = stored.astype(np.float64)
    spec = TensorSpec("w", dtype, (values.size,))
    chunk = encode(spec, 0, stored.tobytes(), compression)
    data = decode(spec, chunk)
    assert len(data) == len(stored.tobytes()) == decoded_size(spec, chunk)
    if dtype == "BF16":
        got = (np.frombuffer(data, "<u2").astype(np.uint32) << 16).view(np.float32)
    else:
        got = np.frombuffer(data, dtype=stored.dtype)
    absolute = 6 / 255 / 2 if chunk.encoding is INT8 else 0.0
    relative = {NONE: 0.0, INT8: 0.0, BF16: 2.0**-8, FP16: 2.0**-11}[chunk.encoding]
    relative += {"F64": 2.0**-53, "F16": 2.0**-11, "BF16": 2.0**-8}[dtype]  # stored again
    error = np.abs(got.astype(np.float64) - exact)
    assert (error <= absolute + np.abs(exact) * relative * (1 + 1e-6)).all()


def test_int_tensor_chunks_must_come_as_stored() -> None:
    spec = TensorSpec("n", "I32", (4,))
    with pytest.raises(TensorFileError, match="I32 values; they cannot come as int8"):
        decoded_size(spec, WireChunk("n", 0, bytes(4), INT8, 1.0, 0))


@pytest.mark.parametrize(
    ("scale", "zero_point"),
    [(float("nan"), 0), (-1.0, 0), (float("inf"), 0), (1e39, 0), (1.0, 256), (1.0, -1)],
)
def test_int8_parameters_from_a_peer_are_bounded(scale: float, zero_point: int) -> None:
    spec = TensorSpec("w", "F32", (4,))
    with pytest.raises(TensorFileError, match="int8 chunk with scale"):
        decoded_size(spec, WireChunk("w", 0, bytes(4), INT8, scale, zero_point))


def test_a_chunk_is_measured_against_the_tensor_before_it_is_decoded(tmp_path: Path) -> None:
    spec = TensorSpec("w", "F64", (100,))
    spool = SpoolWriter(tmp_path / "u.safetensors", Manifest((spec,)))
    with pytest.raises(TensorFileError, match="runs past the declared size of 800 bytes"):
        receive(spool, WireChunk("w", 0, bytes(101), INT8, 1.0, 0))
    with pytest.raises(TensorFileError, match="whole elements"):
        receive(spool, WireChunk("w", 0, bytes(3), BF16))
    with pytest.raises(TensorFileError, match="expected byte 0"):
        receive(spool, WireChunk("w", 8, bytes(2), BF16))
    spool.discard()
    huge = TensorSpec("w", "F64", (10**9,))
    with pytest.raises(TensorFileError, match="at most"):
        decoded_size(huge, WireChunk("w", 0, bytes(MAX_DECODED_CHUNK // 8 + 1), INT8, 1.0, 0))


def test_an_empty_chunk_is_refused_unless_its_tensor_holds_zero_bytes(tmp_path: Path) -> None:
    """An empty chunk was taken as nothing, whatever it named: a sender could send them
    without end, each one the upload's progress."""
    manifest = Manifest((TensorSpec("w", "F32", (4,)), TensorSpec("e", "F32", (0,))))
    spool = SpoolWriter(tmp_path / "u.safetensors", manifest)
    assert receive(spool, WireChunk("e", 0, b"")) == 0
    with pytest.raises(TensorFileError, match="tensor 'w': an empty chunk at byte 0; a chunk"):
        receive(spool, WireChunk("w", 0, b""))
    with pytest.raises(TensorFileError, match="expected a chunk of tensor 'w', got 'x'"):
        receive(spool, WireChunk("x", 0, b""))
    with pytest.raises(TensorFileError, match="chunk at byte 8, expected byte 0"):
        receive(spool, WireChunk("w", 8, b""))
    with pytest.raises(TensorFileError, match="expected a chunk of tensor 'w', got 'e'"):
        receive(spool, WireChunk("e", 4, b""))
    spool.discard()


def test_a_model_comes_in_at_most_one_chunk_per_value_and_one_per_tensor(
    tmp_path: Path,
) -> None:
    manifest = Manifest((TensorSpec("w", "F32", (4,)), TensorSpec("e", "F32", (0,))))
    assert manifest.most_chunks == 6
    values = np.arange(4, dtype=np.float32).tobytes()
    spool = SpoolWriter(tmp_path / "u.safetensors", manifest)
    receive(spool, encode(manifest.tensors[0], 0, values, INT8))
    for _ in range(5):  # the empty tensor's chunk, again and again
        receive(spool, WireChunk("e", 0, b""))
    with pytest.raises(TensorFileError, match="more than 6 chunks for a model of 4 values in 2"):
        receive(spool, WireChunk("e", 0, b""))
    spool.discard()


def test_a_short_chunk_must_end_its_tensor(tmp_path: Path) -> None:
    """A peer sending a value at a time held its transfer, and a slot, for as many decoding
    steps as the model has values: but a tensor's last, a chunk stands for 64 KiB at least
    (as stored: a compressed one is smaller on the wire)."""
    values = np.arange(MIN_CHUNK // 4 + 1, dtype=np.float32).tobytes()
    spec = TensorSpec("w", "F32", (len(values) // 4,))
    spool = SpoolWriter(tmp_path / "u.safetensors", Manifest((spec,)))
    with pytest.raises(
        TensorFileError, match="tensor 'w': a chunk of 65532 bytes at byte 0 that does not end"
    ):
        receive(spool, WireChunk("w", 0, values[: MIN_CHUNK - 4]))
    spool.discard()
    spool = SpoolWriter(tmp_path / "u.safetensors", Manifest((spec,)))
    assert receive(spool, encode(spec, 0, values[:MIN_CHUNK], INT8)) == MIN_CHUNK
    assert receive(spool, WireChunk("w", MIN_CHUNK, values[MIN_CHUNK:])) == 4
    spool.discard()


def model_file(path: Path) -> dict[str, Array]:
    rng = np.random.default_rng(5)
    values: dict[str, Array] = {
        "conv.weight": rng.standard_normal((300, 1000)).astype(np.float32),  # 1.2 MB: 2 chunks
        "bn.running_var": rng.uniform(0.5, 2.0, 64).astype(np.float32),
        "bn.num_batches_tracked": np.array([7], dtype=np.int64),
        "head.bias": np.zeros(10, dtype=np.float32),
        "empty": np.zeros((0, 3), dtype=np.float32),
    }
    safetensors.numpy.save_file(values, path)
    return values


@pytest.mark.parametrize("compression", list(WireCompression))
def test_a_model_streams_compressed_over_protobuf_and_decodes_to_its_own_dtypes(
    tmp_path: Path, compression: WireCompression
) -> None:
    values = model_file(tmp_path / "m.safetensors")
    model = TensorFile(tmp_path / "m.safetensors")
    declared = wire.manifest_from_proto(wire.manifest_to_proto(model.manifest))
    spool = SpoolWriter(tmp_path / "copy.safetensors", declared)
    sent = raw = decoded = 0
    for chunk, size in encoded_chunks(model, compression):
        message = common_pb2.TensorChunk.FromString(wire.chunk_to_proto(chunk).SerializeToString())
        decoded += receive(spool, wire.chunk_from_proto(message))
        sent += len(chunk.data)
        raw += size
    copy = safetensors.numpy.load_file(spool.finish().path)
    assert raw == decoded == model.manifest.total_bytes
    ratio = {NONE: 1.0, BF16: 0.5, FP16: 0.5, INT8: 0.25}[compression]
    assert sent == pytest.approx(raw * ratio, rel=0.01)
    assert copy["bn.num_batches_tracked"].tolist() == [7]
    assert copy["empty"].shape == (0, 3)
    assert (copy["head.bias"] == 0).all()
    for name in ("conv.weight", "bn.running_var"):
        assert copy[name].dtype == np.float32 and copy[name].shape == values[name].shape
        error = np.abs(copy[name] - values[name]).max()
        bound = {NONE: 0.0, BF16: 2.0**-8, FP16: 2.0**-11, INT8: 1 / 255}[compression]
        assert error <= bound * np.abs(values[name]).max()


def test_an_unknown_chunk_encoding_is_refused() -> None:
    message = common_pb2.TensorChunk(name="w", offset=0, data=b"", encoding=9)  # type: ignore[arg-type]
    with pytest.raises(TensorFileError, match="unknown chunk encoding 9"):
        wire.chunk_from_proto(message)
