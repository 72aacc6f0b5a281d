"""The client's calls to the server over mutual TLS gRPC.

Thin: each method is one RPC, turning protobuf into flcore types. Models
stream straight from and to safetensors files (checked chunk by chunk), so a
model of any size costs the client one chunk of memory in transit. Retry
policy lives in the agent, which knows what a failure means.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc

from flcore.folders import FolderReceiver, replace_folder
from flcore.proto.gen import flstack_federation_pb2 as fed_pb2
from flcore.proto.gen import flstack_federation_pb2_grpc as fed_grpc
from flcore.startup import ClientStartup
from flcore.tensorfile import SpoolWriter, TensorFile
from flcore.tls import CHANNEL_OPTIONS, TlsFiles, channel_credentials
from flcore.wire import manifest_from_proto, manifest_to_proto, tensor_chunks

log = logging.getLogger(__name__)

LOGIN_TIMEOUT_S = 10.0
GLOBAL_OWNER = "global"
MAX_APP_BYTES = 1024 * 1024 * 1024

RESULT_WORDS = {
    fed_pb2.SUBMIT_RESULT_ACCEPTED: "accepted",
    fed_pb2.SUBMIT_RESULT_DUPLICATE: "duplicate",
    fed_pb2.SUBMIT_RESULT_LATE: "late",
    fed_pb2.SUBMIT_RESULT_REJECTED: "rejected",
}


@dataclass(frozen=True)
class Login:
    """What the server granted at login."""

    token: str
    instance: str
    resumed: bool


@dataclass(frozen=True)
class Submitted:
    """The server's verdict on an upload: accepted, duplicate, late or rejected."""

    result: str
    message: str


class Connection:
    """One channel to the server's federation service."""

    def __init__(self, startup: ClientStartup, files: TlsFiles) -> None:
        self.startup = startup
        self._channel = grpc.aio.secure_channel(
            startup.server_target, channel_credentials(files), options=CHANNEL_OPTIONS
        )
        self.stub = fed_grpc.FederationStub(self._channel)
        self.token = ""

    async def close(self) -> None:
        """Close the channel."""
        await self._channel.close()

    async def login(self, token: str, info: fed_pb2.ClientInfo) -> Login:
        """Log in (resuming ``token``'s session when the server still knows it)."""
        reply = await self.stub.Login(
            fed_pb2.ClientLoginRequest(token=token, info=info), timeout=LOGIN_TIMEOUT_S
        )
        self.token = reply.token
        return Login(reply.token, reply.instance_name, reply.resumed)

    async def logout(self) -> None:
        """Tell the server this client is leaving (best effort)."""
        try:
            await self.stub.Logout(fed_pb2.ClientLogoutRequest(token=self.token), timeout=3)
        except grpc.aio.AioRpcError as exc:
            log.debug("logout failed: %s", exc.details())

    def open_session(
        self,
    ) -> grpc.aio.StreamStreamCall[fed_pb2.ClientMessage, fed_pb2.ServerMessage]:
        """Open the long-lived Session stream."""
        return self.stub.Session()

    async def get_model(
        self, run_number: int, round_number: int, target: Path, owner: str = ""
    ) -> TensorFile:
        """Download a model into ``target`` (a safetensors file).

        Without ``owner``, the global model of a round; with it, a model to
        cross-validate: ``global`` (the best global model) or a site's.
        """
        if not owner:
            kind = fed_pb2.MODEL_KIND_GLOBAL
        elif owner == GLOBAL_OWNER:
            kind = fed_pb2.MODEL_KIND_BEST_GLOBAL
        else:
            kind = fed_pb2.MODEL_KIND_LOCAL
        call = self.stub.GetModel(
            fed_pb2.ModelRequest(
                token=self.token, run_number=run_number, round=round_number, kind=kind, owner=owner
            )
        )
        spool: SpoolWriter | None = None
        try:
            async for message in call:
                if message.WhichOneof("body") == "manifest":
                    spool = SpoolWriter(
                        target, manifest_from_proto(message.manifest), require_finite=False
                    )
                elif spool is None:
                    raise ValueError("the server sent model bytes before the manifest")
                else:
                    spool.write(message.chunk.name, message.chunk.offset, message.chunk.data)
            if spool is None:
                raise ValueError("the server sent no model")
            return spool.finish()
        except BaseException:
            if spool is not None:
                spool.discard()
            raise

    async def submit_model(
        self,
        run_number: int,
        round_number: int,
        model: Path,
        num_samples: int,
        metrics: dict[str, float],
        local: bool = False,
    ) -> Submitted:
        """Stream an update, or with ``local`` the best local model for cross-site
        validation (header, then chunks) and return the server's verdict."""
        update = TensorFile(model)

        async def messages() -> AsyncIterator[fed_pb2.SubmitModelMessage]:
            yield fed_pb2.SubmitModelMessage(
                header=fed_pb2.SubmitHeader(
                    token=self.token,
                    run_number=run_number,
                    round=round_number,
                    kind=fed_pb2.MODEL_KIND_LOCAL if local else fed_pb2.MODEL_KIND_GLOBAL,
                    num_samples=num_samples,
                    metrics=metrics,
                    manifest=manifest_to_proto(update.manifest),
                )
            )
            for chunk in tensor_chunks(update):
                yield fed_pb2.SubmitModelMessage(chunk=chunk)

        reply = await self.stub.SubmitModel(messages())
        return Submitted(RESULT_WORDS.get(reply.result, "rejected"), reply.message)

    async def submit_metrics(
        self,
        run_number: int,
        round_number: int,
        metrics: dict[str, float],
        num_samples: int,
        error: str = "",
        owner: str = "",
    ) -> Submitted:
        """Report a validation: of the final global model, or with ``owner`` a
        cross-site one (``error`` instead of metrics when it failed or was given up)."""
        kind = (
            fed_pb2.METRICS_KIND_CROSS_VALIDATION
            if owner
            else fed_pb2.METRICS_KIND_GLOBAL_VALIDATION
        )
        reply = await self.stub.SubmitMetrics(
            fed_pb2.MetricsReport(
                token=self.token,
                run_number=run_number,
                round=round_number,
                kind=kind,
                model_owner=owner or GLOBAL_OWNER,
                metrics=metrics,
                num_samples=num_samples,
                error=error,
            ),
            timeout=30,
        )
        return Submitted(RESULT_WORDS.get(reply.result, "rejected"), reply.message)

    async def get_app(self, run_number: int, app: str, target: Path) -> None:
        """Download an app deployed to this run and put it in place atomically."""
        staging = target.with_name(f".{target.name}.{uuid.uuid4().hex}")
        receiver = FolderReceiver(staging, MAX_APP_BYTES)
        try:
            call = self.stub.GetApp(
                fed_pb2.AppRequest(token=self.token, run_number=run_number, app=app)
            )
            async for chunk in call:
                receiver.write(chunk.path, chunk.offset, chunk.data, chunk.eof)
            receiver.finish()
            (staging / ".app_name").write_text(app + "\n")
        except BaseException:
            receiver.discard()
            raise
        replace_folder(staging, target)
