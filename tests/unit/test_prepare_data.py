"""examples/digits/prepare_data.py: the digits split across sites."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "examples" / "digits" / "prepare_data.py"
DIGITS = 1797


@pytest.fixture(scope="module")
def prepare() -> ModuleType:
    spec = importlib.util.spec_from_file_location("prepare_data", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def read(folder: Path) -> dict[str, np.ndarray]:
    arrays = {}
    for split in ("train", "val"):
        with np.load(folder / f"{split}.npz", allow_pickle=False) as npz:
            arrays[f"{split}_x"], arrays[f"{split}_y"] = npz["x"], npz["y"]
    return arrays


def test_iid_split_covers_every_image_once(
    prepare: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert prepare.main(["--sites", "flclient1,flclient2", "--out", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in lines] == ["flclient1", "flclient2"]
    assert lines[0].startswith("flclient1: 719 train, 180 validation samples; labels 0-9: [")
    sites = [read(tmp_path / name) for name in ("flclient1", "flclient2")]
    total = 0
    for site in sites:
        assert site["train_x"].dtype == np.float32 and site["train_y"].dtype == np.int64
        assert site["train_x"].shape[1:] == (1, 8, 8)
        assert site["train_x"].min() >= 0.0 and site["train_x"].max() <= 1.0
        count = len(site["train_y"]) + len(site["val_y"])
        assert len(site["val_y"]) == round(count * 0.2)
        assert set(site["train_y"].tolist()) == set(range(10))
        total += count
    assert total == DIGITS
    images = np.concatenate([s[f"{k}_x"] for s in sites for k in ("train", "val")])
    assert len(np.unique(images.reshape(DIGITS, -1), axis=0)) == len(
        np.unique(prepare.load()[0].reshape(DIGITS, -1), axis=0)
    )


def test_the_seed_makes_it_repeatable(prepare: ModuleType, tmp_path: Path) -> None:
    for name, seed in (("a", "0"), ("b", "0"), ("c", "1")):
        prepare.main(["--sites", "s1,s2", "--out", str(tmp_path / name), "--seed", seed])
    a, b, c = (read(tmp_path / name / "s1") for name in "abc")
    assert np.array_equal(a["train_y"], b["train_y"])
    assert not np.array_equal(a["train_y"], c["train_y"])


def test_non_iid_skews_the_labels(prepare: ModuleType, tmp_path: Path) -> None:
    prepare.main(["--sites", "a,b,c", "--out", str(tmp_path / "iid")])
    prepare.main(["--sites", "a,b,c", "--out", str(tmp_path / "skew"), "--non-iid", "0.3"])

    def spread(folder: Path) -> float:
        shares = []
        for site in "abc":
            arrays = read(folder / site)
            labels = np.concatenate([arrays["train_y"], arrays["val_y"]])
            shares.append(np.bincount(labels, minlength=10) / len(labels))
        return float(np.std(shares, axis=1).mean())

    assert spread(tmp_path / "skew") > 3 * spread(tmp_path / "iid")
    total = sum(len(read(tmp_path / "skew" / s)["train_y"]) for s in "abc")
    total += sum(len(read(tmp_path / "skew" / s)["val_y"]) for s in "abc")
    assert total == DIGITS


@pytest.mark.parametrize(
    "args",
    [
        ["--sites", "a,a"],
        ["--sites", ","],
        ["--sites", "a", "--val-fraction", "1"],
        ["--sites", "a", "--non-iid", "0"],
    ],
)
def test_bad_arguments_are_refused(prepare: ModuleType, tmp_path: Path, args: list[str]) -> None:
    with pytest.raises(SystemExit) as failure:
        prepare.main([*args, "--out", str(tmp_path)])
    assert failure.value.code == 2
