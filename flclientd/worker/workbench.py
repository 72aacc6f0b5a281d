"""The workbench: one run's learner in the child, built once and then used for every request.

Building everything up front (model, data, optimizer, or the MONAI bundle's
engines) is what lets a bad config or a broken custom module fail at
``start client``, with its traceback, instead of in round 1. Keeping it
for the whole run is what makes a round cost only its training: nothing is
re-imported or re-read.

The round itself is done here, the same for every kind of app: read the
global model (checked against the model's manifest), validate it, train,
write the update, and keep the best local model for cross-site validation.
What trains is a :class:`~flclientd.worker.learner.Learner`: the app's
components, or a MONAI bundle driven through MONAI's own FL client.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import torch

from flapp.runtime.components import holds_code, use_resources
from flapp.runtime.modelfile import check_fits, read_state, save_state, state_manifest
from flclientd.worker.learner import ComponentLearner, Learner, checked_metrics
from flclientd.worker.protocol import BEST_LOCAL_MODEL, WorkerInfo, WorkResult
from flclientd.worker.ranks import Ranks, describe_device
from flcore.appconfig import App, TrainConfig, load_app
from flcore.schema import ConfigError
from flcore.tensorfile import TensorFile, TensorFileError

logger = logging.getLogger(__name__)

BEST_SCORE_KEY = "flstack_best_score"
"""The header metadata that holds a best local model's score on the site's own data."""


def _kept_score(path: Path) -> float | None:
    """The score kept in a best local model's header; None without one (no file, or one a
    power loss cut short, whose first better model then replaces it)."""
    try:
        score = float(TensorFile(path).metadata[BEST_SCORE_KEY])
    except (OSError, TensorFileError, KeyError, ValueError):
        return None
    return None if math.isnan(score) else score


def open_learner(
    app: App, data_root: Path | None, work_dir: Path, ranks: Ranks, device: torch.device
) -> Learner:
    """The learner of an app: its components, or its MONAI bundle.

    MONAI is an optional extra, so its adapter is imported only for a
    bundle app (a site without MONAI runs every other app).
    """
    if isinstance(app.train, TrainConfig):
        return ComponentLearner(app.train, data_root, ranks, device)
    bundle = app.train
    if ranks.distributed:
        raise ConfigError(
            f"app {app.root.name} trains a MONAI bundle, which runs in one process here; "
            "start this site with 'start client', not 'start_mgpu'"
        )
    from flapp.runtime.monaibundle import BundleLearner

    return BundleLearner(app.resources / bundle.folder, bundle, data_root, work_dir, device)


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
    """One run's learner on one rank, and the round around it."""

    def __init__(
        self,
        app_dir: Path,
        data_root: Path | None,
        work_dir: Path,
        ranks: Ranks,
        device: torch.device,
    ) -> None:
        app = load_app(app_dir)
        if holds_code(app.resources):
            use_resources(app.resources)
        make_reproducible(app.train.seed)
        self.ranks = ranks
        self.device = device
        self.best_path = work_dir / BEST_LOCAL_MODEL
        # Judging each update on the local data costs a validation pass per round;
        # only a site that shares its best local model (cross-site validation) needs it.
        self.keeps_best = app.client is not None and app.client.cross_validate
        self.best_metric = app.server.validation_metric if app.server else "val_accuracy"
        self.higher_is_better = app.server.metric_mode == "max" if app.server else True
        self.best_score = _kept_score(self.best_path) if self.keeps_best else None
        """The score of the best local model kept: read back from it, so that a child
        started again (a restart, start client after a failure) does not let a worse
        model replace it."""
        self.learner = open_learner(app, data_root, work_dir, ranks, device)
        self.manifest = state_manifest(self.learner.state())
        logger.info(
            "ready on %s: %d training and %d validation samples, a model of %d values",
            describe_device(device, ranks.world_size),
            self.learner.train_samples,
            self.learner.val_samples,
            self.manifest.num_elements,
        )

    def info(self) -> WorkerInfo:
        """What the daemon shows about this child (the ``ready`` event)."""
        return WorkerInfo(
            device=describe_device(self.device, self.ranks.world_size),
            gpu_count=torch.cuda.device_count() if torch.cuda.is_available() else 0,
            world_size=self.ranks.world_size,
            train_samples=self.learner.train_samples,
            val_samples=self.learner.val_samples,
        )

    def _validate(self) -> dict[str, float]:
        return checked_metrics(self.learner.validate(), "validation")

    def validate(self, model: Path) -> WorkResult:
        """Metrics of any model file on this site's validation split (rank 0 only)."""
        self.learner.load(read_state(model, self.manifest))
        return WorkResult(self.learner.val_samples, self._validate())

    def train(self, round_number: int, global_model: Path, out: Path, epochs: int) -> WorkResult:
        """Validate the global model, train on it, write the update; on every rank.

        Only rank 0 validates and writes; with DDP its model is the
        synchronised one. At a site that takes part in cross-site validation
        the update is validated too (``local_val_*``) to keep the best local
        model.
        """
        self.learner.load(read_state(global_model, self.manifest))
        metrics: dict[str, float] = {}
        if self.ranks.is_main:
            metrics.update(self._validate())
        metrics.update(self.learner.train(round_number, epochs))
        if self.ranks.is_main:
            state = self.learner.state()
            check_fits(self.manifest, state_manifest(state), "the trained model")
            # Not fsynced: an update lost in a crash is simply trained and sent again.
            save_state(state, out, durable=False)
            if self.keeps_best:
                local = self._validate()
                metrics.update({f"local_{key}": value for key, value in local.items()})
                self._keep_if_best(state, local)
        return WorkResult(self.learner.train_samples, metrics)

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
        scored = {} if self.best_score is None else {BEST_SCORE_KEY: repr(self.best_score)}
        save_state(state, self.best_path, durable=False, metadata=scored)
