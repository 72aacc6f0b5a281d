"""The workbench: one run's model, data and trainer in the child, built once and then used
for every request.

Building everything up front (model, data, optimizer) is what lets a bad
config or a broken custom module fail at ``start client``, with its
traceback, instead of in round 1. Keeping it for the whole run is what makes
a round cost only its training: nothing is re-imported or re-read.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sized
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from flapp.runtime.components import build, train_where, use_resources
from flapp.runtime.modelfile import build_model, check_fits, load_state, save_state, state_manifest
from flapp.trainer import Loader, TrainerHook
from flclientd.worker.protocol import BEST_LOCAL_MODEL, WorkerInfo, WorkResult
from flclientd.worker.ranks import Ranks, describe_device
from flcore.appconfig import ComponentSpec, load_app
from flcore.schema import ConfigError

logger = logging.getLogger(__name__)

DEFAULT_TRAINER = ComponentSpec("flapp.trainer.SupervisedTrainer")


def _split(data: object, name: str, where: str) -> tuple[Dataset[Any], int]:
    split = getattr(data, name, None)
    if not isinstance(split, Dataset) or not isinstance(split, Sized):
        raise ConfigError(
            f"{where}: the dataset component must have a .{name} torch Dataset with a length, "
            f"got {type(split).__name__}"
        )
    return split, len(split)


def _metrics(values: object, where: str) -> dict[str, float]:
    if not isinstance(values, dict):
        raise TypeError(f"{where} must return a dict of metrics, got {type(values).__name__}")
    try:
        return {str(key): float(value) for key, value in values.items()}
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{where} returned a metric that is not a number: {exc}") from None


def make_reproducible(seed: int) -> None:
    """Seed torch and use its deterministic kernels, so that a site trains the same update
    from the same global model in every run with this seed: what lets a seeded run be
    repeated, or resumed after a server crash, bit for bit.

    An operation without a deterministic kernel warns (in the site's log, which reaches
    the console) instead of failing the run; the daemon sets ``CUBLAS_WORKSPACE_CONFIG``
    for the GPU's matrix products (flclientd.runner).
    """
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = False


class Workbench:
    """The model, data, optimizer and trainer of one run on one rank."""

    def __init__(
        self,
        app_dir: Path,
        data_root: Path | None,
        work_dir: Path,
        ranks: Ranks,
        device: torch.device,
    ) -> None:
        app = load_app(app_dir)
        config = app.train
        use_resources(app.resources)
        make_reproducible(config.seed)
        self.ranks = ranks
        self.device = device
        self.best_path = work_dir / BEST_LOCAL_MODEL
        # Judging each update on the local data costs a validation pass per round;
        # only a site that shares its best local model (cross-site validation) needs it.
        self.keeps_best = app.client is not None and app.client.cross_validate
        self.best_metric = app.server.validation_metric if app.server else "val_accuracy"
        self.higher_is_better = app.server.metric_mode == "max" if app.server else True
        self.best_score: float | None = None

        self.model = build_model(config.model).to(device)
        self.manifest = state_manifest(self.model.state_dict())
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
        logger.info(
            "ready on %s: %d training and %d validation samples, %d parameters",
            describe_device(device, ranks.world_size),
            self.train_samples,
            self.val_samples,
            sum(p.numel() for p in self.model.parameters()),
        )

    def info(self) -> WorkerInfo:
        """What the daemon shows about this child (the ``ready`` event)."""
        return WorkerInfo(
            device=describe_device(self.device, self.ranks.world_size),
            gpu_count=torch.cuda.device_count() if torch.cuda.is_available() else 0,
            world_size=self.ranks.world_size,
            train_samples=self.train_samples,
            val_samples=self.val_samples,
        )

    def _validate(self) -> dict[str, float]:
        values = self.trainer.validate(self.model, self.val_loader, self.loss_fn, self.device)
        return _metrics(values, "trainer.validate")

    def validate(self, model: Path) -> WorkResult:
        """Metrics of any model file on this site's validation split (rank 0 only)."""
        load_state(self.model, model, self.manifest)
        return WorkResult(self.val_samples, self._validate())

    def train(self, round_number: int, global_model: Path, out: Path, epochs: int) -> WorkResult:
        """Validate the global model, train on it, write the update; on every rank.

        Only rank 0 validates and writes; with DDP its model is the
        synchronised one. At a site that takes part in cross-site validation
        the update is validated too (``local_val_*``) to keep the best local
        model.
        """
        load_state(self.model, global_model, self.manifest)
        metrics: dict[str, float] = {}
        if self.ranks.is_main:
            metrics.update(self._validate())
        for epoch in range(epochs):
            if self.sampler is not None:
                self.sampler.set_epoch(self.epochs_done)
            values = self.trainer.train_epoch(
                self.net, self.train_loader, self.optimizer, self.loss_fn, self.device
            )
            train_metrics = _metrics(values, "trainer.train_epoch")
            self.epochs_done += 1
            logger.info(
                "round %d epoch %d/%d: %s", round_number, epoch + 1, epochs, _format(train_metrics)
            )
            metrics.update(train_metrics)
        if self.ranks.is_main:
            state = self.model.state_dict()
            check_fits(self.manifest, state_manifest(state), "the trained model")
            # Not fsynced: an update lost in a crash is simply trained and sent again.
            save_state(state, out, durable=False)
            if self.keeps_best:
                local = self._validate()
                metrics.update({f"local_{key}": value for key, value in local.items()})
                self._keep_if_best(state, local)
        return WorkResult(self.train_samples, metrics)

    def _keep_if_best(self, state: dict[str, torch.Tensor], local: dict[str, float]) -> None:
        score = local.get(self.best_metric)
        if score is None or math.isnan(score):
            logger.warning(
                "validation gave no %r; keeping the latest local model as the best",
                self.best_metric,
            )
        elif self.best_score is None or (
            score > self.best_score if self.higher_is_better else score < self.best_score
        ):
            self.best_score = score
        else:
            return
        save_state(state, self.best_path, durable=False)


def _format(metrics: dict[str, float]) -> str:
    return ", ".join(f"{key} {value:.4g}" for key, value in sorted(metrics.items())) or "no metrics"
