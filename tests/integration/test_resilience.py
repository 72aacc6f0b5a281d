"""Daemons that die, restart or stop: nothing is lost and training carries on."""

from __future__ import annotations

import shutil
import signal
import subprocess
import tarfile
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from flclientd.runner import PRIVATE_DIR_PREFIX
from fldev.cluster import SERVER_READY, Cluster
from fldev.poll import wait_until
from tests.integration.test_training import finished

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

FAST_HEARTBEATS = {"heart_beat_timeout": 3, "heartbeat_interval": 0.5, "retry_window": 30}


def rounds_done(cluster: Cluster) -> int:
    """Training rounds aggregated so far."""
    return len([r for r in cluster.metrics() if not r.get("final")])


def test_updates_accepted_before_a_server_crash_are_sent_again(cluster: Cluster) -> None:
    """The sum of an unfinished round dies with the server: its updates must come again."""
    server = cluster.server()
    early = cluster.client("flclient1")
    cluster.client("flclient2")
    cluster.prepare_run(1, num_rounds=2, min_num_clients=2, wait_after_min_clients=60)
    cluster.ok("start server")
    cluster.ok("start client flclient1")
    early.wait_log(r"round 0 update accepted")
    server.signal(signal.SIGKILL)
    server.wait()
    offset = server.restart(SERVER_READY)
    server.wait_log(r"resumed run 1 at round 0 of 2 \(1 unfinished updates", after=offset)
    early.wait_log(r"round 0 sent again: update for round 0 accepted")
    cluster.ok("start client flclient2")
    assert finished(cluster)["reason"] == "finished"
    rows = [r for r in cluster.metrics() if not r.get("final")]
    assert [r["clients"] for r in rows] == [["flclient1", "flclient2"]] * 2


def test_sigterm_stops_server_cleanly_and_run_resumes(cluster: Cluster) -> None:
    server = cluster.server()
    cluster.client("flclient1")
    cluster.client("flclient2")
    cluster.configure("config_fed_client.json", local_epochs=1)
    cluster.prepare_run(1, num_rounds=6, min_num_clients=2, wait_after_min_clients=30)
    cluster.ok("start server")
    cluster.ok("start client")
    wait_until(lambda: rounds_done(cluster) >= 2, 120, "two rounds")
    server.signal(signal.SIGTERM)
    assert server.wait(30) == 0
    assert "flserverd stopped" in server.log()
    server.restart(SERVER_READY)
    assert finished(cluster)["reason"] == "finished"
    assert [r["round"] for r in cluster.metrics() if not r.get("final")] == list(range(6))


def test_a_server_restarted_during_final_validation_waits_for_every_sites_report(
    cluster: Cluster,
) -> None:
    """flclient2 had reported on the final model, flclient1 not yet, when the server
    restarted: the reports died with it, and flclient1's, the first back, ended the run
    alone: flclient2's metrics were lost from the final model's."""
    server = cluster.server()
    one = cluster.client("flclient1", fault="hold:client.download@3")  # the final model
    two = cluster.client("flclient2")
    cluster.configure("config_fed_client.json", local_epochs=1)
    cluster.prepare_run(1, num_rounds=2, min_num_clients=2, wait_after_min_clients=30)
    cluster.ok("start server")
    cluster.ok("start client")
    cluster.held("client.download", 120)
    two.wait_log(r"final global model validated: .* \(accepted\)")
    server.signal(signal.SIGTERM)
    assert server.wait(30) == 0
    server.restart(SERVER_READY)
    cluster.release("client.download")
    assert finished(cluster)["reason"] == "finished"
    [final] = [r for r in cluster.metrics() if r.get("final")]
    assert final["clients"] == ["flclient1", "flclient2"]
    assert one.alive() and two.alive()


BACKUP_LEAVES_OUT = ("./startup*", "./state/flserverd.lock")
"""What docs/operations.md's backup leaves out: the kit (its private key), an old kit a
renewal left, and the lock."""


def test_a_server_restored_from_an_earlier_backup_finishes_the_run_from_there(
    cluster: Cluster, tmp_path: Path
) -> None:
    """docs/operations.md, "Backing up the server": stopped, archived, started; later the
    archive is put back. The sites had trained rounds the restored server never saw: they
    follow it back, and the run finishes with every round once in its metrics."""
    server = cluster.server()
    cluster.client("flclient1")
    cluster.client("flclient2")
    cluster.configure("config_fed_client.json", local_epochs=1)
    cluster.prepare_run(1, num_rounds=8, min_num_clients=2, wait_after_min_clients=30)
    cluster.ok("start server")
    cluster.ok("start client")
    wait_until(lambda: rounds_done(cluster) >= 2, 120, "two rounds")
    workspace = cluster.root / "server"
    archive = tmp_path / "server-backup.tgz"
    server.signal(signal.SIGTERM)
    assert server.wait(30) == 0
    backed_up = rounds_done(cluster)
    shutil.copytree(workspace / "startup", workspace / "startup.old")  # as a renewal leaves it
    excluded = [f"--exclude={path}" for path in BACKUP_LEAVES_OUT]
    tar = ["tar", "--create", "--gzip", f"--file={archive}", f"--directory={workspace}"]
    subprocess.run([*tar, *excluded, "."], check=True)
    with tarfile.open(archive) as kept:
        assert not [name for name in kept.getnames() if name.startswith("./startup")]
        assert "./state/flserverd.sqlite3" in kept.getnames()
    server.restart(SERVER_READY)
    wait_until(lambda: rounds_done(cluster) >= backed_up + 2, 120, "two rounds after the backup")
    server.signal(signal.SIGTERM)
    assert server.wait(30) == 0
    assert rounds_done(cluster) >= backed_up + 2
    for entry in workspace.iterdir():  # everything but the kit, as the guide says
        if entry.name != "startup":  # startup.old goes too
            shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
    subprocess.run(
        ["tar", "--extract", f"--file={archive}", f"--directory={workspace}"], check=True
    )
    offset = server.restart(SERVER_READY)
    server.wait_log(rf"resumed run 1 at round {backed_up} of 8", after=offset)
    assert finished(cluster)["reason"] == "finished"
    assert [r["round"] for r in cluster.metrics() if not r.get("final")] == list(range(8))
    assert (workspace / "run_1" / "global_model.safetensors").is_file()


def test_client_exits_after_retry_window(make_cluster: Callable[..., Cluster]) -> None:
    cluster = make_cluster(
        settings={"heart_beat_timeout": 10, "heartbeat_interval": 1, "retry_window": 3}
    )
    server = cluster.server()
    client = cluster.client("flclient1")
    server.kill()
    started = time.monotonic()
    assert client.wait(30) == 3
    assert 3 <= time.monotonic() - started < 20
    assert "retry window" in client.log()


def test_client_sigterm_stops_worker_tree(cluster: Cluster) -> None:
    cluster.server()
    client = cluster.client("flclient1")
    cluster.prepare_run(1, num_rounds=50, min_num_clients=2)
    cluster.ok("start server")
    cluster.ok("start client")
    client.wait_log("training process ready")
    client.signal(signal.SIGTERM)
    assert client.wait(30) == 0
    assert "flclientd stopped" in client.log()


def test_shutdown_as_a_run_ends_leaves_no_training_process_behind(
    cluster: Cluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The demo's sequence: the run finishes, the training child is asked to stop, and the
    # admin shuts the client down while that child is still on its way out.
    private = tmp_path / "tmp"
    private.mkdir()
    monkeypatch.setenv("TMPDIR", str(private))  # where the child's socket folder goes
    cluster.server()
    client = cluster.client("flclient1")
    cluster.prepare_run(1, num_rounds=1, min_num_clients=1)
    cluster.ok("start server")
    cluster.ok("start client")
    client.wait_log("stopping on request", timeout=120)
    cluster.ok("shutdown client", confirmed=True)
    assert client.wait(30) == 0
    assert cluster.worker_pids() == []
    assert list(private.glob(f"{PRIVATE_DIR_PREFIX}*")) == []
