"""Wire compression between real daemons: runs with int8 and bf16 train the digits model, and
the server's metrics.jsonl shows what the rounds moved and what that stood for."""

from __future__ import annotations

from typing import Any

import pytest
from safetensors import safe_open

from fldev.cluster import Cluster
from fldev.poll import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(400)]

SHARE = {"int8": 0.25, "bf16": 0.5}
"""Wire bytes per tensor byte of float32 tensors (the digits model has nothing else to send)."""


def finished(cluster: Cluster, run_number: int) -> dict[str, Any]:
    def stopped() -> dict[str, Any] | None:
        state = cluster.run_state()
        ok = state["run_number"] == run_number and state["server_status"] == "training stopped"
        return state if ok else None

    return wait_until(stopped, 180, f"run {run_number} to finish", interval=0.5)


def test_compressed_runs_train_and_the_server_counts_fewer_bytes(cluster: Cluster) -> None:
    server = cluster.server()
    cluster.client("flclient1")
    cluster.client("flclient2")
    for run_number, compression in enumerate(SHARE, start=1):
        cluster.prepare_run(
            run_number, num_rounds=2, wait_after_min_clients=30, wire_compression=compression
        )
        cluster.ok("start server")
        cluster.ok("start client")
        assert finished(cluster, run_number)["reason"] == "finished"

        run_dir = cluster.root / "server" / f"run_{run_number}"
        with safe_open(run_dir / "global_model.safetensors", "numpy") as model:
            dtypes = {model.get_slice(name).get_dtype() for name in model.keys()}  # noqa: SIM118
            tensor_bytes = sum(model.get_tensor(name).nbytes for name in model.keys())  # noqa: SIM118
        assert dtypes == {"F32"}  # the server holds float32, whatever the wire carried
        rows = cluster.metrics(run_number)
        assert [r["round"] for r in rows] == [0, 1, 2]
        for row in rows[:-1]:
            wire = row["wire"]
            assert row["clients"] == ["flclient1", "flclient2"]
            assert wire["compression"] == compression
            # Each site fetched the round's model and sent its update once.
            assert wire["down_raw_bytes"] == wire["up_raw_bytes"] == 2 * tensor_bytes
            for way in ("down", "up"):
                share = wire[f"{way}_bytes"] / wire[f"{way}_raw_bytes"]
                assert share == pytest.approx(SHARE[compression], abs=0.005), (way, wire)
        assert "wire" not in rows[-1]  # the final validation moves the model as stored
        assert rows[-1]["metrics"]["val_accuracy"] > 0.8
        assert f"of tensors ({compression}, " in server.log()
