"""Write synthetic 3D segmentation data per site: NIfTI image/label pairs and a MONAI data list.

Each volume comes from ``monai.data.synthetic.create_test_image_3d``: bright
spheres in noise, with a label volume marking the spheres (0 background,
1 sphere). Sites differ on purpose, as hospitals do: each draws from its
own seed and sees its own number and size of spheres, so the federated
model must work for all of them. Every site folder holds::

    <site>/imagesTr/case_000.nii.gz   float32 intensities
    <site>/labelsTr/case_000.nii.gz   uint8 labels
    <site>/datalist.json              {"training": [...], "validation": [...]}

``datalist.json`` is MONAI's data list format (the one of the Medical
Segmentation Decathlon, read by ``monai.data.load_decathlon_datalist``),
with paths relative to the file. An app that reads it reads a real site's
NIfTI or DICOM data the same way once the site writes its own data list.

    python examples/seg3d/prepare_data.py --sites flclient1,flclient2 --out /tmp/seg3d
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from monai.data.synthetic import create_test_image_3d

DATALIST = "datalist.json"


@dataclass(frozen=True)
class SiteLook:
    """What a site's volumes look like: how many spheres, how large, how noisy."""

    spheres: int
    rad_min: int
    rad_max: int
    noise: float


def site_look(index: int, size: int) -> SiteLook:
    """The look of the site at ``index``: more, smaller spheres and more noise further down.

    Radii scale with the volume so that a 24-voxel test volume and a
    64-voxel one hold the same picture.
    """
    spheres = 3 + 2 * (index % 3)
    rad_max = max(3, size // (4 + index % 3))
    return SiteLook(spheres, max(2, rad_max // 2), rad_max, 0.4 + 0.1 * (index % 3))


def write_volume(path: Path, volume: np.ndarray, dtype: type[np.generic]) -> None:
    """Write one volume as a compressed NIfTI file with a 1 mm identity affine."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = nib.Nifti1Image(volume.astype(dtype), np.eye(4))  # type: ignore[no-untyped-call]
    nib.save(image, str(path))


def write_site(folder: Path, look: SiteLook, size: int, train: int, val: int, seed: int) -> None:
    """Write one site's volumes and its data list."""
    rng = np.random.RandomState(seed)  # create_test_image_3d takes the legacy generator
    entries: list[dict[str, str]] = []
    for case in range(train + val):
        image, label = create_test_image_3d(
            size,
            size,
            size,
            num_objs=look.spheres,
            rad_max=look.rad_max,
            rad_min=look.rad_min,
            noise_max=look.noise,
            num_seg_classes=1,
            random_state=rng,
        )
        entry = {
            "image": f"imagesTr/case_{case:03d}.nii.gz",
            "label": f"labelsTr/case_{case:03d}.nii.gz",
        }
        write_volume(folder / entry["image"], image, np.float32)
        write_volume(folder / entry["label"], label, np.uint8)
        entries.append(entry)
    datalist = {"training": entries[:train], "validation": entries[train:]}
    (folder / DATALIST).write_text(json.dumps(datalist, indent=2) + "\n")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sites", required=True, help="comma-separated site names")
    parser.add_argument("--out", type=Path, required=True, help="folder to write <site>/ into")
    parser.add_argument("--size", type=int, default=48, help="edge of each cubic volume (voxels)")
    parser.add_argument("--train", type=int, default=12, help="training volumes per site")
    parser.add_argument("--val", type=int, default=4, help="validation volumes per site")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    args.sites = [name.strip() for name in args.sites.split(",") if name.strip()]
    if not args.sites:
        parser.error("--sites needs at least one name")
    if len(set(args.sites)) != len(args.sites):
        parser.error("--sites names a site twice")
    if args.size < 16:
        parser.error("--size must be at least 16 (the UNet halves it three times)")
    if args.size % 8:
        parser.error("--size must be a multiple of 8 (the UNet halves it three times)")
    if args.train < 1 or args.val < 1:
        parser.error("--train and --val must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Write every site's files and print one summary line per site."""
    args = parse_args(argv)
    for index, site in enumerate(args.sites):
        look = site_look(index, args.size)
        write_site(args.out / site, look, args.size, args.train, args.val, args.seed * 1000 + index)
        print(
            f"{site}: {args.train} train, {args.val} validation volumes of {args.size}^3; "
            f"{look.spheres} spheres of radius {look.rad_min}-{look.rad_max}, "
            f"noise {look.noise:.1f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
