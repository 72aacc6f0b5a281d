"""The fault matrix: real daemons killed with SIGKILL at named points (flcore.faultpoints).

Every case asserts the recovery, the outcome (the same global model bytes as the run
left alone, each update counted once) and that no checkpoint is corrupt. The server
cases share one cluster (and its reference run) on one xdist worker.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from safetensors.numpy import load_file

from fldev.cluster import ADMIN, SERVER_READY, Cluster, Daemon
from fldev.faultswitch import fault_spec
from fldev.poll import wait_until
from fldev.smalldisk import fill, free_some, free_up, small_disk
from tests.integration.serverstate import counted, state_db
from tests.integration.test_training import finished

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

ROUNDS = 3
CLIENTS = ("flclient1", "flclient2")
SITES = ("flclient1", "flclient2", "flclient3")
"""The server-kill cases train with three sites: with two, addition is commutative and the
order updates are folded in could not change the bytes."""


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
    clients: list[Daemon]
    """The sites' daemons, started once: each server kill must leave them running."""


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Reference]:
    cluster = Cluster(
        tmp_path_factory.mktemp("kills"),
        clients=SITES,
        settings={"heart_beat_timeout": 60, "heartbeat_interval": 0.5, "retry_window": 60},
    )
    try:
        server = cluster.server()
        clients = [cluster.client(name) for name in SITES]
        cluster.configure("config_fed_client.json", local_epochs=1)
        cluster.prepare_run(
            1, num_rounds=ROUNDS, min_num_clients=3, max_num_clients=3, wait_after_min_clients=60
        )
        cluster.ok("start server")
        cluster.ok("start client")
        assert finished(cluster)["reason"] == "finished"
        model = (cluster.root / "server" / "run_1" / "global_model.safetensors").read_bytes()
        yield Reference(cluster, server, model, cluster.metrics(), clients)
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
        ("server.download", 4, 1),  # three downloads per round: the fourth is in round 1
        ("server.upload", 4, 1),
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
    assert counted(cluster) == [(r, c) for r in range(ROUNDS) for c in SITES]
    rows = training_rows(cluster)
    assert [r["round"] for r in rows] == list(range(ROUNDS))  # each round's line once
    assert [r["samples"] for r in rows] == [r["samples"] for r in training_rows_of(reference)]
    assert not list((run_dir / "models").glob(".*.tmp"))
    assert not list((run_dir / ".spool").iterdir())
    assert_checkpoints_intact(cluster)
    # The sites rode out the crash in the processes they were started as (never restarted
    # here): they reconnected on their own and did not give up.
    assert all(client.alive() for client in reference.clients)


@pytest.mark.xdist_group("server-kills")
def test_a_server_killed_after_the_final_validation_was_recorded_does_not_repeat_it(
    reference: Reference,
) -> None:
    """Killed once the final validation's result was committed and before the run's finished
    record: the restarted server took the run up in its final validation, asked every site
    for it again and wrote the final line of metrics.jsonl twice."""
    cluster, server = reference.cluster, reference.server
    rerun_with_server_killed(reference, "server.outputs", ROUNDS + 1)  # the final validation's
    with state_db(cluster) as db:
        status, phase = db.execute("SELECT status, phase FROM runs WHERE run_number=1").fetchone()
        (final,) = db.execute(
            "SELECT record FROM round_metrics WHERE round=?", (ROUNDS,)
        ).fetchone()
    assert (status, phase) == ("training started", "final validation")
    assert json.loads(final)["final"] is True
    sites_from = [len(client.log()) for client in reference.clients]

    offset = server.arm("").restart(SERVER_READY)
    server.wait_log(rf"resumed run 1 at round {ROUNDS} of {ROUNDS}", after=offset)
    assert finished(cluster)["reason"] == "finished"
    wait_until(
        lambda: {s["status"] for s in client_statuses(cluster).values()} == {"training stopped"},
        60,
        "the sites to be told the run finished",
    )
    rows = cluster.metrics()
    assert [r["round"] for r in rows] == [*range(ROUNDS), ROUNDS]  # the final line once
    assert rows[-1]["clients"] == list(SITES)
    assert rows[-1]["metrics"] == reference.metrics[-1]["metrics"]
    for client, start in zip(reference.clients, sites_from, strict=True):
        assert f"round {ROUNDS} sent again" not in client.log()[start:], client.name
    assert counted(cluster) == [(r, c) for r in range(ROUNDS) for c in SITES]
    assert counted(cluster, final=True) == [(ROUNDS, c) for c in SITES]
    assert_checkpoints_intact(cluster)


def test_a_second_server_on_the_workspace_refuses_to_start_and_takes_nothing(
    cluster: Cluster,
) -> None:
    """A second flserverd (the service running, and someone trying the kit's start.sh) took
    the live run's files for a crash's leftovers: it deleted the round's accepted updates
    before it found the ports taken."""
    cluster.server(fault="hold:server.checkpoint@1")
    for name in CLIENTS:
        cluster.client(name)
    cluster.configure("config_fed_client.json", local_epochs=1)
    cluster.prepare_run(1, num_rounds=2, min_num_clients=2, max_num_clients=2)
    cluster.ok("start server")
    cluster.ok("start client")
    cluster.held("server.checkpoint")  # round 0's updates accepted, kept until it commits
    spool = cluster.root / "server" / "run_1" / ".spool"
    kept = sorted(str(path.relative_to(spool)) for path in spool.rglob("*"))
    assert "round_0/flclient1.safetensors" in kept
    second = subprocess.run(
        [sys.executable, "-m", "flserverd", "--workspace", str(cluster.root / "server")],
        capture_output=True,
        text=True,
        timeout=60,
        env=cluster.env(),
    )
    assert second.returncode == 2 and "Traceback" not in second.stderr
    assert "another flserverd is running on the workspace " in second.stderr
    assert sorted(str(path.relative_to(spool)) for path in spool.rglob("*")) == kept
    cluster.release("server.checkpoint")
    assert finished(cluster)["reason"] == "finished"
    assert counted(cluster) == [(r, c) for r in range(2) for c in CLIENTS]


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


# --------------------------------------------------------------------------- continuing a run


@pytest.mark.xdist_group("server-kills")
def test_a_run_stopped_by_a_server_error_continues_with_start_server(
    reference: Reference,
) -> None:
    cluster, server = reference.cluster, reference.server
    server.kill()
    server.arm(fault_spec("fail", "server.checkpoint", 2)).restart(SERVER_READY)
    cluster.ok("start server fresh", confirmed=True)
    cluster.ok("start client")
    state = wait_until(
        lambda: (s := cluster.run_state())["reason"].startswith("an unexpected error") and s,
        120,
        "the run to stop with a server error",
    )
    assert state["reason"] == (
        "an unexpected error on the server stopped it; the server's log has the details"
    )
    assert "fault point server.checkpoint: injected failure" in server.log()
    assert state["server_status"] == "training stopped"
    assert [r["round"] for r in training_rows(cluster)] == [0]
    assert_checkpoints_intact(cluster)
    # The clients were told: none sits in "training started".
    wait_until(
        lambda: (
            {row["status"] for row in cluster.ok("check_status client").data["clients"].values()}
            == {"training stopped"}
        ),
        30,
        "the clients to stop",
    )

    continued = cluster.ok("start server")
    assert continued.text == f"Server training continues run 1 at round 1 (of {ROUNDS} rounds)."
    cluster.ok("start client")
    assert finished(cluster)["reason"] == "finished"
    assert [r["round"] for r in cluster.metrics()] == [*range(ROUNDS), ROUNDS]  # no row twice
    assert counted(cluster) == [(r, c) for r in range(ROUNDS) for c in SITES]
    assert f"run 1 continues at round 1 of {ROUNDS} rounds" in server.log()

    (again,) = cluster.admin("start server")
    assert not again.ok
    assert again.text.startswith("run 1 finished all its rounds: start server fresh trains")


# --------------------------------------------------------------------------- client kills

FAST_HEARTBEATS = {"heart_beat_timeout": 3, "heartbeat_interval": 0.5, "retry_window": 30}


def test_a_client_killed_mid_round_leaves_nothing_behind_and_rejoins(
    make_cluster: Callable[..., Cluster],
) -> None:
    """kill -9 of a site while it downloads, trains and uploads (once each, in one run): the
    others go on (min_num_clients=1), a half-sent update is never counted, and the site
    rejoins the round in progress when it is started again."""
    cluster = make_cluster(settings=FAST_HEARTBEATS)
    server = cluster.server()
    cluster.client("flclient1")
    faults = ["client.download", "client.train", "client.upload"]
    victim = cluster.client("flclient2", fault=fault_spec("kill", faults[0], 2))
    cluster.configure("config_fed_client.json", local_epochs=1)
    cluster.prepare_run(
        1, num_rounds=5000, min_num_clients=1, max_num_clients=2, wait_after_min_clients=30
    )
    cluster.ok("start server")
    cluster.ok("start client")
    removed = "client flclient2 (flclient2) removed: no heartbeat"
    for index, point in enumerate(faults):
        assert victim.wait(120) == -signal.SIGKILL, point
        assert f"fault point {point} reached (2): SIGKILL" in victim.log()
        sent = [r for r, instance in counted(cluster) if instance == "flclient2"]
        killed_in = max(sent) + 1  # it sends every round it is offered: the next one died
        # The round it died in goes on with flclient1 once flclient2's heartbeat is missed.
        removals = index + 1  # one per kill so far
        wait_until(
            lambda: server.log().count(removed) >= removals,  # noqa: B023
            30,
            f"flclient2 removed after the kill at {point}",
        )
        assert [c["instance"] for c in cluster.status()["clients"]] == ["flclient1"], point
        wait_until(
            lambda: any(
                r["round"] >= killed_in and r["clients"] == ["flclient1"]  # noqa: B023
                for r in training_rows(cluster)
            ),
            60,
            f"a round without flclient2 after the kill at {point}",
        )
        assert (killed_in, "flclient2") not in counted(cluster), point
        assert not list((cluster.root / "server" / "run_1" / ".spool").glob("flclient2-*"))

        current = cluster.run_state()["current_round"]
        offset = len(victim.log())
        following = faults[index + 1] if index + 1 < len(faults) else ""
        victim.arm(fault_spec("kill", following, 2) if following else "").start()
        victim.wait_log("rejoining", after=offset)
        joined = int(victim.wait_log(r"round (\d+) update accepted", after=offset).group(1))
        assert joined >= current > killed_in - 1, point
    cluster.ok("abort server")
    assert all(round_ != killed_in for round_, i in counted(cluster) if i == "flclient2")
    assert_checkpoints_intact(cluster)


# --------------------------------------------------------------------------- full disks


def stray_spool_files(cluster: Cluster) -> list[Path]:
    """Spool files that are not an accepted update waiting for its round."""
    spool = cluster.root / "server" / "run_1" / ".spool"
    return [p for p in spool.rglob("*") if p.is_file() and p.parent == spool]


def client_statuses(cluster: Cluster) -> dict[str, dict[str, Any]]:
    return cluster.ok("check_status client").data["clients"]  # type: ignore[no-any-return]


@pytest.mark.usefixtures("mountable")
def test_a_full_server_disk_pauses_training_and_loses_nothing(
    make_cluster: Callable[..., Cluster],
) -> None:
    cluster = make_cluster()
    workspace = cluster.root / "server"
    with small_disk(workspace, 16):
        # Held at the first upload of round 1 and at the checkpoint of round 2, the disk
        # fills at exactly those instants.
        server = cluster.server(fault="hold:server.upload@3,hold:server.checkpoint@3")
        for name in CLIENTS:
            cluster.client(name)
        cluster.configure("config_fed_client.json", local_epochs=1)
        cluster.prepare_run(1, num_rounds=4, min_num_clients=2, max_num_clients=2)
        cluster.ok("start server")
        cluster.ok("start client")

        # 1. The disk fills during an upload: the update is postponed, training pauses.
        cluster.held("server.upload")
        fill(workspace)
        cluster.release("server.upload")
        server.wait_log(r"run 1: server disk full: .*training is paused")
        text = cluster.ok("check_status server").text
        assert "FL server status: training paused (server disk full: " in text
        snapshot = cluster.snapshot()  # the console's feed works on a full disk
        assert snapshot.run.server_status == "training paused"
        assert snapshot.run.fault.startswith("server disk full: ")
        assert any("server disk full" in line.message for line in snapshot.logs)
        assert {s["status"] for s in client_statuses(cluster).values()} == {"training started"}
        assert_checkpoints_intact(cluster)
        assert stray_spool_files(cluster) == []  # not even an empty one
        free_up(workspace)
        server.wait_log("the disk takes writes again; training goes on")  # by itself

        # 2. The disk fills while the checkpoint of round 2 is written: start server retries.
        cluster.held("server.checkpoint")
        offset = len(server.log())
        fill(workspace)
        cluster.release("server.checkpoint")
        server.wait_log(r"run 1: server disk full: ", after=offset)
        assert round_pointer(cluster) == 2
        assert_checkpoints_intact(cluster)
        assert not list((workspace / "run_1" / "models").glob(".*.tmp"))
        still = cluster.ok("start server").text
        assert still.startswith("Run 1 is paused (server disk full: ")
        assert cluster.run_state()["server_status"] == "training paused"
        free_up(workspace)
        cluster.ok("start server")
        assert finished(cluster)["reason"] == "finished"
        assert [r["round"] for r in cluster.metrics()] == [0, 1, 2, 3, 4]
        assert counted(cluster) == [(r, c) for r in range(4) for c in CLIENTS]
        assert stray_spool_files(cluster) == []

        # 3. A stop that the full disk keeps out of the state database still reaches the
        # clients, and is recorded once there is room.
        offset = len(server.log())
        cluster.ok("start server fresh", confirmed=True)
        cluster.ok("start client")
        # start server replies while the model is built; the old rows go when the run begins
        # (read from the log: the commands this part sends are counted below).
        server.wait_log("run 1: training started", timeout=120, after=offset)
        wait_until(lambda: training_rows(cluster), 120, "a first round")
        fill(workspace)
        cluster.ok("abort server")
        wait_until(
            lambda: (
                {s["status"] for s in client_statuses(cluster).values()} == {"training stopped"}
            ),
            30,
            "the clients to be told the run stopped",
        )
        # The reason names the admin who aborted (issue 10).
        assert f"training stopped (aborted by {ADMIN})" in cluster.ok("check_status server").text
        free_up(workspace)

        def recorded() -> bool:
            with state_db(cluster) as db:
                (status,) = db.execute("SELECT status FROM runs WHERE run_number=1").fetchone()
            return bool(status == "training stopped")

        wait_until(recorded, 30, "the stop to be recorded")
        cluster.ok("check_status server")  # the commands kept in memory are written with it
        with state_db(cluster) as db:
            commands = [line for (line,) in db.execute("SELECT line FROM audit ORDER BY id")]
        since = commands[len(commands) - commands[::-1].index("start server fresh") :]
        waits = since.count("check_status client")
        assert waits >= 1
        assert since == [
            "start client",
            "abort server",
            *["check_status client"] * waits,
            "check_status server",
            "check_status server",
        ]
        server.kill()


def start_and_fill_while_downloading(cluster: Cluster, site: Daemon, workspace: Path) -> None:
    """Start the run; the site (held at its second download) finds its disk full and pauses."""
    cluster.ok("start server")
    cluster.ok("start client")
    cluster.held("client.download")
    fill(workspace)
    cluster.release("client.download")
    site.wait_log(r"training paused: client disk full: ")


@pytest.mark.usefixtures("mountable")
def test_a_full_client_disk_pauses_that_site_only(make_cluster: Callable[..., Cluster]) -> None:
    cluster = make_cluster()
    workspace = cluster.root / "flclient2"
    with small_disk(workspace, 8):
        cluster.server()
        cluster.client("flclient1")
        site = cluster.client("flclient2", fault="hold:client.download@2")
        cluster.configure("config_fed_client.json", local_epochs=1)
        cluster.prepare_run(
            1, num_rounds=5000, min_num_clients=1, max_num_clients=2, wait_after_min_clients=30
        )
        start_and_fill_while_downloading(cluster, site, workspace)
        row = wait_until(
            lambda: (
                (r := client_statuses(cluster)["flclient2"])["status"] == "training paused" and r
            ),
            30,
            "flclient2 to show it is paused",
        )
        assert row["error"].startswith("client disk full: ")
        assert "status: training paused" in cluster.ok("check_status client flclient2").text
        paused_at = len(training_rows(cluster))
        wait_until(
            lambda: len(training_rows(cluster)) > paused_at + 2, 60, "rounds without flclient2"
        )
        assert all(r["clients"] == ["flclient1"] for r in training_rows(cluster)[paused_at + 1 :])
        assert cluster.run_state()["server_status"] == "training started"

        free_up(workspace)
        site.wait_log("the disk has room again: training goes on")
        resumed_at = len(training_rows(cluster))
        wait_until(
            lambda: any("flclient2" in r["clients"] for r in training_rows(cluster)[resumed_at:]),
            60,
            "flclient2 to contribute again",
        )
        assert client_statuses(cluster)["flclient2"]["error"] == ""
        cluster.ok("abort server")
        cluster.stop()


TRUSTING = {"trust_custom_code": True}
CACHE_BYTES = 6 << 20
CACHING_TRAINER = f'''

class CachingTrainer(ShiftAugmentingTrainer):
    """Rebuilds a cache of {CACHE_BYTES} bytes in the run's work folder as it starts, and
    swaps it in whole: a start that needs room."""

    def __init__(self, max_shift: int = 1) -> None:
        super().__init__(max_shift)
        import os

        with open("shift_cache.new", "wb") as cache:
            cache.write(bytes({CACHE_BYTES}))
        os.replace("shift_cache.new", "shift_cache.bin")
'''


def caching_cluster(make_cluster: Callable[..., Cluster]) -> Cluster:
    """One site whose app writes a cache as its training process starts, for a run that goes
    on until aborted."""
    cluster = make_cluster(clients=("flclient1",), client_local={"flclient1": TRUSTING})
    app = cluster.add_app("digits_custom")
    trainer = app / "resources" / "digits_custom" / "trainer.py"
    trainer.write_text(trainer.read_text() + CACHING_TRAINER)
    cluster.configure(
        "config_train.json",
        app="digits_custom",
        trainer={"path": "digits_custom.trainer.CachingTrainer", "args": {"max_shift": 1}},
    )
    cluster.configure("config_fed_client.json", app="digits_custom", cross_validate=False)
    cluster.configure(
        "config_fed_server.json", app="digits_custom", num_rounds=5000, min_num_clients=1
    )
    return cluster


def deploy_caching_app(cluster: Cluster) -> None:
    """Make run 1 with :func:`caching_cluster`'s app, deployed at the server and the site."""
    cluster.ok("set_run_number 1")
    cluster.ok("upload_folder digits_custom")
    cluster.ok("deploy digits_custom server")
    cluster.ok("deploy digits_custom client")


@pytest.mark.usefixtures("mountable")
def test_a_child_started_again_on_a_disk_still_short_of_room_pauses_the_site_again(
    make_cluster: Callable[..., Cluster],
) -> None:
    """The child ended while its site was paused (the OOM killer; torchrun's rank 0 under
    start_mgpu); the disk had room for the round but not for the new child's start, and the
    run failed at the site instead of pausing again."""
    cluster = caching_cluster(make_cluster)
    workspace = cluster.root / "flclient1"
    with small_disk(workspace, 24):
        cluster.server()
        site = cluster.client("flclient1", fault="hold:client.download@2")
        deploy_caching_app(cluster)
        start_and_fill_while_downloading(cluster, site, workspace)
        (child,) = cluster.worker_pids()
        os.kill(child, signal.SIGKILL)
        wait_until(lambda: not cluster.worker_pids(), 30, "the training process to end")

        offset = len(site.log())
        free_some(workspace, CACHE_BYTES // 2)  # room for the round's models, not the cache
        site.wait_log("the training process ended while the site was paused", after=offset)
        site.wait_log(r"training paused: client disk full: ", after=offset)
        row = client_statuses(cluster)["flclient1"]
        assert (row["status"], row["error"][:17]) == ("training paused", "client disk full:")

        trained = len(training_rows(cluster))
        free_up(workspace)
        wait_until(lambda: len(training_rows(cluster)) > trained, 120, "a round with flclient1")
        assert client_statuses(cluster)["flclient1"]["status"] == "training started"
        assert "training failed" not in site.log()
        cluster.ok("abort server")
        cluster.stop()


@pytest.mark.usefixtures("mountable")
def test_a_full_disk_at_a_rejoin_and_at_a_run_s_first_start_pauses_the_site(
    make_cluster: Callable[..., Cluster],
) -> None:
    """Only a start after a pause paused again: a run rejoined on a full disk by a restarted
    site, or started on one, failed at that site."""
    cluster = caching_cluster(make_cluster)
    workspace = cluster.root / "flclient1"

    def paused_then_on(offset: int) -> None:
        site.wait_log(r"training paused: client disk full: ", after=offset)
        row = client_statuses(cluster)["flclient1"]
        assert (row["status"], row["error"][:17]) == ("training paused", "client disk full:")
        trained = len(training_rows(cluster))
        free_up(workspace)
        site.wait_log("the disk has room again: training goes on", after=offset)
        wait_until(lambda: len(training_rows(cluster)) > trained, 120, "a round with flclient1")
        assert client_statuses(cluster)["flclient1"]["status"] == "training started"

    with small_disk(workspace, 24):
        cluster.server()
        site = cluster.client("flclient1")
        deploy_caching_app(cluster)
        cluster.ok("start server")
        cluster.ok("start client")
        wait_until(lambda: training_rows(cluster), 120, "a first round")

        offset = len(site.log())
        site.kill()
        wait_until(lambda: not cluster.worker_pids(), 30, "the training process to end")
        fill(workspace)
        site.start()
        site.wait_log("rejoining", after=offset)
        paused_then_on(offset)

        offset = len(site.log())
        cluster.ok("abort client")
        wait_until(lambda: not cluster.worker_pids(), 30, "the training process to end")
        fill(workspace)
        cluster.ok("start client")
        paused_then_on(offset)
        assert "training failed" not in site.log()
        cluster.ok("abort server")
        cluster.stop()
