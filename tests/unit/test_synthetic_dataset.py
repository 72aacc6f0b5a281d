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


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            {"num_samples": 2**20, "in_features": 2**7},
            "SyntheticClassification: 135,266,304 values per split "
            "(num_samples × (in_features + 1)) is more than the 134,217,728 allowed; "
            "make num_samples or in_features smaller",
        ),
        (
            {"num_samples": 2**62, "in_features": 2**62},
            "SyntheticClassification: 21,267,647,932,558,653,971,072,598,982,912,901,120 "
            "values per split",
        ),
        (
            {"seed": 2**64},
            "SyntheticClassification: seed must be an integer from 0 to 2**64 - 1, "
            "got 18446744073709551616",
        ),
        (
            {"seed": "x"},
            "SyntheticClassification: seed must be an integer from 0 to 2**64 - 1, got 'x'",
        ),
    ],
)
def test_splits_over_the_cap_and_bad_seeds_are_refused_before_allocating(
    args: dict[str, object], message: str
) -> None:
    """An app of built-ins runs at a site unapproved: sizes just under the site's memory
    built two splits of that size there, and a bad seed was an unexpected ValueError."""
    sizes: dict[str, object] = {"num_samples": 4, "in_features": 4, "num_classes": 2, **args}
    with pytest.raises(ConfigError) as failure:
        SyntheticClassification(None, **sizes)  # type: ignore[arg-type]
    assert str(failure.value).startswith(message)


def test_one_training_step_with_the_mlp() -> None:
    data = SyntheticClassification(None, num_samples=16, in_features=10, num_classes=4)
    model = MLP(10, 8, 4, layers=2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    (x, y) = next(iter(DataLoader(data.train, batch_size=16)))
    loss = torch.nn.functional.cross_entropy(model(x), y)
    torch.autograd.backward(loss)
    optimizer.step()
    assert torch.isfinite(loss)
