"""What trains and validates one run's model at a site, behind the one interface the
workbench uses: the app's components (here), or a MONAI bundle (flapp.runtime.monaibundle).

The workbench does a round the same way for both (the global model in,
validation, local epochs, the update and the best local model out as
safetensors files), so a bundle app behaves to the daemon, the server and
cross-site validation exactly like an app of components.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sized
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from flapp.runtime.components import build, train_where
from flapp.runtime.modelfile import build_model
from flapp.trainer import Loader, TrainerHook
from flclientd.worker.ranks import Ranks
from flcore.appconfig import ComponentSpec, TrainConfig
from flcore.schema import ConfigError

logger = logging.getLogger(__name__)

DEFAULT_TRAINER = ComponentSpec("flapp.trainer.SupervisedTrainer")


class Learner(Protocol):
    """One run's model, data and training at a site, as the workbench drives them."""

    train_samples: int
    """The FedAvg weight of this site's updates."""
    val_samples: int

    def state(self) -> dict[str, torch.Tensor]:
        """The model's weights now, under the names they travel by."""
        ...

    def load(self, state: Mapping[str, torch.Tensor]) -> None:
        """Set the weights that the next ``train`` or ``validate`` starts from."""
        ...

    def train(self, round_number: int, epochs: int) -> dict[str, float]:
        """Train ``epochs`` local epochs on every rank; return the metrics of the training."""
        ...

    def validate(self) -> dict[str, float]:
        """``val_*`` metrics of the current weights on this site's validation split (rank 0)."""
        ...


def _split(data: object, name: str, where: str) -> tuple[Dataset[Any], int]:
    split = getattr(data, name, None)
    if not isinstance(split, Dataset) or not isinstance(split, Sized):
        raise ConfigError(
            f"{where}: the dataset component must have a .{name} torch Dataset with a length, "
            f"got {type(split).__name__}"
        )
    return split, len(split)


def checked_metrics(values: object, where: str) -> dict[str, float]:
    """Metrics as the daemon takes them: a dict of names to numbers, or a TypeError naming
    ``where`` (the app's code that returned something else)."""
    if not isinstance(values, dict):
        raise TypeError(f"{where} must return a dict of metrics, got {type(values).__name__}")
    try:
        return {str(key): float(value) for key, value in values.items()}
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{where} returned a metric that is not a number: {exc}") from None


def format_metrics(metrics: Mapping[str, float]) -> str:
    """Metrics in a log line."""
    return ", ".join(f"{key} {value:.4g}" for key, value in sorted(metrics.items())) or "no metrics"


class ComponentLearner:
    """The model, data, optimizer and trainer hook that config_train.json names, on one rank."""

    def __init__(
        self, config: TrainConfig, data_root: Path | None, ranks: Ranks, device: torch.device
    ) -> None:
        self.device = device
        self.model = build_model(config.model).to(device)
        where = train_where("dataset")
        data = build(config.dataset, where, data_root=data_root)
        train_set, self.train_samples = _split(data, "train", where)
        val_set, self.val_samples = _split(data, "validation", where)
        self.loss_fn = build(config.loss, train_where("loss"))
        self.trainer: TrainerHook = build(config.trainer or DEFAULT_TRAINER, train_where("trainer"))
        for method in ("train_epoch", "validate"):
            if not callable(getattr(self.trainer, method, None)):
                raise ConfigError(
                    f"{train_where('trainer')}: {type(self.trainer).__name__} has no {method}() "
                    "method (see flapp.TrainerHook)"
                )
        self.net: nn.Module = self.model
        if ranks.distributed:
            device_ids = [device.index] if device.type == "cuda" else None
            self.net = DistributedDataParallel(self.model, device_ids=device_ids)
        self.optimizer = build(config.optimizer, train_where("optimizer"), self.net.parameters())
        loader_args: dict[str, Any] = {
            "batch_size": config.batch_size,
            "num_workers": config.num_workers,
            "persistent_workers": config.num_workers > 0,
            "pin_memory": device.type == "cuda",
        }
        self.sampler: DistributedSampler[Any] | None = None
        if ranks.distributed:
            self.sampler = DistributedSampler(
                train_set, ranks.world_size, ranks.rank, shuffle=True, seed=config.seed
            )
            self.train_loader: Loader = DataLoader(train_set, sampler=self.sampler, **loader_args)
        else:
            generator = torch.Generator().manual_seed(config.seed)
            self.train_loader = DataLoader(
                train_set, shuffle=True, generator=generator, **loader_args
            )
        self.val_loader: Loader = DataLoader(val_set, shuffle=False, **loader_args)
        self.epochs_done = 0

    def state(self) -> dict[str, torch.Tensor]:
        """The plain model's state dict (with DDP, rank 0's is the synchronised one)."""
        return self.model.state_dict()

    def load(self, state: Mapping[str, torch.Tensor]) -> None:
        """Load weights into the model (names, dtypes and shapes were checked by the caller)."""
        self.model.load_state_dict(state, strict=True)

    def train(self, round_number: int, epochs: int) -> dict[str, float]:
        """The trainer hook's epochs; the metrics of the last one."""
        metrics: dict[str, float] = {}
        for epoch in range(epochs):
            if self.sampler is not None:
                self.sampler.set_epoch(self.epochs_done)
            values = self.trainer.train_epoch(
                self.net, self.train_loader, self.optimizer, self.loss_fn, self.device
            )
            metrics = checked_metrics(values, "trainer.train_epoch")
            self.epochs_done += 1
            logger.info(
                "round %d epoch %d/%d: %s", round_number, epoch + 1, epochs, format_metrics(metrics)
            )
        return metrics

    def validate(self) -> dict[str, float]:
        """The trainer hook's validation pass over the plain model."""
        values = self.trainer.validate(self.model, self.val_loader, self.loss_fn, self.device)
        return checked_metrics(values, "trainer.validate")
