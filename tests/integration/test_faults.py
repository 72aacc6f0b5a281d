"""The fault matrix: real daemons killed with SIGKILL at named points (flcore.faultpoints).

Every case asserts the recovery, the outcome (the same global model bytes as the run
left alone, each update counted once) and that no checkpoint is corrupt. The server
cases share one cluster (and its reference run) on one xdist worker.
"""

from __future__ import annotations

import re
import signal
import sqlite3
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from safetensors.numpy import load_file

from fldev.cluster import SERVER_READY, Cluster, Daemon
from fldev.faultswitch import fault_spec
from tests.integration.test_training import finished

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

ROUNDS = 3
CLIENTS = ("flclient1", "flclient2")


def state_db(cluster: Cluster) -> sqlite3.Connection:
    return sqlite3.connect(cluster.root / "server" / "state" / "flserverd.sqlite3")


def counted(cluster: Cluster, run_number: int = 1) -> list[tuple[int, str]]:
    """(round, instance) of every update the server counted, in order."""
    with state_db(cluster) as db:
        rows = db.execute(
            "SELECT round, instance FROM folded WHERE run_number=? ORDER BY round, instance",
            (run_number,),
        ).fetchall()
    return [(int(r), str(i)) for r, i in rows]


def round_pointer(cluster: Cluster, run_number: int = 1) -> int:
    with state_db(cluster) as db:
        (next_round,) = db.execute(
            "SELECT next_round FROM runs WHERE run_number=?", (run_number,)
        ).fetchone()
    return int(next_round)


def assert_loadable(path: Path) -> dict[str, np.ndarray[Any, Any]]:
    """A checkpoint that safetensors reads whole, with finite values only."""
    tensors = load_file(path)
    assert tensors and all(np.isfinite(t).all() for t in tensors.values()), path
    return tensors


def assert_checkpoints_intact(cluster: Cluster, run_number: int = 1) -> None:
    """What a crash leaves must be usable: the model the round pointer names and the
    published global model (when there is one) load."""
    run_dir = cluster.root / "server" / f"run_{run_number}"
    assert_loadable(run_dir / "models" / f"round_{round_pointer(cluster, run_number)}.safetensors")
    if (run_dir / "global_model.safetensors").exists():
        assert_loadable(run_dir / "global_model.safetensors")


def training_rows(cluster: Cluster, run_number: int = 1) -> list[dict[str, Any]]:
    return [r for r in cluster.metrics(run_number) if not r.get("final")]


# --------------------------------------------------------------------------- server kills


@dataclass
class Reference:
    """A seeded run left alone, and the cluster the faulty runs repeat it in."""

    cluster: Cluster
    server: Daemon
    global_model: bytes
    metrics: list[dict[str, Any]]


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Reference]:
    cluster = Cluster(
        tmp_path_factory.mktemp("kills"),
        settings={"heart_beat_timeout": 60, "heartbeat_interval": 0.5, "retry_window": 60},
    )
    try:
        server = cluster.server()
        for name in CLIENTS:
            cluster.client(name)
        cluster.configure("config_fed_client.json", local_epochs=1)
        cluster.prepare_run(
            1, num_rounds=ROUNDS, min_num_clients=2, max_num_clients=2, wait_after_min_clients=60
        )
        cluster.ok("start server")
        cluster.ok("start client")
        assert finished(cluster)["reason"] == "finished"
        model = (cluster.root / "server" / "run_1" / "global_model.safetensors").read_bytes()
        yield Reference(cluster, server, model, cluster.metrics())
    finally:
        cluster.stop()


def training_rows_of(reference: Reference) -> list[dict[str, Any]]:
    return [r for r in reference.metrics if not r.get("final")]


def rerun_with_server_killed(ref: Reference, point: str, nth: int) -> None:
    """Train run 1 again from scratch with the server armed to die at ``point``; return once
    it died there."""
    cluster, server = ref.cluster, ref.server
    server.kill()
    server.arm(fault_spec("kill", point, nth)).restart(SERVER_READY)
    cluster.ok("start server fresh", confirmed=True)
    cluster.ok("start client")
    assert server.wait(120) == -signal.SIGKILL
    assert f"fault point {point} reached ({nth}): SIGKILL" in server.log()


@pytest.mark.xdist_group("server-kills")
@pytest.mark.parametrize(
    ("point", "nth", "round_killed"),
    [
        ("server.download", 3, 1),  # two downloads per round: the third is in round 1
        ("server.upload", 3, 1),
        ("server.fold", 1, 0),  # the first fold (its count depends on arrival order)
        ("server.checkpoint", 2, 1),
        ("server.commit", 2, 1),
        ("server.outputs", 2, 1),
    ],
)
def test_server_killed_mid_run_resumes_to_the_same_bytes(
    reference: Reference, point: str, nth: int, round_killed: int
) -> None:
    cluster, server = reference.cluster, reference.server
    rerun_with_server_killed(reference, point, nth)
    # What the crash left: the round it died in is not committed (the outputs point comes
    # after the commit), and the checkpoints on disk load.
    committed = round_killed + 1 if point == "server.outputs" else round_killed
    assert round_pointer(cluster) == committed
    assert_checkpoints_intact(cluster)

    offset = server.arm("").restart(SERVER_READY)
    server.wait_log(rf"resumed run 1 at round {committed} of {ROUNDS}", after=offset)
    assert finished(cluster)["reason"] == "finished"
    run_dir = cluster.root / "server" / "run_1"
    assert (run_dir / "global_model.safetensors").read_bytes() == reference.global_model
    assert counted(cluster) == [(r, c) for r in range(ROUNDS) for c in CLIENTS]
    rows = training_rows(cluster)
    assert [r["round"] for r in rows] == list(range(ROUNDS))  # each round's line once
    assert [r["samples"] for r in rows] == [r["samples"] for r in training_rows_of(reference)]
    assert not list((run_dir / "models").glob(".*.tmp"))
    assert not list((run_dir / ".spool").iterdir())
    assert_checkpoints_intact(cluster)


def test_a_kit_cannot_arm_a_fault_point(cluster: Cluster, tmp_path: Path) -> None:
    """The product's way to start (the kit's start.sh running the installed command) with a
    fault named in the environment and an fldev planted on PYTHONPATH: the planted switch
    would kill the server as it starts; it is refused and the server serves."""
    planted = tmp_path / "planted" / "fldev"
    planted.mkdir(parents=True)
    (planted / "__init__.py").write_text("")
    (planted / "faultswitch.py").write_text(
        "import os, signal\n"
        "def from_spec(spec, points):\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    env = cluster.env()
    env.update(
        FLSTACK_FAULT="kill:server.download@1",
        PYTHONPATH=str(planted.parent),
        FLSTACK_BIN=str(Path(sys.executable).parent),  # the installed flserverd command
    )
    workspace = cluster.root / "server"
    daemon = Daemon(
        "server", ["bash", str(workspace / "startup" / "start.sh")], cluster.root / "kit.log", env
    )
    cluster.daemons.append(daemon.start())
    daemon.wait_log(SERVER_READY)
    assert "FLSTACK_FAULT is set but ignored" in daemon.log()
    assert re.search(r"is not part of this checkout", daemon.log())
    assert cluster.status()["run"]["server_status"] == "training not started"
    assert daemon.alive()

