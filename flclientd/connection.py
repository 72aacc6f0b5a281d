"""The client's calls to the server over mutual TLS gRPC: the client's RPC edge.

Thin: each method is one RPC, taking and returning :mod:`flcore.federation`
records (converted in :mod:`flclientd.serde`). Models stream straight from
and to safetensors files (checked chunk by chunk), so a model of any size
costs the client one chunk of memory in transit. Transfers have no deadline;
one that stops moving is given up (:mod:`flcore.progress`). Retry policy lives in the
uplink and the agent, which know what a failure means.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from flclientd.serde import (
    downward_from_proto,
    login_from_proto,
    machine_to_proto,
    metrics_report_to_proto,
    model_request_to_proto,
    submit_header_to_proto,
    upward_to_proto,
    verdict_from_proto,
)
from flclientd.siteapps import APP_NAME_FILE
from flcore import faultpoints
from flcore.compression import WireCompression, encoded_chunks
from flcore.compression import receive as receive_chunk
from flcore.federation import (
    GLOBAL_OWNER,
    Downward,
    Login,
    MachineInfo,
    MetricsKind,
    MetricsReport,
    ModelKind,
    ModelRequest,
    SubmitHeader,
    SubmitOutcome,
    Unreadable,
    UploadKind,
    Upward,
    Verdict,
)
from flcore.folders import FolderReceiver
from flcore.identity import is_instance_of
from flcore.progress import ProgressWatch
from flcore.proto.gen import flstack_federation_pb2 as fed_pb2
from flcore.proto.gen import flstack_federation_pb2_grpc as fed_grpc
from flcore.startup import ClientStartup
from flcore.tensorfile import SpoolWriter, TensorFile
from flcore.tls import CHANNEL_OPTIONS, TlsFiles, channel_credentials
from flcore.wire import (
    UPLOAD_TURN_GO,
    UPLOAD_TURN_KEY,
    WireError,
    chunk_from_proto,
    manifest_from_proto,
    with_chunk,
)

log = logging.getLogger(__name__)

LOGIN_TIMEOUT_S = 10.0
MAX_APP_BYTES = 1024 * 1024 * 1024


class ControlStream:
    """This client's end of an open control stream (the ``Control`` RPC)."""

    def __init__(
        self, call: grpc.aio.StreamStreamCall[fed_pb2.ClientMessage, fed_pb2.ServerMessage]
    ) -> None:
        self._call = call

    async def write(self, message: Upward) -> None:
        """Send one message (raises once the stream has ended)."""
        await self._call.write(upward_to_proto(message))

    async def __aiter__(self) -> AsyncIterator[Downward | Unreadable]:
        async for message in self._call:
            yield downward_from_proto(message)

    def cancel(self) -> None:
        """End the stream."""
        self._call.cancel()


@dataclass
class Traffic:
    """What this client moved since it started, for its metrics endpoint (the keys are fixed,
    so another thread may read the counts while they grow)."""

    received: dict[str, int] = field(default_factory=lambda: {"model": 0, "app": 0})
    sent: dict[str, int] = field(
        default_factory=lambda: {kind.value.replace(" ", "_"): 0 for kind in UploadKind}
    )
    verdicts: dict[str, int] = field(
        default_factory=lambda: {outcome.value: 0 for outcome in SubmitOutcome}
    )


class Connection:
    """One channel to the server's federation service."""

    def __init__(self, startup: ClientStartup, files: TlsFiles) -> None:
        self.startup = startup
        self._channel = grpc.aio.secure_channel(
            startup.server_target, channel_credentials(files), options=CHANNEL_OPTIONS
        )
        self.stub = fed_grpc.FederationStub(self._channel)
        self.token = ""
        self.upload_turns = False
        self.traffic = Traffic()
        self.model_bytes = 0
        """Size of the last model whose manifest came, even if it could not be stored: how
        much room a site paused by a full disk waits for."""

    async def close(self) -> None:
        """Close the channel."""
        await self._channel.close()

    async def login(self, token: str, info: MachineInfo) -> Login:
        """Log in (resuming ``token``'s registration when the server still knows it)."""
        reply = await self.stub.Login(
            fed_pb2.ClientLoginRequest(token=token, info=machine_to_proto(info)),
            timeout=LOGIN_TIMEOUT_S,
        )
        login = login_from_proto(reply)
        if not is_instance_of(login.instance, self.startup.name):
            raise WireError(
                f"the server named this site's instance {login.instance[:64]!r}, which is no "
                f"instance name of kit {self.startup.name}; this site's folders are named "
                "after it, so it logs in again later"
            )
        self.token = login.token
        self.upload_turns = login.upload_turns
        return login

    async def logout(self) -> None:
        """Tell the server this client is leaving (best effort)."""
        try:
            await self.stub.Logout(fed_pb2.ClientLogoutRequest(token=self.token), timeout=3)
        except grpc.aio.AioRpcError as exc:
            log.debug("logout failed: %s", exc.details())

    def open_control(self) -> ControlStream:
        """Open the long-lived control stream."""
        return ControlStream(self.stub.Session())

    async def get_model(
        self, run_number: int, round_number: int, target: Path, owner: str = ""
    ) -> TensorFile:
        """Download a model into ``target`` (a safetensors file).

        Without ``owner``, the global model of a round; with it, a model to
        cross-validate: ``global`` (the best global model) or a site's. Compressed
        chunks are decoded before they are written: the file holds the model's own dtypes.
        """
        if not owner:
            kind = ModelKind.GLOBAL
        elif owner == GLOBAL_OWNER:
            kind = ModelKind.BEST_GLOBAL
        else:
            kind = ModelKind.LOCAL
        request = ModelRequest(run_number, round_number, kind, owner)
        watch = ProgressWatch(f"download of {target.name}")
        spool: SpoolWriter | None = None
        moved = 0

        async def receive() -> TensorFile:
            nonlocal spool
            call = self.stub.GetModel(model_request_to_proto(self.token, request))
            received = 0
            nonlocal moved
            async for message in call:
                watch.moved()
                if message.WhichOneof("body") == "manifest":
                    if spool is not None:  # it would start the file again mid-download
                        raise ValueError("the server sent the model's manifest twice")
                    manifest = manifest_from_proto(message.manifest)
                    self.model_bytes = manifest.total_bytes
                    spool = SpoolWriter(target, manifest, require_finite=False)
                elif spool is None:
                    raise ValueError("the server sent model bytes before the manifest")
                else:
                    # A bytes field is copied out of the message on every read: read it once.
                    chunk = chunk_from_proto(message.chunk)
                    receive_chunk(spool, chunk)
                    self.traffic.received["model"] += len(chunk.data)
                    moved += len(chunk.data)
                    received += 1
                    if received == 1:
                        faultpoints.reached(faultpoints.CLIENT_DOWNLOAD)
            if spool is None:
                raise ValueError("the server sent no model")
            return spool.finish()

        started = time.monotonic()
        try:
            model = await watch.run(receive())
        except BaseException:
            if spool is not None:
                spool.discard()
            raise
        _log_transfer(f"downloaded {target.name}", moved, time.monotonic() - started)
        return model

    async def submit_model(
        self,
        run_number: int,
        round_number: int,
        model: Path,
        num_samples: int,
        metrics: dict[str, float],
        kind: UploadKind = UploadKind.UPDATE,
        compression: WireCompression = WireCompression.NONE,
    ) -> Verdict:
        """Send an update, or the best local model for cross-site validation, and return the
        server's verdict: the header, then, once the server gave the upload its turn, the
        chunks (floating-point ones compressed as the round's offer said).

        The wait for the turn has no limit of its own: it lasts while the server receives
        other uploads, and a dead link or server ends the call (gRPC keepalive).
        """
        upload = TensorFile(model)
        header = SubmitHeader(run_number, round_number, kind, num_samples, metrics, upload.manifest)
        call = self.stub.SubmitModel()
        try:
            await call.write(submit_header_to_proto(self.token, header))
            if self.upload_turns:
                turn = (await call.initial_metadata()).get(UPLOAD_TURN_KEY)
                if turn != UPLOAD_TURN_GO:  # the verdict came before any chunk
                    return self._judged(await call)
            return await self._send_chunks(call, upload, kind, compression)
        finally:
            call.cancel()  # a call already ended stays as it ended

    async def _send_chunks(
        self,
        call: grpc.aio.StreamUnaryCall[fed_pb2.SubmitModelMessage, fed_pb2.SubmitReply],
        upload: TensorFile,
        kind: UploadKind,
        compression: WireCompression,
    ) -> Verdict:
        watch = ProgressWatch(f"upload of {upload.path.name}")
        sent = kind.value.replace(" ", "_")
        moved = 0

        async def send() -> fed_pb2.SubmitReply:
            nonlocal moved
            for index, (chunk, _) in enumerate(encoded_chunks(upload, compression)):
                if call.done():  # the server gave its verdict before the end (a refusal)
                    break
                await call.write(with_chunk(fed_pb2.SubmitModelMessage(), chunk))
                watch.moved()
                self.traffic.sent[sent] += len(chunk.data)
                moved += len(chunk.data)
                if index == 0:
                    faultpoints.reached(faultpoints.CLIENT_UPLOAD)
            await call.done_writing()
            return await call

        started = time.monotonic()
        reply = await watch.run(send())
        _log_transfer(f"uploaded {upload.path.name}", moved, time.monotonic() - started)
        return self._judged(reply)

    def _judged(self, reply: fed_pb2.SubmitReply) -> Verdict:
        verdict = verdict_from_proto(reply)
        self.traffic.verdicts[verdict.outcome.value] += 1
        return verdict

    async def submit_metrics(
        self,
        run_number: int,
        round_number: int,
        metrics: dict[str, float],
        num_samples: int,
        error: str = "",
        owner: str = "",
    ) -> Verdict:
        """Report a validation: of the final global model, or with ``owner`` a
        cross-site one (``error`` instead of metrics when it failed or was given up)."""
        kind = MetricsKind.CROSS_VALIDATION if owner else MetricsKind.GLOBAL_VALIDATION
        report = MetricsReport(
            run_number, round_number, kind, owner or GLOBAL_OWNER, metrics, num_samples, error
        )
        reply = await self.stub.SubmitMetrics(
            metrics_report_to_proto(self.token, report), timeout=30
        )
        return verdict_from_proto(reply)

    async def get_app(self, run_number: int, app: str, staging: Path) -> None:
        """Download an app deployed to this run into the new folder ``staging`` (gone again
        when the download fails); the caller checks it before it puts it in place."""
        receiver = FolderReceiver(staging, MAX_APP_BYTES)
        watch = ProgressWatch(f"download of app {app}")

        async def receive() -> None:
            call = self.stub.GetApp(
                fed_pb2.AppRequest(token=self.token, run_number=run_number, app=app)
            )
            async for chunk in call:
                watch.moved()
                data = chunk.data
                receiver.write(chunk.path, chunk.offset, data, chunk.eof)
                self.traffic.received["app"] += len(data)

        try:
            await watch.run(receive())
            receiver.finish()
            (staging / APP_NAME_FILE).write_text(app + "\n")
        except BaseException:
            receiver.discard()
            raise


def _log_transfer(what: str, nbytes: int, seconds: float) -> None:
    """One line per model transfer, so that its speed can be read from the log
    (``bench/transfer.py`` does); an upload's time includes the server's verdict."""
    log.info(
        "%s: %d bytes in %.3f s (%.1f MB/s)",
        what,
        nbytes,
        seconds,
        nbytes / 1e6 / max(seconds, 1e-9),
    )
