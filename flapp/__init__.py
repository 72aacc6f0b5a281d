"""flstack's API for app authors: what an app's ``resources/*.py`` imports.

An app's custom code (a model, a dataset, a trainer hook) runs in flstack's
child processes, never in the daemons. It imports from here, and only from
here, so that flstack can rearrange its daemons without breaking apps::

    from flapp import Loader, LossFunction, SupervisedTrainer

What is here:

* the trainer hook: :class:`TrainerHook` (what a ``trainer`` component
  offers), the built-in ones to subclass, :class:`SupervisedTrainer`
  (classification) and :class:`SegmentationTrainer` (a class per voxel,
  dictionary batches as MONAI's transforms make them, Dice, mixed
  precision on CUDA), and the types of their arguments, :data:`Loader`
  and :data:`LossFunction`;
* :class:`ClassificationMetrics` and :class:`DiceMetrics`, the running
  loss and accuracy or Dice that the built-in trainers report, for custom
  trainers that report the same;
* the built-in components that config_train.json may name:
  ``flapp.models.DigitsCNN``, ``flapp.models.MLP``,
  ``flapp.datasets.NpzClassification`` and
  ``flapp.datasets.SyntheticClassification``;
* :class:`ConfigError`: raise it for a mistake the site or the app's author
  must fix (a missing file, a wrong argument); its message is shown to the
  admin as it is, not as an exception's type name.

docs/apps.md describes how the training child calls each component.
"""

from flapp.datasets import NpzClassification, SyntheticClassification
from flapp.metrics import ClassificationMetrics, DiceMetrics
from flapp.models import MLP, DigitsCNN
from flapp.trainer import (
    Loader,
    LossFunction,
    SegmentationTrainer,
    SupervisedTrainer,
    TrainerHook,
)
from flcore.schema import ConfigError

__all__ = [
    "MLP",
    "ClassificationMetrics",
    "ConfigError",
    "DiceMetrics",
    "DigitsCNN",
    "Loader",
    "LossFunction",
    "NpzClassification",
    "SegmentationTrainer",
    "SupervisedTrainer",
    "SyntheticClassification",
    "TrainerHook",
]
