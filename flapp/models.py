"""Built-in models, so that the examples and benchmarks need no custom code.

Apps name them in config_train.json as ``flapp.models.DigitsCNN`` or
``flapp.models.MLP``; anything else comes from an app's ``resources/``.
"""

from __future__ import annotations

import itertools

import torch
from torch import nn


class DigitsCNN(nn.Module):
    """A small CNN for 1x8x8 images in 10 classes (scikit-learn's digits).

    About 38,000 parameters: big enough to pass 90 % validation accuracy on
    the digits data within a few federated rounds, small enough that a round
    of local training takes a fraction of a second on one CPU core.
    """

    def __init__(self, num_classes: int = 10, channels: int = 16, hidden: int = 64) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, channels, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.Conv2d(channels, 2 * channels, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(2 * channels * 4 * 4, hidden),
            nn.ReLU(),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class scores (logits) for a batch of shape (N, 1, 8, 8)."""
        result: torch.Tensor = self.classifier(self.features(x))
        return result


class MLP(nn.Module):
    """A plain multi-layer perceptron whose size is set exactly by its arguments.

    The benchmarks use it to get models of a chosen parameter count (about
    1 M and 25 M) without any data-specific structure. Inputs of any shape
    are flattened after the batch dimension.

    Args:
        in_features: Size of one flattened input.
        hidden: Width of every hidden layer.
        out_features: Number of outputs (classes).
        layers: Number of Linear layers in total (at least 1; 1 is a linear model).
    """

    def __init__(self, in_features: int, hidden: int, out_features: int, layers: int = 2) -> None:
        super().__init__()
        if layers < 1:
            raise ValueError(f"MLP needs at least 1 layer, got layers={layers}")
        widths = [in_features, *([hidden] * (layers - 1)), out_features]
        modules: list[nn.Module] = [nn.Flatten()]
        for index, (width_in, width_out) in enumerate(itertools.pairwise(widths)):
            if index:
                modules.append(nn.ReLU())
            modules.append(nn.Linear(width_in, width_out))
        self.net = nn.Sequential(*modules)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Outputs for a batch of inputs."""
        result: torch.Tensor = self.net(x)
        return result
