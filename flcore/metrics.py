"""Metrics as log lines show them, the same on the server and at every site."""

from __future__ import annotations

import re
from collections.abc import Mapping

MAX_METRIC_NAME = 64
METRIC_NAME = re.compile(rf"[A-Za-z0-9_./ -]{{1,{MAX_METRIC_NAME}}}")
"""What a metric may be called: a site's name for it reaches the server's log, the console,
TensorBoard and MLflow, which refuses a whole round's batch for one name it does not take."""


def metric_name_problem(name: str) -> str | None:
    """Why ``name`` cannot name a metric (None when it can)."""
    if METRIC_NAME.fullmatch(name):
        return None
    return (
        f"must be 1-{MAX_METRIC_NAME} letters, digits, spaces or '_', '.', '-', '/' "
        "(TensorBoard and MLflow take no other)"
    )


def format_metrics(metrics: Mapping[str, float]) -> str:
    """``name=value`` pairs in name order, four decimals."""
    return ", ".join(f"{k}={v:.4f}" for k, v in sorted(metrics.items())) or "no metrics"
