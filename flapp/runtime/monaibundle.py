"""MONAI bundles as flstack apps: the only module of flstack that imports MONAI.

A MONAI bundle (``configs/train.json``, ``configs/evaluate.json``,
``configs/metadata.json``, ``models/``) describes its network, data,
transforms, optimizer and engines in its own configs. An app whose
config_train.json names one (``{"bundle": {"folder": ...}}``) trains it
through MONAI's FL client, ``monai.fl.client.MonaiAlgo``, so a
researcher's bundle federates without code changes:

* the training child (flclientd's workbench) holds a :class:`BundleLearner`:
  ``initialize`` once, then per round ``train`` with the global weights,
  ``get_weights`` for the update (full weights, not differences: the
  server averages models) and ``evaluate`` for validation and cross-site
  validation;
* the model-init child builds the first global model from the bundle's
  network definition (:func:`bundle_network`).

Weights cross as flstack's safetensors files, read and written by the
workbench; MONAI's pickled checkpoints never carry them. MonaiAlgo reads a
checkpoint only when asked for its best or final model, which flstack never
asks (and it is built with no such paths); the ``CheckpointLoader`` handlers
of the bundle's validation are switched off by MonaiAlgo. Other handlers in
a bundle may still read files the bundle names (a ``CheckpointLoader`` in
its training handlers, with ``torch.load(weights_only=True)`` in MONAI
1.6.1): that is the bundle's own code, which the site approved.

The bundle runs from a copy in the run's work folder at the site, so what
its handlers write (checkpoints, evaluation outputs) never lands in the
app's ``resources/``, whose digest the site approved. Its folder is put on
``sys.path``, as ``python -m monai.bundle run`` does, so configs that
``"$import scripts"`` find the bundle's own code.

MONAI is an optional extra (``pip install flstack[monai]``); importing this
module without it raises a ConfigError that says so.
"""

from __future__ import annotations

import logging
import shutil
import sys
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from flcore.appconfig import TRAIN_CONFIG, BundleConfig
from flcore.schema import ConfigError

try:
    from ignite.engine import Engine, Events
    from monai.bundle import ConfigParser
    from monai.fl.client import MonaiAlgo
    from monai.fl.utils.constants import ExtraItems
    from monai.fl.utils.exchange_object import ExchangeObject
except ImportError as exc:
    raise ConfigError(
        f"this app trains a MONAI bundle, but MONAI is not installed here ({exc}); "
        "install it with: pip install 'flstack[monai]'"
    ) from None

logger = logging.getLogger(__name__)

BUNDLE_COPY = "bundle"
"""The bundle's working copy in the run's work folder at the site."""
DATASET_DIR = "dataset_dir"
"""The config id by which MONAI bundles name their data folder; set to the site's DATA_ROOT."""
_CONFIG_WARNING = "executing the bundle config"


def _where(config: BundleConfig) -> str:
    return f"{TRAIN_CONFIG}: bundle {config.folder!r}"


def _importable(bundle_dir: Path) -> None:
    """Put the bundle's folder on ``sys.path`` (after the app's resources/), where
    ``monai.bundle run`` puts it, for configs that import the bundle's ``scripts``."""
    folder = str(bundle_dir)
    if folder not in sys.path:
        sys.path.insert(1, folder)


def bundle_network(bundle_dir: Path, config: BundleConfig) -> nn.Module:
    """The bundle's network as its train config defines it (the id ``config.network``).

    Only that definition and what it refers to are built, so the server
    needs neither data nor engines to make the first global model.
    """
    _importable(bundle_dir)
    parser = ConfigParser()
    parser.read_config(str(bundle_dir / config.train_config))
    parser["bundle_root"] = str(bundle_dir)
    if config.network not in parser:
        raise ConfigError(
            f"{_where(config)}: {config.train_config} defines no {config.network!r} "
            "(set 'network' to the id of the network definition)"
        )
    network = parser.get_parsed_content(config.network)
    if not isinstance(network, nn.Module):
        raise ConfigError(
            f"{_where(config)}: {config.network!r} is a {type(network).__name__}, "
            "not a torch.nn.Module"
        )
    return network


def _numbers(values: Mapping[str, Any]) -> dict[str, float]:
    """The entries of an engine's metrics that are single numbers, as floats."""
    numbers: dict[str, float] = {}
    for name, value in values.items():
        if isinstance(value, torch.Tensor) and value.numel() == 1:
            numbers[str(name)] = float(value.item())
        elif isinstance(value, int | float) and not isinstance(value, bool):
            numbers[str(name)] = float(value)
    return numbers


class _LossMeter:
    """Sample-weighted mean of the loss a MONAI trainer reports per iteration.

    MONAI's ``SupervisedTrainer`` leaves the batch's loss in
    ``engine.state.output``: one dict per sample after decollation, or one
    dict for the batch.
    """

    def __init__(self) -> None:
        self.total = 0.0
        self.samples = 0

    def reset(self, _engine: Engine) -> None:
        self.total, self.samples = 0.0, 0

    def count(self, engine: Engine) -> None:
        output = engine.state.output
        items = output if isinstance(output, list) else [output]
        if items and isinstance(items[0], Mapping) and "loss" in items[0]:
            self.total += float(items[0]["loss"]) * len(items)
            self.samples += len(items)

    def mean(self) -> float | None:
        return self.total / self.samples if self.samples else None


def _length(engine: object, what: str, config: BundleConfig) -> int:
    loader = getattr(engine, "data_loader", None)
    dataset = getattr(loader, "dataset", None)
    try:
        return len(dataset)  # type: ignore[arg-type]
    except TypeError:
        raise ConfigError(
            f"{_where(config)}: the {what} data loader has no dataset with a length"
        ) from None


class BundleLearner:
    """A MONAI bundle trained and evaluated by MONAI's FL client (a ``Learner``).

    Args:
        bundle_dir: The bundle folder in the deployed app's ``resources/``.
        config: What config_train.json says about the bundle.
        data_root: The site's DATA_ROOT, given to the bundle as ``dataset_dir``.
        work_dir: The run's work folder at this site (the bundle runs from a copy there).
        device: The device the site trains on, given to the bundle as ``device``.
    """

    def __init__(
        self,
        bundle_dir: Path,
        config: BundleConfig,
        data_root: Path | None,
        work_dir: Path,
        device: torch.device,
    ) -> None:
        root = work_dir / BUNDLE_COPY
        shutil.rmtree(root, ignore_errors=True)
        shutil.copytree(bundle_dir, root)
        _importable(root)
        overrides: dict[str, Any] = {"device": f"$torch.device({str(device)!r})"}
        if data_root is not None:
            overrides[DATASET_DIR] = str(data_root)
        self.algo = MonaiAlgo(
            bundle_root=str(root),
            local_epochs=1,
            send_weight_diff=False,
            config_train_filename=config.train_config,
            train_kwargs=dict(overrides),
            config_evaluate_filename=[config.train_config, config.evaluate_config],
            eval_kwargs=dict(overrides),
            disable_ckpt_loading=True,
            best_model_filepath=None,
            final_model_filepath=None,
        )
        logger.info(
            "running MONAI bundle %s (its configs run as code; this site approved the app)",
            config.folder,
        )
        with warnings.catch_warnings():
            # MONAI warns that the configs run as code: the site's approval of the app is
            # where that was decided (docs/security.md).
            warnings.filterwarnings("ignore", message=_CONFIG_WARNING)
            self.algo.initialize(  # type: ignore[no-untyped-call]
                extra={ExtraItems.CLIENT_NAME: root.parent.name, ExtraItems.LOGGING_FILE: False}
            )
        trainer, evaluator = self.algo.trainer, self.algo.evaluator
        if trainer is None or evaluator is None:
            raise ConfigError(
                f"{_where(config)}: the bundle must define a trainer ({config.train_config}) "
                f"and an evaluator ({config.evaluate_config})"
            )
        self.train_samples = _length(trainer, "training", config)
        self.val_samples = _length(evaluator, "validation", config)
        self._loss = _LossMeter()
        trainer.add_event_handler(Events.STARTED, self._loss.reset)
        trainer.add_event_handler(Events.ITERATION_COMPLETED, self._loss.count)
        self._weights: dict[str, torch.Tensor] = self._current()

    def _current(self) -> dict[str, torch.Tensor]:
        weights = self.algo.get_weights().weights  # type: ignore[no-untyped-call]
        if not isinstance(weights, Mapping):
            raise TypeError("MonaiAlgo.get_weights gave no weights")
        return {str(name): tensor for name, tensor in weights.items()}

    def state(self) -> dict[str, torch.Tensor]:
        """The weights last loaded or trained, as MonaiAlgo's ``get_weights`` gave them."""
        return self._weights

    def load(self, state: Mapping[str, torch.Tensor]) -> None:
        """Keep the weights that the next train or evaluate hands to MonaiAlgo."""
        self._weights = dict(state)

    def train(self, round_number: int, epochs: int) -> dict[str, float]:
        """MonaiAlgo's ``train`` from the loaded weights, then ``get_weights``.

        Returns the trainer's own metrics (the bundle's ``key_train_metric``
        and the like) and ``train_loss``, the mean loss of the round.
        """
        self.algo.local_epochs = epochs
        self.algo.train(ExchangeObject(weights=self._weights))
        self._weights = self._current()
        trainer = self.algo.trainer
        assert trainer is not None
        metrics = _numbers(trainer.state.metrics)
        loss = self._loss.mean()
        if loss is not None:
            metrics["train_loss"] = loss
        logger.info(
            "round %d: %d local epochs of the bundle: %s",
            round_number,
            epochs,
            ", ".join(f"{key} {value:.4g}" for key, value in sorted(metrics.items())),
        )
        return metrics

    def validate(self) -> dict[str, float]:
        """MonaiAlgo's ``evaluate`` of the loaded weights: the evaluator's metrics by their
        names in the bundle (e.g. its ``key_val_metric``)."""
        result = self.algo.evaluate(ExchangeObject(weights=self._weights))
        return _numbers(result.metrics or {})
