"""gRPC servicer of the federation service: converts and calls, nothing more.

Every call checks the peer certificate (project CA verified by TLS, CN and
kind read here) and, after login, that the token belongs to that
certificate. What a client may download and what becomes of its uploads is
decided by :class:`flserverd.exchange.ModelExchange`; the control stream's
messages go to :class:`flserverd.server.FLServer`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime

import grpc

from flcore import faultpoints
from flcore import status as st
from flcore.certlife import peer_ended
from flcore.compression import WireChunk, encoded_chunks
from flcore.folders import iter_chunks
from flcore.progress import ProgressWatch, TransferStalled
from flcore.proto.gen import flstack_common_pb2 as common_pb2
from flcore.proto.gen import flstack_federation_pb2 as fed_pb2
from flcore.proto.gen import flstack_federation_pb2_grpc as fed_grpc
from flcore.tensorfile import TensorFile, TensorFileError
from flcore.wire import (
    UPLOAD_TURN_GO,
    UPLOAD_TURN_KEY,
    WireError,
    manifest_to_proto,
    with_chunk,
)
from flserverd.exchange import Download, ModelExchange
from flserverd.registry import AuthError, InstancesFull, RegisteredClient
from flserverd.rpc import Context, at_certificate_end, peer_identity
from flserverd.serde import (
    chunks_from_proto,
    downward_to_proto,
    machine_from_proto,
    metrics_report_from_proto,
    model_request_from_proto,
    status_from_proto,
    submit_header_from_proto,
    upward_from_proto,
    verdict_to_proto,
)
from flserverd.server import FLServer
from flserverd.training import Refusal
from flserverd.transfer import TransferError

log = logging.getLogger(__name__)


class FederationService(fed_grpc.FederationServicer):
    """Client-facing RPCs."""

    def __init__(self, server: FLServer) -> None:
        self.server = server
        self.exchange = ModelExchange(server)

    async def _client(self, token: str, context: Context) -> RegisteredClient:
        try:
            return self.server.registry.authenticate(token, peer_identity(context))
        except AuthError as exc:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, str(exc))
            raise

    async def Login(
        self, request: fed_pb2.ClientLoginRequest, context: Context
    ) -> fed_pb2.ClientLoginReply:
        """Register a client certificate, or resume its registration."""
        try:
            login = self.server.login(
                peer_identity(context), request.token, machine_from_proto(request.info)
            )
        except InstancesFull as exc:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc))
            raise
        except AuthError as exc:
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, str(exc))
            raise
        return fed_pb2.ClientLoginReply(
            token=login.token,
            instance_name=login.client.instance,
            resumed=login.resumed,
            project=self.server.startup.project,
            heartbeat_interval_s=int(self.server.startup.heartbeat_interval),
            upload_turns=True,
        )

    async def Logout(
        self, request: fed_pb2.ClientLogoutRequest, context: Context
    ) -> fed_pb2.ClientLogoutReply:
        """End a registration at once (client shutting down)."""
        client = await self._client(request.token, context)
        self.server.drop(client, st.LOGGED_OUT)
        return fed_pb2.ClientLogoutReply()

    async def Session(
        self,
        request_iterator: AsyncIterator[fed_pb2.ClientMessage],
        context: Context,
    ) -> AsyncIterator[fed_pb2.ServerMessage]:
        """The control stream (Session on the wire): heartbeats, statuses, results and logs up;
        commands and offers down."""
        first = await anext(aiter(request_iterator), None)
        if first is None or first.WhichOneof("body") != "hello":
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, "a control stream starts with hello"
            )
        assert first is not None
        client = await self._client(first.hello.token, context)
        link = self.server.attach(client, status_from_proto(first.hello.status))
        reader = asyncio.get_running_loop().create_task(self._read(request_iterator, client))
        reader.add_done_callback(lambda _: link.close())
        identity = peer_identity(context)
        ending = at_certificate_end(identity, lambda _: link.close())
        try:
            while (message := await link.next()) is not None:
                yield downward_to_proto(message)
            ended = peer_ended(identity, datetime.now(UTC)) if identity is not None else None
            if ended is not None:
                await context.abort(grpc.StatusCode.PERMISSION_DENIED, ended)
        finally:
            if ending is not None:
                ending.cancel()
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, grpc.aio.AioRpcError):
                await reader
            self.server.detach(client, link)

    async def _read(
        self, request_iterator: AsyncIterator[fed_pb2.ClientMessage], client: RegisteredClient
    ) -> None:
        async for message in request_iterator:
            if not self.server.received(client, upward_from_proto(message, client.instance)):
                return

    # gRPC's asyncio server takes a coroutine that writes (its reader/writer API) where the
    # generated stub names only iterators: a write the handler awaits itself can be given up
    # on a stall and releases its slot at once, which a yielded message cannot.
    async def GetModel(  # type: ignore[override]
        self, request: fed_pb2.ModelRequest, context: Context
    ) -> None:
        """Stream a model: manifest first, then its bytes in chunks, sending only while
        holding one of the server's download slots (:mod:`flserverd.transferslots`)."""
        client = await self._client(request.token, context)
        try:
            download = self.exchange.model_for(
                client.instance, model_request_from_proto(request), client.client_name
            )
        except WireError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
            raise
        except Refusal as exc:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(exc))
            raise
        model = TensorFile(download.path)
        manifest = fed_pb2.ModelMessage(manifest=manifest_to_proto(model.manifest))
        chunks = encoded_chunks(model, download.compression)
        what = f"download of {download.path.name} to {client.instance}"
        downloads = self.exchange.downloads
        async with _ended_when_stalled(context):
            # A manifest larger than the call's flow-control window waits for the peer to read,
            # so it is watched like the chunks that follow it.
            await ProgressWatch(what, downloads.stall_s).run(context.write(manifest))
            await downloads.send_all(
                what,
                chunks,
                self._chunk_writer(context, download, client),
                owner=client.client_name,
            )

    async def _unless_revoked(self, client: RegisteredClient, context: Context) -> None:
        """End a transfer to a client revoked since it began (its call was let in before)."""
        reason = self.server.revoked_sender(client.instance)
        if reason is not None and not self.server.registry.is_current(client):
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, reason)

    def _chunk_writer(
        self, context: Context, download: Download, client: RegisteredClient
    ) -> Callable[[tuple[WireChunk, int]], Awaitable[None]]:
        """Writes one chunk of ``download`` to the call and counts its bytes."""
        sent = 0

        async def write(item: tuple[WireChunk, int]) -> None:
            nonlocal sent
            chunk, raw = item
            await self._unless_revoked(client, context)
            await context.write(with_chunk(fed_pb2.ModelMessage(), chunk))
            self.exchange.sent_chunk(download, chunk, raw)
            sent += 1
            if sent == 1:
                faultpoints.reached(faultpoints.SERVER_DOWNLOAD)

        return write

    async def SubmitModel(
        self,
        request_iterator: AsyncIterator[fed_pb2.SubmitModelMessage],
        context: Context,
    ) -> fed_pb2.SubmitReply:
        """Receive an update or a best local model: a header, then, once the exchange gave the
        upload its turn (the go in the initial metadata), its tensor chunks."""
        first = await anext(aiter(request_iterator), None)
        if first is None or first.WhichOneof("body") != "header":
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, "an upload starts with its header"
            )
        assert first is not None
        client = await self._client(first.header.token, context)
        try:
            header = submit_header_from_proto(first.header)
        except (WireError, TensorFileError) as exc:
            verdict = self.exchange.refuse(client.instance, str(exc))
        else:
            chunks = chunks_from_proto(request_iterator)

            async def go() -> None:
                await context.send_initial_metadata(((UPLOAD_TURN_KEY, UPLOAD_TURN_GO),))

            try:
                verdict = await self.exchange.receive(
                    client.instance, header, chunks, go, site=client.client_name
                )
            except TransferStalled as exc:
                await context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
                raise
        return verdict_to_proto(verdict, self.server.current_round)

    async def SubmitMetrics(
        self, request: fed_pb2.MetricsReport, context: Context
    ) -> fed_pb2.SubmitReply:
        """Metrics of a validation: of the final global model, or cross-site."""
        client = await self._client(request.token, context)
        try:
            report = metrics_report_from_proto(request)
        except WireError as exc:
            verdict = self.exchange.refuse(client.instance, str(exc), "report")
        else:
            verdict = self.exchange.accept_metrics(client.instance, report)
        return verdict_to_proto(verdict, self.server.current_round)

    async def GetApp(  # type: ignore[override]
        self, request: fed_pb2.AppRequest, context: Context
    ) -> None:
        """Stream the copy of an app deployed to clients of a run as a model is sent: in the
        download slots, one transfer of a site at a time, a write given up after the stall
        limit (a site that opened many and read none had kept each, with its file open and
        its buffers, for as long as it liked)."""
        client = await self._client(request.token, context)
        try:
            folder = self.exchange.app_folder(request.run_number, request.app)
        except TransferError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
            raise
        except Refusal as exc:
            await context.abort(grpc.StatusCode.NOT_FOUND, str(exc))
            raise
        async with _ended_when_stalled(context):
            await self.exchange.downloads.send_all(
                f"download of app {request.app} to {client.instance}",
                iter_chunks(folder),
                self._file_writer(context, client),
                owner=client.client_name,
            )

    def _file_writer(
        self, context: Context, client: RegisteredClient
    ) -> Callable[[tuple[str, int, bytes, bool]], Awaitable[None]]:
        """Writes one chunk of an app's file to the call and counts its bytes."""

        async def write(item: tuple[str, int, bytes, bool]) -> None:
            path, offset, data, eof = item
            await self._unless_revoked(client, context)
            await context.write(common_pb2.FileChunk(path=path, offset=offset, data=data, eof=eof))
            self.exchange.sent("app", len(data))

        return write


@contextlib.asynccontextmanager
async def _ended_when_stalled(context: Context) -> AsyncIterator[None]:
    """A transfer that stalled ends its call with the reason (the peer tries again)."""
    try:
        yield
    except TransferStalled as exc:
        log.warning("%s", exc)
        await context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
        raise


CONTROL_OF_DECEMBER = "Control"
"""The control stream's name on the wire for sites of 2026-12-06 and -07 (it is Session before
and after): the server answers it too, so that such a site is not "Method not found!"."""


def serve_federation(service: FederationService, server: grpc.aio.Server) -> None:
    """Put the federation service on ``server``, under every wire name a site may call."""
    fed_grpc.add_FederationServicer_to_server(service, server)
    control = grpc.stream_stream_rpc_method_handler(
        service.Session,
        request_deserializer=fed_pb2.ClientMessage.FromString,
        response_serializer=fed_pb2.ServerMessage.SerializeToString,
    )
    name = fed_pb2.DESCRIPTOR.services_by_name["Federation"].full_name
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(name, {CONTROL_OF_DECEMBER: control}),)
    )
