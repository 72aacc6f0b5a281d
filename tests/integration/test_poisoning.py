"""A poisoned site among five real ones: plain FedAvg collapses, the median holds.

The poisoning site runs an app of its own (a site can run any code it likes):
the built-in trainer, after which it sends the global model plus 100 times
its own change. The server's app is the digits app in both runs; only
its ``aggregator`` changes.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from typing import Any

import pytest

from fldev.cluster import ADMIN, DIGITS_APP, Cluster
from tests.integration.test_training import finished

pytestmark = [pytest.mark.integration, pytest.mark.timeout(420)]

SITES = tuple(f"flclient{i}" for i in range(1, 6))
POISONER = SITES[-1]
HONEST = SITES[:-1]
ROUNDS = 5

POISON_TRAINER = '''
"""Trains like everyone else, then sends the global model plus ``scale`` times its change."""

import torch

from flapp import SupervisedTrainer


class ScaledUpdateTrainer(SupervisedTrainer):
    def __init__(self, scale: float = 100.0) -> None:
        self.scale = scale

    def train_epoch(self, model, loader, optimizer, loss_fn, device):
        start = {k: v.detach().clone() for k, v in model.state_dict().items()}
        metrics = super().train_epoch(model, loader, optimizer, loss_fn, device)
        with torch.no_grad():
            for name, value in model.state_dict().items():
                if value.is_floating_point():
                    value.copy_(start[name] + self.scale * (value - start[name]))
        return metrics
'''


def add_poison_app(cluster: Cluster) -> None:
    """digits_poison: the digits app whose trainer scales its update by 100."""
    app = cluster.root / ADMIN / "transfer" / "digits_poison"
    shutil.copytree(DIGITS_APP, app)
    (app / "resources" / "poison.py").write_text(POISON_TRAINER)
    train = json.loads((app / "config" / "config_train.json").read_text())
    train["trainer"] = {"path": "poison.ScaledUpdateTrainer", "args": {"scale": 100.0}}
    (app / "config" / "config_train.json").write_text(json.dumps(train))
    (app / "config" / "config_fed_client.json").write_text(json.dumps({"local_epochs": 1}))


def train(cluster: Cluster, number: int, **server: Any) -> list[dict[str, Any]]:
    """One run over the five sites; returns its metrics.jsonl rows."""
    cluster.configure(
        "config_fed_server.json",
        num_rounds=ROUNDS,
        min_num_clients=len(SITES),
        max_num_clients=len(SITES),
        wait_after_min_clients=120,
        **server,
    )
    cluster.ok(f"set_run_number {number}")
    cluster.ok("upload_folder digits_fedavg")
    cluster.ok("upload_folder digits_poison")
    cluster.ok("deploy digits_fedavg server")
    cluster.ok("deploy digits_fedavg client " + " ".join(HONEST))
    cluster.ok(f"deploy digits_poison client {POISONER}")
    cluster.ok("start server")
    cluster.ok("start client")
    assert finished(cluster, number, timeout=240)["reason"] == "finished"
    rows = cluster.metrics(number)
    assert [r["round"] for r in rows] == [*range(ROUNDS), ROUNDS]
    assert all(r["clients"] == list(SITES) for r in rows)
    return rows


def accuracy(rows: list[dict[str, Any]]) -> float:
    """The final global model's validation accuracy over all sites."""
    assert rows[-1]["final"]
    return float(rows[-1]["metrics"]["val_accuracy"])


def test_a_poisoned_site_collapses_fedavg_and_the_median_holds(
    make_cluster: Callable[..., Cluster],
) -> None:
    cluster = make_cluster(clients=SITES)
    server = cluster.server()
    for site in SITES:
        cluster.client(site)
    cluster.configure("config_fed_client.json", local_epochs=1)
    add_poison_app(cluster)
    cluster.approve("digits_poison", POISONER)  # its own site IT lets it run

    collapsed = accuracy(train(cluster, 1))
    defended_rows = train(cluster, 2, aggregator="median")
    defended = accuracy(defended_rows)
    assert defended > 0.85, defended
    assert collapsed < defended - 0.3, (collapsed, defended)
    for row in defended_rows[:-1]:
        scores = {site: stats["score"] for site, stats in row["updates"].items()}
        assert max(scores, key=lambda site: scores[site]) == POISONER
        assert scores[POISONER] > 3 and all(scores[s] < 3 for s in HONEST), row
    assert f"round 0: the update of {POISONER} is an outlier" in server.log()
    assert not (cluster.root / "server" / "run_2" / ".spool" / f"round_{ROUNDS - 1}").exists()
