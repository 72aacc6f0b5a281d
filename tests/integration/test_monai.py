"""MONAI apps between real daemons: the seg3d_monai app (flapp components with MONAI's
network, loss, loaders and transforms) and the seg3d_bundle app (a MONAI bundle trained
through MONAI's FL client), each on two sites' NIfTI volumes, with cross-site validation
reporting Dice."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from safetensors.numpy import load_file

from fldev.cluster import Cluster
from fldev.poll import wait_until
from tests.integration.test_crossval import cell, matrix_with
from tests.integration.test_training import finished

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

SITES = ("flclient1", "flclient2")
# Small volumes and few of them keep each run to seconds of training on two cores.
SMALL_DATA = ("seg3d", "--size", "24", "--train", "4", "--val", "2")


@pytest.mark.parametrize("app", ["seg3d_monai", "seg3d_bundle"])
def test_a_monai_app_trains_two_sites_and_cross_validates_with_dice(
    make_cluster: Callable[..., Cluster], app: str
) -> None:
    cluster = make_cluster(clients=SITES, data_kind=SMALL_DATA)
    cluster.server()
    for site in SITES:
        cluster.client(site)
    cluster.add_app(app)
    cluster.configure("config_fed_server.json", app=app, num_rounds=2, wait_after_min_clients=30)
    cluster.configure("config_fed_client.json", app=app, local_epochs=2)
    cluster.ok("set_run_number 1")
    cluster.ok(f"upload_folder {app}")
    cluster.ok(f"deploy {app} server")
    cluster.ok(f"deploy {app} client")
    cluster.approve(app)
    cluster.ok("start server")
    cluster.ok("start client")
    state = finished(cluster, timeout=240)
    assert state["reason"] == "finished"

    rows = cluster.metrics()
    assert [row["round"] for row in rows] == [0, 1, 2]
    assert all(row["clients"] == list(SITES) for row in rows)
    dice = [row["metrics"]["val_dice"] for row in rows]
    assert all(0.0 <= value <= 1.0 for value in dice)
    assert dice[-1] > dice[0], f"the global model's Dice did not improve: {dice}"
    run = cluster.root / "server" / "run_1"
    assert (
        load_file(run / "best_global_model.safetensors").keys()
        == load_file(run / "global_model.safetensors").keys()
    )

    expected = [(row, column) for row in ("global", *SITES) for column in SITES if row != column]
    data = wait_until(lambda: matrix_with(cluster, expected), 120, "the cross-site matrix")
    for row, column in expected:
        value = cell(data, row, column)["metrics"]["val_dice"]  # type: ignore[index]
        assert 0.0 <= value <= 1.0
    assert cluster.ok("validate all").text.splitlines()[0] == (
        "Cross-site validation of run 1 (val_dice)"
    )
