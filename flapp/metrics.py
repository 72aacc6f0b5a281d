"""Running metrics of a pass over the data (classification, segmentation), for the built-in
trainers and for custom trainer hooks.

Sums stay on the training device as tensors, so a pass over the data costs
no host synchronisation per batch; the means are read once at the end.
"""

from __future__ import annotations

import torch


class ClassificationMetrics:
    """Sample-weighted mean loss and accuracy over the batches of one pass.

    Args:
        device: Where the batches' outputs live (the running sums stay there).
    """

    def __init__(self, device: torch.device) -> None:
        self._loss = torch.zeros((), dtype=torch.float64, device=device)
        self._correct = torch.zeros((), dtype=torch.int64, device=device)
        self.samples = 0

    def update(self, outputs: torch.Tensor, targets: torch.Tensor, loss: torch.Tensor) -> None:
        """Count one batch: its logits, its integer labels and its mean loss."""
        self._loss += loss.detach() * len(targets)
        self._correct += (outputs.detach().argmax(dim=1) == targets).sum()
        self.samples += len(targets)

    def mean_loss(self) -> float:
        """The loss averaged over every sample counted (NaN before the first batch)."""
        return self._loss.item() / self.samples if self.samples else float("nan")

    def accuracy(self) -> float:
        """The share of samples whose highest logit is their label (NaN before the first batch)."""
        return self._correct.item() / self.samples if self.samples else float("nan")


class DiceMetrics:
    """Sample-weighted mean loss and mean Dice over the batches of one segmentation pass.

    Dice is computed per sample and per foreground class on the predicted
    labels (the argmax over the class channel, or ``logit > 0`` for a
    single-channel output) as ``2 |P ∩ G| / (|P| + |G|)``, averaged over the
    classes of each sample and then over the samples. A class that a
    sample's ground truth lacks is left out of that sample's mean (and a
    sample that lacks every class, of the whole mean), so a volume without a
    structure neither rewards nor punishes the model. This is what MONAI's
    ``DiceMetric(include_background=False)`` reports, so numbers compare
    with MONAI's own training scripts.

    Args:
        device: Where the batches' outputs live (the running sums stay there).
    """

    def __init__(self, device: torch.device) -> None:
        self._loss = torch.zeros((), dtype=torch.float64, device=device)
        self._dice = torch.zeros((), dtype=torch.float64, device=device)
        self._counted = torch.zeros((), dtype=torch.int64, device=device)
        self.samples = 0

    def update(self, outputs: torch.Tensor, targets: torch.Tensor, loss: torch.Tensor) -> None:
        """Count one batch: logits ``(N, C, *spatial)``, integer labels ``(N, [1,] *spatial)``
        and the batch's mean loss."""
        outputs = outputs.detach()
        labels = targets.detach()
        if labels.dim() == outputs.dim():
            labels = labels.squeeze(1)
        labels = labels.long()
        classes = outputs.shape[1]
        predicted = outputs.argmax(dim=1) if classes > 1 else (outputs[:, 0] > 0).long()
        spatial = tuple(range(1, predicted.dim()))
        total = torch.zeros(len(outputs), dtype=torch.float64, device=outputs.device)
        present = torch.zeros(len(outputs), dtype=torch.int64, device=outputs.device)
        for label in range(1, max(classes, 2)):
            truth, guess = labels == label, predicted == label
            truth_voxels = truth.sum(dim=spatial)
            overlap = (truth & guess).sum(dim=spatial)
            denominator = truth_voxels + guess.sum(dim=spatial)
            dice = 2.0 * overlap.double() / denominator.clamp(min=1).double()
            total += dice * (truth_voxels > 0)
            present += truth_voxels > 0
        self._dice += (total / present.clamp(min=1)).sum()
        self._counted += (present > 0).sum()
        self._loss += loss.detach().double() * len(outputs)
        self.samples += len(outputs)

    def mean_loss(self) -> float:
        """The loss averaged over every sample counted (NaN before the first batch)."""
        return self._loss.item() / self.samples if self.samples else float("nan")

    def dice(self) -> float:
        """Mean Dice over the samples counted (NaN while there is none)."""
        counted = int(self._counted.item())
        return self._dice.item() / counted if counted else float("nan")
