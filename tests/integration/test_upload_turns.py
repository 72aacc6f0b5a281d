"""Uploads take turns on the real server: a real client whose site already has an upload
receiving sends its header and nothing more until that upload is done, while another
site gets its turn at once."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import grpc
import pytest

from flclientd.connection import Connection
from flcore.federation import MachineInfo, SubmitOutcome
from flcore.proto.gen import flstack_common_pb2 as common_pb2
from flcore.proto.gen import flstack_federation_pb2 as fed_pb2
from flcore.startup import load_client
from flcore.tensorfile import Manifest, TensorFile
from flcore.tls import TlsFiles
from flcore.wire import UPLOAD_TURN_GO, UPLOAD_TURN_KEY, manifest_to_proto
from fldev.cluster import Cluster
from fldev.poll import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

Upload = grpc.aio.StreamUnaryCall[fed_pb2.SubmitModelMessage, fed_pb2.SubmitReply]


def test_a_client_sends_no_chunk_before_its_turn(cluster: Cluster, tmp_path: Path) -> None:
    cluster.server()
    cluster.prepare_run(1, deploy_clients=False, num_rounds=2, min_num_clients=3)
    cluster.ok("start server")
    wait_until(lambda: cluster.run_state()["server_status"] == "training started", 60, "training")
    update = tmp_path / "update.safetensors"
    shutil.copy(cluster.root / "server" / "run_1" / "models" / "round_0.safetensors", update)
    manifest = TensorFile(update).manifest

    def connection(site: str) -> Connection:
        startup = load_client(cluster.root / site)
        return Connection(startup, TlsFiles.named_by(startup, cluster.root / site / "startup"))

    async def scenario() -> tuple[list[fed_pb2.SubmitReply], SubmitOutcome, int]:
        site1, site2 = connection("flclient1"), connection("flclient2")
        try:
            for conn in (site1, site2):
                login = await conn.login("", MachineInfo(device="cpu"))
                assert login.upload_turns
            # flclient1 has an upload with its turn that sends nothing (yet) ...
            holder = await upload_with_turn(site1, manifest)
            submitted = asyncio.ensure_future(site1.submit_model(1, 0, update, 10, {}))
            # ... while flclient2's upload gets its turn at once.
            other = await upload_with_turn(site2, manifest)
            # Unheld, this upload of a small model is through in milliseconds.
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(asyncio.shield(submitted), 2)
            sent_while_waiting = site1.traffic.sent["update"]
            replies = []
            for call in (holder, other):  # each ends with no chunk sent: an incomplete update
                await call.done_writing()
                replies.append(await asyncio.wait_for(call, 30))
            verdict = await asyncio.wait_for(submitted, 60)
            return replies, verdict.outcome, sent_while_waiting
        finally:
            await site1.close()
            await site2.close()

    replies, outcome, sent_while_waiting = asyncio.run(scenario())
    assert sent_while_waiting == 0
    assert [reply.result for reply in replies] == [fed_pb2.SUBMIT_RESULT_REJECTED] * 2
    assert all("stream ended early" in reply.message for reply in replies)
    assert outcome is SubmitOutcome.ACCEPTED


def update_header(token: str, manifest: common_pb2.ModelManifest) -> fed_pb2.SubmitHeader:
    """The header of round 0's update of run 1, 10 samples, as a client sends it."""
    return fed_pb2.SubmitHeader(
        token=token,
        run_number=1,
        round=0,
        kind=fed_pb2.UPLOAD_KIND_UPDATE,
        num_samples=10,
        manifest=manifest,
    )


async def upload_with_turn(conn: Connection, manifest: Manifest) -> Upload:
    """An update's header, sent as a client does, once the server gave it its turn."""
    header = update_header(conn.token, manifest_to_proto(manifest))
    call: Upload = conn.stub.SubmitModel()
    await call.write(fed_pb2.SubmitModelMessage(header=header))
    metadata = await asyncio.wait_for(call.initial_metadata(), 30)
    assert metadata.get(UPLOAD_TURN_KEY) == UPLOAD_TURN_GO
    return call
