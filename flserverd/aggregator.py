"""Sample-weighted FedAvg, folded one update at a time.

The server keeps one running weighted sum per round, never one copy of the
model per client: each complete, validated update is read back from its
spool file slab by slab and added in. Peak memory is
the accumulator plus one slab, whatever the number of clients.

Floating-point tensors are averaged in float32 (float64 for F64 tensors).
Integer tensors (e.g. BatchNorm's num_batches_tracked) are averaged and
rounded; boolean tensors take the weighted majority.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from flcore import faultpoints
from flcore.atomic import atomic_writer
from flcore.tensorfile import NUMPY_DTYPES, Manifest, TensorFile, header_bytes

SLAB_ELEMENTS = 1 << 20


def _accumulator_dtype(dtype: str) -> np.dtype[Any]:
    return np.dtype(np.float64) if dtype in ("F64", "I64") else np.dtype(np.float32)


def _widen(dtype: str, values: npt.NDArray[Any]) -> npt.NDArray[Any]:
    """Values as accumulator floats; BF16 arrives as raw uint16."""
    if dtype == "BF16":
        return (values.astype(np.uint32) << 16).view(np.float32)
    return values.astype(_accumulator_dtype(dtype), copy=False)


def _narrow(dtype: str, values: npt.NDArray[Any]) -> npt.NDArray[Any]:
    """Accumulator floats back to the tensor's storage dtype."""
    if dtype == "BF16":
        bits = values.astype(np.float32).view(np.uint32)
        rounding = ((bits >> 16) & 1) + 0x7FFF
        return ((bits + rounding) >> 16).astype(np.uint16)
    if dtype == "BOOL":
        values = values >= 0.5
    elif dtype.startswith(("I", "U")):
        values = np.rint(values)
    return values.astype(NUMPY_DTYPES[dtype])


class FedAvg:
    """Running weighted sum of the updates of one round."""

    def __init__(self, manifest: Manifest) -> None:
        self.manifest = manifest
        self.total_weight = 0.0
        self.count = 0
        self._sums: dict[str, npt.NDArray[Any]] = {}

    def fold(self, update: TensorFile, weight: float) -> None:
        """Add ``weight`` x update; blocking, so callers run it in a worker thread."""
        if weight <= 0:
            raise ValueError("an update's weight (sample count) must be positive")
        for index, spec in enumerate(self.manifest.tensors):
            if index == 1:
                faultpoints.reached(faultpoints.SERVER_FOLD)
            total = self._sums.get(spec.name)
            if total is None:
                total = np.zeros(spec.shape, dtype=_accumulator_dtype(spec.dtype))
                self._sums[spec.name] = total
            flat_total = total.reshape(-1)
            start = 0
            for slab in update.iter_slabs(spec.name, SLAB_ELEMENTS):
                flat_total[start : start + slab.size] += _widen(spec.dtype, slab) * weight
                start += slab.size
        self.total_weight += weight
        self.count += 1

    def write(self, target: Path, metadata: Mapping[str, str] | None = None) -> None:
        """Write the average as a safetensors file, atomically and durably."""
        if self.count == 0:
            raise ValueError("no update was folded into this round")
        with atomic_writer(target) as handle:
            handle.write(header_bytes(self.manifest, metadata))
            faultpoints.reached(faultpoints.SERVER_CHECKPOINT)
            for spec in self.manifest.tensors:
                flat = self._sums[spec.name].reshape(-1)
                for start in range(0, flat.size, SLAB_ELEMENTS):
                    slab = flat[start : start + SLAB_ELEMENTS] / self.total_weight
                    handle.write(_narrow(spec.dtype, slab).tobytes())
