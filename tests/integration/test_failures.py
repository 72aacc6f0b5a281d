"""What goes wrong at sites and on the wire reaches admins, and never the model."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from fladmin import AdminClient, load_kit
from flclientd.connection import Connection
from flcore.federation import MachineInfo, SubmitOutcome, Verdict
from flcore.proto.gen import flstack_federation_pb2 as fed_pb2
from flcore.startup import load_client
from flcore.tensorfile import TensorFile
from flcore.tls import TlsFiles
from flcore.wire import manifest_to_proto, tensor_chunks
from fldev.cluster import ADMIN, SERVER_READY, Cluster
from fldev.poll import wait_until
from tests.integration.test_training import finished, started

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]


def test_training_error_reaches_the_server_with_its_traceback(cluster: Cluster) -> None:
    server = cluster.server()
    cluster.client("flclient1")
    cluster.client("flclient2")
    transfer = cluster.root / ADMIN / "transfer"
    shutil.copytree(transfer / "digits_fedavg", transfer / "digits_broken")
    train = transfer / "digits_broken" / "config" / "config_train.json"
    config = json.loads(train.read_text())
    config["optimizer"] = {"path": "torch.optim.SGD", "args": {"lr": -1.0}}
    train.write_text(json.dumps(config))
    cluster.prepare_run(1, num_rounds=2, min_num_clients=1, wait_after_min_clients=0)
    cluster.ok("upload_folder digits_broken")
    cluster.ok("deploy digits_broken client flclient1")
    cluster.ok("start server")
    # flclient2 starts once flclient1 has failed: started together, flclient2 could train both
    # rounds while flclient1 was still importing torch, and the run ended before it failed
    cluster.ok("start client flclient1")

    def failed() -> dict[str, Any] | None:
        row = cluster.ok("check_status client flclient1").data["clients"]["flclient1"]
        return row if row["status"] == "training failed" else None

    row = wait_until(failed, 60, "flclient1 to fail")
    cluster.ok("start client flclient2")
    assert "Invalid learning rate" in row["error"]
    assert "Traceback" in row["traceback"] and "lr" in row["traceback"]
    text = cluster.ok("check_status client flclient1").text
    assert "status: training failed" in text and "error: " in text
    finished(cluster)
    # once the run has stopped, how it ended (failed sites included) is on the status line
    text = cluster.ok("check_status server").text
    [status] = [line for line in text.splitlines() if line.startswith("FL server status:")]
    assert "(finished · failed sites: flclient1" in status, text
    assert "run 1 ended (finished); failed sites: flclient1" in server.log()
    assert all(r["clients"] == ["flclient2"] for r in cluster.metrics())


def test_client_logs_reach_the_console_unless_switched_off(cluster: Cluster) -> None:
    local = cluster.root / "flclient2" / "local"
    local.mkdir(exist_ok=True)  # extracting a kit makes it
    (local / "fed_client.json").write_text(json.dumps({"forward_logs": False}))
    cluster.server()
    cluster.client("flclient1")
    quiet = cluster.client("flclient2")
    cluster.prepare_run(1, num_rounds=2, min_num_clients=2, wait_after_min_clients=30)
    cluster.ok("start server")
    cluster.ok("start client")
    finished(cluster)
    quiet.wait_log("training process ready")

    async def sources() -> set[str]:
        startup = cluster.kit()
        client = AdminClient(startup, load_kit(startup), ADMIN)
        await client.login()
        try:
            async for event in client.events():
                return {line.source for line in event.snapshot.logs}
        finally:
            await client.close()
        return set()

    seen = asyncio.run(sources())
    assert {"server", "flclient1"} <= seen
    assert "flclient2" not in seen


def test_tampered_kit_is_refused(cluster: Cluster) -> None:
    config = cluster.root / "flclient1" / "startup" / "fed_client.json"
    values = json.loads(config.read_text())
    values["retry_window"] = 999
    config.write_text(json.dumps(values))
    result = subprocess.run(
        [sys.executable, "-m", "flclientd", "--workspace", str(cluster.root / "flclient1")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "fed_client.json" in result.stderr and "re-extract the kit" in result.stderr


def test_a_server_workspace_refuses_another_project_s_kit(
    make_cluster: Callable[..., Cluster],
) -> None:
    """A workspace copied for another project, its startup/ replaced by that project's kit
    and its revocation list deleted, would start as the other project with this one's runs
    and registrations; the state names its project, so the start is refused."""
    ours = make_cluster()
    first = ours.server()
    ours.client("flclient1")
    ours.ok("set_run_number 1")
    first.signal(signal.SIGTERM)
    assert first.wait() == 0
    record = json.loads((ours.root / "server" / "state" / "project.json").read_text())
    assert record["name"] == "itest" and len(record["ca_sha256"]) == 64
    other = make_cluster(fed_port=ours.fed_port, admin_port=ours.admin_port)
    shutil.rmtree(ours.root / "server" / "startup")
    shutil.copytree(other.root / "server" / "startup", ours.root / "server" / "startup")
    (ours.root / "server" / "state" / "crl.pem").unlink(missing_ok=True)
    refused = subprocess.run(
        [sys.executable, "-m", "flserverd", "--workspace", str(ours.root / "server")],
        capture_output=True,
        text=True,
        timeout=60,
        env=ours.env(),
    )
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert "this workspace's state belongs to project itest (CA fingerprint " in refused.stderr
    assert "but its startup kit is of project itest (CA fingerprint " in refused.stderr
    # A state from before the record adopts the kit it starts with, and then keeps to it.
    (ours.root / "server" / "state" / "project.json").unlink()
    offset = first.restart(SERVER_READY)
    assert "records that this state belongs to project itest" in first.log()[offset:]
    assert other.ok("check_status server").data["run"]["run_number"] == 1


def test_server_tells_systemd_when_ready(cluster: Cluster, tmp_path: Path) -> None:
    address = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(address))
    sock.settimeout(30)
    os.environ["NOTIFY_SOCKET"] = str(address)
    try:
        env = cluster.env()
    finally:
        del os.environ["NOTIFY_SOCKET"]
    env["NOTIFY_SOCKET"] = str(address)
    process = subprocess.Popen(
        [sys.executable, "-m", "flserverd", "--workspace", str(cluster.root / "server")],
        env=env,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        message = sock.recv(4096).decode()
        assert "READY=1" in message.splitlines()
        assert cluster.status()["clients"] == []
        process.terminate()
        assert "STOPPING=1" in sock.recv(4096).decode()
        assert process.wait(30) == 0
    finally:
        process.kill()
        sock.close()


def test_bad_updates_are_rejected_and_never_aggregated(cluster: Cluster, tmp_path: Path) -> None:
    cluster.server()
    cluster.prepare_run(
        1, deploy_clients=False, num_rounds=3, min_num_clients=1, wait_after_min_clients=0
    )
    cluster.ok("start server")
    started(cluster)  # this test is the site: it fetches round 0 itself
    workspace = cluster.root / "flclient1"
    startup = load_client(workspace)
    files = TlsFiles.named_by(startup, workspace / "startup")

    async def scenario() -> list[tuple[SubmitOutcome, str]]:
        conn = Connection(startup, files)
        try:
            await conn.login("", MachineInfo(device="cpu"))
            glob = tmp_path / "global.safetensors"
            await conn.get_model(1, 0, glob)
            weights = load_file(glob)
            names = sorted(weights)
            outcomes: list[tuple[SubmitOutcome, str]] = []

            async def submit(label: str, tensors: dict[str, np.ndarray], samples: int = 10) -> None:
                path = tmp_path / f"{label}.safetensors"
                save_file(tensors, path)
                before = conn.traffic.sent["update"]
                verdict = await conn.submit_model(1, 0, path, samples, {"val_accuracy": 0.5})
                outcomes.append((verdict.outcome, verdict.message))
                sent[label] = conn.traffic.sent["update"] - before

            wrong_shape = dict(weights)
            wrong_shape[names[0]] = np.zeros((3, 3), dtype=np.float32)
            await submit("shape", wrong_shape)
            wrong_dtype = {k: v.astype(np.float64) for k, v in weights.items()}
            await submit("dtype", wrong_dtype)
            missing = {k: v for k, v in weights.items() if k != names[-1]}
            await submit("missing", missing)
            poisoned = {k: v.copy() for k, v in weights.items()}
            big = max(names, key=lambda n: weights[n].size)
            poisoned[big].reshape(-1)[-1] = np.nan
            await submit("nan", poisoned)
            await submit("nosamples", weights, samples=0)
            good = {k: (v + 1).astype(v.dtype) for k, v in weights.items()}
            await submit("good", good)
            await submit("again", good)
            return outcomes
        finally:
            await conn.close()

    sent: dict[str, int] = {}
    outcomes = asyncio.run(scenario())
    results = [result for result, _ in outcomes]
    # Refused from the header, before a byte of the model moved; a NaN only once it arrived.
    assert sent["nosamples"] == sent["shape"] == 0 and sent["nan"] > 0, sent
    # The resend is counted once either way: "duplicate" while round 0 is being committed,
    # "late" once the server has moved on to round 1.
    assert results[:6] == ["rejected"] * 5 + ["accepted"], outcomes
    assert results[6] in ("duplicate", "late"), outcomes
    assert "has shape [3, 3]" in outcomes[0][1]
    assert "has dtype F64, expected F32" in outcomes[1][1]
    assert "missing tensor" in outcomes[2][1]
    assert "NaN or infinite" in outcomes[3][1]
    assert "no training samples" in outcomes[4][1]
    wait_until(lambda: cluster.metrics(), 10, "round 0 to aggregate")
    aggregated = load_file(cluster.root / "server" / "run_1" / "models" / "round_1.safetensors")
    original = load_file(tmp_path / "global.safetensors")
    assert aggregated.keys() == original.keys()
    for name, values in aggregated.items():
        np.testing.assert_allclose(values, original[name] + 1, rtol=1e-6)
    cluster.ok("abort server")


def test_unknown_enum_values_are_refused_not_read_as_defaults(
    cluster: Cluster, tmp_path: Path
) -> None:
    """An upload of kind 99 was once folded as a training update (hostile run, issue 14)."""
    server = cluster.server()
    cluster.prepare_run(
        1, deploy_clients=False, num_rounds=3, min_num_clients=1, wait_after_min_clients=0
    )
    cluster.ok("start server")
    started(cluster)  # this test is the site: it fetches round 0 itself
    workspace = cluster.root / "flclient1"
    startup = load_client(workspace)
    files = TlsFiles.named_by(startup, workspace / "startup")

    async def scenario() -> tuple[fed_pb2.SubmitReply, str, fed_pb2.SubmitReply, Verdict]:
        conn = Connection(startup, files)
        try:
            await conn.login("", MachineInfo(device="cpu"))
            model = tmp_path / "global.safetensors"
            manifest = manifest_to_proto((await conn.get_model(1, 0, model)).manifest)

            async def upload(
                kind: fed_pb2.UploadKind.ValueType,
            ) -> AsyncIterator[fed_pb2.SubmitModelMessage]:
                header = fed_pb2.SubmitHeader(
                    token=conn.token,
                    run_number=1,
                    round=0,
                    kind=kind,
                    num_samples=10,
                    manifest=manifest,
                )
                yield fed_pb2.SubmitModelMessage(header=header)
                for chunk in tensor_chunks(TensorFile(model)):
                    yield fed_pb2.SubmitModelMessage(chunk=chunk)

            odd_upload = await conn.stub.SubmitModel(upload(fed_pb2.UploadKind.ValueType(99)))
            request = fed_pb2.ModelRequest(
                token=conn.token, run_number=1, round=0, kind=fed_pb2.ModelKind.ValueType(99)
            )
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                async for _ in conn.stub.GetModel(request):
                    pass
            report = fed_pb2.MetricsReport(
                token=conn.token,
                run_number=1,
                round=3,
                kind=fed_pb2.MetricsKind.ValueType(99),
                model_owner="global",
            )
            odd_report = await conn.stub.SubmitMetrics(report)
            # The server carries on: a proper update of the same round is still welcome.
            verdict = await conn.submit_model(1, 0, model, 10, {})
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            return odd_upload, refused.value.details() or "", odd_report, verdict
        finally:
            await conn.close()

    odd_upload, refused, odd_report, verdict = asyncio.run(scenario())
    assert odd_upload.result == fed_pb2.SUBMIT_RESULT_REJECTED
    assert "unknown upload kind 99" in odd_upload.message
    assert "unknown model kind 99" in refused
    assert odd_report.result == fed_pb2.SUBMIT_RESULT_REJECTED
    assert "unknown metrics kind 99" in odd_report.message
    assert verdict.outcome == "accepted", verdict
    rows = wait_until(cluster.metrics, 30, "round 0 to aggregate")
    assert rows[0]["clients"] == ["flclient1"] and rows[0]["samples"] == 10
    assert "upload from flclient1 rejected: unknown upload kind 99" in server.log()
    cluster.ok("abort server")
