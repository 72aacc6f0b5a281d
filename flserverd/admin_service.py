"""gRPC servicer of the admin service: login, commands, uploads and the event feed.

Admins are identified by their certificate: it must be an admin certificate
of the project (OU=admin) whose CN is the email the admin typed. Tokens are
kept in memory only; after a server restart the console simply logs in
again.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime

import grpc

from flcore.feed import CommandSeen, FeedEvent, ServerInfo, Snapshot
from flcore.feedwire import event_to_proto
from flcore.folders import FolderError
from flcore.identity import KIND_ADMIN, ROLE_SUPER, ROLES
from flcore.proto.gen import flstack_admin_pb2 as admin_pb2
from flcore.proto.gen import flstack_admin_pb2_grpc as admin_grpc
from flserverd.commands import AdminCommands, Reply
from flserverd.events import Overflow
from flserverd.rpc import Context, peer_identity
from flserverd.server import FLServer
from flserverd.transfer import TransferError, Upload

log = logging.getLogger(__name__)

MAX_LINE = 4096


# An admin token unused this long is forgotten (every fltui --cmd logs in afresh).
ADMIN_SESSION_IDLE_S = 12 * 3600


@dataclass
class AdminSession:
    """A logged-in admin."""

    user: str
    role: str
    last_used: float


def _reply(reply: Reply, started: float) -> admin_pb2.CommandReply:
    finished = datetime.now()
    return admin_pb2.CommandReply(
        ok=reply.ok,
        text=reply.text,
        data_json=json.dumps(reply.data, default=str),
        usecs=int((time.perf_counter() - started) * 1e6),
        finished_at=finished.strftime("%Y-%m-%d %H:%M:%S.%f"),
        confirm_prompt=reply.confirm_prompt,
    )


class AdminService(admin_grpc.AdminServicer):
    """Admin-facing RPCs."""

    def __init__(self, server: FLServer) -> None:
        self.server = server
        self.commands = AdminCommands(server)
        self.sessions: dict[str, AdminSession] = {}

    async def _admin(self, token: str, context: Context) -> AdminSession:
        session = self.sessions.get(token)
        identity = peer_identity(context)
        if session is None or identity is None or identity.name != session.user:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "not logged in: log in again")
        assert session is not None
        session.last_used = time.time()
        return session

    async def Login(
        self, request: admin_pb2.AdminLoginRequest, context: Context
    ) -> admin_pb2.AdminLoginReply:
        """Admit a provisioned admin whose certificate matches the typed user name."""
        identity = peer_identity(context)
        if identity is None or identity.kind != KIND_ADMIN or identity.role not in ROLES:
            who = f"{identity.kind} certificate {identity.name!r}" if identity else "no certificate"
            log.warning("refused admin login as %r with %s", request.user, who)
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                f"not an admin certificate ({who}): use the startup kit of a provisioned admin",
            )
        assert identity is not None
        if request.user != identity.name:
            log.warning(
                "refused admin login: user %r with certificate of %r", request.user, identity.name
            )
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                f"user name {request.user!r} does not match the certificate ({identity.name})",
            )
        now = time.time()
        self.sessions = {
            t: s for t, s in self.sessions.items() if now - s.last_used < ADMIN_SESSION_IDLE_S
        }
        token = str(uuid.uuid4())
        self.sessions[token] = AdminSession(identity.name, identity.role, now)
        log.info("admin %s logged in (role %s)", identity.name, identity.role)
        return admin_pb2.AdminLoginReply(
            token=token,
            role=identity.role,
            project=self.server.startup.project,
            server_name=self.server.startup.name,
        )

    async def Execute(
        self, request: admin_pb2.CommandRequest, context: Context
    ) -> admin_pb2.CommandReply:
        """Run one command line."""
        started = time.perf_counter()
        admin = await self._admin(request.token, context)
        line = request.line.strip()[:MAX_LINE]
        timeout = request.timeout_s if 0 < request.timeout_s <= 3600 else 10.0
        reply = await self.commands.execute(
            admin.user, admin.role, line, timeout, request.confirmed
        )
        if not reply.confirm_prompt:
            self._audit(admin.user, line, reply.ok)
        return _reply(reply, started)

    def _audit(self, user: str, line: str, ok: bool) -> None:
        self.server.db.audit(user, line, ok)
        self.server.bus.publish(CommandSeen(user, line, ok))
        log.info("admin %s ran %r: %s", user, line, "ok" if ok else "failed")

    async def UploadFolder(
        self,
        request_iterator: AsyncIterator[admin_pb2.UploadMessage],
        context: Context,
    ) -> admin_pb2.CommandReply:
        """Receive an app into transfer/, validating every chunk and the configs."""
        started = time.perf_counter()
        first = await anext(aiter(request_iterator), None)
        if first is None or first.WhichOneof("body") != "header":
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, "an upload starts with its header"
            )
        assert first is not None
        header = first.header
        admin = await self._admin(header.token, context)
        line = f"upload_folder {header.app}"
        if admin.role != ROLE_SUPER:
            reply = Reply(False, f"permission denied: {admin.user} has the {admin.role!r} role")
            self._audit(admin.user, line, False)
            return _reply(reply, started)
        max_bytes = self.server.startup.max_upload_mb * 1024 * 1024
        try:
            if header.total_bytes > max_bytes:
                raise FolderError(
                    f"app is {header.total_bytes / 1048576:.1f} MiB, over the server's limit of "
                    f"{self.server.startup.max_upload_mb} MiB"
                )
            upload = Upload(self.server.store, header.app, max_bytes)
        except (FolderError, TransferError) as exc:
            self._audit(admin.user, line, False)
            return _reply(Reply(False, f"upload refused: {exc}"), started)
        try:
            async for message in request_iterator:
                chunk = message.chunk
                upload.write(chunk.path, chunk.offset, chunk.data, chunk.eof)
            target, files, dropped = upload.finish()
        except (FolderError, TransferError) as exc:
            upload.discard()
            self._audit(admin.user, line, False)
            return _reply(Reply(False, f"upload refused: {exc}"), started)
        except BaseException:
            upload.discard()
            raise
        text = f"Created folder {target}"
        if dropped:
            text += (
                f"\n(ignored {', '.join(sorted(dropped))}: only config/ and resources/ are kept)"
            )
        self._audit(admin.user, line, True)
        return _reply(
            Reply(True, text, {"app": header.app, "path": str(target), "files": files}), started
        )

    async def Events(
        self, request: admin_pb2.EventsRequest, context: Context
    ) -> AsyncIterator[admin_pb2.Event]:
        """A snapshot of everything, then every change as it happens."""
        await self._admin(request.token, context)
        server = self.server
        subscription = server.bus.subscribe()
        startup = server.startup
        snapshot = Snapshot(
            server=ServerInfo(
                project=startup.project,
                name=startup.name,
                fed_target=f"{startup.host}:{startup.fed_port}",
                admin_target=f"{startup.host}:{startup.admin_port}",
                started_at=server.started_at,
                version=server.version,
                heart_beat_timeout_s=startup.heart_beat_timeout,
                heartbeat_interval_s=startup.heartbeat_interval,
            ),
            run=server.run_view(),
            clients=tuple(server.client_rows()),
            logs=tuple(server.bus.logs),
        )
        yield event_to_proto(FeedEvent(server.bus.seq, time.time(), snapshot))
        try:
            async for event in subscription:
                yield event_to_proto(event)
        except Overflow as exc:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc))
