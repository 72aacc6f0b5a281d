"""The app-author API: what flapp exports, and the metrics it offers custom trainers."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import flapp
from flapp import (
    ClassificationMetrics,
    ConfigError,
    DiceMetrics,
    SegmentationTrainer,
    SupervisedTrainer,
    TrainerHook,
)


def test_the_api_is_exactly_what_apps_are_told_about() -> None:
    assert sorted(flapp.__all__) == [
        "ClassificationMetrics",
        "ConfigError",
        "DiceMetrics",
        "DigitsCNN",
        "Loader",
        "LossFunction",
        "MLP",
        "NpzClassification",
        "SegmentationTrainer",
        "SupervisedTrainer",
        "SyntheticClassification",
        "TrainerHook",
    ]
    assert all(hasattr(flapp, name) for name in flapp.__all__)


def test_the_built_in_trainers_are_trainer_hooks() -> None:
    for hook in (SupervisedTrainer(), SegmentationTrainer()):
        checked: TrainerHook = hook
        assert callable(checked.train_epoch) and callable(checked.validate)


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


def one_hot_logits(labels: torch.Tensor, classes: int = 2) -> torch.Tensor:
    """Logits (N, C, *spatial) whose argmax is ``labels`` (N, *spatial)."""
    return nn.functional.one_hot(labels, classes).movedim(-1, 1).float()


def test_dice_by_hand() -> None:
    truth = torch.zeros(2, 1, 4, 4, dtype=torch.long)
    truth[0, 0, :2, :2] = 1  # 4 voxels
    truth[1, 0, 0, 0] = 1  # 1 voxel
    guess = torch.zeros(2, 4, 4, dtype=torch.long)
    guess[0, :2, :1] = 1  # 2 voxels, both right: Dice 2*2/(4+2)
    guess[1, 3, 3] = 1  # 1 voxel, wrong: Dice 0
    metrics = DiceMetrics(torch.device("cpu"))
    metrics.update(one_hot_logits(guess), truth, torch.tensor(0.5))
    assert metrics.samples == 2
    assert metrics.dice() == pytest.approx((4 / 6 + 0.0) / 2)
    assert metrics.mean_loss() == pytest.approx(0.5)


def test_dice_leaves_out_samples_without_the_structure_and_weights_batches() -> None:
    empty = torch.zeros(1, 1, 4, 4, dtype=torch.long)
    metrics = DiceMetrics(torch.device("cpu"))
    metrics.update(one_hot_logits(torch.ones(1, 4, 4, dtype=torch.long)), empty, torch.tensor(1.0))
    assert math.isnan(metrics.dice())  # nothing to find: no pair counted yet
    full = torch.ones(3, 1, 4, 4, dtype=torch.long)
    metrics.update(one_hot_logits(full[:, 0]), full, torch.tensor(3.0))
    assert metrics.dice() == 1.0
    assert metrics.mean_loss() == pytest.approx((1 * 1.0 + 3 * 3.0) / 4)


def test_dice_of_a_single_channel_output_thresholds_the_logit() -> None:
    truth = torch.tensor([[[1, 1, 0, 0]]])  # (N, 1, W)
    logits = torch.tensor([[[2.0, -1.0, 3.0, -2.0]]])  # predicts voxels 0 and 2
    metrics = DiceMetrics(torch.device("cpu"))
    metrics.update(logits, truth, torch.tensor(0.0))
    assert metrics.dice() == pytest.approx(2 * 1 / (2 + 2))


def test_dice_matches_monai() -> None:
    monai_metrics = pytest.importorskip("monai.metrics")
    generator = torch.Generator().manual_seed(0)
    ours = DiceMetrics(torch.device("cpu"))
    theirs = monai_metrics.DiceMetric(include_background=False)
    for _ in range(3):
        logits = torch.randn(2, 3, 6, 6, 6, generator=generator)
        labels = torch.randint(0, 3, (2, 1, 6, 6, 6), generator=generator)
        labels[1][labels[1] == 2] = 0  # a sample without class 2: left out by both
        ours.update(logits, labels, torch.tensor(0.0))
        theirs(one_hot_logits(logits.argmax(dim=1), 3), one_hot_logits(labels[:, 0], 3))
    assert ours.dice() == pytest.approx(float(theirs.aggregate().item()), abs=1e-6)


class Voxels(nn.Module):
    """A 1x1x1 convolution: a segmentation model small enough to train in a test."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv3d(1, 2, kernel_size=1)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.conv(inputs)  # type: ignore[no-any-return]


def dice_loss(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    probabilities = outputs.softmax(dim=1)[:, 1:]
    truth = (targets == 1).float()
    overlap = (probabilities * truth).sum()
    return 1 - 2 * overlap / (probabilities.sum() + truth.sum() + 1e-5)


def volumes(count: int) -> list[dict[str, torch.Tensor]]:
    """Bright voxels are the structure: a model separates them with one threshold."""
    generator = torch.Generator().manual_seed(1)
    batches = []
    for _ in range(count):
        labels = (torch.rand(2, 1, 4, 4, 4, generator=generator) > 0.7).long()
        images = labels.float() + 0.1 * torch.randn(2, 1, 4, 4, 4, generator=generator)
        batches.append({"image": images, "label": labels, "name": torch.zeros(2)})
    return batches


def test_the_segmentation_trainer_learns_from_dict_batches_and_reports_dice() -> None:
    torch.manual_seed(0)
    model, cpu = Voxels(), torch.device("cpu")
    trainer = SegmentationTrainer()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.1)
    before = trainer.validate(model, volumes(2), dice_loss, cpu)
    for _ in range(15):
        trained = trainer.train_epoch(model, volumes(4), optimizer, dice_loss, cpu)
    after = trainer.validate(model, volumes(2), dice_loss, cpu)
    assert set(trained) == {"train_loss", "train_dice"}
    assert set(after) == {"val_loss", "val_dice"}
    assert after["val_dice"] > 0.9 > before["val_dice"]
    pairs = [(batch["image"], batch["label"]) for batch in volumes(2)]
    assert trainer.validate(model, pairs, dice_loss, cpu) == after


def test_a_batch_without_the_keys_says_which_to_set() -> None:
    """A KeyError reached the admin as "an error it did not expect", not as the sentence."""
    trainer = SegmentationTrainer(image_key="img")
    with pytest.raises(ConfigError) as failure:
        trainer.pair({"image": torch.zeros(1), "label": torch.zeros(1)})
    assert str(failure.value) == (
        "SegmentationTrainer: the batch has no 'img' (it has 'image', 'label'); "
        "set image_key and label_key of the trainer"
    )


@pytest.mark.parametrize("batch", [(torch.zeros(1),) * 3, torch.zeros(3)])
def test_a_batch_of_another_form_says_what_it_must_be(batch: object) -> None:
    with pytest.raises(
        ConfigError, match="a batch must be an \\(image, label\\) pair or a mapping"
    ):
        SegmentationTrainer().pair(batch)


def test_mixed_precision_only_on_cuda() -> None:
    trainer = SegmentationTrainer()
    assert trainer._mixed(torch.device("cuda", 0))
    assert not trainer._mixed(torch.device("cpu"))
    assert not SegmentationTrainer(amp=False)._mixed(torch.device("cuda", 0))
