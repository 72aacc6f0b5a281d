"""Full runs between real daemons: rounds, checkpoints, metrics, joins, late updates."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from safetensors.numpy import load_file

from fldev.cluster import Cluster
from fldev.poll import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]


def finished(cluster: Cluster, run_number: int = 1, timeout: float = 180) -> dict[str, Any]:
    """Wait for a run to stop and return its state."""

    def stopped() -> dict[str, Any] | None:
        state = cluster.run_state()
        ok = state["run_number"] == run_number and state["server_status"] == "training stopped"
        return state if ok else None

    return wait_until(stopped, timeout, f"run {run_number} to finish", interval=0.5)


def started(cluster: Cluster) -> None:
    """Wait until the run has begun: start server replies while the initial model is built,
    and only then does the server hand out round 0."""
    wait_until(
        lambda: cluster.run_state()["server_status"] == "training started",
        120,
        "the run to begin",
        interval=0.2,
    )


def start_failure(cluster: Cluster) -> str:
    """check_status server once a start failed: start server replies while the initial model
    is built, and a build that fails is the run's status."""

    def failed() -> str | None:
        text = cluster.ok("check_status server").text
        return text if "training not started (last start failed: " in text else None

    return wait_until(failed, 120, "the start to fail")


def test_full_run_two_clients(cluster: Cluster) -> None:
    server = cluster.server()
    sites = [cluster.client("flclient1"), cluster.client("flclient2")]
    cluster.prepare_run(1, num_rounds=3, wait_after_min_clients=30)
    assert cluster.ok("start server").text == "Server training is starting...."
    started = cluster.ok("start client")
    assert started.text.splitlines() == [
        "instance:flclient1 : Starting the client...",
        "instance:flclient2 : Starting the client...",
    ]
    state = finished(cluster)
    assert state["reason"] == "finished"
    rows = cluster.metrics()
    assert [r["round"] for r in rows] == [0, 1, 2, 3]
    assert all(r["clients"] == ["flclient1", "flclient2"] for r in rows)
    assert rows[-1]["final"] is True
    assert rows[-1]["metrics"]["val_accuracy"] > 0.8
    run_dir = cluster.root / "server" / "run_1"
    weights = load_file(run_dir / "global_model.safetensors")
    best = load_file(run_dir / "best_global_model.safetensors")
    assert weights.keys() == best.keys() and len(weights) > 2
    assert list((run_dir / "tb").glob("events.out.tfevents.*"))
    assert not list((run_dir / ".spool").glob("*"))
    # No temporary link names are left (publishing the unchanged best model used to).
    assert sorted(p.name for p in run_dir.iterdir() if p.name.startswith(".")) == [".spool"]
    # A site keeps the run's final global model, not each round's download and update.
    for name in cluster.clients:
        site_run = cluster.root / name / "run_1"
        kept = sorted(p.relative_to(site_run) for p in site_run.rglob("*.safetensors"))
        assert kept == [Path(f"models_{name}") / "final_global_model.safetensors"], name
        final = load_file(site_run / kept[0])
        assert final.keys() == weights.keys()
        assert all((final[k] == weights[k]).all() for k in weights)
    log = server.log()
    assert "run 1 round 2 aggregated from 2 clients" in log
    assert re.search(r"final global model: val_accuracy=0\.\d+", log)
    # One line per model transfer with its bytes and seconds (bench/transfer.py reads them):
    # a global model down and an update of the same size up per round.
    size = sum(w.nbytes for w in weights.values())
    for site in sites:
        moved = re.findall(r"(downloaded|uploaded) \S+: (\d+) bytes in \d+\.\d+ s", site.log())
        assert [kind for kind, _ in moved].count("uploaded") == 3, moved
        assert [kind for kind, _ in moved].count("downloaded") >= 3, moved
        assert {int(nbytes) for _, nbytes in moved} == {size}, moved


def test_check_status_formats(cluster: Cluster) -> None:
    cluster.server()
    cluster.client("flclient1")
    cluster.client("flclient2")
    before = cluster.ok("check_status server")
    lines = before.text.splitlines()
    assert lines[0] == "FL run number has not been set."
    assert lines[1] == "FL server status: training not started"
    assert lines[2] == "Revocation list: none loaded"
    assert lines[3] == "Registered clients: 2"
    token = re.compile(r"[0-9a-f]{8}")  # a token id, never the token
    for line, name in zip(lines[4:], ("flclient1", "flclient2"), strict=True):
        assert re.fullmatch(
            rf"client name:{name}\tinstance name:{name}\ttoken: {token.pattern}", line
        )
    rendered = before.render().splitlines()[-1]
    assert re.fullmatch(r"Done \[\d+ usecs\] \d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{6}", rendered)

    clients = cluster.ok("check_status client flclient2")
    assert re.fullmatch(
        rf"instance:flclient2 : client name: flclient2\ttoken: {token.pattern}\tstatus: "
        r"training not started\tdevice: cpu",
        clients.text.strip(),
    )
    assert clients.data["clients"]["flclient2"]["device"] == "cpu"

    cluster.prepare_run(7, num_rounds=2, min_num_clients=2, wait_after_min_clients=30)
    cluster.ok("start server")
    cluster.ok("start client flclient1")
    # Awaited from its start on: while its training process starts, and once it trains.
    status = wait_until(
        lambda: (s := cluster.ok("check_status server")).data["run"]["awaited"] and s,
        60,
        "a waiting round",
    )
    assert re.search(r"Waiting for: flclient1$", status.text, re.M)
    wait_until(
        lambda: "status: training started" in cluster.ok("check_status client flclient1").text,
        60,
        "flclient1 to train",
    )
    text = cluster.ok("check_status server").text
    assert "FL run number: 7" in text
    assert "FL server status: training started" in text
    assert "Current round: 0 / 2" in text
    assert re.search(r"Waiting for: flclient1$", text, re.M)


def test_a_config_naming_a_missing_class_fails_the_start_in_one_line(cluster: Cluster) -> None:
    """A user's config mistake is said once, in the status and one log line: no traceback of
    the server's own code in its log."""
    server = cluster.server()
    cluster.configure("config_train.json", model={"path": "flapp.models.DigitCNN"})
    cluster.prepare_run(1, deploy_clients=False)
    cluster.ok("start server")
    text = start_failure(cluster)
    assert "flapp.models.DigitCNN" in text
    said = [line for line in server.log().splitlines() if "cannot start training" in line]
    assert len(said) == 1 and "flapp.models.DigitCNN" in said[0]
    assert "Traceback" not in server.log()


def test_client_joins_mid_run(cluster: Cluster) -> None:
    cluster.server()
    cluster.client("flclient1")
    # Rounds take ~0.1 s on their own; once flclient2 is ready, each waits up to 3 s for it.
    cluster.prepare_run(1, num_rounds=5000, min_num_clients=1, wait_after_min_clients=3)
    cluster.ok("start server")
    cluster.ok("start client")
    wait_until(lambda: len(cluster.metrics()) >= 3, 120, "rounds from flclient1 alone")
    joined = cluster.client("flclient2")
    cluster.ok("deploy digits_fedavg client flclient2")
    cluster.ok("start client flclient2")
    first = int(joined.wait_log(r"round (\d+) update accepted", timeout=60).group(1))
    # An accepted update is folded when its round ends; the round's row is written then.
    wait_until(
        lambda: any(r["round"] == first for r in cluster.metrics()), 60, f"round {first}'s row"
    )
    cluster.ok("abort server")
    rows = {r["round"]: r["clients"] for r in cluster.metrics()}
    assert rows[0] == rows[1] == ["flclient1"]
    assert first >= 3
    assert rows[first] == ["flclient1", "flclient2"]


def test_late_update_is_discarded(cluster: Cluster) -> None:
    cluster.server()
    fast = cluster.client("flclient1")
    slow = cluster.client("flclient2")
    cluster.prepare_run(1, num_rounds=5000, min_num_clients=1, wait_after_min_clients=0)
    cluster.ok("start server")
    cluster.ok("start client flclient1")
    wait_until(lambda: cluster.run_state()["history"], 120, "round 0 to aggregate")
    # Each round closes as soon as flclient1's update arrives (min_num_clients=1, no wait);
    # flclient2 trains 30 local epochs per round, so its updates always come too late.
    cluster.configure("config_fed_client.json", local_epochs=30)
    cluster.ok("upload_folder digits_fedavg")
    cluster.ok("deploy digits_fedavg client flclient2")
    cluster.ok("start client flclient2")
    late = slow.wait_log(
        r"round (\d+) update late: round \d+ was already aggregated; update discarded", timeout=60
    )
    cluster.ok("abort server")
    assert "update late" not in fast.log()
    round_number = int(late.group(1))
    assert all("flclient2" not in r["clients"] for r in cluster.metrics())
    assert f"update from flclient2 for round {round_number} late" in cluster.daemons[0].log()
