"""The wire cases of the hostile corpus, sent to real daemons over mutual TLS.

Each is refused with a clear reason; the daemons stay alive, the app that
was uploaded before keeps its bytes, and a run under way finishes with
every honest update.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import grpc
import pytest

from fladmin import AdminClient, load_kit
from flclientd.agent import Agent, Refused
from flclientd.connection import Connection
from flclientd.crossval import CrossSiteValidation
from flclientd.device import DeviceInfo
from flclientd.runcontext import RunContext
from flclientd.runner import TrainingProcess, WorkerFailed
from flclientd.sitestate import SiteStore
from flclientd.uplink import Uplink
from flcore.appconfig import ClientAppConfig
from flcore.federation import GLOBAL_OWNER, MachineInfo, SubmitOutcome, TaskKind, TaskOffer
from flcore.folders import iter_chunks
from flcore.identity import instance_name, is_instance_of
from flcore.proto.gen import flstack_admin_pb2 as admin_pb2
from flcore.proto.gen import flstack_common_pb2 as common_pb2
from flcore.proto.gen import flstack_federation_pb2 as fed_pb2
from flcore.startup import load_client, load_server
from flcore.status import NOT_STARTED, STARTED, ClientStatus
from flcore.tensorfile import Manifest, TensorFile, TensorSpec
from flcore.tls import TlsFiles, server_credentials
from flcore.wire import WireError, manifest_to_proto
from fldev.cluster import ADMIN, Cluster
from fldev.poll import wait_until
from flserverd.throttle import REPORT_BURST
from tests.hostile.payloads import (
    CLASS_NAMING,
    HOSTILE_PATHS,
    class_naming_json,
    deep_json,
    huge_manifest,
    pickle_that_runs_code,
    sparse_file,
    zip_bomb,
)
from tests.integration.test_training import finished, start_failure
from tests.integration.test_upload_turns import update_header

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

FEDERATION = fed_pb2.DESCRIPTOR.services_by_name["Federation"].full_name

EXPECTED = {
    "parent": "'..' and '.' are not allowed",
    "dotdot_first": "'..' and '.' are not allowed",
    "absolute": "absolute path",
    "absolute_double": "absolute path",
    "nul": "control characters",
    "newline": "control characters",
    "escape": "control characters",
    "delete": "control characters",
    "backslash": "use '/' between folders",
    "name_300": "303 bytes long, and file systems allow at most 255",
    "deep_5000": "5,002 levels deep",
    "bytecode": "compiled Python (__pycache__) is not accepted",
}


def raw_uploads(
    cluster: Cluster, uploads: list[list[tuple[str, bytes]]]
) -> list[admin_pb2.CommandReply]:
    """Send uploads of ``digits_fedavg`` file by file, as a hostile admin tool would (the
    real admin client refuses these names before sending)."""

    async def go() -> list[admin_pb2.CommandReply]:
        startup = cluster.kit()
        client = AdminClient(startup, load_kit(startup), ADMIN)
        await client.login()
        replies = []
        try:
            for files in uploads:

                async def messages(
                    files: list[tuple[str, bytes]] = files,
                ) -> AsyncIterator[admin_pb2.UploadMessage]:
                    total = sum(len(data) for _, data in files)
                    header = admin_pb2.UploadHeader(
                        token=client.token, app="digits_fedavg", total_bytes=total
                    )
                    yield admin_pb2.UploadMessage(header=header)
                    for path, data in files:
                        chunk = common_pb2.FileChunk(path=path, offset=0, data=data, eof=True)
                        yield admin_pb2.UploadMessage(chunk=chunk)

                replies.append(await client._stub.UploadFolder(messages(), timeout=60))
        finally:
            await client.close()
        return replies

    return asyncio.run(go())


def tree(folder: Path) -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_hostile_uploads_are_refused_and_the_uploaded_app_keeps_its_bytes(
    cluster: Cluster,
) -> None:
    server = cluster.server()
    cluster.ok("upload_folder digits_fedavg")
    stored = cluster.root / "server" / "transfer" / "digits_fedavg"
    before = tree(stored)
    config = {
        rel: data for rel, data in before.items() if rel.startswith("config/")
    }  # a valid app around each hostile file
    train = json.loads(before["config/config_train.json"])
    cases = {
        **{case: [(path, b"x")] for case, path in HOSTILE_PATHS.items()},
        "deep json": [("config/config_train.json", deep_json().encode())],
        "class naming": [
            ("config/config_train.json", json.dumps({**train, **CLASS_NAMING}).encode())
        ],
        "pickle as config": [
            ("config/config_train.json", pickle_that_runs_code(cluster.root / "pwned"))
        ],
    }
    expected = {
        **EXPECTED,
        "deep json": "config/config_train.json: nested more than 32 levels deep",
        "class naming": "config/config_train.json: unknown key '__class__'",
        "pickle as config": "config/config_train.json: not valid JSON",
    }
    names = sorted(cases)
    replies = raw_uploads(
        cluster,
        [
            [*((rel, data) for rel, data in config.items() if rel not in dict(cases[n])), *cases[n]]
            for n in names
        ],
    )
    for name, reply in zip(names, replies, strict=True):
        assert not reply.ok, name
        assert reply.text.startswith("upload refused: "), (name, reply.text)
        assert expected[name] in reply.text, (name, reply.text)
        assert (
            len(reply.text) < 400 and "Error" not in reply.text and "Unexpected" not in reply.text
        )
    assert server.alive()
    assert tree(stored) == before
    assert not list((cluster.root / "server" / "transfer").glob(".upload-*"))
    assert not list(cluster.root.rglob("escaped*")) and not (cluster.root / "pwned").exists()
    assert cluster.ok("check_status server").ok


def test_an_admin_upload_of_odd_names_is_refused_before_sending(cluster: Cluster) -> None:
    """The admin's side checks the same limits, so the server never sees the upload."""
    server = cluster.server()
    app = cluster.add_app("deep", cluster.root / ADMIN / "transfer" / "digits_fedavg")
    deep = app / "resources"
    for _ in range(40):
        deep = deep / "d"
    deep.mkdir(parents=True)
    (deep / "x.py").write_text("")
    (refused,) = cluster.admin("upload_folder deep")
    assert not refused.ok
    assert refused.text.startswith("upload refused: path 'resources/d/d/")
    assert "app paths may be at most 32" in refused.text
    assert "upload_folder deep" not in server.log()  # nothing reached the server


def test_a_command_line_with_a_nul_or_a_stray_byte_is_refused_before_sending(
    cluster: Cluster,
) -> None:
    """A script's non-UTF-8 byte (a lone surrogate under a C locale) or a NUL once escaped
    `fltui --cmd` and `--shell` as a UnicodeEncodeError or a ValueError traceback."""
    startup = cluster.root / ADMIN / "startup"

    async def scenario() -> list[tuple[bool, str, str]]:
        client = AdminClient(startup, load_kit(startup), "admin@lead.org")
        try:
            lines = ("check_status \udcff", "load_crl /tmp/a\x00b", "show_run 1\x00")
            replies = [await client.execute(line) for line in lines]
        finally:
            await client.close()
        return [(reply.ok, reply.line, reply.text) for reply in replies]

    for ok, line, text in asyncio.run(scenario()):
        assert not ok and text == "a command must be UTF-8 text without NUL characters"
        line.encode("utf-8")  # what is echoed can be printed
        assert "\x00" not in line


def test_a_100_mb_config_and_a_zip_bomb_in_uploads(cluster: Cluster) -> None:
    cluster.server()
    bomb_app = cluster.add_app("bomb", cluster.root / ADMIN / "transfer" / "digits_fedavg")
    bomb = zip_bomb(bomb_app / "resources" / "data.zip")
    cluster.ok("upload_folder bomb")
    kept = cluster.root / "server" / "transfer" / "bomb" / "resources" / "data.zip"
    assert kept.read_bytes() == bomb.read_bytes()  # stored as it came, never unpacked
    big = cluster.add_app("big", cluster.root / ADMIN / "transfer" / "digits_fedavg")
    sparse_file(big / "config" / "config_fed_client.json")
    (refused,) = cluster.admin("upload_folder big", timeout=120)
    assert not refused.ok
    assert "config/config_fed_client.json: 104,857,600 bytes is more than a config file" in (
        refused.text
    )
    assert not (cluster.root / "server" / "transfer" / "big").exists()


def test_a_hostile_site_cannot_stop_a_run_or_lose_an_update(
    cluster: Cluster, tmp_path: Path
) -> None:
    """flclient1's kit in hostile hands, beside an honest flclient2 that trains."""
    server = cluster.server()
    honest = cluster.client("flclient2")
    cluster.prepare_run(
        1, deploy_clients=False, num_rounds=3, min_num_clients=1, wait_after_min_clients=0
    )
    cluster.ok("deploy digits_fedavg client flclient2")
    workspace = cluster.root / "flclient1"
    startup = load_client(workspace)
    files = TlsFiles.named_by(startup, workspace / "startup")

    async def hostile() -> tuple[fed_pb2.SubmitReply, str]:
        conn = Connection(startup, files)
        try:
            await conn.login("", MachineInfo(device="cpu"))
            control = conn.stub.Session()
            status = fed_pb2.ClientStatus(
                status="\x1b[2J" + "x" * 100_000, error="\x1b]0;pwned\x07" * 1000
            )
            await control.write(
                fed_pb2.ClientMessage(hello=fed_pb2.Hello(token=conn.token, status=status))
            )
            for data in (deep_json(), class_naming_json(), "\0" * 1000):
                result = fed_pb2.CommandResult(command_id="forged", ok=True, data_json=data)
                await control.write(fed_pb2.ClientMessage(result=result))
            await control.write(fed_pb2.ClientMessage(heartbeat=fed_pb2.Heartbeat(status=status)))

            async def upload() -> AsyncIterator[fed_pb2.SubmitModelMessage]:
                header = update_header(conn.token, huge_manifest())
                yield fed_pb2.SubmitModelMessage(header=header)
                chunk = common_pb2.TensorChunk(name="w", offset=0, data=bytes(1024 * 1024))
                for _ in range(8):
                    yield fed_pb2.SubmitModelMessage(chunk=chunk)

            async def compressed(
                chunk: common_pb2.TensorChunk,
            ) -> AsyncIterator[fed_pb2.SubmitModelMessage]:
                header = update_header(conn.token, manifest_to_proto(model.manifest))
                yield fed_pb2.SubmitModelMessage(header=header)
                yield fed_pb2.SubmitModelMessage(chunk=chunk)

            reply = await conn.stub.SubmitModel(upload(), timeout=60)
            # A real manifest, then a first chunk whose compression no honest sender makes.
            for bad in (
                common_pb2.TensorChunk(encoding=common_pb2.WireCompression.ValueType(9)),
                common_pb2.TensorChunk(encoding=common_pb2.WIRE_COMPRESSION_INT8, scale=-1.0),
                common_pb2.TensorChunk(
                    encoding=common_pb2.WIRE_COMPRESSION_INT8, scale=1.0, zero_point=1 << 30
                ),
                common_pb2.TensorChunk(encoding=common_pb2.WIRE_COMPRESSION_BF16),
            ):
                bad.name, bad.offset = first.name, 0
                bad.data = bytes(first.nbytes)  # twice the tensor once decoded from bf16
                replies.append(await conn.stub.SubmitModel(compressed(bad), timeout=60))
            control.cancel()
            return reply, "sent"
        finally:
            await conn.close()

    cluster.ok("start server")
    wait_until(lambda: cluster.run_state()["server_status"] == "training started", 60, "training")
    model = TensorFile(cluster.root / "server" / "run_1" / "models" / "round_0.safetensors")
    first = model.manifest.tensors[0]
    replies: list[fed_pb2.SubmitReply] = []
    reply, _ = asyncio.run(hostile())
    assert reply.result == fed_pb2.SUBMIT_RESULT_REJECTED
    assert "more than a model may hold" in reply.message
    assert [r.result for r in replies] == [fed_pb2.SUBMIT_RESULT_REJECTED] * 4
    assert "unknown chunk encoding 9" in replies[0].message
    assert "int8 chunk with scale -1.0 and zero point 0" in replies[1].message
    assert f"int8 chunk with scale 1.0 and zero point {1 << 30}" in replies[2].message
    assert f"runs past the declared size of {first.nbytes} bytes" in replies[3].message
    assert server.alive()
    cluster.ok("start client flclient2")
    finished(cluster, 1)
    rows = cluster.metrics()
    assert [r["round"] for r in rows] == [0, 1, 2, 3]
    assert all(r["clients"] == ["flclient2"] for r in rows)
    assert not list((cluster.root / "server" / "run_1" / ".spool").glob("*"))
    assert honest.alive() and server.alive()
    shown = cluster.ok("check_status server")
    assert "flclient2" in shown.text and "\x1b" not in shown.text


def test_a_hostile_site_cannot_keep_an_upload_forge_log_lines_flood_reports_or_weigh_the_end(
    cluster: Cluster,
) -> None:
    """flclient1's kit in hostile hands, the one site of a run of one round: after its go
    it sends empty chunks without end (which had kept an upload slot for good), reports
    cross-site cells under a forged owner (logged as sent: a newline and ``<3>`` forged a
    journal line), reports the final model's validation with 2^63 - 1 and -5 samples
    (which had weighted the run's final metrics), and reports in a loop."""
    server = cluster.server()
    cluster.prepare_run(
        1, deploy_clients=False, num_rounds=1, min_num_clients=1, wait_after_min_clients=0
    )
    cluster.ok("start server")
    wait_until(lambda: cluster.run_state()["server_status"] == "training started", 60, "training")
    model = TensorFile(cluster.root / "server" / "run_1" / "models" / "round_0.safetensors")
    first = model.manifest.tensors[0]
    workspace = cluster.root / "flclient1"
    startup = load_client(workspace)
    forged = "\n<3>flserverd: FORGED"

    async def hostile() -> dict[str, list[tuple[int, str]]]:
        conn = Connection(startup, TlsFiles.named_by(startup, workspace / "startup"))
        verdicts: dict[str, list[tuple[int, str]]] = {}
        try:
            await conn.login("", MachineInfo(device="cpu"))
            control = conn.stub.Session()
            status = fed_pb2.ClientStatus(status=STARTED, run_number=1, round=0)
            await control.write(
                fed_pb2.ClientMessage(hello=fed_pb2.Hello(token=conn.token, status=status))
            )

            async def empty_chunks() -> AsyncIterator[fed_pb2.SubmitModelMessage]:
                header = update_header(conn.token, manifest_to_proto(model.manifest))
                yield fed_pb2.SubmitModelMessage(header=header)
                empty = common_pb2.TensorChunk(name=first.name, offset=0)
                while True:
                    yield fed_pb2.SubmitModelMessage(chunk=empty)

            reply = await conn.stub.SubmitModel(empty_chunks(), timeout=30)
            verdicts["empty"] = [(reply.result, reply.message)]

            async def report(samples: int, error: str = "", owner: str = "") -> tuple[int, str]:
                request = fed_pb2.MetricsReport(
                    token=conn.token,
                    run_number=1,
                    round=1,
                    kind=fed_pb2.METRICS_KIND_CROSS_VALIDATION
                    if owner
                    else fed_pb2.METRICS_KIND_GLOBAL_VALIDATION,
                    model_owner=owner,
                    metrics={} if owner else {"accuracy": 0.5},
                    num_samples=samples,
                    error=error,
                )
                answer = await conn.stub.SubmitMetrics(request, timeout=30)
                return answer.result, answer.message

            verdicts["forged"] = [
                await report(0, "x", f"flclient2{forged}"),
                await report(0, forged, GLOBAL_OWNER),
            ]
            update = await conn.submit_model(1, 0, model.path, 10, {})
            assert update.outcome is SubmitOutcome.ACCEPTED, update
            async for message in control:  # the run's one round closed: the final model
                if message.task.kind == fed_pb2.TASK_KIND_VALIDATE_GLOBAL:
                    break
            # 0 samples (a site with validation data only) is counted, with no weight.
            verdicts["final"] = [await report(samples) for samples in (2**63 - 1, -5, 0)]
            # Refused reports count; the bound refills at 2 a second while the loop goes on.
            verdicts["loop"] = []
            while len(verdicts["loop"]) < 2 * REPORT_BURST:
                verdicts["loop"].append(await report(5))
                if verdicts["loop"][-1][0] == fed_pb2.SUBMIT_RESULT_REJECTED:
                    break
            control.cancel()
        finally:
            await conn.close()
        return verdicts

    verdicts = asyncio.run(hostile())
    rejected, accepted = fed_pb2.SUBMIT_RESULT_REJECTED, fed_pb2.SUBMIT_RESULT_ACCEPTED
    assert verdicts["empty"] == [
        (
            rejected,
            f"tensor {first.name!r}: an empty chunk at byte 0; a chunk holds at least one value",
        )
    ]
    assert [result for result, _ in verdicts["forged"]] == [rejected, rejected]
    assert verdicts["final"] == [
        (
            rejected,
            f"validation of the final model reports {2**63 - 1:,} training samples, more than "
            "any site has (1,000,000,000,000)",
        ),
        (
            rejected,
            "validation of the final model reports no training samples; it cannot be weighted",
        ),
        (accepted, "final validation metrics accepted"),
    ]
    assert verdicts["loop"][0] == (
        fed_pb2.SUBMIT_RESULT_DUPLICATE,
        "final validation metrics were already counted",
    )
    assert verdicts["loop"][-1][0] == rejected
    assert verdicts["loop"][-1][1].startswith("flclient1 had more reports refused than the server")
    finished(cluster, 1)
    assert cluster.metrics()[-1]["final"] is True
    assert server.alive()
    lines = server.log().splitlines()
    assert not [line for line in lines if "FORGED" in line]
    assert len([line for line in lines if "flclient1 has more reports refused" in line]) == 1
    assert not list((cluster.root / "server" / "run_1" / ".spool").glob("*"))


def test_a_pickle_checkpoint_never_runs_on_the_server(cluster: Cluster) -> None:
    marker = cluster.root / "pwned"
    server = cluster.server()
    app = cluster.root / ADMIN / "transfer" / "digits_fedavg"
    (app / "resources" / "evil.pt").write_bytes(pickle_that_runs_code(marker))
    cluster.configure("config_fed_server.json", initial_checkpoint="resources/evil.pt")
    cluster.prepare_run(1, deploy_clients=False)
    cluster.ok("start server")
    text = start_failure(cluster)
    assert "holds Python objects other than tensors, which flstack never loads" in text
    assert "\x1b" not in text and "weights_only=False" not in text
    assert not marker.exists() and server.alive()
    cluster.configure("config_fed_server.json", initial_checkpoint=None, num_rounds=1)
    shutil.rmtree(cluster.root / "server" / "transfer" / "digits_fedavg")
    cluster.prepare_run(2, deploy_clients=False)
    cluster.ok("start server")
    cluster.ok("abort server")
    assert not marker.exists()


MANIFEST = manifest_to_proto(Manifest((TensorSpec("w", "F32", (4,)),)))


async def two_manifests(
    request: fed_pb2.ModelRequest, context: grpc.aio.ServicerContext[object, object]
) -> AsyncIterator[fed_pb2.ModelMessage]:
    """A download that names the model again after its first chunk."""
    yield fed_pb2.ModelMessage(manifest=MANIFEST)
    yield fed_pb2.ModelMessage(chunk=common_pb2.TensorChunk(name="w", data=bytes(16)))
    yield fed_pb2.ModelMessage(manifest=MANIFEST)


TWO_MANIFESTS = grpc.unary_stream_rpc_method_handler(
    two_manifests,
    request_deserializer=fed_pb2.ModelRequest.FromString,
    response_serializer=fed_pb2.ModelMessage.SerializeToString,
)


@contextlib.asynccontextmanager
async def playing_the_server(
    cluster: Cluster, handlers: dict[str, grpc.RpcMethodHandler[Any, Any]]
) -> AsyncIterator[Connection]:
    """A gRPC server on the project's federation port with the server's key (someone holding
    it, or a broken server) that answers only ``handlers``; yields flclient1's real
    connection to it."""
    workspace = cluster.root / "flclient1"
    startup = load_client(workspace)
    key = TlsFiles.named_by(
        load_server(cluster.root / "server"), cluster.root / "server" / "startup"
    )
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(FEDERATION, handlers),))
    server.add_secure_port(startup.server_target, server_credentials(key))
    await server.start()
    conn = Connection(startup, TlsFiles.named_by(startup, workspace / "startup"))
    try:
        yield conn
    finally:
        await conn.close()
        await server.stop(None)


def test_a_server_that_sends_the_manifest_twice_does_not_restart_the_site_s_file(
    cluster: Cluster, tmp_path: Path
) -> None:
    """A download is one manifest, then chunks. A server (broken, or someone holding its
    key) that sends a second manifest mid-download would have made the site open the file
    it is writing afresh, leaving the first handle behind; the download now fails with the
    reason, and nothing of it stays on disk."""
    downloads = tmp_path / "downloads"
    downloads.mkdir()

    async def scenario() -> str:
        async with playing_the_server(cluster, {"GetModel": TWO_MANIFESTS}) as conn:
            with pytest.raises(ValueError) as refused:
                await conn.get_model(1, 0, downloads / "global.safetensors")
            return str(refused.value)

    assert asyncio.run(scenario()) == "the server sent the model's manifest twice"
    assert list(downloads.iterdir()) == []


def test_a_model_to_cross_validate_that_is_no_model_fails_its_own_cell_only(
    cluster: Cluster, tmp_path: Path
) -> None:
    """Once an unexpected error of the client daemon that ended the site's whole cross-site
    phase: now the cell of that model says why it stays empty, and the phase goes on."""
    reports: list[fed_pb2.MetricsReport] = []

    async def submit_metrics(
        request: fed_pb2.MetricsReport, context: grpc.aio.ServicerContext[object, object]
    ) -> fed_pb2.SubmitReply:
        reports.append(request)
        return fed_pb2.SubmitReply(result=fed_pb2.SUBMIT_RESULT_ACCEPTED, message="recorded")

    handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {
        "GetModel": TWO_MANIFESTS,
        "SubmitMetrics": grpc.unary_unary_rpc_method_handler(
            submit_metrics,
            request_deserializer=fed_pb2.MetricsReport.FromString,
            response_serializer=fed_pb2.SubmitReply.SerializeToString,
        ),
    }
    work = tmp_path / "work"
    work.mkdir()

    async def scenario() -> None:
        async with playing_the_server(cluster, handlers) as conn:
            uplink = Uplink(
                conn,
                conn.startup,
                SiteStore(tmp_path / "state" / "site.json"),
                MachineInfo(device="cpu"),
                lambda: ClientStatus(status=NOT_STARTED, round=-1),
                lambda _: None,
                None,
            )
            uplink.connected.set()  # the calls go through; no control stream is needed
            crossval = CrossSiteValidation(uplink, conn)
            crossval.offered(
                TaskOffer(1, -1, TaskKind.CROSS_VALIDATE, ("site-b", GLOBAL_OWNER), ())
            )
            run = RunContext(1, tmp_path / "app", work, 1, ClientAppConfig(cross_validate=True))
            await crossval.run(run, TrainingProcess(work, tmp_path / "app", None))

    asyncio.run(scenario())
    cells = {report.model_owner: report.error for report in reports}
    unusable = "the model the server sent is unusable: the server sent the model's manifest twice"
    assert cells == {
        "flclient1": "no local model to share: this site never finished a round",
        "site-b": unusable,
        GLOBAL_OWNER: unusable,
    }
    assert list(work.iterdir()) == []


def site_agent(cluster: Cluster) -> Agent:
    """flclient1's real agent on its kit (its connection goes to whoever plays the server)."""
    workspace = cluster.root / "flclient1"
    startup = load_client(workspace)
    files = TlsFiles.named_by(startup, workspace / "startup")
    return Agent(workspace, startup, files, None, DeviceInfo("cpu", 0), None)


def test_a_round_s_or_the_final_model_that_is_no_model_fails_the_run_with_the_reason(
    cluster: Cluster, tmp_path: Path
) -> None:
    """What came instead of a global model (here a second manifest) is the run's failure,
    worded for the site's admin, at a round and at the final validation alike; nothing of
    it stays in the site's models folder."""
    work = tmp_path / "run_1" / "work_flclient1"
    work.mkdir(parents=True)

    async def scenario() -> list[str]:
        async with playing_the_server(cluster, {"GetModel": TWO_MANIFESTS}):
            agent = site_agent(cluster)
            agent.uplink.connected.set()  # the calls go through; no control stream is needed
            agent.worker = TrainingProcess(work, tmp_path / "app", None)  # never started
            steps: list[Callable[[], Awaitable[object]]] = [
                lambda: agent._train_round(TaskOffer(1, 0, TaskKind.TRAIN, (), ()), 1, work),
                lambda: agent._validate_final(
                    TaskOffer(1, 2, TaskKind.VALIDATE_GLOBAL, (), ()), work
                ),
            ]
            errors = []
            try:
                for step in steps:
                    with pytest.raises(WorkerFailed) as failed:
                        await step()
                    errors.append(str(failed.value))
            finally:
                await agent.conn.close()
            return errors

    twice = "the server sent the model's manifest twice"
    assert asyncio.run(scenario()) == [
        f"the global model of round 0 is unusable: {twice}",
        f"the final global model is unusable: {twice}",
    ]
    assert list((tmp_path / "run_1" / "models_flclient1").iterdir()) == []


@pytest.mark.parametrize(
    "instance", ["x/../../local", "flclient1/../../startup", "flclient1_0", "flclient2", ""]
)
def test_an_instance_name_that_is_no_instance_of_the_kit_is_refused_at_login(
    cluster: Cluster, instance: str
) -> None:
    """A site names its run folders after the instance name the server gives it: a server
    (broken, or someone holding its key) that answered a path would have made the next deploy
    replace the site's local/ policy or its kit."""

    async def login(
        request: fed_pb2.ClientLoginRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> fed_pb2.ClientLoginReply:
        return fed_pb2.ClientLoginReply(token="t" * 22, instance_name=instance, project="itest")

    handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {
        "Login": grpc.unary_unary_rpc_method_handler(
            login,
            request_deserializer=fed_pb2.ClientLoginRequest.FromString,
            response_serializer=fed_pb2.ClientLoginReply.SerializeToString,
        )
    }

    async def scenario() -> str:
        async with playing_the_server(cluster, handlers) as conn:
            with pytest.raises(WireError) as refused:
                await conn.login("", MachineInfo(device="cpu"))
            assert conn.token == ""
            return str(refused.value)

    assert asyncio.run(scenario()) == (
        f"the server named this site's instance {instance!r}, which is no instance name of kit "
        "flclient1; this site's folders are named after it, so it logs in again later"
    )


def test_the_instance_names_the_server_gives_are_those_a_site_takes() -> None:
    assert [instance_name("site-a", n) for n in range(3)] == ["site-a", "site-a_1", "site-a_2"]
    assert all(is_instance_of(instance_name("site-a", n), "site-a") for n in (0, 1, 9, 999_999))
    for other in ("site-a_", "site-a_01", "site-ab", "site-a_1/..", "site-a_1\n", "Site-A"):
        assert not is_instance_of(other, "site-a")


APPS = Path(__file__).resolve().parents[2] / "examples" / "apps"


def test_a_deploy_the_site_refuses_leaves_the_app_it_had(cluster: Cluster) -> None:
    """A deploy whose app the site then refused (here a config that is no JSON) had already
    replaced the app the site had, and one that came while its run started training swapped
    the folder under the training child, whose app the site had reviewed. Now the site checks
    the whole app, and that its run is not training, before the one swap."""
    waiting = asyncio.Event()
    release = asyncio.Event()

    async def get_app(
        request: fed_pb2.AppRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> AsyncIterator[common_pb2.FileChunk]:
        for path, offset, data, eof in iter_chunks(APPS / "digits_fedavg"):
            broken = request.app == "broken" and path == "config/config_train.json"
            yield common_pb2.FileChunk(
                path=path, offset=offset, data=b"{" if broken else data, eof=eof
            )
        if request.app == "late":
            waiting.set()
            await release.wait()

    handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {
        "GetApp": grpc.unary_stream_rpc_method_handler(
            get_app,
            request_deserializer=fed_pb2.AppRequest.FromString,
            response_serializer=common_pb2.FileChunk.SerializeToString,
        )
    }

    async def scenario() -> list[str]:
        async with playing_the_server(cluster, handlers):
            agent = site_agent(cluster)
            target = agent.app_dir(1)
            shutil.copytree(APPS / "digits_custom", target)
            refusals = []
            try:
                with pytest.raises(Refused) as refused:
                    await agent._deploy({"run_number": 1, "app": "broken"})
                refusals.append(str(refused.value))
                late = asyncio.ensure_future(agent._deploy({"run_number": 1, "app": "late"}))
                await asyncio.wait_for(waiting.wait(), 30)
                agent.status = replace(agent.status, status=STARTED, run_number=1)  # start client
                release.set()
                with pytest.raises(Refused) as refused:
                    await asyncio.wait_for(late, 30)
                refusals.append(str(refused.value))
            finally:
                await agent.conn.close()
            return refusals

    before = sorted(
        p.relative_to(APPS / "digits_custom") for p in (APPS / "digits_custom").rglob("*")
    )
    broken, late = asyncio.run(scenario())
    assert broken.startswith("deploy failed: ") and "config_train.json" in broken
    assert late == "run 1 started training here while late came: abort it, then deploy again"
    target = cluster.root / "flclient1" / "run_1" / "app_flclient1"
    assert sorted(p.relative_to(target) for p in target.rglob("*")) == before
    assert [p.name for p in target.parent.iterdir()] == ["app_flclient1"]  # no staging left
