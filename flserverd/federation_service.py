"""gRPC servicer of the federation service: a thin layer over FLServer.

Every call checks the peer certificate (project CA verified by TLS, CN and
kind read here) and, after login, that the token belongs to that
certificate. Streams are bounded: models must match the global model's
manifest before a byte is stored, and apps come from what the server holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import math
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import TypeVar

import grpc

from flcore import status as st
from flcore.folders import iter_chunks
from flcore.identity import KIND_CLIENT
from flcore.proto.gen import flstack_common_pb2 as common_pb2
from flcore.proto.gen import flstack_federation_pb2 as fed_pb2
from flcore.proto.gen import flstack_federation_pb2_grpc as fed_grpc
from flcore.tensorfile import Manifest, SpoolWriter, TensorFile, TensorFileError
from flcore.wire import manifest_from_proto, manifest_to_proto
from flserverd.crossval import GLOBAL
from flserverd.links import CommandResult
from flserverd.registry import AuthError, ClientSession
from flserverd.rpc import Context, peer_identity
from flserverd.serde import (
    log_from_proto,
    machine_from_proto,
    outbound_to_proto,
    status_from_proto,
)
from flserverd.server import FLServer
from flserverd.training import Outcome, Refusal
from flserverd.transfer import TransferError, check_app_name, client_app_dir

log = logging.getLogger(__name__)

MAX_METRICS = 64
MAX_LOG_BATCH = 500
# Chunks read ahead per download: bounds a stream's memory to a few MiB.
CHUNKS_PER_READ = 2

_OUTCOMES = {
    Outcome.ACCEPTED: fed_pb2.SUBMIT_RESULT_ACCEPTED,
    Outcome.DUPLICATE: fed_pb2.SUBMIT_RESULT_DUPLICATE,
    Outcome.LATE: fed_pb2.SUBMIT_RESULT_LATE,
    Outcome.REJECTED: fed_pb2.SUBMIT_RESULT_REJECTED,
}

T = TypeVar("T")


async def _in_batches(items: Iterator[T]) -> AsyncIterator[T]:
    """Iterate a blocking (file-reading) iterator from a thread, a few items at a time."""
    while True:
        batch = await asyncio.to_thread(lambda: list(itertools.islice(items, CHUNKS_PER_READ)))
        if not batch:
            return
        for item in batch:
            yield item


def check_metrics(metrics: dict[str, float]) -> str | None:
    """Metrics become JSON and charts: bounded in number, named, and finite."""
    if len(metrics) > MAX_METRICS:
        return f"too many metrics ({len(metrics)} > {MAX_METRICS})"
    for key, value in metrics.items():
        if not key or len(key) > 64:
            return f"metric name {key[:70]!r} must be 1-64 characters"
        if not math.isfinite(value):
            return f"metric {key!r} is not a finite number"
    return None


class FederationService(fed_grpc.FederationServicer):
    """Client-facing RPCs."""

    def __init__(self, server: FLServer) -> None:
        self.server = server

    async def _session(self, token: str, context: Context) -> ClientSession:
        try:
            return self.server.registry.authenticate(token, peer_identity(context))
        except AuthError as exc:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, str(exc))
            raise

    async def Login(
        self, request: fed_pb2.ClientLoginRequest, context: Context
    ) -> fed_pb2.ClientLoginReply:
        """Start or resume a client session for a client certificate."""
        identity = peer_identity(context)
        if identity is None or identity.kind != KIND_CLIENT:
            who = f"{identity.kind} certificate {identity.name!r}" if identity else "no certificate"
            log.warning("refused federation login with %s", who)
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                f"the federation service accepts client certificates only, got {who}",
            )
        assert identity is not None
        try:
            session, resumed = self.server.registry.login(
                identity, request.token, machine_from_proto(request.info)
            )
        except AuthError as exc:
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, str(exc))
            raise
        verb = "resumed its session" if resumed else "joined"
        log.info(
            "Client %s %s as instance %s with token %s…. Total clients: %d",
            session.client_name,
            verb,
            session.instance,
            session.token[:8],
            len(self.server.registry),
        )
        self.server.publish_client(session)
        return fed_pb2.ClientLoginReply(
            token=session.token,
            instance_name=session.instance,
            resumed=resumed,
            project=self.server.startup.project,
            heartbeat_interval_s=int(self.server.startup.heartbeat_interval),
        )

    async def Logout(
        self, request: fed_pb2.ClientLogoutRequest, context: Context
    ) -> fed_pb2.ClientLogoutReply:
        """End a session at once (client shutting down)."""
        session = await self._session(request.token, context)
        self.server.drop(session, st.LOGGED_OUT)
        return fed_pb2.ClientLogoutReply()

    async def Session(
        self,
        request_iterator: AsyncIterator[fed_pb2.ClientMessage],
        context: Context,
    ) -> AsyncIterator[fed_pb2.ServerMessage]:
        """Heartbeats, statuses, results and logs up; commands and offers down."""
        first = await anext(aiter(request_iterator), None)
        if first is None or first.WhichOneof("body") != "hello":
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "a Session starts with hello")
        assert first is not None
        session = await self._session(first.hello.token, context)
        link = self.server.attach(session, status_from_proto(first.hello.status))
        log.debug("session stream of %s opened", session.instance)
        reader = asyncio.get_running_loop().create_task(self._read(request_iterator, session))
        reader.add_done_callback(lambda _: link.close())
        try:
            while (message := await link.next()) is not None:
                yield outbound_to_proto(message)
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, grpc.aio.AioRpcError):
                await reader
            self.server.detach(session, link)

    async def _read(
        self, request_iterator: AsyncIterator[fed_pb2.ClientMessage], session: ClientSession
    ) -> None:
        server = self.server
        async for message in request_iterator:
            if not server.registry.is_current(session):
                return
            body = message.WhichOneof("body")
            if body == "heartbeat":
                server.heartbeat(session, status_from_proto(message.heartbeat.status))
            elif body == "status":
                server.update_status(session, status_from_proto(message.status))
            elif body == "result":
                link = server.links.get(session.token)
                if link is not None:
                    result = message.result
                    try:
                        data = json.loads(result.data_json) if result.data_json else {}
                    except json.JSONDecodeError:
                        data = {}
                    if not isinstance(data, dict):
                        data = {}
                    link.resolve(
                        result.command_id, CommandResult(result.ok, result.text[:65536], data)
                    )
            elif body == "logs":
                records = message.logs.records[:MAX_LOG_BATCH]
                lines = [log_from_proto(r, session.instance) for r in records]
                server.client_logs(session, lines, message.logs.dropped)
            server.registry.heard(session)

    async def GetModel(
        self, request: fed_pb2.ModelRequest, context: Context
    ) -> AsyncIterator[fed_pb2.ModelMessage]:
        """Stream a model: manifest first, then its bytes in chunks."""
        session = await self._session(request.token, context)
        try:
            path = self._model_for(session.instance, request)
        except Refusal as exc:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(exc))
            raise
        model = TensorFile(path)
        yield fed_pb2.ModelMessage(manifest=manifest_to_proto(model.manifest))
        async for name, offset, data in _in_batches(model.iter_chunks()):
            yield fed_pb2.ModelMessage(
                chunk=common_pb2.TensorChunk(name=name, offset=offset, data=data)
            )

    def _model_for(self, instance: str, request: fed_pb2.ModelRequest) -> Path:
        """The file a client may have: a round's model, or a model to cross-validate."""
        if request.kind == fed_pb2.MODEL_KIND_GLOBAL:
            training = self.server.training
            if training is None or training.run.run_number != request.run_number:
                raise Refusal(f"run {request.run_number} is not training")
            return training.admit(instance, request.round)
        owner = GLOBAL if request.kind == fed_pb2.MODEL_KIND_BEST_GLOBAL else request.owner
        if not self.server.known_run(request.run_number):
            raise Refusal(f"run {request.run_number} does not exist on this server")
        crossval = self.server.crossval_for(request.run_number)
        if not crossval.may_fetch(instance, owner):
            raise Refusal(
                f"the model of {owner!r} is not available to {instance} for cross-site validation"
            )
        return crossval.model_path(owner)

    async def SubmitModel(
        self,
        request_iterator: AsyncIterator[fed_pb2.SubmitModelMessage],
        context: Context,
    ) -> fed_pb2.SubmitReply:
        """Receive a model into a spool file, checking every chunk, then hand it over once.

        A training update (kind GLOBAL) is folded into its round; a best local
        model (kind LOCAL) is kept for cross-site validation.
        """
        first = await anext(aiter(request_iterator), None)
        if first is None or first.WhichOneof("body") != "header":
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, "an upload starts with its header"
            )
        assert first is not None
        header = first.header
        session = await self._session(header.token, context)
        training = self.server.training
        current = training.current_round if training is not None else -1
        what = "local model" if header.kind == fed_pb2.MODEL_KIND_LOCAL else "update"

        def reply(outcome: Outcome, message: str) -> fed_pb2.SubmitReply:
            if outcome is not Outcome.ACCEPTED:
                log.info(
                    "%s from %s for round %d %s: %s",
                    what,
                    session.instance,
                    header.round,
                    outcome.value,
                    message,
                )
            return fed_pb2.SubmitReply(
                result=_OUTCOMES[outcome], message=message, current_round=current
            )

        metrics = dict(header.metrics)
        verdict = self._precheck(session.instance, header, metrics)
        if verdict is not None:
            return reply(*verdict)
        try:
            declared = manifest_from_proto(header.manifest)
            expected = self._expected_manifest(header)
        except TensorFileError as exc:
            return reply(Outcome.REJECTED, str(exc))
        differences = expected.differences(declared)
        if differences:
            return reply(
                Outcome.REJECTED,
                f"{what} does not match the global model: " + "; ".join(differences),
            )
        spool_path = (
            self.server.store.spool_dir(header.run_number)
            / f"{session.instance}-{uuid.uuid4().hex}.safetensors"
        )
        spool = SpoolWriter(spool_path, declared)
        try:
            # Disk writes and the NaN checks run in a thread: the loop keeps serving
            # commands and heartbeats while large models stream in.
            async for message in request_iterator:
                chunk = message.chunk
                await asyncio.to_thread(spool.write, chunk.name, chunk.offset, chunk.data)
            model = await asyncio.to_thread(spool.finish)
            if header.kind == fed_pb2.MODEL_KIND_LOCAL:
                self.server.crossval_for(header.run_number).accept_model(session.instance, model)
                return reply(Outcome.ACCEPTED, "local model accepted for cross-site validation")
            assert training is not None
            return reply(
                *await training.accept_update(
                    session.instance, header.round, model, header.num_samples, metrics
                )
            )
        except TensorFileError as exc:
            return reply(Outcome.REJECTED, str(exc))
        finally:
            await asyncio.to_thread(spool.discard)

    def _precheck(
        self, instance: str, header: fed_pb2.SubmitHeader, metrics: dict[str, float]
    ) -> tuple[Outcome, str] | None:
        """The verdict on an upload when it is known before its bytes arrive."""
        problem = check_metrics(metrics)
        if problem:
            return Outcome.REJECTED, problem
        if header.kind == fed_pb2.MODEL_KIND_LOCAL:
            if not self.server.known_run(header.run_number):
                return Outcome.REJECTED, f"run {header.run_number} does not exist on this server"
            crossval = self.server.crossval_for(header.run_number)
            if instance not in crossval.declared:
                return Outcome.REJECTED, f"{instance} does not take part in cross-site validation"
            if instance in crossval.submitted:
                return Outcome.DUPLICATE, "the local model was already received"
            return None
        training = self.server.training
        if training is None:
            return Outcome.LATE, "the server is not training; update discarded"
        return training.check_submission(instance, header.run_number, header.round)

    def _expected_manifest(self, header: fed_pb2.SubmitHeader) -> Manifest:
        """Names, dtypes and shapes an upload must have: those of the run's global model."""
        training = self.server.training
        if training is not None and training.run.run_number == header.run_number:
            return training.manifest
        model = self.server.store.global_model(header.run_number)
        if not model.exists():
            raise TensorFileError(f"run {header.run_number} has no global model to compare with")
        return TensorFile(model).manifest

    async def SubmitMetrics(
        self, request: fed_pb2.MetricsReport, context: Context
    ) -> fed_pb2.SubmitReply:
        """Metrics of a validation: of the final global model, or cross-site."""
        session = await self._session(request.token, context)
        metrics = dict(request.metrics)
        problem = check_metrics(metrics)
        if problem:
            return fed_pb2.SubmitReply(result=fed_pb2.SUBMIT_RESULT_REJECTED, message=problem)
        if request.error:
            log.warning(
                "validation of %s's model on %s failed: %s",
                request.model_owner,
                session.instance,
                request.error[:500],
            )
        if request.kind == fed_pb2.METRICS_KIND_CROSS_VALIDATION:
            if not self.server.known_run(request.run_number):
                return fed_pb2.SubmitReply(
                    result=fed_pb2.SUBMIT_RESULT_REJECTED,
                    message=f"run {request.run_number} does not exist on this server",
                )
            crossval = self.server.crossval_for(request.run_number)
            if session.instance not in crossval.declared:
                return fed_pb2.SubmitReply(
                    result=fed_pb2.SUBMIT_RESULT_REJECTED,
                    message=f"{session.instance} does not take part in cross-site validation",
                )
            try:
                crossval.record(
                    request.model_owner[:128], session.instance, metrics, request.error[:2000]
                )
            except ValueError as exc:
                return fed_pb2.SubmitReply(result=fed_pb2.SUBMIT_RESULT_REJECTED, message=str(exc))
            return fed_pb2.SubmitReply(result=fed_pb2.SUBMIT_RESULT_ACCEPTED, message="recorded")
        training = self.server.training
        if training is None or training.run.run_number != request.run_number:
            return fed_pb2.SubmitReply(
                result=fed_pb2.SUBMIT_RESULT_LATE, message="run is not training"
            )
        outcome, message = training.accept_final_metrics(
            session.instance, request.round, metrics, request.num_samples
        )
        return fed_pb2.SubmitReply(
            result=_OUTCOMES[outcome], message=message, current_round=training.current_round
        )

    async def GetApp(
        self, request: fed_pb2.AppRequest, context: Context
    ) -> AsyncIterator[common_pb2.FileChunk]:
        """Stream the copy of an app deployed to clients of a run."""
        await self._session(request.token, context)
        try:
            folder: Path = client_app_dir(
                self.server.store, request.run_number, check_app_name(request.app)
            )
        except TransferError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
            raise
        if not folder.is_dir():
            await context.abort(
                grpc.StatusCode.NOT_FOUND,
                f"app {request.app!r} is not deployed to clients of run {request.run_number}",
            )
        async for path, offset, data, eof in _in_batches(iter_chunks(folder)):
            yield common_pb2.FileChunk(path=path, offset=offset, data=data, eof=eof)
