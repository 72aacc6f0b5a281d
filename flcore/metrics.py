"""Metrics as log lines show them, the same on the server and at every site."""

from __future__ import annotations

from collections.abc import Mapping


def format_metrics(metrics: Mapping[str, float]) -> str:
    """``name=value`` pairs in name order, four decimals."""
    return ", ".join(f"{k}={v:.4f}" for k, v in sorted(metrics.items())) or "no metrics"
