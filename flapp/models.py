"""Built-in models, so that the examples and benchmarks need no custom code.

Apps name them in config_train.json as ``flapp.models.DigitsCNN`` or
``flapp.models.MLP``; anything else comes from an app's ``resources/``.
"""

from __future__ import annotations

import itertools

import torch
from torch import nn

from flapp._checks import MAX_PARAMETERS, at_most, positive_int

MAX_MLP_LAYERS = 1024
"""Most Linear layers of an MLP: every layer is Python objects as well as weights, so a
million layers of width 1 would take the site's memory under any parameter cap."""


class DigitsCNN(nn.Module):
    """A small CNN for 1x8x8 images in 10 classes (scikit-learn's digits).

    About 38,000 parameters: big enough to pass 90 % validation accuracy on
    the digits data within a few federated rounds, small enough that a round
    of local training takes a fraction of a second on one CPU core. Its
    arguments may make it larger, up to :data:`MAX_PARAMETERS` parameters.
    """

    def __init__(self, num_classes: int = 10, channels: int = 16, hidden: int = 64) -> None:
        super().__init__()
        owner = type(self).__name__
        num_classes = positive_int(owner, "num_classes", num_classes)
        channels = positive_int(owner, "channels", channels)
        hidden = positive_int(owner, "hidden", hidden)
        # Weights and biases of the two 3x3 convolutions, then of the two Linear layers.
        parameters = (
            10 * channels
            + 18 * channels * channels
            + 2 * channels
            + (32 * channels + 1) * hidden
            + (hidden + 1) * num_classes
        )
        at_most(owner, "parameters", parameters, MAX_PARAMETERS, "make channels or hidden smaller")
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
        layers: Number of Linear layers in total (at least 1; 1 is a linear model; at
            most :data:`MAX_MLP_LAYERS`).

    At most :data:`MAX_PARAMETERS` parameters in all.
    """

    def __init__(self, in_features: int, hidden: int, out_features: int, layers: int = 2) -> None:
        super().__init__()
        owner = type(self).__name__
        in_features = positive_int(owner, "in_features", in_features)
        hidden = positive_int(owner, "hidden", hidden)
        out_features = positive_int(owner, "out_features", out_features)
        layers = positive_int(owner, "layers", layers)
        at_most(owner, "layers", layers, MAX_MLP_LAYERS, "use fewer layers")
        widths = [in_features, *([hidden] * (layers - 1)), out_features]
        parameters = sum(
            (width_in + 1) * width_out for width_in, width_out in itertools.pairwise(widths)
        )
        at_most(owner, "parameters", parameters, MAX_PARAMETERS, "make hidden or layers smaller")
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
