"""examples/seg3d/prepare_data.py and the seg3d_monai app's dataset component."""

from __future__ import annotations

import importlib.util
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch

from flapp import ConfigError

pytest.importorskip("monai")
nibabel = pytest.importorskip("nibabel")
# Imported as a module of the checkout (its dataclasses need a module of their own).
prepare_data = importlib.import_module("examples.seg3d.prepare_data")

ROOT = Path(__file__).resolve().parents[2]
RESOURCES = ROOT / "examples" / "apps" / "seg3d_monai" / "resources"


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("seg3d")
    args = ["--sites", "a,b", "--out", str(out), "--size", "16", "--train", "3", "--val", "2"]
    assert prepare_data.main(args) == 0
    return out


@pytest.fixture
def data_module() -> Iterator[ModuleType]:
    sys.path.insert(0, str(RESOURCES))
    try:
        yield importlib.import_module("seg3d_monai.data")
    finally:
        sys.path.remove(str(RESOURCES))


def volume(path: Path) -> np.ndarray:
    return np.asarray(nibabel.load(str(path)).dataobj)


def test_each_site_gets_nifti_pairs_and_a_monai_data_list(data: Path) -> None:
    for site in ("a", "b"):
        datalist = json.loads((data / site / "datalist.json").read_text())
        assert [len(datalist["training"]), len(datalist["validation"])] == [3, 2]
        for entry in datalist["training"] + datalist["validation"]:
            image = volume(data / site / entry["image"])
            label = volume(data / site / entry["label"])
            assert image.shape == label.shape == (16, 16, 16)
            assert image.dtype == np.float32 and label.dtype == np.uint8
            assert set(np.unique(label)) == {0, 1}
    first = volume(data / "a" / "imagesTr" / "case_000.nii.gz")
    assert not np.array_equal(first, volume(data / "b" / "imagesTr" / "case_000.nii.gz"))


def test_sites_differ_in_spheres_and_noise() -> None:
    looks = [prepare_data.site_look(index, 48) for index in range(3)]
    assert len({look.spheres for look in looks}) == 3
    assert len({look.noise for look in looks}) == 3


def test_the_same_seed_writes_the_same_volumes(tmp_path: Path, data: Path) -> None:
    args = ["--sites", "a", "--out", str(tmp_path), "--size", "16", "--train", "3", "--val", "2"]
    prepare_data.main(args)
    name = "labelsTr/case_004.nii.gz"
    assert np.array_equal(volume(tmp_path / "a" / name), volume(data / "a" / name))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--size", "20"], "multiple of 8"),
        (["--size", "8"], "at least 16"),
        (["--val", "0"], "at least 1"),
        (["--sites", "a,a"], "twice"),
    ],
)
def test_bad_arguments_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    with pytest.raises(SystemExit):
        prepare_data.main(["--sites", "a", "--out", str(tmp_path), *args])
    assert message in capsys.readouterr().err


def test_the_dataset_component_reads_the_data_list(data: Path, data_module: ModuleType) -> None:
    dataset = data_module.DataListSegmentation(data / "a")
    assert (len(dataset.train), len(dataset.validation)) == (3, 2)
    sample = dataset.validation[0]
    assert type(sample["image"]) is torch.Tensor  # plain tensors batch with torch's collate
    assert sample["image"].shape == sample["label"].shape == (1, 16, 16, 16)
    assert float(sample["image"].min()) == 0.0 and float(sample["image"].max()) == 1.0
    truth = volume(data / "a" / "labelsTr" / "case_003.nii.gz")
    assert np.array_equal(sample["label"][0].numpy(), truth)


def test_the_dataset_component_says_what_is_missing(
    tmp_path: Path, data: Path, data_module: ModuleType
) -> None:
    with pytest.raises(ConfigError, match="no DATA_ROOT"):
        data_module.DataListSegmentation(None)
    with pytest.raises(ConfigError, match=r"datalist.json is missing; write one"):
        data_module.DataListSegmentation(tmp_path)
    (tmp_path / "datalist.json").write_text(
        json.dumps({"training": [{"image": "x.nii.gz", "label": "y.nii.gz"}], "validation": []})
    )
    with pytest.raises(ConfigError, match=r"names a missing file .*x\.nii\.gz"):
        data_module.DataListSegmentation(tmp_path)


def test_a_seeded_run_flips_the_same_volumes(data: Path, data_module: ModuleType) -> None:
    """MONAI's random transforms draw from their own generators: seeded from torch's (which
    the training process seeds with the app's seed), a seeded run is repeatable."""

    def two_epochs(seed: int) -> list[torch.Tensor]:
        torch.manual_seed(seed)
        train = data_module.DataListSegmentation(data / "a").train
        return [train[index]["image"] for _ in range(2) for index in range(len(train))]

    first, again = two_epochs(7), two_epochs(7)
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(first, two_epochs(8), strict=True))
