"""Model tensors compressed on the wire, for sites behind slow links.

An app opts in with ``wire_compression`` in config_fed_server.json: ``bf16``
or ``fp16`` send floating-point values in 16 bits, ``int8`` in 8 bits with an
affine scale and zero point per chunk (one chunk is at most 1 MiB of the
tensor as stored, so a tensor of up to 256 Ki float32 values has one scale,
a larger one one per block of that size: the sender quantizes in the one
pass that streams the file). Integer and boolean tensors, and chunks that
would gain nothing or could not be represented (non-finite values, values
beyond float16's range), go as they are stored.

Compression belongs to the link, never to a model file: every chunk says
how it is encoded, and the receiver decodes it back to the tensor's own
dtype before the chunk is checked and written. So the spool file, the
aggregation in float32, the refusal of NaN and infinity, the manifest check
and the site's training child all see ordinary tensors of the model's
dtype, and the error a round adds is that of one encoding per direction.

Error bounds per value ``x`` (round to nearest):

* ``bf16``: ``|x| * 2**-8`` (7 stored significand bits, float32's range);
* ``fp16``: ``|x| * 2**-11`` for ``|x| >= 2**-14``, ``2**-25`` below;
* ``int8``: half the chunk's ``scale`` = ``(max(x, 0) - min(x, 0)) / 510``
  (the range always holds 0, so zeros stay exact), plus the rounding of the
  result to the tensor's dtype.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from flcore.tensorfile import (
    CHUNK_BYTES,
    FLOAT_DTYPES,
    NUMPY_DTYPES,
    SpoolWriter,
    TensorFile,
    TensorFileError,
    TensorSpec,
)

MAX_DECODED_CHUNK = 4 * CHUNK_BYTES
"""What one received chunk may decode to: a sender's chunk holds at most ``CHUNK_BYTES`` of the
tensor as stored; this leaves room and bounds what a peer makes the receiver allocate."""
MIN_CHUNK = 64 * 1024
"""What a received chunk decodes to at least, but the last of its tensor: a sender cuts each
tensor into chunks of ``CHUNK_BYTES``, and a peer sending a value at a time held its transfer
(and its slot) for as many decoding steps as the model has values."""
INT8_LEVELS = 255
FLOAT32_MAX = float(np.finfo(np.float32).max)

Array = npt.NDArray[Any]


class WireCompression(enum.StrEnum):
    """How floating-point tensor chunks travel (config_fed_server.json, ``wire_compression``),
    and how one chunk is encoded (``NONE``: as stored)."""

    NONE = "none"
    BF16 = "bf16"
    FP16 = "fp16"
    INT8 = "int8"


WIRE_ITEMSIZE = {WireCompression.BF16: 2, WireCompression.FP16: 2, WireCompression.INT8: 1}


@dataclass(frozen=True)
class WireChunk:
    """A slice of one tensor as it travels. ``offset`` counts bytes of the tensor as stored
    (decoded), so chunks are checked and placed as if nothing were compressed; ``scale``
    and ``zero_point`` belong to ``INT8`` chunks: value = (byte - zero_point) * scale."""

    name: str
    offset: int
    data: bytes
    encoding: WireCompression = WireCompression.NONE
    scale: float = 0.0
    zero_point: int = 0


def _as_float(dtype: str, data: bytes) -> Array:
    """A chunk's values as a float array to compute with (BF16 widened to float32)."""
    values = np.frombuffer(data, dtype=NUMPY_DTYPES[dtype])
    if dtype == "BF16":
        return (values.astype(np.uint32) << 16).view(np.float32)
    if dtype == "F16":
        return values.astype(np.float32)
    return values


def bf16_bits(values: Array) -> Array:
    """float32 values rounded to the nearest bfloat16 (ties to even), as raw uint16."""
    bits = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32)
    rounding = ((bits >> 16) & 1) + 0x7FFF
    return ((bits + rounding) >> 16).astype(np.uint16)


def _to_dtype(dtype: str, values: Array) -> bytes:
    """Float values stored as ``dtype``, little-endian."""
    if dtype == "BF16":
        return bytes(bf16_bits(values).astype("<u2").tobytes())
    return bytes(values.astype(NUMPY_DTYPES[dtype]).tobytes())


def encode(spec: TensorSpec, offset: int, data: bytes, compression: WireCompression) -> WireChunk:
    """One chunk of a tensor as it goes on the wire: compressed when that is possible and
    smaller, else as stored."""
    plain = WireChunk(spec.name, offset, data)
    if compression is WireCompression.NONE or spec.dtype not in FLOAT_DTYPES or not data:
        return plain
    if NUMPY_DTYPES[spec.dtype].itemsize <= WIRE_ITEMSIZE[compression]:
        return plain  # a 16-bit tensor as 16 bits again gains nothing and loses bits
    values = _as_float(spec.dtype, data)
    if compression is WireCompression.INT8:
        return _encode_int8(plain, values) or plain
    if compression is WireCompression.BF16:
        bits = bf16_bits(values.astype(np.float32, copy=False))
        if np.any((bits & 0x7F80) == 0x7F80):  # NaN, infinity, or beyond bfloat16's range
            return plain
        return WireChunk(spec.name, offset, bits.astype("<u2").tobytes(), compression)
    with np.errstate(over="ignore"):
        halves = values.astype("<f2")
    if not np.isfinite(halves).all():
        return plain
    return WireChunk(spec.name, offset, halves.tobytes(), compression)


def _encode_int8(plain: WireChunk, values: Array) -> WireChunk | None:
    """Affine 8-bit quantization of a chunk over [min(x, 0), max(x, 0)]; None when its
    values cannot be (NaN, infinity, or a span whose scale float32 cannot hold)."""
    low, high = float(values.min()), float(values.max())
    if not (np.isfinite(low) and np.isfinite(high)):
        return None
    low, high = min(low, 0.0), max(high, 0.0)
    span = high - low  # in float64: no overflow for any float32 range
    if span == 0.0:
        return WireChunk(plain.name, plain.offset, bytes(values.size), WireCompression.INT8, 0.0, 0)
    scale = np.float32(span / INT8_LEVELS)
    if float(scale) < span / INT8_LEVELS:  # rounded down: the top value would fall off
        scale = np.nextafter(scale, np.float32(np.inf))
    if not (np.isfinite(scale) and scale > 0):
        return None
    zero_point = int(np.clip(np.rint(-low / float(scale)), 0, INT8_LEVELS))
    levels = values / scale.astype(values.dtype)
    np.rint(levels, out=levels)
    levels += zero_point
    np.clip(levels, 0, INT8_LEVELS, out=levels)
    return WireChunk(
        plain.name,
        plain.offset,
        levels.astype(np.uint8).tobytes(),
        WireCompression.INT8,
        float(scale),
        zero_point,
    )


def encoded_chunks(
    model: TensorFile, compression: WireCompression
) -> Iterator[tuple[WireChunk, int]]:
    """A model file's chunks as they go on the wire, with the bytes of the file each stands
    for."""
    specs = {spec.name: spec for spec in model.manifest.tensors}
    for name, offset, data in model.iter_chunks():
        yield encode(specs[name], offset, data, compression), len(data)


def decoded_size(spec: TensorSpec, chunk: WireChunk) -> int:
    """Bytes the chunk stands for in the tensor as stored; TensorFileError for a chunk no
    sender makes (checked before anything is allocated)."""
    if chunk.encoding is WireCompression.NONE:
        return len(chunk.data)
    if spec.dtype not in FLOAT_DTYPES:
        raise TensorFileError(
            f"tensor {spec.name!r} holds {spec.dtype} values; they cannot come as "
            f"{chunk.encoding.value}"
        )
    width = WIRE_ITEMSIZE[chunk.encoding]
    if len(chunk.data) % width:
        raise TensorFileError(f"tensor {spec.name!r}: chunk does not hold whole elements")
    size = len(chunk.data) // width * spec.itemsize
    if size > MAX_DECODED_CHUNK:
        raise TensorFileError(
            f"tensor {spec.name!r}: a chunk of {size:,} bytes once decoded; at most "
            f"{MAX_DECODED_CHUNK:,}"
        )
    if chunk.encoding is WireCompression.INT8 and not (
        0 <= chunk.scale <= FLOAT32_MAX and 0 <= chunk.zero_point <= INT8_LEVELS
    ):
        raise TensorFileError(
            f"tensor {spec.name!r}: int8 chunk with scale {chunk.scale!r} and zero point "
            f"{chunk.zero_point}; the scale must be a float32 >= 0 and the zero point "
            f"0-{INT8_LEVELS}"
        )
    return size


def _largest(dtype: str) -> float:
    """The largest finite value of a float dtype (bfloat16's is below float32's)."""
    if dtype == "BF16":
        return float((np.uint32(0x7F7F) << np.uint32(16)).view(np.float32))
    return float(np.finfo(NUMPY_DTYPES[dtype]).max)


def decode(spec: TensorSpec, chunk: WireChunk) -> bytes:
    """A chunk's bytes as the tensor stores them; call :func:`decoded_size` first."""
    if chunk.encoding is WireCompression.NONE:
        return chunk.data
    if chunk.encoding is WireCompression.INT8:
        # (byte - zero point) is exact in float32, so one rounding: the product's.
        wide = np.dtype(np.float64 if spec.dtype == "F64" else np.float32)
        values: Array = np.frombuffer(chunk.data, dtype=np.uint8).astype(wide)
        np.subtract(values, chunk.zero_point, out=values)
        with np.errstate(over="ignore"):
            np.multiply(values, wide.type(chunk.scale), out=values)
        limit = _largest(spec.dtype)
        return _to_dtype(spec.dtype, np.clip(values, -limit, limit, out=values))
    if chunk.encoding is WireCompression.BF16:
        values = _as_float("BF16", chunk.data)
    else:
        values = np.frombuffer(chunk.data, dtype="<f2")
    with np.errstate(over="ignore"):  # an overflow decodes to infinity, refused where checked
        return _to_dtype(spec.dtype, values)


def receive(spool: SpoolWriter, chunk: WireChunk) -> int:
    """Decode a received chunk and append it to a spool (which checks it as any chunk);
    returns the bytes it stood for. TensorFileError for a chunk that is wrong, among them
    an empty one but of a tensor of zero bytes, a short one but a tensor's last, and one
    more than the model can come in."""
    spool.arrived(chunk.name, chunk.offset, not chunk.data)
    if not chunk.data:
        return 0
    spec, room = spool.expect(chunk.name, chunk.offset)
    size = decoded_size(spec, chunk)
    if size > room:
        raise TensorFileError(
            f"tensor {spec.name!r}: chunk runs past the declared size of {spec.nbytes} bytes"
        )
    if size < min(MIN_CHUNK, room):
        raise TensorFileError(
            f"tensor {spec.name!r}: a chunk of {size} bytes at byte {chunk.offset} that does "
            f"not end the tensor; a chunk holds at least {MIN_CHUNK} bytes but a tensor's last"
        )
    spool.write(chunk.name, chunk.offset, decode(spec, chunk))
    return size
