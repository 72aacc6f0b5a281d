"""The benchmark app's trainer (copied into the app's resources/).

The workload has no evaluation, as the peers run it, so ``validate`` computes nothing
and reports no metrics; training is flstack's built-in SupervisedTrainer unchanged (with
32 samples and batch 32, one local epoch is exactly one SGD step).
"""

from __future__ import annotations

import torch
from torch import nn

from flapp.trainer import Loader, LossFunction, SupervisedTrainer


class NoEvalTrainer(SupervisedTrainer):
    """SupervisedTrainer without the per-round validation pass."""

    def validate(
        self, model: nn.Module, loader: Loader, loss_fn: LossFunction, device: torch.device
    ) -> dict[str, float]:
        """No metrics: the workload evaluates nothing."""
        return {}
