"""Telemetry during a real run: the Prometheus endpoints of both daemons and MLflow tracking
into a local file store, with real daemons over mutual TLS."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from fldev.cluster import Cluster, free_ports
from fldev.poll import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(port: int) -> Samples:
    """Every sample the endpoint serves now, by name and labels."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
        text = reply.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    """One sample's value (0 when the endpoint does not serve it yet)."""
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_metrics_move_and_mlflow_logs_a_run(
    make_cluster: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server_port, client_port = free_ports(2)
    cluster: Cluster = make_cluster(
        server_local={"metrics_port": server_port},
        client_local={"flclient1": {"metrics_port": client_port}},
    )
    cluster.server()
    cluster.client("flclient1")
    cluster.client("flclient2")
    store = tmp_path / "mlruns"
    cluster.configure(
        "config_fed_server.json",
        mlflow={"tracking_uri": store.as_uri(), "experiment": "itest"},
    )
    cluster.prepare_run(1, num_rounds=3, wait_after_min_clients=30)

    before = scrape(server_port)
    assert value(before, "flstack_server_clients", state="online") == 2
    assert value(before, "flstack_server_round") == -1
    assert value(before, "flstack_server_admin_commands_total", command="deploy", outcome="ok") == 2
    assert value(before, "process_resident_memory_bytes") > 0

    cluster.ok("start server")
    cluster.ok("start client")

    def in_round_1() -> Samples | None:
        samples = scrape(server_port)
        return samples if value(samples, "flstack_server_round") >= 1 else None

    middle = wait_until(in_round_1, 120, "round 1 to start", interval=0.2)
    accepted = ("flstack_server_uploads_total", {"kind": "update", "outcome": "accepted"})
    assert value(middle, accepted[0], **accepted[1]) >= 2
    wait_until(
        lambda: cluster.run_state()["server_status"] == "training stopped",
        180,
        "the run to finish",
        interval=0.5,
    )

    after = scrape(server_port)
    assert value(after, "flstack_server_round") == 3  # the final validation
    assert value(after, "flstack_server_rounds_completed_total") == 3
    assert value(after, "flstack_server_round_duration_seconds_count") == 3
    assert value(after, "flstack_server_round_duration_seconds_sum") > 0
    assert value(after, accepted[0], **accepted[1]) == 6
    assert value(after, "flstack_server_metrics_reports_total", kind="global_validation",
                 outcome="accepted") == 2  # fmt: skip
    received = value(after, "flstack_server_received_bytes_total", kind="update")
    sent = value(after, "flstack_server_sent_bytes_total", kind="model")
    assert received > value(middle, "flstack_server_received_bytes_total", kind="update") > 0
    assert sent > value(middle, "flstack_server_sent_bytes_total", kind="model") > 0
    assert value(after, "flstack_server_sent_bytes_total", kind="app") > 0
    assert value(after, "flstack_server_run_status", status="training stopped") == 1
    assert value(after, "flstack_server_admin_commands_total", command="start", outcome="ok") == 2
    assert value(after, "flstack_server_spool_bytes") == 0
    assert value(after, "flstack_server_disk_free_bytes") > 0
    assert value(after, "flstack_server_site_last_heartbeat_timestamp_seconds", site="flclient2")

    def site_stopped() -> Samples | None:
        samples = scrape(client_port)
        stopped = value(samples, "flstack_client_training_status", status="training stopped")
        return samples if stopped == 1 else None

    site = wait_until(site_stopped, 30, "flclient1 to stop training", interval=0.2)
    assert value(site, "flstack_client_uploads_total", outcome="accepted") == 3
    assert value(site, "flstack_client_last_round") == 2
    assert value(site, "flstack_client_last_round_duration_seconds") > 0
    assert value(site, "flstack_client_received_bytes_total", kind="model") > 0
    assert value(site, "flstack_client_sent_bytes_total", kind="update") > 0
    assert value(site, "flstack_client_connected") == 1
    assert value(site, "flstack_client_logins_total") == 1
    assert value(site, "flstack_client_training_status", status="training started") == 0

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # as the server's tracking child does
    check_mlflow_store(store)


def check_mlflow_store(store: Path) -> None:
    """The run, its rounds, its sites' nested runs and its models, as MLflow reads them."""
    import mlflow.tracking

    client = mlflow.tracking.MlflowClient(tracking_uri=store.as_uri())

    def finished() -> Any:
        experiment = client.get_experiment_by_name("itest")
        if experiment is None:
            return None
        runs = client.search_runs([experiment.experiment_id], "tags.mlflow.runName = 'run_1'")
        return runs[0] if runs and runs[0].info.status == "FINISHED" else None

    run = wait_until(finished, 60, "the MLflow run to finish", interval=0.5)
    assert run.data.tags["flstack.run_number"] == "1"
    assert run.data.params["num_rounds"] == "3"
    history = client.get_metric_history(run.info.run_id, "val_accuracy")
    assert sorted(m.step for m in history) == [0, 1, 2, 3]
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "models")}
    assert artifacts == {"models/global_model.safetensors", "models/best_global_model.safetensors"}
    sites = client.search_runs(
        [run.info.experiment_id], f"tags.mlflow.parentRunId = '{run.info.run_id}'"
    )
    assert sorted(s.data.tags["flstack.site"] for s in sites) == ["flclient1", "flclient2"]
    for site in sites:
        steps = client.get_metric_history(site.info.run_id, "val_accuracy")
        assert sorted(m.step for m in steps) == [0, 1, 2, 3]  # rounds 0-2 and the final model
    record = json.loads((store.parent / "c0" / "server" / "run_1" / "mlflow_run.json").read_text())
    assert record["run_id"] == run.info.run_id
