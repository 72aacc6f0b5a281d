"""Running classification metrics, for the built-in trainer and for custom trainer hooks.

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
