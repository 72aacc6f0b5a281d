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
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, Protocol

import torch
from torch import nn
from torch.optim import Optimizer

from flapp.metrics import ClassificationMetrics

LossFunction = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
# Anything yielding (inputs, targets) batches: a DataLoader, or a custom trainer's wrapper.
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
