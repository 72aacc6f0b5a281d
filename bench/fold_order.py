"""What folding a round's updates in one canonical order costs, against arrival order.

The server folds the updates of a round in the order of their senders' names
(flserverd.aggregator.CanonicalFold) so that the average is the same bytes whatever order
they arrived in. An update whose turn has not come waits in its file and is
folded when its turn comes, at the latest when the round closes; so part of
the folding can move from "while the others still train" to "after the last
update arrived", which delays the next round. This script measures that
delay: for ``--orders`` random arrival orders of ``--clients`` updates of a
model of ``--params`` float32 values, the time from the last update's arrival
to the next round's checkpoint written, with the updates folded

* as they arrive (the plain running sum, which is not reproducible), and
* in canonical order, as the server does,

plus how many folds the canonical order left for the close, and its worst
case (the site whose name sorts first always arrives last). Updates are
files in a temporary folder (``--dir`` chooses the disk), read back from the
page cache as on the server. No daemon is started.

    .venv/bin/python bench/fold_order.py       # 25 M params (the large model), 8 clients
    .venv/bin/python bench/fold_order.py --params 1000000 --clients 2
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import safetensors.numpy  # noqa: E402

from bench.common import median, percentile, table  # noqa: E402
from flcore.tensorfile import TensorFile  # noqa: E402
from flserverd.aggregator import CanonicalFold, FedAvg  # noqa: E402


def make_updates(folder: Path, clients: int, params: int) -> dict[str, Path]:
    """One update file per client, as a site would send (a few tensors, float32)."""
    rng = np.random.default_rng(0)
    updates = {}
    sizes = [params // 2, params // 4, params - params // 2 - params // 4]
    for index in range(clients):
        tensors = {
            f"t{n}": rng.standard_normal(size, dtype=np.float32) for n, size in enumerate(sizes)
        }
        path = folder / f"site-{index:02d}.safetensors"
        safetensors.numpy.save_file(tensors, path)
        updates[f"site-{index:02d}"] = path
    return updates


def running_sum(model: Path) -> FedAvg:
    """The server's FedAvg without clipping (it never reads its input model, here ``model``)."""
    return FedAvg(TensorFile(model).manifest, model, model.parent / "kept")


def plain(updates: dict[str, Path], order: list[str], target: Path) -> float:
    """Fold on arrival; returns the close: from the last arrival to the checkpoint written."""
    fedavg = running_sum(updates[order[0]])
    for instance in order[:-1]:
        fedavg.add(instance, TensorFile(updates[instance]), 1.0)
    started = time.perf_counter()
    fedavg.add(order[-1], TensorFile(updates[order[-1]]), 1.0)
    fedavg.write(target)
    return time.perf_counter() - started


def canonical(updates: dict[str, Path], order: list[str], target: Path) -> tuple[float, int]:
    """Fold in name order as turns come (as flserverd.training does on each arrival); returns
    the close and how many folds were still to do when the last update arrived."""
    fold = CanonicalFold(lambda: running_sum(updates[order[0]]), target.parent / "kept")
    folded = 0
    for arrived, instance in enumerate(order[:-1], start=1):
        fold.add(instance, TensorFile(updates[instance]), 1.0)
        folded += fold.fold_due(awaited=set(order[arrived:]))
    started = time.perf_counter()
    fold.add(order[-1], TensorFile(updates[order[-1]]), 1.0)
    fold.fold_due(awaited=set())
    fold.write(target)
    return time.perf_counter() - started, len(order) - folded


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=int, default=25_000_000, help="float32 values per model")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--orders", type=int, default=12, help="random arrival orders to try")
    parser.add_argument("--dir", type=Path, default=None, help="the disk to measure on")
    args = parser.parse_args()
    rng = random.Random(1)
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        folder = Path(tmp)
        updates = make_updates(folder, args.clients, args.params)
        names = sorted(updates)
        plain(updates, names, folder / "warm.safetensors")  # page cache warm, numpy loaded
        plain_close, canon_close, left = [], [], []
        for _ in range(args.orders):
            order = names[:]
            rng.shuffle(order)
            plain_close.append(plain(updates, order, folder / "plain.safetensors"))
            seconds, deferred = canonical(updates, order, folder / "canonical.safetensors")
            canon_close.append(seconds)
            left.append(deferred)
        worst = [canonical(updates, [*names[1:], names[0]], folder / "w.safetensors")[0]]
        worst += [canonical(updates, [*names[1:], names[0]], folder / "w.safetensors")[0]]
        fold_started = time.perf_counter()
        running_sum(updates[names[0]]).add(names[0], TensorFile(updates[names[0]]), 1.0)
        fold_s = time.perf_counter() - fold_started
    mb = args.params * 4 / 1e6
    print(f"{args.clients} updates of {args.params:,} float32 ({mb:.0f} MB), {args.orders} orders")
    print(f"one fold: {fold_s * 1000:.0f} ms")
    rows = [
        ["arrival order (plain)", *(f"{v * 1000:.0f}" for v in stats(plain_close)), "1"],
        [
            "canonical order",
            *(f"{v * 1000:.0f}" for v in stats(canon_close)),
            f"{median([float(x) for x in left]):.1f}",
        ],
        [
            "canonical, first name last",
            *(f"{v * 1000:.0f}" for v in stats(worst)),
            str(args.clients),
        ],
    ]
    headers = ["folding", "close ms median", "p90", "max", "folds at the close (median)"]
    print(table(headers, rows))
    return 0


def stats(values: list[float]) -> tuple[float, float, float]:
    return median(values), percentile(values, 90), max(values)


if __name__ == "__main__":
    raise SystemExit(main())
