"""flserverd.aggregator.CanonicalFold: the average does not depend on the arrival order."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import safetensors.numpy

from flcore.tensorfile import TensorFile
from flserverd.aggregator import Aggregator, CanonicalFold, FedAvg

SITES = ["site-a", "site-b", "site-c", "site-d"]
WEIGHTS = {"site-a": 3.0, "site-b": 7.0, "site-c": 1.0, "site-d": 5.0}


def updates(tmp_path: Path) -> dict[str, Path]:
    """Four updates whose float32 sums depend on the order of addition (magnitudes differ)."""
    gen = np.random.default_rng(7)
    paths = {}
    for index, site in enumerate(SITES):
        values = gen.standard_normal(4096).astype(np.float32) * np.float32(10.0 ** (index - 2))
        path = tmp_path / f"{site}.safetensors"
        safetensors.numpy.save_file({"w": values, "b": values[:3].copy()}, path)
        paths[site] = path
    return paths


def average_bytes(aggregator: Aggregator, target: Path) -> bytes:
    aggregator.write(target)
    return target.read_bytes()


def running_sum(model: Path) -> FedAvg:
    """FedAvg without clipping: it never reads its input model, so any file stands for it."""
    return FedAvg(TensorFile(model).manifest, model, model.parent / "kept")


def canonical(paths: dict[str, Path]) -> CanonicalFold:
    return CanonicalFold(lambda: running_sum(paths[SITES[0]]), paths[SITES[0]].parent / "kept")


def test_arrival_order_changes_a_plain_running_sum(tmp_path: Path) -> None:
    """Why the order must be fixed: the same updates folded in two orders differ in bits."""
    paths = updates(tmp_path)
    results = set()
    for order in itertools.permutations(SITES):
        fedavg = running_sum(paths[SITES[0]])
        for site in order:
            fedavg.add(site, TensorFile(paths[site]), WEIGHTS[site])
        results.add(average_bytes(fedavg, tmp_path / "plain.safetensors"))
    assert len(results) > 1


def test_every_arrival_order_gives_the_same_bytes(tmp_path: Path) -> None:
    paths = updates(tmp_path)
    results = set()
    for order in itertools.permutations(SITES):
        fold = canonical(paths)
        for arrived, site in enumerate(order, start=1):
            fold.add(site, TensorFile(paths[site]), WEIGHTS[site])
            fold.fold_due(awaited=set(order[arrived:]))
        results.add(average_bytes(fold, tmp_path / "avg.safetensors"))
    assert len(results) == 1


def test_updates_are_folded_as_soon_as_their_turn_comes(tmp_path: Path) -> None:
    paths = updates(tmp_path)
    fold = canonical(paths)
    fold.add("site-b", TensorFile(paths["site-b"]), 1.0)
    assert fold.fold_due(awaited={"site-a", "site-c"}) == 0  # site-a comes first
    fold.add("site-a", TensorFile(paths["site-a"]), 1.0)
    assert fold.fold_due(awaited={"site-c"}) == 2  # a, then b
    fold.add("site-c", TensorFile(paths["site-c"]), 1.0)
    assert fold.fold_due(awaited=set()) == 1


def test_a_late_arrival_out_of_order_is_folded_in_order_at_the_end(tmp_path: Path) -> None:
    """A client that joins after others were folded (or resends after a restart) makes the
    sum be rebuilt, so the result is still the canonical one."""
    paths = updates(tmp_path)
    expected = canonical(paths)
    for site in SITES:
        expected.add(site, TensorFile(paths[site]), WEIGHTS[site])
    want = average_bytes(expected, tmp_path / "want.safetensors")

    fold = canonical(paths)
    for site in ("site-b", "site-c", "site-d"):
        fold.add(site, TensorFile(paths[site]), WEIGHTS[site])
    assert fold.fold_due(awaited=set()) == 3
    fold.add("site-a", TensorFile(paths["site-a"]), WEIGHTS["site-a"])
    assert fold.fold_due(awaited=set()) == 0  # folding it now would break the order
    assert average_bytes(fold, tmp_path / "got.safetensors") == want
    assert average_bytes(fold, tmp_path / "again.safetensors") == want  # idempotent
