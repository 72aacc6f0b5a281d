"""The app-author API: what flapp exports, and the metrics it offers custom trainers."""

from __future__ import annotations

import math

import torch

import flapp
from flapp import ClassificationMetrics, SupervisedTrainer, TrainerHook


def test_the_api_is_exactly_what_apps_are_told_about() -> None:
    assert sorted(flapp.__all__) == [
        "ClassificationMetrics",
        "ConfigError",
        "DigitsCNN",
        "Loader",
        "LossFunction",
        "MLP",
        "NpzClassification",
        "SupervisedTrainer",
        "SyntheticClassification",
        "TrainerHook",
    ]
    assert all(hasattr(flapp, name) for name in flapp.__all__)


def test_the_built_in_trainer_is_a_trainer_hook() -> None:
    hook: TrainerHook = SupervisedTrainer()
    assert callable(hook.train_epoch) and callable(hook.validate)


def test_metrics_are_weighted_by_batch_size() -> None:
    metrics = ClassificationMetrics(torch.device("cpu"))
    # Batch 1: 3 samples, 2 right, mean loss 1.0; batch 2: 1 sample, right, mean loss 3.0.
    metrics.update(
        torch.tensor([[2.0, 0.0], [0.0, 2.0], [2.0, 0.0]]),
        torch.tensor([0, 1, 1]),
        torch.tensor(1.0),
    )
    metrics.update(torch.tensor([[0.0, 1.0]]), torch.tensor([1]), torch.tensor(3.0))
    assert metrics.samples == 4
    assert metrics.mean_loss() == (3 * 1.0 + 1 * 3.0) / 4
    assert metrics.accuracy() == 3 / 4


def test_metrics_of_no_batches_are_not_a_number() -> None:
    metrics = ClassificationMetrics(torch.device("cpu"))
    assert metrics.samples == 0
    assert math.isnan(metrics.mean_loss()) and math.isnan(metrics.accuracy())
