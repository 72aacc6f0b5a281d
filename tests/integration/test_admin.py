"""Admin commands and who may run them, over the real admin service."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import datetime
from pathlib import Path

import grpc
import pytest

from fladmin import AdminClient, AdminError, CommandReply, load_kit
from flcore.proto.gen import flstack_admin_pb2 as admin_pb2
from flcore.proto.gen import flstack_admin_pb2_grpc as admin_grpc
from flcore.proto.gen import flstack_common_pb2 as common_pb2
from flcore.tls import CHANNEL_OPTIONS, TlsFiles, channel_credentials
from fldev.cluster import ADMIN, DEPUTY, MEMBER, SERVER_READY, Cluster, Daemon
from fldev.poll import wait_until
from flserverd.admins import MAX_LOGINS_PER_ADMIN
from tests.integration.test_training import finished

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]


def fltui(cluster: Cluster, *args: str, user: str = ADMIN) -> subprocess.CompletedProcess[str]:
    """Run the real fltui console script without a screen."""
    return subprocess.run(
        [sys.executable, "-m", "fltui", "--startup", str(cluster.kit(user)), *args],
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )


def admin_stub(startup: Path, target: str) -> tuple[grpc.aio.Channel, admin_grpc.AdminAsyncStub]:
    """A raw admin channel with the certificates of any kit (client or admin)."""
    files = TlsFiles(startup / "rootCA.pem", startup / "client.crt", startup / "client.key")
    channel = grpc.aio.secure_channel(target, channel_credentials(files), options=CHANNEL_OPTIONS)
    return channel, admin_grpc.AdminStub(channel)


def test_member_admin_may_look_but_not_start(cluster: Cluster) -> None:
    cluster.server()
    cluster.client("flclient1")
    (status,) = cluster.admin("check_status client", user=MEMBER)
    assert status.ok
    start, upload = cluster.admin("start server", "upload_folder digits_fedavg", user=MEMBER)
    assert not start.ok and "permission denied" in start.text and "'member'" in start.text
    assert not upload.ok
    result = fltui(cluster, "--cmd", "set_run_number 3", user=MEMBER)
    assert result.returncode == 1
    assert "permission denied" in result.stdout


def test_client_certificate_refused_as_admin(cluster: Cluster) -> None:
    cluster.server()

    async def login() -> grpc.aio.AioRpcError:
        channel, stub = admin_stub(
            cluster.root / "flclient1" / "startup", f"localhost:{cluster.admin_port}"
        )
        try:
            await stub.Login(admin_pb2.AdminLoginRequest(user="flclient1"), timeout=10)
        except grpc.aio.AioRpcError as exc:
            return exc
        finally:
            await channel.close()
        raise AssertionError("a client certificate logged in as an admin")

    error = asyncio.run(login())
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "not an admin certificate" in (error.details() or "")


def test_wrong_user_name_is_refused(cluster: Cluster) -> None:
    cluster.server()
    result = fltui(cluster, "--user", MEMBER, "--cmd", "check_status server")
    assert result.returncode == 2
    assert "does not match the certificate" in result.stderr


def test_certificate_from_another_ca_is_refused(make_cluster: Callable[..., Cluster]) -> None:
    ours = make_cluster()
    server = ours.server()
    # A second project with its own CA, pointing at our server's ports.
    foreign = make_cluster(fed_port=ours.fed_port, admin_port=ours.admin_port)
    intruder = foreign.client("flclient1", wait=False)
    # A configuration error, said once: exit 2 so that systemd does not restart it forever.
    assert intruder.wait(30) == 2
    said = f"the server at localhost:{ours.fed_port} presents a certificate not issued by"
    ours_said = [line for line in intruder.log().splitlines() if " flclientd" in line]
    assert any(said in line for line in ours_said)
    assert not any("CERTIFICATE_VERIFY_FAILED" in line for line in ours_said)
    result = fltui(foreign, "--cmd", "check_status server")
    assert result.returncode == 2
    (said,) = [line for line in result.stderr.splitlines() if line.startswith("fltui:")]
    assert f"the server at localhost:{ours.admin_port} presents a certificate not" in said
    assert "CERTIFICATE_VERIFY_FAILED" not in said
    assert ours.status()["clients"] == []
    assert "joined" not in server.log()


def test_fltui_cmd_output_json_and_exit_codes(cluster: Cluster) -> None:
    cluster.server()
    cluster.client("flclient1")
    result = fltui(cluster, "--cmd", "check_status server", "--cmd", "check_status client")
    assert result.returncode == 0, result.stderr
    blocks = result.stdout.strip().split("\n\n")
    assert blocks[0].startswith("> check_status server\nFL run number has not been set.")
    assert blocks[0].splitlines()[-1].startswith("Done [")
    assert blocks[1].startswith(
        "> check_status client\ninstance:flclient1 : client name: flclient1"
    )

    result = fltui(
        cluster, "--json", "--cmd", "check_status server", "--cmd", "deploy nothing server"
    )
    assert result.returncode == 1
    first, second = (json.loads(line) for line in result.stdout.splitlines())
    assert first["ok"] and first["data"]["run"]["server_status"] == "training not started"
    assert first["data"]["registered"] == 1 and "instance name:flclient1" in first["text"]
    assert not second["ok"] and "set_run_number" in second["text"]

    result = fltui(cluster, "--cmd", "frobnicate")
    assert result.returncode == 1 and "unknown command 'frobnicate'" in result.stdout
    result = fltui(cluster, "--cmd", "shutdown client")
    assert result.returncode == 1 and "needs confirmation: add --yes" in result.stdout


@pytest.mark.parametrize("mode", ["--cmd", "--json", "--shell"])
def test_fltui_stops_quietly_when_the_reader_of_its_output_leaves(
    cluster: Cluster, mode: str
) -> None:
    """``fltui --cmd help --cmd list_runs | head -2`` printed a BrokenPipeError traceback.
    The replies here outgrow a pipe's buffer, so fltui is still writing when the reader
    goes."""
    cluster.server()
    commands = ["help"] * 200
    given = [mode] if mode != "--cmd" else []
    if mode != "--shell":
        given += [arg for line in commands for arg in ("--cmd", line)]
    process = subprocess.Popen(
        [sys.executable, "-m", "fltui", "--startup", str(cluster.kit()), *given],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stdin is not None and process.stdout is not None
    assert process.stderr is not None
    process.stdin.write("".join(f"{line}\n" for line in commands) if mode == "--shell" else "")
    process.stdin.close()
    assert process.stdout.readline()
    process.stdout.close()
    errors = process.stderr.read()
    assert process.wait(timeout=60) == 141
    assert errors == ""


def test_set_run_number_reuse_keeps_logs(cluster: Cluster) -> None:
    cluster.server()
    cluster.client("flclient1")
    cluster.configure("config_fed_client.json", local_epochs=1)
    first = cluster.ok("set_run_number 1")
    assert first.text == "Create a new run folder: run_1"
    again = cluster.ok("set_run_number 1")
    assert again.text.startswith("Reuse the existing run folder: run_1")
    cluster.prepare_run(1, num_rounds=2, min_num_clients=1, wait_after_min_clients=0)
    cluster.ok("start server")
    (refused,) = cluster.admin("set_run_number 2")
    assert not refused.ok and "abort it" in refused.text
    cluster.ok("start client")
    finished(cluster)
    assert cluster.ok("set_run_number 2").text == "Create a new run folder: run_2"
    assert cluster.ok("set_run_number 1").text.startswith("Reuse the existing")
    assert [r["round"] for r in cluster.metrics(1)] == [0, 1, 2]  # kept
    # A finished run is not trained again by accident: that is start server fresh, which
    # replaces its results rather than appending a second copy of every round.
    (again,) = cluster.admin("start server")
    assert not again.ok and "start server fresh" in again.text
    cluster.ok("start server fresh", confirmed=True)
    cluster.ok("start client")
    finished(cluster)
    rounds = [r["round"] for r in cluster.metrics(1)]
    assert rounds == [0, 1, 2]
    for bad in (
        "set_run_number",
        "set_run_number x",
        "set_run_number 0",
        "set_run_number 1 2",
        "set_run_number 99999999999999999999",
    ):
        (outcome,) = cluster.admin(bad)
        assert not outcome.ok and outcome.text.startswith("usage: set_run_number <N>")


def run_history_rows(cluster: Cluster, run_number: int) -> int:
    """Rows the state database holds of a run (its record, rounds, folds, cross-site cells)."""
    counted = 0
    with sqlite3.connect(cluster.root / "server" / "state" / "flserverd.sqlite3") as db:
        for table in ("runs", "round_metrics", "folded", "validation"):
            query = f"SELECT count(*) FROM {table} WHERE run_number=?"  # noqa: S608 (names above)
            counted += db.execute(query, (run_number,)).fetchone()[0]
    return counted


def test_an_old_run_is_deleted_with_its_history_and_a_deletion_cut_short_ends_at_the_start(
    cluster: Cluster,
) -> None:
    """The workspace grew with every run and nothing removed one. The second deletion is cut
    short by a kill after the history went and the folder was renamed aside: the audit has it
    all the same."""
    server = cluster.server(fault="kill:server.delete_run@2")
    cluster.client("flclient1")
    cluster.configure("config_fed_client.json", local_epochs=1)
    cluster.prepare_run(1, num_rounds=1, min_num_clients=1, wait_after_min_clients=0)
    cluster.ok("start server")
    cluster.ok("start client")
    finished(cluster)
    workspace = cluster.root / "server"
    assert run_history_rows(cluster, 1) > 0 and (workspace / "run_1" / "models").is_dir()

    result = fltui(cluster, "--yes", "--cmd", "delete_run 1")
    assert result.returncode == 1
    assert "run 1 is the current run: set another run number first" in result.stdout
    cluster.ok("set_run_number 2")
    result = fltui(
        cluster, "--yes", "--cmd", "delete_run 7", "--cmd", "delete_run x", "--cmd", "delete_run 2"
    )
    assert result.returncode == 1
    assert "there is no run 7 on this server (list_runs lists them)" in result.stdout
    assert "usage: delete_run <N>  (N is a whole number from 1 to" in result.stdout
    assert "run 2 is the current run" in result.stdout
    result = fltui(cluster, "--yes", "--cmd", "delete_run 1", user=MEMBER)
    assert result.returncode == 1 and "permission denied" in result.stdout
    result = fltui(cluster, "--cmd", "delete_run 1")  # a script must say yes
    assert result.returncode == 1
    assert "delete_run cancelled: needs confirmation: add --yes" in result.stdout
    assert "Delete: run 1\nThis deletes:\n  run_1/ (" in result.stdout  # what it would do
    assert "Are you sure" not in result.stdout
    assert (workspace / "run_1").is_dir() and run_history_rows(cluster, 1) > 0

    rows_before = audit_rows(cluster)
    result = fltui(cluster, "--yes", "--cmd", "delete_run 1")
    assert result.returncode == 0, result.stdout
    assert re.search(r"^Deleted run 1 \(\d+\.\d MB\)\.$", result.stdout, re.MULTILINE)
    assert not (workspace / "run_1").exists() and run_history_rows(cluster, 1) == 0
    assert (workspace / "run_2").is_dir() and (workspace / "transfer" / "digits_fedavg").is_dir()
    assert list((workspace / "state" / "deleting").iterdir()) == []
    assert [r["run_number"] for r in cluster.ok("list_runs").data["runs"]] == [2]
    assert audit_since(cluster, rows_before)[0] == (ADMIN, "delete_run 1", True)

    cluster.ok("set_run_number 3")
    rows_before = audit_rows(cluster)
    result = fltui(cluster, "--yes", "--cmd", "delete_run 2")
    assert result.returncode == 2  # the server was killed before it answered
    assert server.wait(30) == -signal.SIGKILL
    # Recorded with the history's deletion, not once it answered.
    assert audit_since(cluster, rows_before) == [(ADMIN, "delete_run 2", True)]
    (aside,) = (workspace / "state" / "deleting").iterdir()
    assert aside.name.startswith("run_2.") and not (workspace / "run_2").exists()
    server.arm("").restart(SERVER_READY)
    assert list((workspace / "state" / "deleting").iterdir()) == []
    assert [r["run_number"] for r in cluster.ok("list_runs").data["runs"]] == [3]
    assert "a deleted run's folder a stop had left" in server.log()


def test_a_site_keeps_the_apps_of_its_newest_runs_only(
    make_cluster: Callable[..., Cluster],
) -> None:
    """Every deploy left a copy of its app at the site for good."""
    cluster = make_cluster(
        clients=("flclient1",), client_local={"flclient1": {"keep_deployed_apps": 1}}
    )
    cluster.server()
    site = cluster.client("flclient1")
    workspace = cluster.root / "flclient1"
    cluster.ok("upload_folder digits_fedavg")
    for number in range(1, 5):
        cluster.ok(f"set_run_number {number}")
        cluster.ok("deploy digits_fedavg client")
    site.wait_log("removed the app of run 2 ")
    assert sorted(p.parent.name for p in workspace.glob("run_*/app_flclient1")) == [
        "run_3",
        "run_4",
    ]
    assert sorted(p.name for p in workspace.glob("run_*")) == [f"run_{n}" for n in range(1, 5)]
    assert [
        line.split(": ", 1)[1] for line in site.log().splitlines() if "removed the" in line
    ] == [
        f"removed the app of run {n} (digits_fedavg): this site keeps the apps of the runs it "
        "uses and of the 1 newest others (keep_deployed_apps)"
        for n in (1, 2)
    ]


def test_a_site_s_start_removes_what_a_crash_left_set_aside_and_the_apps_it_no_longer_keeps(
    make_cluster: Callable[..., Cluster],
) -> None:
    """A site killed while it deleted a retired app kept what it had set aside until the next
    deploy of that run, and one that deployed nothing more kept every app, whatever
    keep_deployed_apps said."""
    cluster = make_cluster(clients=("flclient1",))
    cluster.server()
    site = cluster.client("flclient1")
    workspace = cluster.root / "flclient1"
    cluster.ok("upload_folder digits_fedavg")
    for number in range(1, 4):
        cluster.ok(f"set_run_number {number}")
        cluster.ok("deploy digits_fedavg client")
    site.kill()
    # What a kill in the middle of the removal of run 1's app leaves; another instance's
    # app set aside, and the runs' models, are not this start's to remove.
    aside = workspace / "run_1" / f".app_flclient1.{'5a' * 16}"
    (workspace / "run_1" / "app_flclient1").rename(aside)
    others = [
        workspace / "run_2" / f".app_flclient1_2.{'5a' * 16}",
        workspace / "run_2" / "models_flclient1",
    ]
    for other in others:
        other.mkdir()
    (workspace / "local").mkdir(exist_ok=True)
    (workspace / "local" / "fed_client.json").write_text(json.dumps({"keep_deployed_apps": 1}))
    offset = len(site.log())
    site.start()
    site.wait_log("removed the app of run 2 ", after=offset)
    said = [
        line.split(": ", 1)[1]
        for line in site.log()[offset:].splitlines()
        if re.search("removing run_|removed the app", line)
    ]
    assert said == [
        f"removing run_1/{aside.name}, left by a deploy or a removal of an app that did not finish",
        "removed the app of run 2 (digits_fedavg): this site keeps the apps of the runs it uses "
        "and of the 1 newest others (keep_deployed_apps)",
    ]
    assert sorted(p.relative_to(workspace).as_posix() for p in workspace.glob("run_*/*")) == [
        "run_2/" + others[0].name,
        "run_2/models_flclient1",
        "run_3/app_flclient1",
    ]


def test_abort_then_start_again(cluster: Cluster) -> None:
    cluster.server()
    cluster.client("flclient1")
    cluster.client("flclient2")
    cluster.prepare_run(1, num_rounds=30, min_num_clients=2, wait_after_min_clients=5)
    cluster.ok("start server")
    cluster.ok("start client")
    wait_until(lambda: cluster.run_state()["history"], 120, "a first round")
    assert cluster.worker_pids()
    aborted = cluster.ok("abort client")
    assert aborted.text.splitlines() == [
        "instance:flclient1 : Aborting the client...",
        "instance:flclient2 : Aborting the client...",
    ]
    wait_until(lambda: not cluster.worker_pids(), 10, "training processes to be gone")
    statuses = cluster.ok("check_status client").data["clients"]
    assert {s["status"] for s in statuses.values()} == {"training stopped"}
    assert cluster.ok("abort server").text.startswith(
        "Server training aborted: run 1 stopped at round"
    )
    (again,) = cluster.admin("abort server")
    assert not again.ok and again.text == "the server is not training"
    # The reason names the admin who aborted (issue 10).
    assert f"training stopped (aborted by {ADMIN})" in cluster.ok("check_status server").text

    cluster.configure("config_fed_server.json", num_rounds=2)
    cluster.ok("upload_folder digits_fedavg")
    cluster.ok("deploy digits_fedavg server")
    # Starting over is explicit; the earlier start's metrics go with it (no duplicate rows).
    (asked,) = cluster.admin("start server fresh")
    assert not asked.ok and "Starting fresh deletes its models" in asked.confirm_prompt
    question = asked.data["confirm"]  # the console draws the server's question
    assert question["title"] == "Start fresh: run 1" and question["verb"] == "Start fresh"
    cluster.ok("start server fresh", confirmed=True)
    cluster.ok("start client")
    assert finished(cluster)["reason"] == "finished"
    assert [r["round"] for r in cluster.metrics()] == [0, 1, 2]


def test_a_shutdown_confirmed_after_another_site_joined_is_asked_again(cluster: Cluster) -> None:
    """The console's question said "all clients (1)"; a site that registered while it was
    open would have been shut down by the answer to it. The admin client names the
    question it answers, and the server asks again."""
    cluster.server()
    one = cluster.client("flclient1")
    startup = cluster.kit(ADMIN)

    async def go() -> tuple[CommandReply, CommandReply, bool, CommandReply, Daemon]:
        console = AdminClient(startup, load_kit(startup), ADMIN)
        await console.login()
        try:
            asked = await console.execute("shutdown client")
            two = cluster.client("flclient2")
            again = await console.execute("shutdown client", confirmed=True)
            # Judged before the third command, which does shut both down.
            both_alive = one.alive() and two.alive()
            return (
                asked,
                again,
                both_alive,
                await console.execute("shutdown client", confirmed=True),
                two,
            )
        finally:
            await console.close()

    asked, again, both_alive, done, two = asyncio.run(go())
    assert asked.data["confirm"]["title"] == "Shut down: all clients (1)"
    assert not again.ok and both_alive
    assert again.data["confirm"]["title"] == (
        "Shut down: all clients (2) (changed since you were asked)"
    )
    assert "  flclient2: training not started" in again.confirm_prompt.splitlines()
    assert done.ok and "instance:flclient2 : Shutdown the client..." in done.text
    assert one.wait(20) == 0 and two.wait(20) == 0


def test_shutdown_one_client_then_all_then_server(cluster: Cluster) -> None:
    server = cluster.server()
    one = cluster.client("flclient1")
    two = cluster.client("flclient2")
    (asked,) = cluster.admin("shutdown client flclient1")
    # The server's question names what it ends (it was the bare question before).
    assert not asked.ok and asked.confirm_prompt.splitlines() == [
        "Shut down: flclient1",
        "This shuts down:",
        "  flclient1: training not started",
        "  Their client daemons exit; each site must start its own again.",
        "Are you sure (Y/N):",
    ]
    assert one.alive()
    done = cluster.ok("shutdown client flclient1", confirmed=True)
    assert done.text.strip() == "instance:flclient1 : Shutdown the client..."
    assert one.wait(20) == 0
    wait_until(lambda: len(cluster.status()["clients"]) == 1, 10, "flclient1 to be removed")
    (warned,) = cluster.admin("shutdown server")
    assert "1 client(s) still registered (flclient2)" in warned.confirm_prompt
    result = fltui(cluster, "--yes", "--cmd", "shutdown client")
    assert result.returncode == 0, result.stdout
    assert "instance:flclient2 : Shutdown the client..." in result.stdout
    assert two.wait(20) == 0
    result = fltui(cluster, "--yes", "--cmd", "shutdown server")
    assert result.returncode == 0 and "Shutting down the server..." in result.stdout
    assert server.wait(30) == 0


def test_clients_then_server_shut_down_back_to_back_leave_no_sessions(cluster: Cluster) -> None:
    # A script's "shutdown client" then "shutdown server" at once: the server waits for the
    # clients' logouts, so after a restart it neither lists nor waits for them.
    server = cluster.server()
    one, two = cluster.client("flclient1"), cluster.client("flclient2")
    result = fltui(cluster, "--yes", "--cmd", "shutdown client", "--cmd", "shutdown server")
    assert result.returncode == 0, result.stdout
    assert server.wait(30) == 0 and one.wait(20) == 0 and two.wait(20) == 0
    assert "logged out" in server.log() and "shutting down before" not in server.log()
    server.restart(SERVER_READY)
    assert cluster.status()["clients"] == []


def test_upload_validation(cluster: Cluster) -> None:
    cluster.server()
    transfer = cluster.root / ADMIN / "transfer"
    (missing,) = cluster.admin("upload_folder nope")
    assert not missing.ok and "put the app in your transfer/ folder" in missing.text

    broken = transfer / "broken"
    (broken / "config").mkdir(parents=True)
    (broken / "config" / "config_train.json").write_text("{not json")
    (broken / "config" / "config_fed_server.json").write_text("{}")
    (outcome,) = cluster.admin("upload_folder broken")
    assert not outcome.ok and "config_train.json: not valid JSON" in outcome.text

    linked = transfer / "linked"
    (linked / "config").mkdir(parents=True)
    (linked / "config" / "secret").symlink_to("/etc/passwd")
    (outcome,) = cluster.admin("upload_folder linked")
    assert not outcome.ok and "symbolic link" in outcome.text

    app = transfer / "digits_fedavg"
    (app / "models").mkdir()
    (app / "models" / "big.bin").write_bytes(b"x" * 1000)
    ok = cluster.ok("upload_folder digits_fedavg")
    server_copy = cluster.root / "server" / "transfer" / "digits_fedavg"
    assert ok.text.startswith(f"Created folder {server_copy}")
    assert sorted(p.name for p in server_copy.iterdir()) == ["config", "resources"]

    async def raw_upload(paths: list[str]) -> admin_pb2.CommandReply:
        channel, stub = admin_stub(cluster.kit(), f"localhost:{cluster.admin_port}")
        try:
            login = await stub.Login(admin_pb2.AdminLoginRequest(user=ADMIN), timeout=10)

            async def messages() -> AsyncIterator[admin_pb2.UploadMessage]:
                header = admin_pb2.UploadHeader(
                    token=login.token, app="evil", total_bytes=4, file_count=1
                )
                yield admin_pb2.UploadMessage(header=header)
                for path in paths:
                    chunk = common_pb2.FileChunk(path=path, offset=0, data=b"boom", eof=True)
                    yield admin_pb2.UploadMessage(chunk=chunk)

            return await stub.UploadFolder(messages(), timeout=10)
        finally:
            await channel.close()

    for path, problem in (
        ("../config/escape.json", "'..' and '.' are not allowed"),
        ("/etc/cron.d/evil", "absolute path"),
        ("config/../../x", "'..' and '.' are not allowed"),
    ):
        reply = asyncio.run(raw_upload([path]))
        assert not reply.ok and problem in reply.text, reply.text
    assert not (cluster.root / "server" / "transfer" / "evil").exists()
    assert not (cluster.root / "server" / "config").exists()
    leftovers = [p.name for p in (cluster.root / "server" / "transfer").iterdir()]
    assert leftovers == ["digits_fedavg"]


def test_a_file_that_cannot_be_read_fails_the_upload_clearly(
    cluster: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Root reads any file whatever its mode, so the read error is injected where the admin
    # client reads the app; the server at the other end is the real one.
    def unreadable(folder: Path) -> Iterator[tuple[str, int, bytes, bool]]:
        yield "config/config_train.json", 0, b"{}", True
        raise PermissionError(13, "Permission denied", "config/config_fed_client.json")

    cluster.server()
    monkeypatch.setattr("fladmin.client.iter_chunks", unreadable)
    (outcome,) = cluster.admin("upload_folder digits_fedavg")
    assert not outcome.ok
    assert outcome.text == (
        "upload failed: [Errno 13] Permission denied: 'config/config_fed_client.json'"
    )
    assert not (cluster.root / "server" / "transfer" / "digits_fedavg").exists()
    monkeypatch.undo()
    assert cluster.ok("upload_folder digits_fedavg").text.startswith("Created folder")


def test_upload_size_limit(cluster: Cluster) -> None:
    local = cluster.root / "server" / "local"
    local.mkdir(exist_ok=True)  # extracting a kit makes it
    (local / "fed_server.json").write_text(json.dumps({"max_upload_mb": 1}))
    cluster.server()
    app = cluster.root / ADMIN / "transfer" / "digits_fedavg"
    (app / "resources" / "weights.bin").write_bytes(os.urandom(2 * 1024 * 1024))
    (outcome,) = cluster.admin("upload_folder digits_fedavg")
    assert not outcome.ok and "over the server's limit of 1 MiB" in outcome.text


# --------------------------------------------------------------------------- two admins at once


def at_once(
    cluster: Cluster, first: str, second: str, confirmed: bool = False
) -> list[CommandReply]:
    """``first`` from admin@lead.org and ``second`` from deputy@lead.org, sent together by two
    real admin clients, each logged in beforehand.

    A command that finds the server gone (it stopped for the other one) comes back as the
    refusal fladmin gives a person, stamped when it came."""

    async def send(admin: AdminClient, line: str) -> CommandReply:
        try:
            return await admin.execute(line, confirmed=confirmed)
        except AdminError as exc:
            now = datetime.now().strftime("%Y-%m-%d %H:%M:%S.%f")
            return CommandReply(line, False, str(exc), finished_at=now)

    async def go() -> list[CommandReply]:
        admins = []
        for user in (ADMIN, DEPUTY):
            startup = cluster.kit(user)
            admin = AdminClient(startup, load_kit(startup), user)
            admin.timeout = 30
            await admin.login()
            admins.append(admin)
        try:
            return list(await asyncio.gather(send(admins[0], first), send(admins[1], second)))
        finally:
            for admin in admins:
                await admin.close()

    return asyncio.run(go())


def audit_since(cluster: Cluster, rows_before: int) -> list[tuple[str, str, bool]]:
    with sqlite3.connect(cluster.root / "server" / "state" / "flserverd.sqlite3") as db:
        rows = db.execute("SELECT user, line, ok FROM audit ORDER BY id").fetchall()
    return [(user, line, bool(ok)) for user, line, ok in rows[rows_before:]]


def audit_rows(cluster: Cluster) -> int:
    with sqlite3.connect(cluster.root / "server" / "state" / "flserverd.sqlite3") as db:
        (count,) = db.execute("SELECT count(*) FROM audit").fetchone()
    return int(count)


def assert_audited_in_order(
    cluster: Cluster, before: int, outcomes: list[CommandReply], unheard: int = -1
) -> None:
    """The commands are in the audit trail, in the order the server answered them; the one at
    index ``unheard`` never reached the server."""
    answered = sorted(
        (
            pair
            for i, pair in enumerate(zip((ADMIN, DEPUTY), outcomes, strict=True))
            if i != unheard
        ),
        key=lambda p: p[1].finished_at,
    )
    expected = [(user, o.line, o.ok) for user, o in answered]
    lines = {o.line for o in outcomes}
    assert [row for row in audit_since(cluster, before) if row[1] in lines] == expected


def test_two_admins_at_once_get_definite_answers_and_leave_a_consistent_state(
    cluster: Cluster,
) -> None:
    server = cluster.server()
    cluster.prepare_run(1, deploy_clients=False)

    # start vs abort: whichever came first, the answers and the state agree.
    before = audit_rows(cluster)
    start, abort = at_once(cluster, "start server", "abort server")
    status = wait_until(
        lambda: (s := cluster.run_state()["server_status"]) != "training starting" and s,
        60,
        "the start to settle",
    )
    assert_audited_in_order(cluster, before, [start, abort])
    if not abort.ok:  # abort came first: nothing was training yet
        assert abort.text == "the server is not training"
        assert start.ok and status == "training started"
        cluster.ok("abort server")
    elif abort.text == "Server training start aborted.":
        # start server replies before the initial model is built: the abort stops the build.
        assert start.ok and start.text == "Server training is starting...."
        assert status == "training not started"
    else:
        assert abort.text.startswith("Server training aborted: run 1 stopped at round 0")
        assert start.ok and status == "training stopped"

    # deploy vs set_run_number: the deploy goes to the run that was current when it ran.
    before = audit_rows(cluster)
    deploy, renumber = at_once(cluster, "deploy digits_fedavg server", "set_run_number 2")
    assert deploy.ok and renumber.ok, (deploy.text, renumber.text)
    target = deploy.data["run_number"]
    where = f"run_{target}/app_server"
    assert deploy.text == f"digits_fedavg has been deployed to the server ({where})."
    assert (cluster.root / "server" / f"run_{target}" / "app_server" / "config").is_dir()
    assert cluster.run_state()["run_number"] == 2
    deploy_first = deploy.finished_at < renumber.finished_at
    assert target == (1 if deploy_first else 2)
    assert_audited_in_order(cluster, before, [deploy, renumber])

    # two shutdowns: one stops the server, once and cleanly. The other either reached the server
    # while the first ran, and is told so, or came after the server stopped listening, and is
    # told it cannot connect: which of the two depends on when gRPC delivered it.
    before = audit_rows(cluster)
    one, two = at_once(cluster, "shutdown server", "shutdown server", confirmed=True)
    first, last = sorted([one, two], key=lambda o: o.finished_at)
    assert first.ok and first.text == "Shutting down the server..."
    assert not last.ok
    gone = last.text.startswith(f"cannot connect to the server at localhost:{cluster.admin_port}")
    assert gone or last.text == "the server is shutting down", last.text
    assert server.wait(30) == 0
    assert "ERROR" not in server.log()
    assert_audited_in_order(
        cluster, before, [one, two], unheard=[one, two].index(last) if gone else -1
    )


def test_one_admin_may_follow_a_bounded_number_of_feeds_at_once(cluster: Cluster) -> None:
    """Each feed holds a subscription's queue on the server: a script that opened them in a
    loop grew it without bound. The ninth is refused with the reason; another admin's is not."""
    cluster.server()

    async def scenario() -> None:
        clients = [AdminClient(cluster.kit(), load_kit(cluster.kit()), ADMIN) for _ in range(9)]
        other = AdminClient(cluster.kit(MEMBER), load_kit(cluster.kit(MEMBER)), MEMBER)
        feeds: list[asyncio.Task[object]] = []
        try:
            for client in [*clients, other]:
                await client.login()
            for client in clients[:8]:
                events = client.events()
                await anext(events)  # the snapshot: the feed is open
                feeds.append(asyncio.ensure_future(anext(events)))
            with pytest.raises(AdminError, match="follows the live feed in 8 consoles already"):
                await anext(clients[8].events())
            assert await anext(other.events())  # another admin is not held up
        finally:
            for waiting in feeds:
                waiting.cancel()
            for client in [*clients, other]:
                await client.close()

    asyncio.run(scenario())


def test_a_console_whose_token_the_server_forgot_logs_in_again(cluster: Cluster) -> None:
    """A console kept open while its admin's kit logged in 64 more times (a polling script)
    lost its token to the oldest-first pruning: every command then failed with "login
    refused" until it quit, though the kit was fine. It logs in again and the command runs
    once; a stranger's token is still refused."""
    cluster.server()
    startup = cluster.kit(ADMIN)

    async def go() -> tuple[CommandReply, CommandReply, str]:
        console = AdminClient(startup, load_kit(startup), ADMIN)
        await console.login()
        forgotten = console.token
        script = AdminClient(startup, load_kit(startup), ADMIN)
        for _ in range(MAX_LOGINS_PER_ADMIN):  # each waits for the server's pace as it must
            await script.login()
        await script.close()
        before = audit_rows(cluster)
        try:
            status = await console.execute("set_run_number 7")
            assert console.token != forgotten
            channel, stub = admin_stub(startup, load_kit(startup).admin_target)
            try:
                await stub.Execute(admin_pb2.CommandRequest(token=forgotten, line="check_status"))
                refused = "accepted"
            except grpc.aio.AioRpcError as exc:
                refused = exc.details() or ""
            finally:
                await channel.close()
            audited = audit_since(cluster, before)
            assert audited == [(ADMIN, "set_run_number 7", True)]  # once, not twice
            return status, await console.execute("check_status server"), refused
        finally:
            await console.close()

    status, again, refused = asyncio.run(go())
    assert status.ok and "7" in status.text
    assert again.ok
    assert refused == "not logged in: log in again"
