"""gRPC servicer of the admin service: login, commands, uploads and the event feed.

It converts and calls: who may log in is decided by
:class:`flserverd.admins.AdminLogins` (the server's, so that a revocation
logs an admin out), what a command does by
:class:`flserverd.commands.AdminCommands`, what the feed shows by the server.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator
from datetime import datetime

import grpc

from flcore.feed import FeedEvent, Tick
from flcore.feedwire import event_to_proto, feed_messages
from flcore.proto.gen import flstack_admin_pb2 as admin_pb2
from flcore.proto.gen import flstack_admin_pb2_grpc as admin_grpc
from flserverd.admins import AdminBusy, AdminLogin
from flserverd.commands import AdminCommands, Reply
from flserverd.events import TICK_S, Overflow, Revoked
from flserverd.registry import AuthError
from flserverd.rpc import Context, at_certificate_end, peer_identity
from flserverd.server import FLServer
from flserverd.transfer import FileChunk

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 10.0
MAX_TIMEOUT_S = 3600.0
MAX_DIGEST = 64
"""A confirmation's question digest is 16 characters; anything longer matches none."""


def _reply(reply: Reply, started: float) -> admin_pb2.CommandReply:
    finished = datetime.now()
    return admin_pb2.CommandReply(
        ok=reply.ok,
        text=reply.text,
        data_json=reply.data_json,
        usecs=int((time.perf_counter() - started) * 1e6),
        finished_at=finished.strftime("%Y-%m-%d %H:%M:%S.%f"),
        confirm_prompt=reply.confirm_prompt,
    )


async def _file_chunks(
    messages: AsyncIterator[admin_pb2.UploadMessage],
) -> AsyncIterator[FileChunk]:
    async for message in messages:
        chunk = message.chunk
        yield chunk.path, chunk.offset, chunk.data, chunk.eof


class AdminService(admin_grpc.AdminServicer):
    """Admin-facing RPCs."""

    def __init__(self, server: FLServer) -> None:
        self.server = server
        self.commands = AdminCommands(server)
        self.logins = server.admins

    async def _admin(self, token: str, context: Context) -> AdminLogin:
        try:
            return self.logins.authenticate(token, peer_identity(context))
        except AuthError as exc:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, str(exc))
            raise

    @contextlib.asynccontextmanager
    async def _running(self, admin: AdminLogin, context: Context) -> AsyncIterator[None]:
        """While one of ``admin``'s commands runs; the call ends with the reason when the
        admin has as many under way as one may."""
        try:
            self.logins.command_started(admin.user)
        except AdminBusy as exc:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc))
            raise
        try:
            yield
        finally:
            self.logins.command_ended(admin.user)

    async def Login(
        self, request: admin_pb2.AdminLoginRequest, context: Context
    ) -> admin_pb2.AdminLoginReply:
        """Admit a provisioned admin whose certificate matches the typed user name."""
        try:
            token, admin = self.logins.login(peer_identity(context), request.user)
        except AuthError as exc:
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, str(exc))
            raise
        return admin_pb2.AdminLoginReply(
            token=token,
            role=admin.role,
            project=self.server.startup.project,
            server_name=self.server.startup.name,
        )

    async def Execute(
        self, request: admin_pb2.CommandRequest, context: Context
    ) -> admin_pb2.CommandReply:
        """Run one command line."""
        started = time.perf_counter()
        admin = await self._admin(request.token, context)
        line = request.line.strip()
        timeout = request.timeout_s if 0 < request.timeout_s <= MAX_TIMEOUT_S else DEFAULT_TIMEOUT_S
        async with self._running(admin, context):
            reply = await self.commands.execute(
                admin.user,
                admin.role,
                line,
                timeout,
                request.confirmed,
                attachment=request.attachment,
                interactive=request.interactive,
                answered=request.confirm_digest[:MAX_DIGEST],
            )
        then = reply.then
        if then is not None:
            # grpc-stubs declare the callback as a class rather than a protocol.
            context.add_done_callback(lambda _: then())  # type: ignore[arg-type]
        return _reply(reply, started)

    async def UploadFolder(
        self,
        request_iterator: AsyncIterator[admin_pb2.UploadMessage],
        context: Context,
    ) -> admin_pb2.CommandReply:
        """Receive an app into transfer/: a header, then the files' chunks."""
        started = time.perf_counter()
        first = await anext(aiter(request_iterator), None)
        if first is None or first.WhichOneof("body") != "header":
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, "an upload starts with its header"
            )
        assert first is not None
        header = first.header
        admin = await self._admin(header.token, context)
        async with self._running(admin, context):
            reply = await self.commands.upload(
                admin.user,
                admin.role,
                header.app,
                header.total_bytes,
                _file_chunks(request_iterator),
            )
        return _reply(reply, started)

    async def Events(
        self, request: admin_pb2.EventsRequest, context: Context
    ) -> AsyncIterator[admin_pb2.Event]:
        """A snapshot of everything, then every change as it happens: what queued up while
        the last message was written goes out as one batch."""
        admin = await self._admin(request.token, context)
        try:
            self.logins.may_follow(admin.user)
        except AdminBusy as exc:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc))
            raise
        subscription = self.server.bus.subscribe(owner=(admin.user, admin.serial, admin.issued))
        ending = at_certificate_end(peer_identity(context), subscription.cut)
        # Until the last line: a console gone while its snapshot was sent (or a snapshot that
        # failed) left the subscription on the bus, filling its queue, while the count of
        # feeds, which bounds them, went back down.
        try:
            snapshot = self.server.snapshot()
            with self.logins.watching(admin.user):
                yield event_to_proto(FeedEvent(self.server.bus.seq, time.time(), snapshot))
                try:
                    async for batch in subscription.batches(tick_s=TICK_S):
                        if not batch:
                            yield event_to_proto(FeedEvent(0, time.time(), Tick()))
                        for message in feed_messages(batch):
                            yield message
                except Overflow as exc:
                    await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc))
                except Revoked as exc:
                    await context.abort(grpc.StatusCode.PERMISSION_DENIED, str(exc))
        finally:
            if ending is not None:
                ending.cancel()
            self.server.bus.unsubscribe(subscription)
