"""flserverd.aggregator.RunningSum: FedAvg's sum in a file gives the bytes the in-memory sum gave,
and a fold that fails (a full or failing disk) never leaves part of an update in it."""

from __future__ import annotations

import errno
import math
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import safetensors.torch
import torch

import flserverd.aggregator as aggregator
from flcore.tensorfile import Manifest, TensorFile, header_bytes
from flserverd.aggregator import (
    RUNNING_SUM,
    SLAB_ELEMENTS,
    CanonicalFold,
    FedAvg,
    _accumulator_dtype,
    _narrow,
    _slabs,
)

SITES = ["site-a", "site-b", "site-c", "site-d"]
WEIGHTS = {"site-a": 3.0, "site-b": 7.0, "site-c": 1.0, "site-d": 5.0}


def site_updates(tmp_path: Path) -> dict[str, Path]:
    """Four updates of mixed dtypes, a tensor longer than a slab, signed zeros and magnitudes
    that make the float32 sum depend on the order of addition."""
    gen = torch.Generator().manual_seed(5)
    paths = {}
    for index, site in enumerate(SITES):
        scale = 10.0 ** (index - 2)
        big = torch.randn(SLAB_ELEMENTS + 1000, generator=gen) * scale
        big[:8] = -0.0  # 0.0 + -0.0 is +0.0: the sum must start at +0.0, as before
        tensors = {
            "big": big,
            "half": torch.randn(33, generator=gen).to(torch.float16),
            "brain": (torch.randn(5, 7, generator=gen) * scale).to(torch.bfloat16),
            "double": torch.randn(9, generator=gen, dtype=torch.float64) * scale,
            "steps": torch.tensor([1000 * (index + 1) + 1], dtype=torch.int64),
            "mask": torch.tensor([index % 2 == 0, True, False]),
            "empty": torch.zeros((0, 3)),
            "scalar": torch.tensor(float(index)),
        }
        path = tmp_path / f"{site}.safetensors"
        safetensors.torch.save_file(tensors, path)
        paths[site] = path
    return paths


def in_memory_average(manifest: Manifest, order: list[tuple[TensorFile, float]]) -> bytes:
    """The average as FedAvg computed it with its sum in memory: a float32 (float64) array of
    zeros per tensor, ``+= weight x update`` slab by slab, divided and narrowed slab by slab."""
    sums = {
        spec.name: np.zeros(math.prod(spec.shape), _accumulator_dtype(spec.dtype))
        for spec in manifest.tensors
    }
    for update, weight in order:
        for spec in manifest.tensors:
            for start, values in _slabs(update, spec, SLAB_ELEMENTS):
                values *= weight
                sums[spec.name][start : start + values.size] += values
    total = sum(weight for _, weight in order)
    out = header_bytes(manifest)
    for spec in manifest.tensors:
        flat = sums[spec.name]
        for start in range(0, flat.size, SLAB_ELEMENTS):
            out += _narrow(spec.dtype, flat[start : start + SLAB_ELEMENTS] / total).tobytes()
    return out


def canonical(paths: dict[str, Path], folder: Path) -> CanonicalFold:
    model = paths[SITES[0]]
    manifest = TensorFile(model).manifest
    return CanonicalFold(lambda: FedAvg(manifest, model, folder), folder)


def test_the_sum_in_a_file_gives_the_bytes_of_the_sum_in_memory(tmp_path: Path) -> None:
    paths = site_updates(tmp_path)
    manifest = TensorFile(paths[SITES[0]]).manifest
    want = in_memory_average(manifest, [(TensorFile(paths[s]), WEIGHTS[s]) for s in SITES])
    orders = [list(SITES), list(reversed(SITES)), random.Random(3).sample(SITES, len(SITES))]
    for number, order in enumerate(orders):
        fold = canonical(paths, tmp_path / f"round_{number}")
        for arrived, site in enumerate(order, start=1):
            fold.add(site, TensorFile(paths[site]), WEIGHTS[site])
            fold.fold_due(awaited=set(order[arrived:]))
        target = tmp_path / f"avg_{number}.safetensors"
        fold.write(target)
        assert target.read_bytes() == want, order
        assert (tmp_path / f"round_{number}" / RUNNING_SUM).exists()
        fold.discard()
        assert not (tmp_path / f"round_{number}").exists()


def test_a_fold_cut_short_is_not_counted_twice(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A write of the sum that fails half-way (EIO) leaves part of an update in it: the sum is
    rebuilt from the kept files, so the average is still exact."""
    paths = site_updates(tmp_path)
    manifest = TensorFile(paths[SITES[0]]).manifest
    want = in_memory_average(manifest, [(TensorFile(paths[s]), WEIGHTS[s]) for s in SITES])
    fold = canonical(paths, tmp_path / "round_0")
    fold.add("site-a", TensorFile(paths["site-a"]), WEIGHTS["site-a"])
    assert fold.fold_due(awaited={"site-b", "site-c", "site-d"}) == 1

    real = aggregator._write_all
    calls = 0

    def failing(fd: int, values: Any, offset: int) -> None:
        nonlocal calls
        calls += 1
        if calls == 2:  # the first slab of site-b is in the sum, the rest is not
            raise OSError(errno.EIO, "Input/output error")
        real(fd, values, offset)

    monkeypatch.setattr(aggregator, "_write_all", failing)
    fold.add("site-b", TensorFile(paths["site-b"]), WEIGHTS["site-b"])
    with pytest.raises(OSError, match="Input/output error"):
        fold.fold_due(awaited={"site-c", "site-d"})
    monkeypatch.setattr(aggregator, "_write_all", real)
    for site in ("site-c", "site-d"):
        fold.add(site, TensorFile(paths[site]), WEIGHTS[site])
    assert fold.fold_due(awaited=set()) == 4  # all again, from a new sum
    target = tmp_path / "avg.safetensors"
    fold.write(target)
    assert target.read_bytes() == want


def test_a_full_disk_refuses_the_sum_before_any_byte_is_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The whole sum is allocated when it is created: a full disk is an OSError (ENOSPC, which
    pauses the run) before anything is folded, and the round goes on once there is room."""
    paths = site_updates(tmp_path)
    manifest = TensorFile(paths[SITES[0]]).manifest
    want = in_memory_average(manifest, [(TensorFile(paths[s]), WEIGHTS[s]) for s in SITES])

    def full(fd: int, offset: int, length: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    fold = canonical(paths, tmp_path / "round_0")
    for site in SITES:
        fold.add(site, TensorFile(paths[site]), WEIGHTS[site])
    with monkeypatch.context() as patch:
        patch.setattr(os, "posix_fallocate", full)
        with pytest.raises(OSError) as caught:
            fold.fold_due(awaited=set())
        assert caught.value.errno == errno.ENOSPC
        assert not (tmp_path / "round_0" / RUNNING_SUM).exists()
    target = tmp_path / "avg.safetensors"
    fold.write(target)
    assert target.read_bytes() == want
