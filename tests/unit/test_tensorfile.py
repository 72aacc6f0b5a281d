"""flcore.tensorfile: safetensors files streamed chunk by chunk, and the checks on the way in."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import safetensors.numpy
import safetensors.torch
import torch

from flcore.tensorfile import (
    NUMPY_DTYPES,
    Manifest,
    SpoolWriter,
    TensorFile,
    TensorFileError,
    TensorSpec,
    header_bytes,
)

TORCH_DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}


def _torch_model() -> dict[str, torch.Tensor]:
    """One tensor of every supported dtype, odd sizes, plus empty and scalar tensors."""
    gen = torch.Generator().manual_seed(7)
    tensors: dict[str, torch.Tensor] = {}
    for dtype, tdtype in TORCH_DTYPES.items():
        if tdtype.is_floating_point:
            values = torch.randn(37, 5, generator=gen).to(tdtype)
        elif tdtype is torch.bool:
            values = torch.randint(0, 2, (37, 5), generator=gen).bool()
        else:
            values = torch.randint(0, 100, (37, 5), generator=gen).to(tdtype)
        tensors[f"w_{dtype.lower()}"] = values
    tensors["empty_f32"] = torch.zeros((0, 3), dtype=torch.float32)
    tensors["empty_bf16"] = torch.zeros((4, 0), dtype=torch.bfloat16)
    tensors["empty_bool"] = torch.zeros((0,), dtype=torch.bool)
    tensors["scalar_f64"] = torch.tensor(3.25, dtype=torch.float64)
    return tensors


def _spool_copy(source: Path, target: Path, chunk_bytes: int) -> TensorFile:
    model = TensorFile(source)
    writer = SpoolWriter(target, model.manifest)
    for name, offset, data in model.iter_chunks(chunk_bytes):
        writer.write(name, offset, data)
    return writer.finish()


def _data_section(path: Path) -> bytes:
    raw = path.read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])
    return raw[8 + length :]


@pytest.mark.parametrize("chunk_bytes", [1, 7, 64, 1 << 20])
def test_round_trip_every_dtype_through_spool(tmp_path: Path, chunk_bytes: int) -> None:
    source = tmp_path / "model.safetensors"
    original = _torch_model()
    safetensors.torch.save_file(original, source)

    copy = _spool_copy(source, tmp_path / "copy.safetensors", chunk_bytes)

    assert copy.manifest == TensorFile(source).manifest
    assert _data_section(copy.path) == _data_section(source)
    loaded = safetensors.torch.load_file(copy.path)
    assert set(loaded) == set(original)
    for name, tensor in original.items():
        assert loaded[name].dtype == tensor.dtype, name
        assert loaded[name].shape == tensor.shape, name
        assert torch.equal(loaded[name], tensor), name


def test_round_trip_readable_by_numpy(tmp_path: Path) -> None:
    source = tmp_path / "model.safetensors"
    rng = np.random.default_rng(3)
    original: dict[str, np.ndarray[Any, Any]] = {
        "f64": rng.standard_normal((3, 4)),
        "f32": rng.standard_normal(11).astype(np.float32),
        "f16": rng.standard_normal((2, 2, 2)).astype(np.float16),
        "i64": np.arange(-5, 5, dtype=np.int64),
        "i32": np.arange(9, dtype=np.int32),
        "i16": np.arange(3, dtype=np.int16),
        "i8": np.array([-128, 0, 127], dtype=np.int8),
        "u8": np.array([0, 255, 17], dtype=np.uint8),
        "bool": np.array([True, False, True, True]),
        "empty": np.zeros((0, 5), dtype=np.float32),
    }
    safetensors.numpy.save_file(original, source)

    copy = _spool_copy(source, tmp_path / "copy.safetensors", 5)

    loaded = safetensors.numpy.load_file(copy.path)
    assert set(loaded) == set(original)
    for name, array in original.items():
        assert loaded[name].dtype == array.dtype, name
        assert loaded[name].shape == array.shape, name
        np.testing.assert_array_equal(loaded[name], array)


def test_iter_chunks_whole_elements_and_offsets(tmp_path: Path) -> None:
    source = tmp_path / "m.safetensors"
    safetensors.numpy.save_file(
        {"a": np.arange(10, dtype=np.float64), "e": np.zeros(0, np.float32)}, source
    )
    chunks = list(TensorFile(source).iter_chunks(20))
    # 20 bytes rounds down to 16 (two float64 elements); the empty tensor yields nothing.
    assert [(n, o, len(d)) for n, o, d in chunks] == [("a", o, 16) for o in range(0, 80, 16)]
    assert b"".join(d for _, _, d in chunks) == np.arange(10, dtype=np.float64).tobytes()


def test_slabs_read_values_and_bf16_as_raw_bits(tmp_path: Path) -> None:
    source = tmp_path / "m.safetensors"
    bf = torch.tensor([1.0, -2.0, 0.5], dtype=torch.bfloat16)
    safetensors.torch.save_file(
        {"bf": bf, "f": torch.arange(6, dtype=torch.float32).reshape(2, 3)}, source
    )
    model = TensorFile(source)
    slabs = list(model.iter_slabs("f", 4))
    assert [s.tolist() for s in slabs] == [[0, 1, 2, 3], [4, 5]]
    (raw,) = model.iter_slabs("bf", 10)
    assert raw.dtype == np.dtype("<u2")
    assert raw.tolist() == [0x3F80, 0xC000, 0x3F00]


def test_metadata_round_trips(tmp_path: Path) -> None:
    manifest = Manifest((TensorSpec("x", "F32", (2,)),))
    path = tmp_path / "m.safetensors"
    writer = SpoolWriter(path, manifest, metadata={"round": "3"})
    writer.write("x", 0, np.array([1.0, 2.0], dtype=np.float32).tobytes())
    model = writer.finish()
    assert model.metadata == {"round": "3"}
    assert safetensors.numpy.load_file(path)["x"].tolist() == [1.0, 2.0]


# --------------------------------------------------------------------------- SpoolWriter refusals

SPECS = (TensorSpec("a", "F32", (4,)), TensorSpec("b", "I16", (3,)))
MANIFEST = Manifest(SPECS)
A = np.arange(4, dtype=np.float32).tobytes()
B = np.arange(3, dtype=np.int16).tobytes()


def _writer(tmp_path: Path, manifest: Manifest = MANIFEST) -> SpoolWriter:
    return SpoolWriter(tmp_path / "spool.safetensors", manifest)


def test_spool_accepts_exact_stream(tmp_path: Path) -> None:
    writer = _writer(tmp_path)
    writer.write("a", 0, A[:8])
    writer.write("a", 8, A[8:])
    writer.write("b", 0, B)
    model = writer.finish()
    loaded = safetensors.numpy.load_file(model.path)
    assert loaded["a"].tolist() == [0.0, 1.0, 2.0, 3.0]
    assert loaded["b"].tolist() == [0, 1, 2]


def _refused(writer: SpoolWriter, name: str, offset: int, data: bytes, words: str) -> None:
    writer._handle.flush()
    size = writer.path.stat().st_size
    with pytest.raises(TensorFileError, match=words):
        writer.write(name, offset, data)
    writer._handle.flush()
    assert writer.path.stat().st_size == size, "a refused chunk must not be written"


def test_spool_refuses_wrong_tensor_name(tmp_path: Path) -> None:
    writer = _writer(tmp_path)
    _refused(writer, "b", 0, B, "expected a chunk of tensor 'a', got 'b'")
    _refused(writer, "zzz", 0, A, "expected a chunk of tensor 'a'")


def test_spool_refuses_tensor_out_of_order_after_progress(tmp_path: Path) -> None:
    writer = _writer(tmp_path)
    writer.write("a", 0, A[:4])
    _refused(writer, "b", 0, B, "expected a chunk of tensor 'a', got 'b'")


def test_spool_refuses_offset_gap_and_overlap(tmp_path: Path) -> None:
    writer = _writer(tmp_path)
    _refused(writer, "a", 4, A[4:8], "chunk at byte 4, expected byte 0")
    writer.write("a", 0, A[:4])
    _refused(writer, "a", 8, A[8:12], "chunk at byte 8, expected byte 4")
    _refused(writer, "a", 0, A[:4], "chunk at byte 0, expected byte 4")


def test_spool_refuses_partial_element(tmp_path: Path) -> None:
    writer = _writer(tmp_path)
    _refused(writer, "a", 0, A[:6], "whole elements")


def test_spool_refuses_chunk_past_declared_size(tmp_path: Path) -> None:
    writer = _writer(tmp_path)
    _refused(writer, "a", 0, A + b"\0\0\0\0", "past the declared size of 16 bytes")
    writer.write("a", 0, A)
    writer.write("b", 0, B[:2])
    _refused(writer, "b", 2, B[2:] + b"\0\0", "past the declared size of 6 bytes")


def test_spool_refuses_chunk_after_last_tensor(tmp_path: Path) -> None:
    writer = _writer(tmp_path)
    writer.write("a", 0, A)
    writer.write("b", 0, B)
    _refused(writer, "b", 6, B, "after the last tensor")


def _bf16(values: list[float]) -> np.ndarray[Any, Any]:
    return torch.tensor(values, dtype=torch.bfloat16).view(torch.int16).numpy().view(np.uint16)


BAD_VALUES: list[tuple[str, float]] = [
    (dtype, bad) for dtype in ("F32", "F16", "BF16") for bad in (np.nan, np.inf, -np.inf)
]


def _encode(dtype: str, values: list[float]) -> bytes:
    if dtype == "BF16":
        return _bf16(values).tobytes()
    return np.array(values, dtype=NUMPY_DTYPES[dtype]).tobytes()


@pytest.mark.parametrize(("dtype", "bad"), BAD_VALUES)
@pytest.mark.parametrize("where", ["first", "middle", "last"])
def test_spool_refuses_non_finite(tmp_path: Path, dtype: str, bad: float, where: str) -> None:
    count = 24
    values = [float(i) - 10.0 for i in range(count)]
    index = {"first": 0, "middle": count // 2, "last": count - 1}[where]
    values[index] = bad
    data = _encode(dtype, values)
    spec = TensorSpec("w", dtype, (count,))
    writer = SpoolWriter(tmp_path / "s.safetensors", Manifest((spec,)))
    chunk = 4 * spec.itemsize
    with pytest.raises(TensorFileError, match="NaN or infinite"):
        for offset in range(0, len(data), chunk):
            writer.write("w", offset, data[offset : offset + chunk])
    # Every chunk before the bad one went in; the bad one did not.
    bad_chunk = index // 4
    writer._handle.flush()
    header = len(header_bytes(Manifest((spec,))))
    assert writer.path.stat().st_size == header + bad_chunk * chunk
    writer.discard()
    assert not writer.path.exists()


@pytest.mark.parametrize("dtype", ["F32", "F16", "BF16", "F64"])
def test_spool_accepts_extreme_finite_values(tmp_path: Path, dtype: str) -> None:
    if dtype == "BF16":
        data = np.array([0x7F7F, 0xFF7F, 0x0001, 0x8000], dtype=np.uint16).tobytes()
    else:
        info = np.finfo(NUMPY_DTYPES[dtype])
        data = np.array([info.max, info.min, info.tiny, -0.0], dtype=NUMPY_DTYPES[dtype]).tobytes()
    spec = TensorSpec("w", dtype, (4,))
    writer = SpoolWriter(tmp_path / "s.safetensors", Manifest((spec,)))
    writer.write("w", 0, data)
    assert writer.finish().manifest.tensors == (spec,)


def test_spool_allows_non_finite_when_not_required(tmp_path: Path) -> None:
    spec = TensorSpec("w", "F32", (2,))
    writer = SpoolWriter(tmp_path / "s.safetensors", Manifest((spec,)), require_finite=False)
    writer.write("w", 0, np.array([np.nan, np.inf], dtype=np.float32).tobytes())
    loaded = safetensors.numpy.load_file(writer.finish().path)["w"]
    assert np.isnan(loaded[0]) and np.isinf(loaded[1])


@pytest.mark.parametrize("sent", [0, 8, 16])
def test_spool_finish_refuses_early_end_and_removes_file(tmp_path: Path, sent: int) -> None:
    writer = _writer(tmp_path)
    if sent:
        writer.write("a", 0, A[:sent])
    assert writer.path.exists()
    expected_tensor, have = ("a", sent) if sent < 16 else ("b", 0)
    words = f"stream ended early: tensor '{expected_tensor}' has {have} of"
    with pytest.raises(TensorFileError, match=words):
        writer.finish()
    assert not writer.path.exists()
    assert list(tmp_path.iterdir()) == []


def test_spool_only_empty_tensors_finishes_without_chunks(tmp_path: Path) -> None:
    manifest = Manifest((TensorSpec("e1", "F32", (0,)), TensorSpec("e2", "BF16", (3, 0))))
    model = SpoolWriter(tmp_path / "s.safetensors", manifest).finish()
    assert model.manifest == manifest
    loaded = safetensors.torch.load_file(model.path)
    assert loaded["e1"].shape == (0,) and loaded["e2"].shape == (3, 0)
    assert loaded["e2"].dtype == torch.bfloat16


def test_spool_skips_empty_tensor_between_others(tmp_path: Path) -> None:
    manifest = Manifest(
        (TensorSpec("a", "F32", (4,)), TensorSpec("e", "F32", (0,)), TensorSpec("b", "I16", (3,)))
    )
    writer = SpoolWriter(tmp_path / "s.safetensors", manifest)
    writer.write("a", 0, A)
    writer.write("b", 0, B)
    loaded = safetensors.numpy.load_file(writer.finish().path)
    assert loaded["e"].shape == (0,)
    assert loaded["b"].tolist() == [0, 1, 2]


@pytest.mark.parametrize(
    ("spec", "words"),
    [
        (TensorSpec("x", "F8", (2,)), "unknown dtype 'F8'"),
        (TensorSpec("x", "F32", (2, -1)), "negative dimension"),
    ],
)
def test_spool_refuses_bad_manifest(tmp_path: Path, spec: TensorSpec, words: str) -> None:
    with pytest.raises(TensorFileError, match=words):
        SpoolWriter(tmp_path / "s.safetensors", Manifest((spec,)))
    assert not (tmp_path / "s.safetensors").exists()


# --------------------------------------------------------------------------- corrupt files


def _write_raw(path: Path, header: object, data: bytes, length: int | None = None) -> Path:
    raw = json.dumps(header).encode() if not isinstance(header, bytes) else header
    raw += b" " * (-len(raw) % 8)
    path.write_bytes(struct.pack("<Q", len(raw) if length is None else length) + raw + data)
    return path


def _entry(dtype: str, shape: list[int], begin: int, end: int) -> dict[str, Any]:
    return {"dtype": dtype, "shape": shape, "data_offsets": [begin, end]}


def test_tensorfile_accepts_hand_written_header(tmp_path: Path) -> None:
    path = _write_raw(
        tmp_path / "m.st",
        {"__metadata__": {"k": "v"}, "b": _entry("I8", [2], 8, 10), "a": _entry("F32", [2], 0, 8)},
        np.array([1, 2], np.float32).tobytes() + b"\x05\x06",
    )
    model = TensorFile(path)
    assert [t.name for t in model.manifest.tensors] == ["a", "b"]
    assert model.metadata == {"k": "v"}
    assert next(model.iter_slabs("b", 8)).tolist() == [5, 6]


def test_tensorfile_refuses_too_short(tmp_path: Path) -> None:
    path = tmp_path / "m.st"
    path.write_bytes(b"\x01\x02\x03")
    with pytest.raises(TensorFileError, match="too short"):
        TensorFile(path)


@pytest.mark.parametrize("length", [10_000, 2**63, 2**64 - 1])
def test_tensorfile_refuses_header_length_out_of_bounds(tmp_path: Path, length: int) -> None:
    path = _write_raw(tmp_path / "m.st", {"a": _entry("F32", [1], 0, 4)}, b"\0" * 4, length)
    with pytest.raises(TensorFileError, match=r"header length \d+ is out of bounds"):
        TensorFile(path)


@pytest.mark.parametrize("header", [b"{not json", b"\xff\xfe\xfd\xfc", b'{"a": '])
def test_tensorfile_refuses_bad_json(tmp_path: Path, header: bytes) -> None:
    path = _write_raw(tmp_path / "m.st", header, b"")
    with pytest.raises(TensorFileError, match=r"not valid JSON|not UTF-8 text"):
        TensorFile(path)


def test_tensorfile_refuses_non_object_header(tmp_path: Path) -> None:
    path = _write_raw(tmp_path / "m.st", [1, 2, 3], b"")
    with pytest.raises(TensorFileError, match="not a JSON object"):
        TensorFile(path)


@pytest.mark.parametrize(
    "header",
    [
        # gap between tensors
        {"a": _entry("F32", [1], 0, 4), "b": _entry("F32", [1], 8, 12)},
        # overlap
        {"a": _entry("F32", [2], 0, 8), "b": _entry("F32", [2], 4, 12)},
        # range does not match dtype x shape
        {"a": _entry("F32", [3], 0, 8)},
        # not starting at 0
        {"a": _entry("F32", [1], 4, 8)},
    ],
)
def test_tensorfile_refuses_inconsistent_offsets(tmp_path: Path, header: dict[str, Any]) -> None:
    path = _write_raw(tmp_path / "m.st", header, b"\0" * 12)
    with pytest.raises(TensorFileError, match="inconsistent data offsets"):
        TensorFile(path)


@pytest.mark.parametrize("data", [b"\0" * 7, b"\0" * 9])
def test_tensorfile_refuses_size_mismatch(tmp_path: Path, data: bytes) -> None:
    path = _write_raw(tmp_path / "m.st", {"a": _entry("F32", [2], 0, 8)}, data)
    with pytest.raises(TensorFileError, match="file size does not match"):
        TensorFile(path)


def test_tensorfile_refuses_truncated_real_file(tmp_path: Path) -> None:
    path = tmp_path / "m.st"
    safetensors.numpy.save_file({"a": np.ones(100, np.float32)}, path)
    path.write_bytes(path.read_bytes()[:-4])
    with pytest.raises(TensorFileError, match="file size does not match"):
        TensorFile(path)


@pytest.mark.parametrize(
    ("entry", "words"),
    [(_entry("Q7", [1], 0, 4), "unknown dtype"), (_entry("F32", [-1], 0, 0), "negative")],
)
def test_tensorfile_refuses_bad_dtype_or_shape(
    tmp_path: Path, entry: dict[str, Any], words: str
) -> None:
    path = _write_raw(tmp_path / "m.st", {"a": entry}, b"\0" * 4)
    with pytest.raises(TensorFileError, match=words):
        TensorFile(path)


@pytest.mark.parametrize(
    "entry",
    [
        5,
        "text",
        {"dtype": "F32", "shape": [1]},
        {"dtype": "F32", "data_offsets": [0, 4]},
        {"shape": [1], "data_offsets": [0, 4]},
        {"dtype": "F32", "shape": ["x"], "data_offsets": [0, 4]},
        {"dtype": "F32", "shape": [1], "data_offsets": [0]},
    ],
    ids=[
        "int",
        "str",
        "no-offsets",
        "no-shape",
        "no-dtype",
        "shape-not-int",
        "one-offset",
    ],
)
def test_tensorfile_refuses_malformed_entries_with_its_own_error(
    tmp_path: Path, entry: object
) -> None:
    """A corrupt header must raise TensorFileError, not KeyError/TypeError from inside."""
    path = _write_raw(tmp_path / "m.st", {"a": entry}, b"\0" * 4)
    with pytest.raises(TensorFileError):
        TensorFile(path)


def test_tensorfile_refuses_metadata_that_is_not_a_mapping(tmp_path: Path) -> None:
    path = _write_raw(
        tmp_path / "m.st", {"__metadata__": [1, 2], "a": _entry("F32", [1], 0, 4)}, b"\0" * 4
    )
    with pytest.raises(TensorFileError):
        TensorFile(path)


def test_tensorfile_accepts_empty_tensor_listed_after_tensor_at_same_offset(
    tmp_path: Path,
) -> None:
    """JSON key order is free in safetensors; safetensors itself loads this file."""
    data = np.ones(4, np.float32).tobytes()
    path = _write_raw(
        tmp_path / "m.st", {"b": _entry("F32", [4], 0, 16), "a": _entry("F32", [0], 0, 0)}, data
    )
    assert set(safetensors.numpy.load_file(path)) == {"a", "b"}
    model = TensorFile(path)
    assert {t.name: t.shape for t in model.manifest.tensors} == {"a": (0,), "b": (4,)}


# --------------------------------------------------------------------------- Manifest


def test_manifest_sizes() -> None:
    manifest = Manifest(
        (TensorSpec("a", "F32", (2, 3)), TensorSpec("b", "BF16", (5,)), TensorSpec("c", "I8", ()))
    )
    assert manifest.total_bytes == 24 + 10 + 1
    assert manifest.num_elements == 6 + 5 + 1


def test_manifest_differences_empty_when_equal() -> None:
    assert MANIFEST.differences(Manifest(SPECS)) == []
    # order is not a difference the message is about
    assert MANIFEST.differences(Manifest(tuple(reversed(SPECS)))) == []


def test_manifest_differences_names_each_problem() -> None:
    mine = Manifest(
        (TensorSpec("a", "F32", (4,)), TensorSpec("b", "I16", (3,)), TensorSpec("c", "F32", (1,)))
    )
    theirs = Manifest(
        (TensorSpec("a", "F16", (4,)), TensorSpec("b", "I16", (3, 1)), TensorSpec("d", "F32", (1,)))
    )
    # Mismatches of tensors both sides have come first: they are the telling ones.
    assert mine.differences(theirs) == [
        "tensor 'a' has dtype F16, expected F32",
        "tensor 'b' has shape [3, 1], expected [3]",
        "missing tensor 'c'",
        "unexpected tensor 'd'",
    ]


def test_manifest_differences_limit() -> None:
    mine = Manifest(tuple(TensorSpec(f"t{i}", "F32", (1,)) for i in range(8)))
    problems = mine.differences(Manifest(()), limit=3)
    assert problems == [
        "missing tensor 't0'",
        "missing tensor 't1'",
        "missing tensor 't2'",
        "... and 5 more",
    ]


@pytest.mark.parametrize("dtype", ["F32", "F16", "BF16", "F64"])
def test_spool_refuses_values_beyond_the_largest_it_may_hold(tmp_path: Path, dtype: str) -> None:
    """Every float dtype, BF16 as raw bits too: the bound keeps a round's sum finite."""
    spec = TensorSpec("w", dtype, (2,))
    writer = SpoolWriter(
        tmp_path / "spool.safetensors", Manifest((spec,)), largest=100.0, largest_why=" (why)"
    )

    def encoded(values: list[float]) -> bytes:
        if dtype == "BF16":
            return (np.array(values, np.float32).view(np.uint32) >> 16).astype(np.uint16).tobytes()
        return np.array(values, NUMPY_DTYPES[dtype]).tobytes()

    _refused(
        writer, "w", 0, encoded([1.0, -200.0]), r"holds a value of 200, more than the 100 .*\(why\)"
    )
    _refused(writer, "w", 0, encoded([1.0, float("nan")]), "NaN or infinite")
    writer.write("w", 0, encoded([100.0, -100.0]))
    assert writer.finish().manifest.tensors == (spec,)


def test_spool_refuses_a_bool_that_is_neither_0_nor_1(tmp_path: Path) -> None:
    writer = SpoolWriter(tmp_path / "spool.safetensors", Manifest((TensorSpec("m", "BOOL", (3,)),)))
    _refused(writer, "m", 0, bytes([1, 0, 7]), "neither 0 nor 1")
    writer.write("m", 0, bytes([1, 0, 1]))
    assert writer.finish().manifest.tensors[0].name == "m"


def test_a_chunk_s_long_name_is_quoted_cut_short(tmp_path: Path) -> None:
    """The error reaches the site's status and the server's matrix: a megabyte-long name
    quoted whole made every status the site sent exceed the message limit."""
    writer = _writer(tmp_path)
    with pytest.raises(TensorFileError) as refused:
        writer.write("x" * 1_000_000 + "\n<3>forged", 0, A)
    assert len(str(refused.value)) < 200 and "\n" not in str(refused.value)
    writer.write("a", 0, A)
    writer.write("b", 0, B)
    with pytest.raises(TensorFileError) as late:
        writer.write("y" * 1_000_000, 0, B)
    assert len(str(late.value)) < 200
