"""Custom code, multi-process clients and continued training, between real daemons."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file
from safetensors.torch import save_file

from flapp.models import DigitsCNN
from fldev.cluster import ADMIN, Cluster
from fldev.poll import wait_until
from tests.integration.test_training import finished, start_failure, started

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

V2_HEAD = (
    "self.head = nn.Sequential(nn.Linear(width, width), nn.ReLU(), nn.Linear(width, num_classes))"
)


def deploy_everywhere(cluster: Cluster, app: str, run_number: int) -> None:
    """set_run_number, upload and deploy an app to the server and every client."""
    cluster.ok(f"set_run_number {run_number}")
    cluster.ok(f"upload_folder {app}")
    cluster.ok(f"deploy {app} server")
    cluster.ok(f"deploy {app} client")


def test_changed_custom_code_is_picked_up_by_the_next_run(cluster: Cluster) -> None:
    cluster.server()
    client = cluster.client("flclient1")
    cluster.client("flclient2")
    app = cluster.add_app("digits_custom")
    cluster.configure(
        "config_fed_server.json", app="digits_custom", num_rounds=2, min_num_clients=2
    )
    cluster.configure(
        "config_fed_client.json", app="digits_custom", local_epochs=1, cross_validate=False
    )
    deploy_everywhere(cluster, "digits_custom", 1)
    cluster.approve("digits_custom")
    cluster.ok("start server")
    cluster.ok("start client")
    finished(cluster, 1)
    model = app / "resources" / "digits_custom" / "model.py"
    source = model.read_text()
    assert "self.head = nn.Linear(width, num_classes)" in source
    model.write_text(
        source.replace("self.head = nn.Linear(width, num_classes)", V2_HEAD).replace(
            "        super().__init__()\n        self.stem",
            '        super().__init__()\n        print("ResidualDigitsNet v2 with a deeper head")\n'
            "        self.stem",
        )
    )
    offset = len(client.log())
    deploy_everywhere(cluster, "digits_custom", 2)
    cluster.approve("digits_custom")  # the changed code has a new digest
    cluster.ok("start server")
    cluster.ok("start client")
    finished(cluster, 2)
    first = load_file(cluster.root / "server" / "run_1" / "global_model.safetensors")
    second = load_file(cluster.root / "server" / "run_2" / "global_model.safetensors")
    assert "head.weight" in first and "head.0.weight" not in first
    assert {"head.0.weight", "head.2.weight"} <= second.keys()
    assert "ResidualDigitsNet v2 with a deeper head" in client.log()[offset:]


def test_errors_in_custom_code_surface_and_the_daemons_stay_up(cluster: Cluster) -> None:
    server = cluster.server()
    client = cluster.client("flclient1")
    app = cluster.add_app("digits_custom")
    cluster.configure("config_fed_server.json", app="digits_custom", min_num_clients=1)
    trainer = app / "resources" / "digits_custom" / "trainer.py"
    trainer.write_text(
        trainer.read_text().replace(
            '        """Train one epoch on randomly shifted images."""',
            '        """Train one epoch on randomly shifted images."""\n'
            '        raise RuntimeError("custom trainer exploded")',
        )
    )
    cluster.ok("set_run_number 1")
    cluster.ok("upload_folder digits_custom")
    cluster.ok("deploy digits_custom server")
    cluster.ok("deploy digits_custom client")
    cluster.approve("digits_custom", "flclient1")
    cluster.ok("start server")
    cluster.ok("start client")

    def failed() -> dict[str, Any] | None:
        row = cluster.ok("check_status client flclient1").data["clients"]["flclient1"]
        return row if row["status"] == "training failed" else None

    row = wait_until(failed, 60, "the site to fail")
    # A sentence that names what the app's code raised; the traceback shows where.
    assert row["error"] == (
        "the training process stopped on an error it did not expect, RuntimeError "
        "(custom trainer exploded); the traceback shows where"
    )
    assert 'digits_custom/trainer.py", line' in row["traceback"]
    assert "RuntimeError (custom trainer exploded)" in client.log()
    assert client.alive() and server.alive()
    assert cluster.ok("check_status server").data["run"]["failed_sites"] == ["flclient1"]
    cluster.ok("abort server")

    cluster.configure(
        "config_train.json", app="digits_custom", model={"path": "digits_custom.nope.Net"}
    )
    cluster.ok("set_run_number 2")
    cluster.ok("upload_folder digits_custom")
    cluster.ok("deploy digits_custom server")
    # start server replies while the initial model is built; its failure is the run's status.
    cluster.ok("start server")
    text = start_failure(cluster)
    assert "cannot import 'digits_custom.nope.Net'" in text
    assert server.alive()


def test_continue_from_a_checkpoint(cluster: Cluster) -> None:
    cluster.server()
    cluster.client("flclient1")
    cluster.client("flclient2")
    cluster.prepare_run(1, num_rounds=3, min_num_clients=2, wait_after_min_clients=30)
    cluster.ok("start server")
    cluster.ok("start client")
    finished(cluster, 1)
    run1_final = cluster.metrics(1)[-1]
    resources = cluster.root / ADMIN / "transfer" / "digits_fedavg" / "resources"
    shutil.copy(
        cluster.root / "server" / "run_1" / "global_model.safetensors",
        resources / "pretrained.safetensors",
    )
    cluster.configure(
        "config_fed_server.json",
        initial_checkpoint="resources/pretrained.safetensors",
        start_round=3,
        num_rounds=5,
    )
    cluster.prepare_run(2)
    cluster.ok("start server")
    cluster.ok("start client")
    finished(cluster, 2)
    rows = cluster.metrics(2)
    assert [r["round"] for r in rows] == [3, 4, 5]
    assert rows[0]["metrics"]["val_accuracy"] == pytest.approx(
        run1_final["metrics"]["val_accuracy"], abs=1e-9
    )

    bad = resources / "mismatch.pt"
    torch.save({"features.0.weight": torch.zeros(3, 3)}, bad)
    cluster.configure("config_fed_server.json", initial_checkpoint="resources/mismatch.pt")
    cluster.prepare_run(3)
    cluster.ok("start server")
    text = start_failure(cluster)
    assert "checkpoint" in text and "features.0.weight" in text
    assert cluster.metrics(3) == []


def test_the_server_uses_only_the_paths_its_operator_allows(
    make_cluster: Callable[..., Cluster], tmp_path: Path
) -> None:
    """Another project's model on the same host would fit this app's model and be sent to
    every site; MLflow would write wherever the server may. Upload refuses both, with what
    is allowed; a checkpoint in a folder of the operator's checkpoint_dirs is read."""
    allowed, other = tmp_path / "pretrained", tmp_path / "other_project" / "run_1"
    cluster = make_cluster(server_local={"checkpoint_dirs": [str(allowed)]})
    for folder in (allowed, other):
        folder.mkdir(parents=True)
    shape = {name: tensor.shape for name, tensor in DigitsCNN().state_dict().items()}
    for folder, value in ((allowed, 0.25), (other, 0.5)):
        state = {name: torch.full(size, value) for name, size in shape.items()}
        save_file(state, str(folder / "model.safetensors"))
    cluster.server()
    cluster.ok("set_run_number 1")
    for settings, words in (
        (
            {"initial_checkpoint": str(other / "model.safetensors")},
            f"is outside the folders this server reads checkpoints from ({cluster.root / 'server'}"
            f", {allowed}): put the file in the app's resources/ and name it relative to the app, "
            "or ask the server's operator to add its folder to checkpoint_dirs in the server's "
            "local/fed_server.json",
        ),
        ({"initial_checkpoint": "../../../other_project/run_1/model.safetensors"}, "leads out"),
        ({"mlflow": {"tracking_uri": "../mlruns"}}, "leads MLflow out of the server's workspace"),
        ({"mlflow": {"tracking_uri": "sqlite:///state/flserverd.sqlite3"}}, "keeps for itself"),
    ):
        cluster.configure("config_fed_server.json", initial_checkpoint=None, mlflow=None)
        cluster.configure("config_fed_server.json", **settings)
        (reply,) = cluster.admin("upload_folder digits_fedavg")
        assert not reply.ok and reply.text.startswith("upload refused: config/config_fed_server")
        assert words in reply.text, reply.text
    assert not (cluster.root / "server" / "transfer" / "digits_fedavg").exists()

    cluster.configure(
        "config_fed_server.json", initial_checkpoint=str(allowed / "model.safetensors"), mlflow=None
    )
    cluster.prepare_run(1, deploy_clients=False)
    cluster.ok("start server")
    started(cluster)
    first = load_file(cluster.root / "server" / "run_1" / "models" / "round_0.safetensors")
    assert all(np.all(values == 0.25) for values in first.values())


def test_start_mgpu_with_two_cpu_processes_aggregates_correctly(cluster: Cluster) -> None:
    local = cluster.root / "flclient1" / "local"
    local.mkdir(exist_ok=True)  # extracting a kit makes it
    (local / "fed_client.json").write_text(json.dumps({"allow_cpu_mgpu": True}))
    # Held at the checkpoint of round 2, the server still keeps round 1's updates: the
    # sites delete theirs once the run no longer needs them.
    cluster.server(fault="hold:server.checkpoint@2")
    multi = cluster.client("flclient1")
    cluster.client("flclient2")
    cluster.configure("config_fed_client.json", local_epochs=1)
    cluster.prepare_run(1, num_rounds=2, min_num_clients=2, wait_after_min_clients=60)
    (refused,) = cluster.admin("start_mgpu client 2 flclient2")
    assert not refused.ok
    assert "this site has 0 GPU(s); start_mgpu asked for 2" in refused.text
    (usage,) = cluster.admin("start_mgpu client 2")
    assert not usage.ok and usage.text.startswith("usage: start_mgpu client <gpu count> <instance>")
    cluster.ok("start server")
    cluster.ok("start_mgpu client 2 flclient1")
    cluster.ok("start client flclient2")
    cluster.held("server.checkpoint")
    kept = cluster.root / "server" / "run_1" / ".spool" / "round_1"
    updates = {name: load_file(kept / f"{name}.safetensors") for name in ("flclient1", "flclient2")}
    cluster.release("server.checkpoint")
    finished(cluster)
    assert "rank 1 " in multi.log()
    rows = cluster.metrics()
    assert all(r["clients"] == ["flclient1", "flclient2"] for r in rows)
    samples = {
        name: int(np.load(cluster.data / name / "train.npz")["y"].shape[0])
        for name in ("flclient1", "flclient2")
    }
    assert rows[0]["samples"] == sum(samples.values())
    aggregated = load_file(cluster.root / "server" / "run_1" / "models" / "round_2.safetensors")
    total = sum(samples.values())
    for tensor, value in aggregated.items():
        expected = sum(samples[n] * updates[n][tensor].astype(np.float64) for n in samples) / total
        np.testing.assert_allclose(value, expected, rtol=1e-5, atol=1e-7)
