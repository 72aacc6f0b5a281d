"""Split scikit-learn's 8x8 digits across sites, as each site's DATA_ROOT would hold them.

The digits (1,797 images, 10 classes) ship inside scikit-learn, so the
example trains on real data without downloading anything. Each site gets
``train.npz`` and ``val.npz`` with arrays ``x`` (N, 1, 8, 8) float32 in
[0, 1] and ``y`` int64, the format of ``flapp.datasets.NpzClassification``.
By default the split is IID; ``--non-iid ALPHA`` skews the labels per site
with a Dirichlet(ALPHA) draw per class (smaller ALPHA, stronger skew), the
usual way to mimic hospitals that see different case mixes.

    python examples/digits/prepare_data.py --sites flclient1,flclient2 --out /tmp/digits
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from sklearn.datasets import load_digits

NUM_CLASSES = 10
MIN_SITE_SAMPLES = 10
MAX_DRAWS = 1000

Indices = npt.NDArray[np.int64]


def load() -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
    """The digits as (N, 1, 8, 8) float32 in [0, 1] and int64 labels."""
    digits: Any = load_digits()
    x = (np.asarray(digits.images, dtype=np.float32) / 16.0).reshape(-1, 1, 8, 8)
    return x, np.asarray(digits.target, dtype=np.int64)


def split_iid(count: int, sites: int, rng: np.random.Generator) -> list[Indices]:
    """Shuffle and deal the samples out in near-equal parts."""
    return [part.astype(np.int64) for part in np.array_split(rng.permutation(count), sites)]


def split_dirichlet(
    labels: npt.NDArray[np.int64], sites: int, alpha: float, rng: np.random.Generator
) -> list[Indices]:
    """Give each site a Dirichlet(alpha) share of every class.

    Draws again (up to MAX_DRAWS times) until every site has at least
    MIN_SITE_SAMPLES samples, so a strong skew still leaves each site
    something to train and validate on.
    """
    for _ in range(MAX_DRAWS):
        parts: list[list[int]] = [[] for _ in range(sites)]
        for label in range(NUM_CLASSES):
            members = rng.permutation(np.flatnonzero(labels == label))
            shares = rng.dirichlet(np.full(sites, alpha))
            cuts = (np.cumsum(shares)[:-1] * len(members)).astype(int)
            for site, chunk in enumerate(np.split(members, cuts)):
                parts[site].extend(chunk.tolist())
        if min(len(part) for part in parts) >= MIN_SITE_SAMPLES:
            return [rng.permutation(np.asarray(part, dtype=np.int64)) for part in parts]
    raise SystemExit(
        f"--non-iid {alpha}: could not give every site {MIN_SITE_SAMPLES} samples; "
        "use a larger alpha"
    )


def write_site(
    folder: Path,
    x: npt.NDArray[np.float32],
    y: npt.NDArray[np.int64],
    val_fraction: float,
) -> tuple[int, int]:
    """Write one site's train.npz and val.npz; returns (train, validation) sample counts."""
    val_count = min(len(y) - 1, max(1, round(len(y) * val_fraction)))
    folder.mkdir(parents=True, exist_ok=True)
    np.savez(folder / "train.npz", x=x[val_count:], y=y[val_count:])
    np.savez(folder / "val.npz", x=x[:val_count], y=y[:val_count])
    return len(y) - val_count, val_count


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sites", required=True, help="comma-separated site names")
    parser.add_argument("--out", type=Path, required=True, help="folder to write <site>/ into")
    parser.add_argument("--non-iid", type=float, default=None, metavar="ALPHA")
    parser.add_argument("--val-fraction", type=float, default=0.2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    args.sites = [name.strip() for name in args.sites.split(",") if name.strip()]
    if not args.sites:
        parser.error("--sites needs at least one name")
    if len(set(args.sites)) != len(args.sites):
        parser.error("--sites names a site twice")
    if not 0 < args.val_fraction < 1:
        parser.error("--val-fraction must be between 0 and 1")
    if args.non_iid is not None and args.non_iid <= 0:
        parser.error("--non-iid ALPHA must be positive")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Write every site's files and print one summary line per site."""
    args = parse_args(argv)
    x, y = load()
    rng = np.random.default_rng(args.seed)
    if args.non_iid is None:
        parts = split_iid(len(y), len(args.sites), rng)
    else:
        parts = split_dirichlet(y, len(args.sites), args.non_iid, rng)
    for site, part in zip(args.sites, parts, strict=True):
        train, val = write_site(args.out / site, x[part], y[part], args.val_fraction)
        histogram = np.bincount(y[part], minlength=NUM_CLASSES).tolist()
        print(f"{site}: {train} train, {val} validation samples; labels 0-9: {histogram}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
