"""The built-in SyntheticClassification dataset (benchmarks train on it, with no data files)."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader

from flapp.datasets import SyntheticClassification
from flapp.models import MLP
from flapp.runtime.components import build
from flcore.appconfig import ComponentSpec
from flcore.schema import ConfigError


def test_splits_have_the_asked_shapes_and_dtypes() -> None:
    data = build(
        ComponentSpec(
            "flapp.datasets.SyntheticClassification",
            {"num_samples": 12, "in_features": 7, "num_classes": 3},
        ),
        "config_train.json: dataset",
        data_root=None,
    )
    for split in (data.train, data.validation):
        assert len(split) == 12
        x, y = split.tensors
        assert x.dtype == torch.float32 and x.shape == (12, 7)
        assert y.dtype == torch.int64 and y.shape == (12,)
        assert int(y.min()) >= 0 and int(y.max()) < 3


def test_same_seed_same_data_and_splits_differ() -> None:
    a = SyntheticClassification(None, num_samples=8, in_features=4, num_classes=2, seed=5)
    b = SyntheticClassification(None, num_samples=8, in_features=4, num_classes=2, seed=5)
    c = SyntheticClassification(None, num_samples=8, in_features=4, num_classes=2, seed=6)
    assert torch.equal(a.train.tensors[0], b.train.tensors[0])
    assert torch.equal(a.validation.tensors[1], b.validation.tensors[1])
    assert not torch.equal(a.train.tensors[0], a.validation.tensors[0])
    assert not torch.equal(a.train.tensors[0], c.train.tensors[0])


@pytest.mark.parametrize(
    "args",
    [
        {"num_samples": 0, "in_features": 4, "num_classes": 2},
        {"num_samples": 4, "in_features": -1, "num_classes": 2},
        {"num_samples": 4, "in_features": 4, "num_classes": 2.5},
    ],
)
def test_bad_sizes_are_config_errors(args: dict[str, object]) -> None:
    with pytest.raises(ConfigError, match="SyntheticClassification"):
        SyntheticClassification(None, **args)  # type: ignore[arg-type]


def test_one_training_step_with_the_mlp() -> None:
    data = SyntheticClassification(None, num_samples=16, in_features=10, num_classes=4)
    model = MLP(10, 8, 4, layers=2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    (x, y) = next(iter(DataLoader(data.train, batch_size=16)))
    loss = torch.nn.functional.cross_entropy(model(x), y)
    torch.autograd.backward(loss)
    optimizer.step()
    assert torch.isfinite(loss)
