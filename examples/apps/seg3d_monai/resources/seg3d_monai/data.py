"""The dataset component: a site's volumes, found through its MONAI data list.

The data list (MONAI's format, as the Medical Segmentation Decathlon ships
it) names image and label files relative to itself::

    {"training": [{"image": "imagesTr/case_000.nii.gz", "label": "labelsTr/case_000.nii.gz"}],
     "validation": [...]}

MONAI's ``LoadImaged`` reads NIfTI with nibabel, and DICOM series (a folder
per entry) with ITK or pydicom where the site installed them, so a hospital
joins with its own data by writing its own data list under DATA_ROOT.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from monai.data import CacheDataset, load_decathlon_datalist
from monai.transforms import (
    Compose,
    EnsureChannelFirstd,
    EnsureTyped,
    LoadImaged,
    Orientationd,
    RandFlipd,
    ScaleIntensityd,
)
from monai.utils import MAX_SEED

from flapp import ConfigError

KEYS = ("image", "label")


def _transforms(flip_prob: float) -> tuple[Compose, Compose]:
    """Training and validation transforms: read, channel first, RAS, intensities to [0, 1].

    Training adds random flips on each axis. Both end with plain tensors
    (``track_meta=False``), which torch's default batching stacks as they are.
    """
    load = [
        LoadImaged(KEYS),
        EnsureChannelFirstd(KEYS),
        Orientationd(KEYS, axcodes="RAS", labels=None),
        ScaleIntensityd("image"),
    ]
    flips = [RandFlipd(KEYS, prob=flip_prob, spatial_axis=axis) for axis in range(3)]
    done = [EnsureTyped(KEYS, track_meta=False)]
    return Compose([*load, *flips, *done]), Compose([*load, *done])


def _entries(path: Path, key: str) -> list[dict[str, Any]]:
    try:
        entries = load_decathlon_datalist(path, is_segmentation=True, data_list_key=key)
    except (OSError, ValueError, KeyError) as exc:
        raise ConfigError(f"data list {path}: cannot read its {key!r} list ({exc})") from None
    if not entries:
        raise ConfigError(f"data list {path}: its {key!r} list is empty")
    for entry in entries:
        for name in KEYS:
            if not Path(entry.get(name, "")).exists():
                raise ConfigError(
                    f"data list {path}: {key!r} names a missing file {entry.get(name)}"
                )
    return entries


class DataListSegmentation:
    """Training and validation volumes of a site, as its data list names them.

    Volumes are read once and kept in memory after the deterministic
    transforms (MONAI's ``CacheDataset``), so an epoch costs only the random
    flips and the training. The flips draw from a generator seeded from
    torch's, which the training process seeded with the app's ``seed``, so
    a seeded run flips the same volumes every time.

    Args:
        data_root: The site's DATA_ROOT; ``datalist`` is relative to it.
        datalist: The data list file.
        flip_prob: Chance of a flip per axis while training.
    """

    def __init__(
        self, data_root: Path | None, datalist: str = "datalist.json", flip_prob: float = 0.5
    ) -> None:
        if data_root is None:
            raise ConfigError(
                "this app reads DATA_ROOT/datalist.json, but the site set no DATA_ROOT"
            )
        path = data_root / datalist
        if not path.is_file():
            raise ConfigError(
                f"data list {path} is missing; write one (examples/seg3d/prepare_data.py shows "
                "the format)"
            )
        train_transforms, val_transforms = _transforms(flip_prob)
        train_transforms.set_random_state(seed=int(torch.randint(MAX_SEED, ()).item()))
        self.train = CacheDataset(_entries(path, "training"), train_transforms, progress=False)
        self.validation = CacheDataset(_entries(path, "validation"), val_transforms, progress=False)
