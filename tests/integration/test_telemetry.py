"""Telemetry during a real run: the Prometheus endpoints of both daemons (the server's on
plain HTTP on loopback, a site's over HTTPS with a client certificate) and MLflow tracking
into a local file store, with real daemons over mutual TLS."""

from __future__ import annotations

import json
import ssl
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from fldev.cluster import Cluster, free_ports
from fldev.poll import wait_until
from tests.integration.test_secrets import _secrets
from tests.unit.test_telemetry import metrics_tls_files

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def read(url: str, context: ssl.SSLContext | None = None) -> str:
    """The endpoint's whole text."""
    with urllib.request.urlopen(url, timeout=10, context=context) as reply:  # noqa: S310
        return str(reply.read().decode())


def parsed(text: str) -> Samples:
    """Every sample of an endpoint's text, by name and labels."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def scrape(port: int) -> Samples:
    """Every sample the server's endpoint serves now."""
    return parsed(read(f"http://127.0.0.1:{port}/metrics"))


def value(samples: Samples, name: str, **labels: str) -> float:
    """One sample's value (0 when the endpoint does not serve it yet)."""
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_metrics_move_and_mlflow_logs_a_run(
    make_cluster: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server_port, client_port = free_ports(2)
    tls = tmp_path / "metrics-tls"
    tls.mkdir()
    for name, data in metrics_tls_files().items():
        (tls / name).write_bytes(data)
        (tls / name).chmod(0o600)
    cluster: Cluster = make_cluster(
        server_local={"metrics_port": server_port},
        client_local={
            "flclient1": {
                "metrics_port": client_port,
                "metrics_tls_cert": str(tls / "m.crt"),
                "metrics_tls_key": str(tls / "m.key"),
                "metrics_tls_client_ca": str(tls / "ca.pem"),
            }
        },
    )
    cluster.server()
    cluster.client("flclient1")
    site_url = f"https://127.0.0.1:{client_port}/metrics"
    scraper = ssl.create_default_context(cafile=str(tls / "ca.pem"))
    with pytest.raises(OSError):  # urllib's URLError and ssl's errors alike
        read(site_url, scraper)  # no client certificate: no metrics
    scraper.load_cert_chain(tls / "s.crt", tls / "s.key")
    cluster.client("flclient2")
    store = cluster.root / "server" / "mlruns"  # the app's relative path: in the workspace
    cluster.configure(
        "config_fed_server.json", mlflow={"tracking_uri": "mlruns", "experiment": "itest"}
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
        samples = parsed(read(site_url, scraper))
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
    assert value(site, "flstack_client_transfers_stalled_total") == 0

    # Neither endpoint tells a secret, a path, or what a site's data scored.
    for text in read(f"http://127.0.0.1:{server_port}/metrics"), read(site_url, scraper):
        leaked = [what for what, secret in _secrets(cluster, []).items() if secret in text]
        assert leaked == []
        assert str(cluster.root) not in text and str(tmp_path) not in text
        assert "val_accuracy" not in text and "val_loss" not in text

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
    record = json.loads((store.parent / "run_1" / "mlflow_run.json").read_text())  # the workspace
    assert record["run_id"] == run.info.run_id
