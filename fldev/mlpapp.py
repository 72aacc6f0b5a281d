"""An app whose model has a chosen size: the benchmarks' workload, and the tests' large model.

``flapp.models.MLP`` on ``flapp.datasets.SyntheticClassification``: no data
files, and a model of exactly as many parameters as asked for, so a
benchmark or a test can move 4 MB or 100 MB per update without anything
else changing.
"""

from __future__ import annotations

import itertools
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fldev.cluster import Cluster

APP_NAME = "bench_mlp"


@dataclass(frozen=True)
class ModelSize:
    """An MLP of a chosen parameter count: ``flapp.models.MLP`` arguments."""

    name: str
    in_features: int
    hidden: int
    out_features: int
    layers: int

    @property
    def parameters(self) -> int:
        """Exact number of parameters (weights and biases)."""
        widths = [self.in_features, *([self.hidden] * (self.layers - 1)), self.out_features]
        return sum(a * b + b for a, b in itertools.pairwise(widths))

    @property
    def megabytes(self) -> float:
        """Size of the float32 model in MB (10^6 bytes)."""
        return self.parameters * 4 / 1e6


MODELS = {
    # 1,011,010 parameters (4.0 MB)
    "small": ModelSize("small", in_features=1000, hidden=1000, out_features=10, layers=2),
    # 25,004,650 parameters (100 MB)
    "large": ModelSize("large", in_features=1000, hidden=4520, out_features=10, layers=3),
}


def write_app(
    folder: Path,
    model: ModelSize,
    *,
    clients: int,
    num_rounds: int,
    batch_size: int = 32,
    trainer: tuple[Path, str] | None = None,
) -> Path:
    """Write the benchmark app: one SGD step per round, rounds closed by all clients.

    The dataset holds exactly ``batch_size`` samples and ``local_epochs`` is
    1, so a round's local training is one optimizer step.
    ``min_num_clients = max_num_clients = clients`` and a wait of an hour
    mean a round closes because every client reported, never by a timer.

    ``trainer``: (module file, class name) of a trainer that replaces flapp's, copied into
    the app's resources (the peer comparison's trainer that skips validation).
    """
    config = folder / APP_NAME / "config"
    config.mkdir(parents=True, exist_ok=True)
    resources = folder / APP_NAME / "resources"
    resources.mkdir(exist_ok=True)
    if trainer is not None:
        shutil.copy(trainer[0], resources / trainer[0].name)
    files: dict[str, Any] = {
        "config_fed_server.json": {
            "start_round": 0,
            "num_rounds": num_rounds,
            "min_num_clients": clients,
            "max_num_clients": clients,
            "wait_after_min_clients": 3600,
            "validation_metric": "val_accuracy",
            "final_validation_timeout": 60,
        },
        "config_fed_client.json": {"local_epochs": 1},
        "config_train.json": {
            "model": {
                "path": "flapp.models.MLP",
                "args": {
                    "in_features": model.in_features,
                    "hidden": model.hidden,
                    "out_features": model.out_features,
                    "layers": model.layers,
                },
            },
            "dataset": {
                "path": "flapp.datasets.SyntheticClassification",
                "args": {
                    "num_samples": batch_size,
                    "in_features": model.in_features,
                    "num_classes": model.out_features,
                },
            },
            "optimizer": {"path": "torch.optim.SGD", "args": {"lr": 0.01}},
            "loss": {"path": "torch.nn.CrossEntropyLoss"},
            "trainer": None if trainer is None else {"path": f"{trainer[0].stem}.{trainer[1]}"},
            "batch_size": batch_size,
            "seed": 0,
        },
    }
    for name, values in files.items():
        (config / name).write_text(json.dumps(values, indent=2) + "\n")
    return folder / APP_NAME


def start_app_run(c: Cluster) -> None:
    """Upload and deploy the app :func:`write_app` wrote into the admin's transfer folder and
    start run 1 on the server and every connected client."""
    c.admin(
        "set_run_number 1",
        f"upload_folder {APP_NAME}",
        f"deploy {APP_NAME} server",
        f"deploy {APP_NAME} client",
        "start server",
        "start client",
        timeout=60,
    )
