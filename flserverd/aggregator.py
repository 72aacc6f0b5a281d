"""How one round's updates become the next global model: FedAvg or a robust rule.

Every aggregator follows the :class:`Aggregator` protocol: the round
controller hands it each complete, validated update as it arrives
(``add``), asks it for the new global model once the round closes
(``write``), and lets it drop what it kept (``discard``). Three rules, chosen
by ``aggregator`` in config_fed_server.json:

* ``fedavg``: the sample-weighted mean, folded into one running sum as
  updates arrive (the accumulator is one model, whatever the number of
  clients, and it lives in a file of the round's folder, not in the
  server's memory: :class:`RunningSum`), in one canonical order
  (:class:`CanonicalFold`);
* ``median``: the coordinate-wise median, every site one vote;
* ``trimmed_mean``: per coordinate, the ``trim_fraction`` largest and
  smallest values are dropped and the rest averaged, every site one vote.

The two robust rules need every update of the round at once, so they keep
the spool files (``run_N/.spool/round_<r>/``) and compute the model window by
window when the round closes: for each window of at most
``WINDOW_BYTES / N`` elements, the window is read from each of the N files,
the rule applied per coordinate, and the result written out. Memory stays
O(N x window), never O(N x model); disk holds the N updates until the round
is written. Self-reported sample counts do not weight them, so a site cannot
buy votes by claiming more data.

``clip_update_norm`` bounds each update before any rule: an update whose
difference to the round's input model has an L2 norm (over floating-point
tensors) above the bound is scaled back onto it. Norms are computed by
reading the update alongside the round's input model, slab by slab: with
clipping, and by the robust rules; plain FedAvg skips it, so its fold
stays one read of the update.

Each update also gets an *outlier score*: its distance to the round's
aggregate divided by the median of those distances over the round (about 1
for a typical update; a scaled or sign-flipped one stands out). Distances
are measured on a fixed random sample of ``SAMPLE_SIZE`` floating-point
coordinates (all of them for a smaller model); because every rule works
coordinate by coordinate, applying it to the samples gives exactly the
aggregate's values there, so this costs no second pass over the updates.

Floating-point tensors are combined in float32 (float64 for F64 tensors).
Integer tensors (e.g. BatchNorm's num_batches_tracked) are combined and
rounded; boolean tensors take the (weighted) majority.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import shutil
import threading
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from flcore import faultpoints
from flcore.appconfig import ServerAppConfig, trimmed_per_end
from flcore.atomic import atomic_writer
from flcore.tensorfile import (
    FLOAT_DTYPES,
    NUMPY_DTYPES,
    Manifest,
    TensorFile,
    TensorSpec,
    header_bytes,
)

SLAB_ELEMENTS = 1 << 20
WINDOW_BYTES = 32 * 1024 * 1024
"""What a robust rule reads per window, all updates together."""
MIN_WINDOW_ELEMENTS = 4096
SAMPLE_SIZE = 4096
SAMPLE_SEED = 20240601
RUNNING_SUM = ".running_sum"
"""FedAvg's running sum in the round's folder (no instance's update file is named so)."""

Array = npt.NDArray[Any]
Rule = Callable[[Array, Array], Array]
"""Combines a (updates x coordinates) matrix into one row, given each update's weight."""


def _accumulator_dtype(dtype: str) -> np.dtype[Any]:
    """float64 for F64 and every integer dtype (float32 holds integers exactly only up to
    2^24: 123456789 from every site became 123456792), float32 for the other floats."""
    wide = dtype == "F64" or dtype.startswith(("I", "U"))
    return np.dtype(np.float64) if wide else np.dtype(np.float32)


def _widen(dtype: str, values: Array) -> Array:
    """Values as accumulator floats; BF16 arrives as raw uint16."""
    if dtype == "BF16":
        return (values.astype(np.uint32) << 16).view(np.float32)
    return values.astype(_accumulator_dtype(dtype), copy=False)


def _narrow(dtype: str, values: Array) -> Array:
    """Accumulator floats back to the tensor's storage dtype."""
    if dtype == "BF16":
        bits = values.astype(np.float32).view(np.uint32)
        rounding = ((bits >> 16) & 1) + 0x7FFF
        return ((bits + rounding) >> 16).astype(np.uint16)
    if dtype == "BOOL":
        values = values >= 0.5
    elif dtype.startswith(("I", "U")):
        # Within the dtype's range: a float at its top (2^63) would wrap to its bottom.
        info = np.iinfo(NUMPY_DTYPES[dtype])
        top = np.nextafter(np.float64(info.max), -np.inf) if info.bits == 64 else info.max
        values = np.clip(np.rint(values), info.min, top)
    return values.astype(NUMPY_DTYPES[dtype], copy=False)


def weighted_mean(matrix: Array, weights: Array) -> Array:
    """FedAvg's rule: the weighted mean of each column."""
    column = weights.astype(matrix.dtype).reshape(-1, 1)
    return np.asarray((matrix * column).sum(axis=0) / column.sum())


def median(matrix: Array, weights: Array) -> Array:
    """The coordinate-wise median (weights ignored: one vote per update).

    Sorting each column and taking the middle is two to three times faster
    than ``np.median`` on the few-rows-by-a-million-columns windows here.
    """
    ordered = np.sort(matrix, axis=0)
    middle = matrix.shape[0] // 2
    if matrix.shape[0] % 2:
        return np.asarray(ordered[middle])
    return np.asarray((ordered[middle - 1] + ordered[middle]) / 2)


def trimmed_mean(fraction: float) -> Rule:
    """The coordinate-wise mean after dropping the ``fraction`` largest and smallest values."""

    def rule(matrix: Array, weights: Array) -> Array:
        count = matrix.shape[0]
        cut = trimmed_per_end(fraction, count)
        if cut == 0:
            return np.asarray(matrix.mean(axis=0))
        return np.asarray(np.sort(matrix, axis=0)[cut : count - cut].mean(axis=0))

    return rule


@dataclass(frozen=True)
class UpdateStats:
    """What the round learned about one update, for metrics.jsonl and the console.

    ``norm`` is the L2 distance of the update to the round's input model over
    its floating-point tensors, before clipping (None where it was not
    measured: plain FedAvg does not read the input model); ``score`` its
    outlier score.
    """

    norm: float | None
    score: float

    def as_json(self) -> dict[str, float]:
        """The stats as metrics.jsonl and the database keep them."""
        data = {"score": _finite(self.score)}
        if self.norm is not None:
            data["norm"] = _finite(self.norm)
        return data


def _finite(value: float) -> float:
    """A number JSON can hold: an overflowing norm is reported as the largest float."""
    return round(value, 6) if math.isfinite(value) else float(np.finfo(np.float64).max)


class Aggregator(Protocol):
    """One round's aggregation; ``add``, ``fold_due`` and ``write`` block, so callers run them
    in a worker thread. One ``fold_due`` may run beside one ``add`` (a sender's verdict does
    not wait for the fold of the update before it); every other call runs alone."""

    @property
    def count(self) -> int:
        """Updates added so far."""

    def add(self, source: str, update: TensorFile, weight: float) -> None:
        """Take a complete, validated update of ``source`` with a positive ``weight``.

        The aggregator may move the update's file into its own folder and
        keep it until :meth:`discard`.
        """

    def fold_due(self, awaited: Collection[str]) -> int:
        """Do the reading that may be done before the round closes, given the clients that may
        still send; returns how many updates were folded."""

    def write(
        self, target: Path, metadata: Mapping[str, str] | None = None
    ) -> dict[str, UpdateStats]:
        """Write the new global model atomically and durably; stats of each update."""

    def discard(self) -> None:
        """Delete what was kept for this round (after ``write``, or when the round is abandoned)."""


class _Sample:
    """A fixed random set of floating-point coordinates of a model, per tensor.

    The same set for every update of every round (a fixed seed), so scores of
    different rounds and of a resumed run are comparable.
    """

    def __init__(self, manifest: Manifest, size: int = SAMPLE_SIZE) -> None:
        floats = [spec for spec in manifest.tensors if spec.dtype in FLOAT_DTYPES]
        total = sum(math.prod(spec.shape) for spec in floats)
        picked = np.sort(
            np.random.default_rng(SAMPLE_SEED).choice(total, min(size, total), replace=False)
        )
        self.size = int(picked.size)
        self.where: dict[str, tuple[int, npt.NDArray[np.int64]]] = {}
        """Per float tensor: where its values start in the sample, and its picked indices."""
        start = 0
        for spec in floats:
            end = start + math.prod(spec.shape)
            lo, hi = np.searchsorted(picked, [start, end])
            self.where[spec.name] = (int(lo), (picked[lo:hi] - start).astype(np.int64))
            start = end

    def values_of(self, model: TensorFile) -> Array:
        """The sampled values of a model file, read one by one (a memory map would pull the
        pages around each into the process's resident memory: most of the file)."""
        values = np.zeros(self.size, dtype=np.float64)
        with model.path.open("rb") as handle:
            for spec in model.manifest.tensors:
                entry = self.where.get(spec.name)
                if entry is None or not entry[1].size:
                    continue
                offset, indices = entry
                dtype = NUMPY_DTYPES[spec.dtype]
                start = model.data_start + model.offsets[spec.name][0]
                raw = b"".join(
                    os.pread(handle.fileno(), dtype.itemsize, start + int(i) * dtype.itemsize)
                    for i in indices
                )
                values[offset : offset + indices.size] = _widen(
                    spec.dtype, np.frombuffer(raw, dtype=dtype)
                )
        return values

    def take(self, name: str, start: int, slab: Array, into: Array) -> None:
        """Copy the picked values of a slab (tensor ``name``, elements from ``start``) into
        ``into``."""
        entry = self.where.get(name)
        if entry is None:
            return
        offset, indices = entry
        lo, hi = np.searchsorted(indices, [start, start + slab.size])
        into[offset + lo : offset + hi] = slab[indices[lo:hi] - start]


@functools.lru_cache(maxsize=4)
def _sample_of(manifest: Manifest) -> _Sample:
    """The sample of a model's coordinates: the same for every round of a run, made once
    (the draw takes some milliseconds for a large model)."""
    return _Sample(manifest)


@dataclass
class _Received:
    """An update as the round keeps it in mind."""

    weight: float
    norm: float | None
    factor: float
    """What clipping multiplies its difference to the input model by (1: unclipped)."""
    sample: Array
    path: Path | None = None


def _slabs(model: TensorFile, spec: TensorSpec, elements: int) -> Iterator[tuple[int, Array]]:
    """A tensor's values as accumulator floats, ``elements`` at a time, with their start."""
    start = 0
    for raw in model.iter_slabs(spec.name, elements):
        yield start, _widen(spec.dtype, raw)
        start += raw.size


def _window(model: TensorFile, spec: TensorSpec, start: int, count: int) -> Array:
    """Elements ``start .. start+count`` of one tensor, read without keeping the file open."""
    dtype = NUMPY_DTYPES[spec.dtype]
    offset = model.data_start + model.offsets[spec.name][0] + start * dtype.itemsize
    return _widen(spec.dtype, np.fromfile(model.path, dtype=dtype, count=count, offset=offset))


class _RoundUpdates:
    """What every rule shares: the round's input model, clipping, norms and outlier scores."""

    def __init__(
        self, manifest: Manifest, reference: Path, rule: Rule, clip_norm: float | None = None
    ) -> None:
        self.manifest = manifest
        self.reference_path = reference
        self.rule = rule
        self.clip_norm = clip_norm
        self.received: dict[str, _Received] = {}
        self._sample = _sample_of(manifest)
        self._reference: TensorFile | None = None
        self._reference_sample: Array | None = None

    @property
    def reference(self) -> TensorFile:
        """The round's input model, opened when first needed."""
        if self._reference is None:
            self._reference = TensorFile(self.reference_path)
        return self._reference

    @property
    def count(self) -> int:
        """Updates added so far."""
        return len(self.received)

    @property
    def total_weight(self) -> float:
        """Sum of the weights added so far."""
        return sum(r.weight for r in self.received.values())

    def _check(self, source: str, update: TensorFile, weight: float) -> None:
        if weight <= 0:
            raise ValueError("an update's weight (sample count) must be positive")
        if source in self.received:
            raise ValueError(f"an update of {source} was already added to this round")
        # By name: a file may lay its tensors out in any order (an update written by
        # safetensors' own writer sorts them; flstack's keeps the state dict's order).
        problems = self.manifest.differences(update.manifest)
        if problems:
            raise ValueError(
                f"the update's tensors differ from the round's input model: {'; '.join(problems)}"
            )

    def _read(
        self,
        update: TensorFile,
        visit: Callable[[TensorSpec, int, Array, Array | None], None] | None = None,
        against_input: bool = True,
    ) -> tuple[float | None, Array]:
        """Read an update slab by slab: its sample, and ``against_input`` also its norm (the
        input model is read alongside). ``visit`` sees each slab with its difference to the
        input model (None for non-float tensors, or not ``against_input``)."""
        squares = 0.0
        sample = np.zeros(self._sample.size, dtype=np.float64)
        for spec in self.manifest.tensors:
            floating = spec.dtype in FLOAT_DTYPES
            inputs = (
                _slabs(self.reference, spec, SLAB_ELEMENTS) if floating and against_input else None
            )
            for start, values in _slabs(update, spec, SLAB_ELEMENTS):
                difference = None
                if floating:
                    self._sample.take(spec.name, start, values, sample)
                if inputs is not None:
                    # In place: a slab of the input model, then of the difference (memory).
                    _, base = next(inputs)
                    difference = np.subtract(values, base, out=base)
                    del base
                    squares += float(np.dot(difference, difference))
                if visit is not None:
                    visit(spec, start, values, difference)
                del values, difference  # before the next slabs are read
        return (math.sqrt(squares) if against_input else None), sample

    def _factor(self, norm: float | None) -> float:
        if self.clip_norm is None or norm is None or norm <= self.clip_norm:
            return 1.0
        return self.clip_norm / norm if math.isfinite(norm) else 0.0

    def _clipped_sample(self, received: _Received) -> Array:
        """An update's sample as it was combined (clipped towards the input model)."""
        if received.factor == 1.0:
            return received.sample
        if self._reference_sample is None:
            self._reference_sample = self._sample.values_of(self.reference)
        base = self._reference_sample
        return base + received.factor * (received.sample - base)

    def _stats(self) -> dict[str, UpdateStats]:
        """Norms and outlier scores of the round's updates, from their samples."""
        names = sorted(self.received)
        rows = np.stack([self._clipped_sample(self.received[n]) for n in names])
        weights = np.array([self.received[n].weight for n in names])
        aggregate = self.rule(rows, weights)
        distances = np.sqrt(((rows - aggregate) ** 2).sum(axis=1))
        typical = float(np.median(distances)) or float(distances.max())
        scores = distances / typical if typical > 0 else np.zeros_like(distances)
        return {
            name: UpdateStats(self.received[name].norm, float(score))
            for name, score in zip(names, scores, strict=True)
        }


class RunningSum:
    """FedAvg's running weighted sum of one round, in a file rather than in the server's memory.

    The sum of a 2 GB model is 2 GB of float32: held in the server's heap it
    made the daemon's resident memory grow with the model. Here it is a file
    (``RUNNING_SUM`` in the round's folder, deleted with it) that the fold
    reads and writes one slab at a time with ``pread``/``pwrite``: the page
    cache holds it while there is memory to spare, the kernel writes it back
    when there is not, and the daemon's own memory is one slab. Explicit I/O
    rather than a memory map: a mapped page counts against the process until
    it is unmapped, and a write through a map to a full disk kills the
    process with SIGBUS instead of raising ENOSPC. The whole size is
    allocated (``posix_fallocate``) when the first update is folded, so a
    full disk is refused before any byte of the sum is written.

    The arithmetic is the in-memory sum's, element for element: the sum
    starts at +0.0 and each update is added to it in its own dtype
    (``float32``; ``float64`` for F64 and I64 tensors), so the bytes of the
    average are the same as when it was held in memory.
    """

    def __init__(self, manifest: Manifest, path: Path) -> None:
        self.path = path
        self._where, self.nbytes = self._layout(manifest)
        """Per tensor: where its sum starts in the file, and the sum's dtype; the file's size."""
        self._buffer = np.empty(0, dtype=np.uint8)

    @staticmethod
    def _layout(manifest: Manifest) -> tuple[dict[str, tuple[int, np.dtype[Any]]], int]:
        where = {}
        offset = 0
        for spec in manifest.tensors:
            dtype = _accumulator_dtype(spec.dtype)
            where[spec.name] = (offset, dtype)
            offset += math.prod(spec.shape) * dtype.itemsize
        return where, offset

    @classmethod
    def size_of(cls, manifest: Manifest) -> int:
        """Bytes of the running sum of a model: what a round needs on disk beside its updates
        and its checkpoint."""
        return cls._layout(manifest)[1]

    @contextlib.contextmanager
    def adding(self, first: bool) -> Iterator[Callable[[str, int, Array], None]]:
        """Open the sum for one update's fold (creating it for the ``first``); yields
        ``add(tensor name, start element, values)``, which adds the values (already weighted,
        in the sum's dtype) at their place."""
        if first:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            flags = os.O_RDWR | os.O_CREAT | os.O_TRUNC
        else:
            flags = os.O_RDWR
        fd = os.open(self.path, flags, 0o600)
        try:
            if first and self.nbytes:
                os.posix_fallocate(fd, 0, self.nbytes)

            def add(name: str, start: int, values: Array) -> None:
                offset, dtype = self._where[name]
                offset += start * dtype.itemsize
                if first:
                    np.add(values, 0.0, out=values)  # 0.0 + x: -0.0 becomes +0.0, as before
                    _write_all(fd, values, offset)
                    return
                total = self._slab(values.size, dtype)
                _read_all(fd, total, offset)
                total += values
                _write_all(fd, total, offset)

            yield add
        finally:
            os.close(fd)

    def slabs(self, spec: TensorSpec, elements: int) -> Iterator[Array]:
        """One tensor's sum, ``elements`` at a time (a buffer reused for the next slab)."""
        offset, dtype = self._where[spec.name]
        total = math.prod(spec.shape)
        fd = os.open(self.path, os.O_RDONLY)
        try:
            for start in range(0, total, elements):
                slab = self._slab(min(elements, total - start), dtype)
                _read_all(fd, slab, offset + start * dtype.itemsize)
                yield slab
        finally:
            os.close(fd)

    def delete(self) -> None:
        """Let the sum go (its pages are dropped from the page cache unwritten if still there)."""
        self.path.unlink(missing_ok=True)

    def _slab(self, count: int, dtype: np.dtype[Any]) -> Array:
        """A view of one reused buffer: the fold allocates nothing per slab."""
        size = count * dtype.itemsize
        if self._buffer.size < size:
            self._buffer = np.empty(size, dtype=np.uint8)
        return self._buffer[:size].view(dtype)


def _read_all(fd: int, into: Array, offset: int) -> None:
    view = into.data.cast("B")
    done = 0
    while done < len(view):
        count = os.preadv(fd, [view[done:]], offset + done)
        if count == 0:
            raise OSError(f"the running sum ends before byte {offset + len(view)}")
        done += count


def _write_all(fd: int, values: Array, offset: int) -> None:
    view = values.data.cast("B")
    done = 0
    while done < len(view):
        done += os.pwrite(fd, view[done:], offset + done)


class FedAvg(_RoundUpdates):
    """Running weighted sum of the updates of one round, kept in ``folder`` (a
    :class:`RunningSum`)."""

    def __init__(
        self, manifest: Manifest, reference: Path, folder: Path, clip_norm: float | None = None
    ) -> None:
        super().__init__(manifest, reference, weighted_mean, clip_norm)
        self._sum = RunningSum(manifest, folder / RUNNING_SUM)

    def add(self, source: str, update: TensorFile, weight: float) -> None:
        """Add ``weight`` x update (clipped first when a bound is set).

        Without a bound the update is read once and the input model not at
        all (no norm); with one, a first pass measures the norm, and the
        fold reads the input model again only when the update is clipped.
        """
        self._check(source, update, weight)
        norm = self._read(update)[0] if self.clip_norm is not None else None
        factor = self._factor(norm)
        second = self.manifest.tensors[1] if len(self.manifest.tensors) > 1 else None

        with self._sum.adding(first=not self.received) as add:

            def fold(spec: TensorSpec, start: int, values: Array, difference: Array | None) -> None:
                if start == 0 and spec is second:
                    # Mid-fold: a tensor is in the sum.
                    faultpoints.reached(faultpoints.SERVER_FOLD)
                if difference is not None and factor != 1.0:
                    values -= (1.0 - factor) * difference
                values *= weight
                add(spec.name, start, values)

            _, sample = self._read(update, fold, against_input=factor != 1.0)
        self.received[source] = _Received(weight, norm, factor, sample)

    def write(
        self, target: Path, metadata: Mapping[str, str] | None = None
    ) -> dict[str, UpdateStats]:
        """Write the average as a safetensors file, atomically and durably."""
        if not self.received:
            raise ValueError("no update was folded into this round")
        total_weight = self.total_weight
        with atomic_writer(target) as handle:
            handle.write(header_bytes(self.manifest, metadata))
            faultpoints.reached(faultpoints.SERVER_CHECKPOINT)
            for spec in self.manifest.tensors:
                for total in self._sum.slabs(spec, SLAB_ELEMENTS):
                    mean = np.divide(total, total_weight, out=total)
                    handle.write(_narrow(spec.dtype, mean).data)
        return self._stats()

    def fold_due(self, awaited: Collection[str]) -> int:
        """Every update is folded as it is added."""
        return 0

    def discard(self) -> None:
        """Delete the running sum."""
        self._sum.delete()


class CanonicalFold:
    """FedAvg with the updates folded in the order of their senders' instance names, so that
    the average does not depend on the order in which they arrived.

    Floating-point addition is not associative: with three or more updates,
    folding them in arrival order (which differs from run to run) changes the
    last bits of the average, and a seeded run could never be repeated bit for
    bit, nor a run resumed after a crash end where the same run left alone
    would. An update whose turn has not come yet waits in its file (kept in
    ``keep_dir``); it is folded as soon as no client that may still send
    sorts before it, and at the latest when the round closes. Folding stays
    incremental in the common case, and the server's memory is still one
    slab (the sum is a file: :class:`RunningSum`).

    An update that arrives after one sorting after it was folded (a client
    that joined the round late, or resent after a server restart) breaks the
    order; the sum is then rebuilt from the kept files when the round closes.
    Every accepted update's file is therefore kept until the round is
    discarded: up to ``max_num_clients`` models on disk, as during concurrent
    uploads.
    """

    def __init__(self, start: Callable[[], FedAvg], keep_dir: Path) -> None:
        self._start = start
        self._fedavg = start()
        self.keep_dir = keep_dir
        self._kept: dict[str, tuple[TensorFile, float]] = {}
        self._kept_lock = threading.Lock()
        """``add`` runs beside ``fold_due``: the kept updates change under it."""
        self._folded: list[str] = []

    @property
    def count(self) -> int:
        """Updates added so far (folded or waiting for their turn)."""
        return len(self._kept)

    def add(self, source: str, update: TensorFile, weight: float) -> None:
        """Keep an accepted update until its turn; its file now belongs to the round."""
        if weight <= 0:
            raise ValueError("an update's weight (sample count) must be positive")
        with self._kept_lock:
            if source in self._kept:
                raise ValueError(f"an update of {source} was already added to this round")
            self._kept[source] = (update, weight)

    def fold_due(self, awaited: Collection[str]) -> int:
        """Fold the kept updates whose turn has come: no awaited client sorts before them."""
        first_awaited = min(awaited, default=None)
        with self._kept_lock:
            waiting = sorted(self._kept.keys() - set(self._folded))
        done = 0
        for source in waiting:
            if self._folded and source < self._folded[-1]:
                break  # out of order: write() rebuilds the sum
            if first_awaited is not None and first_awaited < source:
                break
            self._fold(source)
            done += 1
        return done

    def write(
        self, target: Path, metadata: Mapping[str, str] | None = None
    ) -> dict[str, UpdateStats]:
        """Fold what is left in order (rebuilding the sum when the order was broken) and write
        the average; writing again writes the same bytes."""
        order = sorted(self._kept)
        if self._folded != order[: len(self._folded)]:
            self._restart()
        for source in order[len(self._folded) :]:
            self._fold(source)
        return self._fedavg.write(target, metadata)

    def discard(self) -> None:
        """Delete the running sum and the kept update files."""
        self._fedavg.discard()
        shutil.rmtree(self.keep_dir, ignore_errors=True)

    def _fold(self, source: str) -> None:
        with self._kept_lock:
            update, weight = self._kept[source]
        try:
            self._fedavg.add(source, update, weight)
        except BaseException:
            # A fold cut short (a failing disk) may have added part of the update: the sum
            # is rebuilt from the kept files when the round closes.
            self._restart()
            raise
        self._folded.append(source)

    def _restart(self) -> None:
        self._fedavg.discard()
        self._fedavg = self._start()
        self._folded = []


class CoordinateWise(_RoundUpdates):
    """A robust rule (median, trimmed mean) over the round's kept update files."""

    def __init__(
        self,
        manifest: Manifest,
        reference: Path,
        rule: Rule,
        keep_dir: Path,
        clip_norm: float | None = None,
    ) -> None:
        super().__init__(manifest, reference, rule, clip_norm)
        self.keep_dir = keep_dir

    def add(self, source: str, update: TensorFile, weight: float) -> None:
        """Measure the update and keep its file until the round is written."""
        self._check(source, update, weight)
        norm, sample = self._read(update)
        self.keep_dir.mkdir(parents=True, exist_ok=True)
        kept = self.keep_dir / f"{source}.safetensors"
        update.path.replace(kept)
        self.received[source] = _Received(weight, norm, self._factor(norm), sample, kept)

    def write(
        self, target: Path, metadata: Mapping[str, str] | None = None
    ) -> dict[str, UpdateStats]:
        """Apply the rule window by window over the kept files and write the result."""
        if not self.received:
            raise ValueError("no update was added to this round")
        names = sorted(self.received)
        kept = [self.received[n] for n in names]
        models = [TensorFile(r.path) for r in kept if r.path is not None]
        weights = np.array([r.weight for r in kept])
        factors = np.array([r.factor for r in kept]).reshape(-1, 1)
        clipped = bool((factors < 1.0).any())
        with atomic_writer(target) as handle:
            handle.write(header_bytes(self.manifest, metadata))
            for spec in self.manifest.tensors:
                size = math.prod(spec.shape)
                width = _accumulator_dtype(spec.dtype).itemsize
                step = max(MIN_WINDOW_ELEMENTS, WINDOW_BYTES // (width * len(models)))
                for start in range(0, size, step):
                    count = min(step, size - start)
                    rows = np.stack([_window(m, spec, start, count) for m in models])
                    if clipped and spec.dtype in FLOAT_DTYPES:
                        base = _window(self.reference, spec, start, count)
                        rows = base + (factors * (rows - base)).astype(rows.dtype)
                    handle.write(_narrow(spec.dtype, self.rule(rows, weights)).tobytes())
        return self._stats()

    def fold_due(self, awaited: Collection[str]) -> int:
        """Nothing is folded before the round closes: the rule needs every update at once."""
        return 0

    def discard(self) -> None:
        """Delete the kept update files."""
        shutil.rmtree(self.keep_dir, ignore_errors=True)


def make_aggregator(
    config: ServerAppConfig, manifest: Manifest, reference: Path, keep_dir: Path
) -> Aggregator:
    """The aggregator config_fed_server.json asks for, for a round whose input model is
    ``reference``; robust rules keep the round's update files in ``keep_dir``."""
    clip = config.clip_update_norm
    if config.aggregator == "median":
        return CoordinateWise(manifest, reference, median, keep_dir, clip)
    if config.aggregator == "trimmed_mean":
        rule = trimmed_mean(config.trim_fraction)
        return CoordinateWise(manifest, reference, rule, keep_dir, clip)
    return CanonicalFold(lambda: FedAvg(manifest, reference, keep_dir, clip), keep_dir)
