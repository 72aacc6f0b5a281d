"""Built-in dataset components.

A dataset component is called as ``factory(data_root=..., **args)`` and
returns an object with ``.train`` and ``.validation`` torch Datasets. The
site's data folder (DATA_ROOT) is set per client, so an app names file names
relative to it and never a hospital's paths.
"""

from __future__ import annotations

import zipfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from numpy.lib.npyio import NpzFile
from torch.utils.data import TensorDataset

from flapp._checks import at_most, positive_int
from flcore.schema import ConfigError

MAX_SYNTHETIC_VALUES = 2**27
"""Most values (features and label) in each split of SyntheticClassification: 1 GiB at
most per split, as labels are int64. Only the site builds the dataset, from an app that
needs no approval there when it names built-ins only, so its size must not be able to take
the site's memory."""
_SEEDS = range(2**64)
"""The seeds SyntheticClassification takes: those of torch's generator from 0."""


def _load_split(data_root: Path | None, name: object) -> TensorDataset:
    if not isinstance(name, str):
        raise ConfigError(
            f"dataset file {name!r:.50} must be a file name (a string) relative to DATA_ROOT"
        )
    relative = Path(name)
    if relative.is_absolute() or ".." in relative.parts:
        # The app comes from the server and runs without the site's approval when it names
        # built-in components only: it reads inside the site's data folder, nowhere else.
        raise ConfigError(
            f"dataset file {name[:200]!r} must be a path inside DATA_ROOT (relative, without '..')"
        )
    if data_root is None:
        raise ConfigError(
            f"dataset file {name!r} is relative to DATA_ROOT, but this site has no DATA_ROOT set"
        )
    path = data_root / relative
    if not path.is_file():
        raise ConfigError(f"dataset file {path} is missing (DATA_ROOT is {data_root})")
    arrays = _read_npz(path)
    if set(arrays) != {"x", "y"}:
        raise ConfigError(f"dataset file {path}: needs arrays 'x' and 'y', has {sorted(arrays)}")
    x, y = _features(path, arrays["x"]), _labels(path, arrays["y"])
    if len(x) != len(y):
        raise ConfigError(f"dataset file {path}: 'x' has {len(x)} samples but 'y' has {len(y)}")
    if not len(x):
        raise ConfigError(f"dataset file {path} holds no samples")
    return TensorDataset(torch.from_numpy(x), torch.from_numpy(y))


_UNREADABLE: tuple[tuple[type[Exception], str], ...] = (
    (zipfile.BadZipFile, "it is no zip archive, or a damaged one (numpy.savez writes them)"),
    (EOFError, "it ends before its data does (was it copied whole?)"),
    (zlib.error, "its compressed data is damaged"),
    (NotImplementedError, "it is compressed in a way numpy cannot read"),
    (RuntimeError, "it is encrypted"),
    (ValueError, "it holds a damaged array, or Python objects, which are never loaded"),
)
"""Why a file is no readable .npz, by the error that reading it raised. The message says
this, never the error's own text: that may quote bytes of the site's file, and the message
goes to the server."""


def _read_npz(path: Path) -> dict[str, npt.NDArray[Any]]:
    """The arrays ``x`` and ``y`` of an .npz file, those of the two that it holds.

    ``mmap_mode`` leaves a .npy file unread: numpy would read it whole only for it to be
    refused. ``allow_pickle=False``: site data is never a way to run code.
    """
    try:
        loaded = np.load(path, mmap_mode="r", allow_pickle=False)
        if not isinstance(loaded, NpzFile):
            raise ConfigError(
                f"dataset file {path} is no .npz archive (a .npy file holds one array); "
                "save 'x' and 'y' in one file with numpy.savez"
            )
        with loaded as npz:
            return {key: npz[key] for key in ("x", "y") if key in npz.files}
    except ConfigError:
        raise
    except OSError as exc:
        why = exc.strerror or "the system could not read it"
    except tuple(kind for kind, _ in _UNREADABLE) as exc:
        why = next(why for kind, why in _UNREADABLE if isinstance(exc, kind))
    raise ConfigError(f"dataset file {path}: cannot read it as .npz: {why}") from None


def _features(path: Path, x: npt.NDArray[Any]) -> npt.NDArray[np.float32]:
    if not np.issubdtype(x.dtype, np.floating) or x.ndim < 1:
        raise ConfigError(f"dataset file {path}: 'x' must be a float array, got {x.dtype}")
    return np.ascontiguousarray(x, dtype=np.float32)


def _labels(path: Path, y: npt.NDArray[Any]) -> npt.NDArray[np.int64]:
    if not np.issubdtype(y.dtype, np.integer) or y.ndim != 1:
        raise ConfigError(
            f"dataset file {path}: 'y' must be a 1-D integer array, got {y.dtype} {list(y.shape)}"
        )
    return np.ascontiguousarray(y, dtype=np.int64)


class NpzClassification:
    """Train and validation splits from two .npz files with arrays ``x`` and ``y``.

    ``x`` holds float32 samples (first axis = sample), ``y`` int64 class
    labels. Files are read with ``allow_pickle=False``: site data is never a
    way to run code. A file that is not an .npz archive (a .npy file, a
    damaged archive) is refused with a message that quotes none of its bytes.

    Args:
        data_root: The site's DATA_ROOT; file names are relative to it.
        train: File of the training split.
        validation: File of the validation split.
    """

    def __init__(
        self, data_root: Path | None, train: str = "train.npz", validation: str = "val.npz"
    ) -> None:
        self.train = _load_split(data_root, train)
        self.validation = _load_split(data_root, validation)


class SyntheticClassification:
    """Random train and validation splits, so that benchmarks and smoke tests need no files.

    Inputs are float32 vectors drawn from a standard normal distribution,
    labels int64 classes drawn uniformly; both splits have ``num_samples``
    samples and are reproducible from ``seed`` (the validation split uses a
    different stream than the training split). ``data_root`` is accepted,
    as by every dataset component, and ignored.

    Args:
        data_root: The site's DATA_ROOT (unused).
        num_samples: Samples in each split.
        in_features: Size of one input vector.
        num_classes: Number of classes of the labels.
        seed: Seed of the random generator.

    Each split holds at most :data:`MAX_SYNTHETIC_VALUES` values.
    """

    def __init__(
        self,
        data_root: Path | None,
        num_samples: int,
        in_features: int,
        num_classes: int,
        seed: int = 0,
    ) -> None:
        owner = type(self).__name__
        num_samples = positive_int(owner, "num_samples", num_samples)
        in_features = positive_int(owner, "in_features", in_features)
        num_classes = positive_int(owner, "num_classes", num_classes)
        at_most(
            owner,
            "values per split (num_samples × (in_features + 1))",
            num_samples * (in_features + 1),
            MAX_SYNTHETIC_VALUES,
            "make num_samples or in_features smaller",
        )
        if isinstance(seed, bool) or not isinstance(seed, int) or seed not in _SEEDS:
            raise ConfigError(
                f"{owner}: seed must be an integer from 0 to 2**64 - 1, got {seed!r:.50}"
            )
        generator = torch.Generator().manual_seed(seed)
        self.train = _random_split(generator, num_samples, in_features, num_classes)
        self.validation = _random_split(generator, num_samples, in_features, num_classes)


def _random_split(
    generator: torch.Generator, num_samples: int, in_features: int, num_classes: int
) -> TensorDataset:
    x = torch.randn(num_samples, in_features, generator=generator, dtype=torch.float32)
    y = torch.randint(0, num_classes, (num_samples,), generator=generator, dtype=torch.int64)
    return TensorDataset(x, y)
