"""The trainer hook: how one epoch of local training and one validation pass run.

config_train.json may name a ``trainer`` component (usually custom code in
the app's ``resources/``) to change what a training step or a validation
pass does, e.g. for a model with several outputs or another metric. It is
created as ``factory(**args)`` and must offer the two methods of
:class:`TrainerHook`. Without one, :class:`SupervisedTrainer` is used, so
the built-in behaviour and a custom trainer take the same code path; a
custom trainer may subclass it and override one method.

The training child calls them like this:

* ``train_epoch`` once per local epoch, with the model as it trains (wrapped
  in DistributedDataParallel when the site trains on several GPUs), the
  training loader (a DistributedSampler shards it per rank), the optimizer
  and loss of config_train.json, and the device of this rank. It returns
  metrics such as ``train_loss``; those of the last epoch are reported (with
  several ranks, rank 0's, measured on its shard).
* ``validate`` on rank 0 only, with the plain model, the site's validation
  loader, the loss and the device. It returns metrics named ``val_*``
  (``val_accuracy`` and ``val_loss`` built in); the metric named by
  ``validation_metric`` in config_fed_server.json picks the best local model.

Two trainers are built in: :class:`SupervisedTrainer` (classification,
``(inputs, labels)`` batches) and :class:`SegmentationTrainer` (a class
per voxel, pair or mapping batches, Dice, mixed precision on CUDA).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol

import torch
from torch import nn
from torch.optim import Optimizer

from flapp.metrics import ClassificationMetrics, DiceMetrics
from flcore.schema import ConfigError

LossFunction = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
# Anything yielding batches, (inputs, targets) or mappings such as MONAI's {"image": ..., "label":
# ...}: a DataLoader, or a custom trainer's wrapper.
Loader = Iterable[Any]


class TrainerHook(Protocol):
    """What a ``trainer`` component must offer."""

    def train_epoch(
        self,
        model: nn.Module,
        loader: Loader,
        optimizer: Optimizer,
        loss_fn: LossFunction,
        device: torch.device,
    ) -> dict[str, float]:
        """Train one pass over ``loader``; return metrics of the pass."""
        ...

    def validate(
        self, model: nn.Module, loader: Loader, loss_fn: LossFunction, device: torch.device
    ) -> dict[str, float]:
        """Evaluate ``model`` on ``loader`` without changing it; return ``val_*`` metrics."""
        ...


class SupervisedTrainer:
    """Classification: inputs and integer labels in, logits out, mean loss and accuracy."""

    def train_epoch(
        self,
        model: nn.Module,
        loader: Loader,
        optimizer: Optimizer,
        loss_fn: LossFunction,
        device: torch.device,
    ) -> dict[str, float]:
        """One epoch of plain mini-batch training; ``train_loss`` and ``train_accuracy``."""
        model.train()
        metrics = ClassificationMetrics(device)
        for inputs, targets in loader:
            inputs = inputs.to(device, non_blocking=True)
            targets = targets.to(device, non_blocking=True)
            optimizer.zero_grad(set_to_none=True)
            outputs = model(inputs)
            loss = loss_fn(outputs, targets)
            torch.autograd.backward(loss)
            optimizer.step()
            metrics.update(outputs, targets, loss)
        if not metrics.samples:
            return {}
        return {"train_loss": metrics.mean_loss(), "train_accuracy": metrics.accuracy()}

    @torch.no_grad()
    def validate(
        self, model: nn.Module, loader: Loader, loss_fn: LossFunction, device: torch.device
    ) -> dict[str, float]:
        """Mean loss and accuracy over the whole loader: ``val_loss`` and ``val_accuracy``."""
        model.eval()
        metrics = ClassificationMetrics(device)
        for inputs, targets in loader:
            inputs = inputs.to(device, non_blocking=True)
            targets = targets.to(device, non_blocking=True)
            outputs = model(inputs)
            metrics.update(outputs, targets, loss_fn(outputs, targets))
        if not metrics.samples:
            return {}
        return {"val_accuracy": metrics.accuracy(), "val_loss": metrics.mean_loss()}


class SegmentationTrainer:
    """Segmentation: images in, a logit per class and voxel out; mean loss and Dice.

    Batches may be ``(inputs, labels)`` pairs or mappings, as MONAI's
    dictionary transforms make them (``{"image": ..., "label": ...}``; the
    keys are arguments). Labels are integer class maps, ``(N, 1, *spatial)``
    as MONAI's losses take them with ``to_onehot_y=True``. On a CUDA device
    the forward passes run in mixed precision (``torch.autocast`` and a
    gradient scaler) unless ``amp`` is false; on a CPU they run in float32.

    Reports ``train_loss`` and ``train_dice`` after an epoch, ``val_loss``
    and ``val_dice`` (:class:`flapp.DiceMetrics`) after validation. To
    validate otherwise, e.g. with sliding windows over volumes larger than
    the model's input, override :meth:`infer`.

    Args:
        image_key: Key of the images in a mapping batch.
        label_key: Key of the labels in a mapping batch.
        amp: Mixed precision on CUDA devices.
    """

    def __init__(
        self, image_key: str = "image", label_key: str = "label", amp: bool = True
    ) -> None:
        self.image_key = image_key
        self.label_key = label_key
        self.amp = amp
        self._scaler: torch.amp.GradScaler | None = None

    def pair(self, batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """The images and labels of a batch, whichever form it has.

        A batch of another form is a mistake in the app (its dataset or the trainer's keys),
        so it is a ConfigError whose message the admin reads as it is.
        """
        owner = type(self).__name__
        if isinstance(batch, Mapping):
            missing = [key for key in (self.image_key, self.label_key) if key not in batch]
            if missing:
                raise ConfigError(
                    f"{owner}: the batch has no {', '.join(map(repr, missing))} "
                    f"(it has {', '.join(map(repr, sorted(map(str, batch))))[:500]}); "
                    "set image_key and label_key of the trainer"
                )
            return batch[self.image_key], batch[self.label_key]
        try:
            inputs, targets = batch
        except (TypeError, ValueError):
            raise ConfigError(
                f"{owner}: a batch must be an (image, label) pair or a mapping with keys "
                f"{self.image_key!r} and {self.label_key!r}, not a {type(batch).__name__} "
                "of another form; check what the dataset gives"
            ) from None
        return inputs, targets

    def infer(self, model: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
        """The logits of a validation batch; the model's forward pass unless overridden."""
        return model(inputs)  # type: ignore[no-any-return]

    def _mixed(self, device: torch.device) -> bool:
        return self.amp and device.type == "cuda"

    def train_epoch(
        self,
        model: nn.Module,
        loader: Loader,
        optimizer: Optimizer,
        loss_fn: LossFunction,
        device: torch.device,
    ) -> dict[str, float]:
        """One epoch over the loader; ``train_loss`` and ``train_dice``."""
        model.train()
        mixed = self._mixed(device)
        if mixed and self._scaler is None:
            self._scaler = torch.amp.GradScaler(device.type)
        metrics = DiceMetrics(device)
        for batch in loader:
            inputs, targets = self.pair(batch)
            inputs = inputs.to(device, non_blocking=True)
            targets = targets.to(device, non_blocking=True)
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast(device.type, enabled=mixed):
                outputs = model(inputs)
                loss = loss_fn(outputs, targets)
            if mixed and self._scaler is not None:
                torch.autograd.backward(self._scaler.scale(loss))
                self._scaler.step(optimizer)
                self._scaler.update()
            else:
                torch.autograd.backward(loss)
                optimizer.step()
            metrics.update(outputs, targets, loss)
        if not metrics.samples:
            return {}
        return {"train_loss": metrics.mean_loss(), "train_dice": metrics.dice()}

    @torch.no_grad()
    def validate(
        self, model: nn.Module, loader: Loader, loss_fn: LossFunction, device: torch.device
    ) -> dict[str, float]:
        """Mean loss and Dice over the whole loader: ``val_loss`` and ``val_dice``."""
        model.eval()
        metrics = DiceMetrics(device)
        for batch in loader:
            inputs, targets = self.pair(batch)
            inputs = inputs.to(device, non_blocking=True)
            targets = targets.to(device, non_blocking=True)
            with torch.autocast(device.type, enabled=self._mixed(device)):
                outputs = self.infer(model, inputs)
                loss = loss_fn(outputs, targets)
            metrics.update(outputs, targets, loss)
        if not metrics.samples:
            return {}
        return {"val_dice": metrics.dice(), "val_loss": metrics.mean_loss()}
