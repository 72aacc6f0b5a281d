"""Cross-site validation between real daemons: the matrix, aborts, and models that never come."""

from __future__ import annotations

import importlib
import signal
import sys
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from fldev.cluster import APPS, Cluster
from fldev.poll import wait_until
from tests.integration.test_training import finished

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

SITES = ("flclient1", "flclient2", "flclient3")


def matrix(cluster: Cluster, *names: str) -> dict[str, Any]:
    """The validate command's data."""
    line = "validate " + (" ".join(names) if names else "all")
    return cluster.ok(line).data


def cell(data: dict[str, Any], row: str, column: str) -> dict[str, Any] | None:
    """One cell of the matrix, or None when it is empty."""
    return data["cells"].get(row, {}).get(column)  # type: ignore[no-any-return]


def filled(data: dict[str, Any], row: str, column: str) -> dict[str, Any]:
    """One cell of the matrix that must hold a result or an error."""
    found = cell(data, row, column)
    assert found is not None, f"the cell {row} x {column} is empty"
    return found


def every_cell(*sites: str) -> list[tuple[str, str]]:
    """The cells of a full matrix over ``sites``: the global model and each site's by each
    other site."""
    return [(row, column) for row in ("global", *sites) for column in sites if row != column]


def matrix_with(cluster: Cluster, cells: list[tuple[str, str]]) -> dict[str, Any] | None:
    """The matrix once all of ``cells`` are filled, else None."""
    data = matrix(cluster)
    return data if all(cell(data, row, column) for row, column in cells) else None


def accuracy_of(model_file: str, site_data: str) -> float:
    """Evaluate a saved model on a site's validation split, outside flstack."""
    sys.path.insert(0, str(APPS / "digits_custom" / "resources"))
    try:
        digits_model = importlib.import_module("digits_custom.model")
    finally:
        sys.path.pop(0)
    model: torch.nn.Module = digits_model.ResidualDigitsNet(width=24)
    model.load_state_dict(load_file(model_file))
    model.eval()
    with np.load(site_data, allow_pickle=False) as arrays:
        x, y = torch.from_numpy(arrays["x"]), torch.from_numpy(arrays["y"])
    with torch.no_grad():
        return float((model(x).argmax(dim=1) == y).float().mean())


def prepare(cluster: Cluster, rounds: int, private: tuple[str, ...] = (), **client: Any) -> None:
    """Upload digits_custom (and a copy that does not cross-validate) and deploy them."""
    cluster.add_app("digits_custom")
    cluster.configure(
        "config_fed_server.json",
        app="digits_custom",
        num_rounds=rounds,
        min_num_clients=len(SITES) - len(private) if rounds < 100 else 1,
        wait_after_min_clients=30,
    )
    cluster.configure("config_fed_client.json", app="digits_custom", local_epochs=1, **client)
    cluster.add_app(
        "digits_private", cluster.root / "admin@lead.org" / "transfer" / "digits_custom"
    )
    cluster.configure("config_fed_client.json", app="digits_private", cross_validate=False)
    cluster.ok("set_run_number 1")
    cluster.ok("upload_folder digits_custom")
    cluster.ok("upload_folder digits_private")
    cluster.ok("deploy digits_custom server")
    sharing = [s for s in cluster.clients if s not in private]
    cluster.ok(f"deploy digits_custom client {' '.join(sharing)}")
    cluster.approve("digits_custom", *sharing)
    if private:
        cluster.ok(f"deploy digits_private client {' '.join(private)}")
        cluster.approve("digits_private", *private)


def contributed(cluster: Cluster, instance: str) -> None:
    """Wait until ``instance`` is training and has an update in an aggregated round.

    With min_num_clients 1 the other site can run rounds on its own while this
    one's training process is still starting; aborted then, it would stop
    instead of moving to cross-site validation, which is not what is tested.
    """
    wait_until(
        lambda: any(instance in row["clients"] for row in cluster.metrics()),
        120,
        f"a round with an update from {instance}",
    )


def test_matrix_over_three_sites_two_taking_part(make_cluster: Callable[..., Cluster]) -> None:
    cluster = make_cluster(clients=SITES)
    cluster.server()
    for site in SITES:
        cluster.client(site)
    prepare(cluster, rounds=3, private=("flclient3",))
    cluster.ok("start server")
    cluster.ok("start client")
    finished(cluster)
    expected = every_cell("flclient1", "flclient2")
    data = wait_until(lambda: matrix_with(cluster, expected), 90, "the full cross-site matrix")
    assert data["rows"] == ["global", "flclient1", "flclient2", "flclient3"]
    assert data["columns"] == ["flclient1", "flclient2", "flclient3"]
    assert data["notes"] == {"flclient3": "does not take part (cross_validate is off)"}
    assert cell(data, "flclient1", "flclient1") is None
    assert all(cell(data, r, "flclient3") is None for r in data["rows"])
    run = cluster.root / "server" / "run_1"
    assert sorted(p.name for p in (run / "cross_site").iterdir()) == ["sites"]
    assert sorted(p.name for p in (run / "cross_site" / "sites").iterdir()) == [
        "flclient1.safetensors",
        "flclient2.safetensors",
    ]
    for row, column in expected:
        model = (
            run / "best_global_model.safetensors"
            if row == "global"
            else run / "cross_site" / "sites" / f"{row}.safetensors"
        )
        direct = accuracy_of(str(model), str(cluster.data / column / "val.npz"))
        assert filled(data, row, column)["metrics"]["val_accuracy"] == pytest.approx(
            direct, abs=1e-6
        )
    text = cluster.ok("validate all").text.splitlines()
    assert text[0] == "Cross-site validation of run 1 (val_accuracy)"
    assert text[1].split() == ["model", "\\", "site", "flclient1", "flclient2", "flclient3"]
    assert text[2].split()[0] == "global" and len(text[2].split()) == 3
    assert "flclient3: does not take part (cross_validate is off)" in text
    part = matrix(cluster, "flclient1")
    assert part["rows"] == ["global", "flclient1"] and part["columns"] == ["flclient1"]
    statuses = cluster.ok("check_status client").data["clients"]
    wait_until(
        lambda: all(
            s["status"] == "training stopped"
            for s in cluster.ok("check_status client").data["clients"].values()
        ),
        30,
        "every site to stop",
    )
    assert statuses["flclient3"]["cross_validate"] is False


def test_abort_moves_to_validation_and_a_second_abort_stops(cluster: Cluster) -> None:
    cluster.server()
    first = cluster.client("flclient1")
    cluster.client("flclient2")
    prepare(cluster, rounds=5000)
    cluster.ok("start server")
    cluster.ok("start client")
    contributed(cluster, "flclient1")
    reply = cluster.ok("abort client flclient1")
    assert "moving to cross-site validation" in reply.text
    wait_until(
        lambda: (
            cluster.ok("check_status client flclient1").data["clients"]["flclient1"]["status"]
            == "cross site validation"
        ),
        30,
        "flclient1 to validate",
    )
    first.wait_log("best local model shared for cross-site validation")
    sites = cluster.root / "server" / "run_1" / "cross_site" / "sites"
    assert (sites / "flclient1.safetensors").exists()
    assert cluster.run_state()["server_status"] == "training started"
    stopped = cluster.ok("abort client flclient1")
    assert stopped.text.strip() == "instance:flclient1 : Aborting the client..."
    row = cluster.ok("check_status client flclient1").data["clients"]["flclient1"]
    assert row["status"] == "training stopped"
    cluster.ok("abort server")


def test_a_model_that_never_comes_is_given_up(make_cluster: Callable[..., Cluster]) -> None:
    cluster = make_cluster(
        settings={"heart_beat_timeout": 120, "heartbeat_interval": 1, "retry_window": 30}
    )
    cluster.server()
    waiter = cluster.client("flclient1")
    lost = cluster.client("flclient2")
    prepare(cluster, rounds=5000, cross_validation_timeout=3)
    cluster.ok("start server")
    cluster.ok("start client")
    contributed(cluster, "flclient1")
    cluster.ok("abort client flclient1")
    waiter.wait_log("best local model shared")
    lost.kill()  # its model will never come, and the server won't know for 120 s
    cluster.ok("abort server")
    waiter.wait_log(r"gave up waiting for the models of flclient2 after 3s", timeout=30)
    data = wait_until(
        lambda: matrix_with(cluster, [("flclient2", "flclient1")]), 15, "the given-up cell"
    )
    assert (
        filled(data, "flclient2", "flclient1")["error"] == "gave up after waiting 3s for this model"
    )
    assert filled(data, "global", "flclient1")["metrics"]["val_accuracy"] > 0.5
    assert (
        "model of flclient2 on flclient1: gave up after waiting 3s"
        in cluster.ok("validate all").text
    )


def test_a_site_restarted_as_it_shares_its_model_still_takes_part(cluster: Cluster) -> None:
    """systemd restarts a site within its heartbeat timeout while it uploads its best local
    model: the restarted daemon said "starting", was told the run had ended and stopped, so
    its model never came (the other site waited until its timeout) and it validated nothing."""
    cluster.server()
    one = cluster.client("flclient1", fault="hold:client.upload@3")  # the best local model
    two = cluster.client("flclient2")
    cluster.add_app("digits_custom")
    cluster.configure(
        "config_fed_server.json",
        app="digits_custom",
        num_rounds=2,
        min_num_clients=2,
        wait_after_min_clients=30,
    )
    cluster.configure(
        "config_fed_client.json", app="digits_custom", local_epochs=1, cross_validation_timeout=90
    )
    cluster.ok("set_run_number 1")
    cluster.ok("upload_folder digits_custom")
    cluster.ok("deploy digits_custom server")
    cluster.ok("deploy digits_custom client")
    cluster.approve("digits_custom")
    cluster.ok("start server")
    cluster.ok("start client")
    cluster.held("client.upload", 120)
    one.signal(signal.SIGTERM)
    cluster.release("client.upload")
    assert one.wait(30) == 0
    offset = one.arm("").restart("Resumed registration")
    everything = every_cell("flclient1", "flclient2")
    data = wait_until(lambda: matrix_with(cluster, everything), 120, "the whole matrix")
    one.wait_log("cross-site validation done", after=offset)
    assert "gave up waiting" not in two.log()
    assert data["notes"] == {}  # it was said to take no part
