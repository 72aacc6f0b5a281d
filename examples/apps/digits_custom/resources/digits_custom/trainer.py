"""A trainer hook that augments the training images with random shifts.

It subclasses the built-in trainer and changes one thing: each training
batch is rolled by up to ``max_shift`` pixels, which makes the small model
less sensitive to where a digit sits in the 8x8 frame.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch import nn
from torch.optim import Optimizer

from flapp import Loader, LossFunction, SupervisedTrainer


class ShiftAugmentingTrainer(SupervisedTrainer):
    """The built-in classification trainer, with shifted training images."""

    def __init__(self, max_shift: int = 1) -> None:
        self.max_shift = max_shift

    def train_epoch(
        self,
        model: nn.Module,
        loader: Loader,
        optimizer: Optimizer,
        loss_fn: LossFunction,
        device: torch.device,
    ) -> dict[str, float]:
        """Train one epoch on randomly shifted images."""
        shifted = _shifted(loader, self.max_shift)
        return super().train_epoch(model, shifted, optimizer, loss_fn, device)


def _shifted(loader: Loader, max_shift: int) -> Iterator[tuple[Any, Any]]:
    """The loader's batches, each batch of images rolled by a random offset."""
    for inputs, targets in loader:
        dy, dx = torch.randint(-max_shift, max_shift + 1, (2,)).tolist()
        yield torch.roll(inputs, shifts=(dy, dx), dims=(2, 3)), targets
