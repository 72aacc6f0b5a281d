"""Models on disk and on the wire, one tensor chunk at a time.

Models are stored as safetensors files. The format is an 8-byte header length,
a JSON header naming each tensor's dtype, shape and byte range, then the raw
little-endian bytes. Because the layout is fixed by the manifest alone, a
receiver can write the header first and then append chunks as they arrive:
the spool file of an upload *is* a safetensors file once complete, and neither
side ever holds a whole model in memory. Reading goes through numpy memory
maps for the same reason. No pickle anywhere.
"""

from __future__ import annotations

import contextlib
import json
import math
import struct
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from flcore.configfile import parse_json
from flcore.schema import ConfigError, shown

CHUNK_BYTES = 1024 * 1024
MAX_HEADER_BYTES = 100 * 1024 * 1024
MAX_MODEL_BYTES = 1 << 39
"""512 GiB: more than any model a site trains (a 70-billion-parameter model in float32 is
280 GB), far less than a declared size meant to fill a disk (2^40 bytes and up)."""
MAX_DIMS = 64
MAX_TENSOR_NAME = 1024
"""Characters of a tensor name; torch's longest real names are a few hundred."""
MAX_DTYPE_SHOWN = 32
"""Characters of an unknown dtype that an error message repeats (a peer sent it)."""
METADATA_KEY = "__metadata__"
"""The key of a safetensors header that holds the file's metadata, not a tensor."""

# safetensors dtype names -> numpy dtypes of the same width. BF16 has no numpy
# type: it is carried as raw uint16 and widened to float32 by the aggregator.
NUMPY_DTYPES: dict[str, np.dtype[Any]] = {
    "F64": np.dtype("<f8"),
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "BF16": np.dtype("<u2"),
    "I64": np.dtype("<i8"),
    "I32": np.dtype("<i4"),
    "I16": np.dtype("<i2"),
    "I8": np.dtype("i1"),
    "U8": np.dtype("u1"),
    "BOOL": np.dtype("?"),
}
FLOAT_DTYPES = frozenset({"F64", "F32", "F16", "BF16"})


class TensorFileError(ValueError):
    """A model file or stream does not match what it claims or what is expected."""


@dataclass(frozen=True)
class TensorSpec:
    """Name, dtype and shape of one tensor."""

    name: str
    dtype: str
    shape: tuple[int, ...]

    @property
    def itemsize(self) -> int:
        """Bytes per element."""
        return NUMPY_DTYPES[self.dtype].itemsize

    @property
    def nbytes(self) -> int:
        """Bytes of the whole tensor."""
        return math.prod(self.shape) * self.itemsize

    def check(self) -> None:
        """Refuse odd names, unknown dtypes, negative dimensions and sizes no model has,
        before any allocation."""
        if not self.name or len(self.name) > MAX_TENSOR_NAME or not self.name.isprintable():
            raise TensorFileError(
                f"tensor name {self.name[:80]!r} must be 1-{MAX_TENSOR_NAME} printable characters"
            )
        if self.name == METADATA_KEY:
            raise TensorFileError(
                f"a tensor may not be named {METADATA_KEY!r}: safetensors keeps a file's "
                "metadata under that name"
            )
        if self.dtype not in NUMPY_DTYPES:
            known = ", ".join(NUMPY_DTYPES)
            raise TensorFileError(
                f"tensor {self.name!r}: unknown dtype {self.dtype[:MAX_DTYPE_SHOWN]!r} ({known})"
            )
        if len(self.shape) > MAX_DIMS:
            raise TensorFileError(
                f"tensor {self.name!r} has {len(self.shape)} dimensions; at most {MAX_DIMS}"
            )
        if any(d < 0 for d in self.shape):
            raise TensorFileError(f"tensor {self.name!r}: negative dimension in {self.shape}")
        if self.nbytes > MAX_MODEL_BYTES:
            raise TensorFileError(
                f"tensor {self.name!r} declares {self.nbytes:,} bytes, more than a model may "
                f"hold ({MAX_MODEL_BYTES:,})"
            )


@dataclass(frozen=True)
class Manifest:
    """The tensors of a model, in storage order."""

    tensors: tuple[TensorSpec, ...]

    @property
    def total_bytes(self) -> int:
        """Bytes of all tensors together."""
        return sum(t.nbytes for t in self.tensors)

    @property
    def num_elements(self) -> int:
        """Elements of all tensors together."""
        return sum(math.prod(t.shape) for t in self.tensors)

    @property
    def most_chunks(self) -> int:
        """The most chunks the model can come in: each holds at least one element, and a
        tensor of zero bytes may come as one empty chunk. A sender that goes on past it
        (empty chunks without end) sends nothing that moves the transfer on."""
        return self.num_elements + len(self.tensors)

    def check(self) -> None:
        """Refuse a manifest that a peer or a file could declare but no model has: every
        tensor checked, no name twice, a total size within bounds."""
        for spec in self.tensors:
            spec.check()
        if len({spec.name for spec in self.tensors}) != len(self.tensors):
            raise TensorFileError("manifest names a tensor twice")
        if self.total_bytes > MAX_MODEL_BYTES:
            raise TensorFileError(
                f"manifest declares {self.total_bytes:,} bytes, more than a model may hold "
                f"({MAX_MODEL_BYTES:,})"
            )

    def differences(self, other: Manifest, limit: int = 5) -> list[str]:
        """Say how ``other`` differs from this manifest (empty when it matches)."""
        mine = {t.name: t for t in self.tensors}
        theirs = {t.name: t for t in other.tensors}
        problems = []
        for name, spec in theirs.items():
            want = mine.get(name)
            if want is None:
                continue
            if want.dtype != spec.dtype:
                problems.append(f"tensor {name!r} has dtype {spec.dtype}, expected {want.dtype}")
            if want.shape != spec.shape:
                problems.append(
                    f"tensor {name!r} has shape {list(spec.shape)}, expected {list(want.shape)}"
                )
        problems += [f"missing tensor {name!r}" for name in mine if name not in theirs]
        problems += [f"unexpected tensor {name!r}" for name in theirs if name not in mine]
        if len(problems) > limit:
            problems = [*problems[:limit], f"... and {len(problems) - limit} more"]
        return problems


def header_bytes(manifest: Manifest, metadata: Mapping[str, str] | None = None) -> bytes:
    """The safetensors header (length prefix included) for tensors laid out in order."""
    header: dict[str, Any] = {}
    if metadata:
        header[METADATA_KEY] = dict(metadata)
    offset = 0
    for spec in manifest.tensors:
        header[spec.name] = {
            "dtype": spec.dtype,
            "shape": list(spec.shape),
            "data_offsets": [offset, offset + spec.nbytes],
        }
        offset += spec.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw


class TensorFile:
    """A safetensors file opened for streaming and memory-mapped reads."""

    def __init__(self, path: Path) -> None:
        self.path = path
        size = path.stat().st_size
        with path.open("rb") as handle:
            prefix = handle.read(8)
            if len(prefix) != 8:
                raise TensorFileError(f"{path}: too short to be a safetensors file")
            (length,) = struct.unpack("<Q", prefix)
            if length > min(MAX_HEADER_BYTES, size - 8):
                raise TensorFileError(f"{path}: header length {length} is out of bounds")
            try:
                header = parse_json(handle.read(length), f"{path}: header", max_depth=3)
            except ConfigError as exc:
                raise TensorFileError(str(exc)) from None
        if not isinstance(header, dict):
            raise TensorFileError(f"{path}: header is not a JSON object")
        metadata = header.pop(METADATA_KEY, None) or {}
        if not isinstance(metadata, dict):
            raise TensorFileError(f"{path}: {METADATA_KEY} is not a JSON object")
        self.metadata: dict[str, str] = {str(k): str(v) for k, v in metadata.items()}
        self.data_start = 8 + length
        entries = sorted(
            ((name, *_parse_entry(path, name, entry)) for name, entry in header.items()),
            key=lambda item: (item[2], item[3]),
        )
        specs: list[TensorSpec] = []
        self.offsets: dict[str, tuple[int, int]] = {}
        expected = 0
        for name, spec, begin, end in entries:
            if begin != expected or end - begin != spec.nbytes:
                raise TensorFileError(f"{path}: tensor {name!r} has inconsistent data offsets")
            expected = end
            specs.append(spec)
            self.offsets[name] = (begin, end)
        if self.data_start + expected != size:
            raise TensorFileError(f"{path}: file size does not match its header")
        self.manifest = Manifest(tuple(specs))
        self.manifest.check()

    def iter_slabs(self, name: str, elements: int) -> Iterator[npt.NDArray[Any]]:
        """One tensor's values, flat, ``elements`` at a time (BF16 as raw uint16).

        Read rather than memory-mapped: a map would count the whole tensor
        against the process's resident memory while it is read, a slab only
        its own size.
        """
        spec = next(t for t in self.manifest.tensors if t.name == name)
        dtype = NUMPY_DTYPES[spec.dtype]
        total = math.prod(spec.shape)
        with self.path.open("rb") as handle:
            handle.seek(self.data_start + self.offsets[name][0])
            for start in range(0, total, elements):
                yield np.fromfile(handle, dtype=dtype, count=min(elements, total - start))

    def iter_chunks(self, chunk_bytes: int = CHUNK_BYTES) -> Iterator[tuple[str, int, bytes]]:
        """Yield (tensor name, offset in tensor, bytes), whole elements per chunk.

        Empty tensors yield nothing: the manifest alone recreates them.
        """
        with self.path.open("rb") as handle:
            for spec in self.manifest.tensors:
                begin, end = self.offsets[spec.name]
                handle.seek(self.data_start + begin)
                step = max(spec.itemsize, chunk_bytes - chunk_bytes % spec.itemsize)
                position = 0
                total = end - begin
                while position < total:
                    data = handle.read(min(step, total - position))
                    yield spec.name, position, data
                    position += len(data)


def _parse_entry(path: Path, name: str, entry: Any) -> tuple[TensorSpec, int, int]:
    """One tensor's header entry, or TensorFileError naming what is wrong with it."""
    try:
        shape = tuple(entry["shape"])
        begin, end = entry["data_offsets"]
        if not all(type(d) is int for d in (*shape, begin, end)):
            raise TypeError("shape and data_offsets must be integers")
        spec = TensorSpec(name, str(entry["dtype"]), shape)
    except (TypeError, KeyError, ValueError) as exc:
        raise TensorFileError(
            f"{path}: tensor {name!r} has a malformed header entry ({exc})"
        ) from None
    spec.check()
    return spec, begin, end


def _largest(dtype: str, data: bytes) -> float:
    """The largest magnitude among float values (NaN when one is NaN); 0 for other dtypes."""
    if dtype not in FLOAT_DTYPES or not data:
        return 0.0
    values = np.frombuffer(data, dtype=NUMPY_DTYPES[dtype])
    if dtype == "BF16":
        if np.any((values & 0x7F80) == 0x7F80):  # NaN, infinity
            return math.nan
        values = (values.astype(np.uint32) << 16).view(np.float32)
    return float(max(values.max(), -values.min()))


class SpoolWriter:
    """Receives a model chunk by chunk into a safetensors file, checking as it goes.

    Every chunk is checked against the manifest before it is written: the
    tensor it names must be the next expected one, its offset must continue
    that tensor, it must hold whole elements, stay inside the tensor, and
    (when ``require_finite``) contain no NaN or infinity. So a bad update is
    refused at the first bad chunk, and a complete spool is known good.
    """

    def __init__(
        self,
        path: Path,
        manifest: Manifest,
        *,
        require_finite: bool = True,
        largest: float = math.inf,
        largest_why: str = "",
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        manifest.check()
        self.path = path
        self.manifest = manifest
        self.require_finite = require_finite
        self.largest = largest
        """The largest magnitude a float value may have (checked with the finiteness), and
        ``largest_why``, why: what the error says."""
        self.largest_why = largest_why
        self._index = 0
        self._position = 0
        self._chunks = 0
        self._most_chunks = manifest.most_chunks
        self._empty = {spec.name for spec in manifest.tensors if not spec.nbytes}
        self._handle = path.open("wb")
        try:
            self._handle.write(header_bytes(manifest, metadata))
        except BaseException:
            self.discard()  # not even an empty file stays behind (a full disk)
            raise
        self._skip_empty()

    def _skip_empty(self) -> None:
        tensors = self.manifest.tensors
        while self._index < len(tensors) and self._position == tensors[self._index].nbytes:
            self._index += 1
            self._position = 0

    def expect(self, name: str, offset: int) -> tuple[TensorSpec, int]:
        """The tensor of the chunk expected next and the bytes left in it; TensorFileError
        when a chunk of ``name`` at ``offset`` is not that chunk."""
        tensors = self.manifest.tensors
        if self._index >= len(tensors):
            raise TensorFileError(f"chunk for {shown(name)} after the last tensor")
        spec = tensors[self._index]
        if name != spec.name:
            # The name came from the peer and may be megabytes long: the error is relayed.
            raise TensorFileError(f"expected a chunk of tensor {spec.name!r}, got {shown(name)}")
        if offset != self._position:
            raise TensorFileError(
                f"tensor {name!r}: chunk at byte {offset}, expected byte {self._position}"
            )
        return spec, spec.nbytes - self._position

    def arrived(self, name: str, offset: int, empty: bool) -> None:
        """Count a chunk as it arrives, before anything is decoded; TensorFileError for one
        more than the model can come in (:attr:`Manifest.most_chunks`), and for an empty
        one unless its tensor holds zero bytes (a wrong name or offset says so first).
        Every chunk counted as the transfer's progress: empty ones without end had kept
        an upload alive, and its slot taken, for good."""
        self._chunks += 1
        if self._chunks > self._most_chunks:
            raise TensorFileError(
                f"more than {self._most_chunks:,} chunks for a model of "
                f"{self.manifest.num_elements:,} values in {len(self.manifest.tensors):,} "
                "tensors; a chunk holds at least one value"
            )
        if empty and not (name in self._empty and offset == 0):
            spec, _ = self.expect(name, offset)
            raise TensorFileError(
                f"tensor {spec.name!r}: an empty chunk at byte {offset}; a chunk holds at "
                "least one value"
            )

    def write(self, name: str, offset: int, data: bytes) -> None:
        """Append one chunk; raises TensorFileError (and keeps nothing) when it is wrong."""
        if not data:
            return
        spec, room = self.expect(name, offset)
        if len(data) % spec.itemsize:
            raise TensorFileError(f"tensor {name!r}: chunk does not hold whole elements")
        if len(data) > room:
            raise TensorFileError(
                f"tensor {name!r}: chunk runs past the declared size of {spec.nbytes} bytes"
            )
        if spec.dtype == "BOOL" and max(data) > 1:
            # Stored as they come and forwarded to sites (cross-site models), where torch
            # misbehaves on a bool that is neither 0 nor 1.
            raise TensorFileError(f"tensor {name!r} holds a bool that is neither 0 nor 1")
        if self.require_finite:
            largest = _largest(spec.dtype, data)
            if not math.isfinite(largest):
                raise TensorFileError(f"tensor {name!r} contains NaN or infinite values")
            if largest > self.largest:
                raise TensorFileError(
                    f"tensor {name!r} holds a value of {largest:.3g}, more than the "
                    f"{self.largest:.3g} this upload may hold{self.largest_why}"
                )
        self._handle.write(data)
        self._position += len(data)
        self._skip_empty()

    def finish(self) -> TensorFile:
        """Close the spool once every byte arrived; raises if anything is missing."""
        if self._index < len(self.manifest.tensors):
            spec = self.manifest.tensors[self._index]
            self.discard()
            raise TensorFileError(
                f"stream ended early: tensor {spec.name!r} has {self._position} of "
                f"{spec.nbytes} bytes"
            )
        self._handle.close()
        return TensorFile(self.path)

    def discard(self) -> None:
        """Close and delete the spool (bad or abandoned upload)."""
        # Closing flushes, which fails on a full disk: the descriptor is closed all the same,
        # and the bytes are not wanted.
        with contextlib.suppress(OSError):
            self._handle.close()
        self.path.unlink(missing_ok=True)
