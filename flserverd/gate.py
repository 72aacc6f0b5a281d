"""The gate every call passes before its servicer: revoked certificates, login floods and
unexpected errors.

A gRPC interceptor, so that no RPC of either service can skip it:

- The peer certificate of the call (verified by mutual TLS) is checked
  against the revocation list and the names revoked here
  (:class:`flserverd.revocation.Revocations`); a revoked one is refused
  with ``PERMISSION_DENIED`` and the reason. gRPC Python offers no hook into
  the TLS handshake itself, so this is where revocation bites: a connection
  can do nothing but make calls. So is a certificate's end: TLS checks it
  at the handshake only, and a connection that stays up outlives it.
- ``Login`` calls are counted per certificate name
  (:class:`flserverd.throttle.Throttle`); one over the limit gets
  ``RESOURCE_EXHAUSTED`` and how long to wait. The certificate of an
  admitted login is remembered (see ``Revocations.seen``).
- An exception a servicer did not expect is logged at ERROR with its
  traceback, and the peer gets a sentence (``INTERNAL``), never gRPC's
  ``Unexpected <class ...>`` text.
"""

from __future__ import annotations

import inspect
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, NoReturn

import grpc

from flcore.certlife import peer_ended
from flserverd.revocation import Revocations
from flserverd.rpc import Context, peer_identity
from flserverd.throttle import Throttle

log = logging.getLogger(__name__)

REFUSAL_LOG_EVERY_S = 60.0
"""A refused certificate is logged once a minute at most: a revoked or ended kit may keep
trying."""

Unary = Callable[[Any, Context], Awaitable[Any]]
Streaming = Callable[[Any, Context], AsyncIterator[Any]]


class Gate(grpc.aio.ServerInterceptor):
    """Checks each call's certificate, counts logins and words unexpected errors."""

    def __init__(self, revocations: Revocations, throttle: Throttle) -> None:
        self._revocations = revocations
        self._throttle = throttle
        self._refusals_logged: dict[int, float] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Any]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Any:
        """The servicer's handler, wrapped so the gate runs first."""
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        wire = {
            "request_deserializer": handler.request_deserializer,
            "response_serializer": handler.response_serializer,
        }
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                self._unary(method, handler.unary_unary), **wire
            )
        if handler.stream_unary is not None:
            return grpc.stream_unary_rpc_method_handler(
                self._unary(method, handler.stream_unary), **wire
            )
        if handler.unary_stream is not None:
            # A coroutine that writes its messages itself (gRPC's reader/writer API:
            # GetModel, which awaits each write) is gated as a unary handler is.
            gated = (
                self._unary(method, handler.unary_stream)
                if inspect.iscoroutinefunction(handler.unary_stream)
                else self._streaming(method, handler.unary_stream)
            )
            return grpc.unary_stream_rpc_method_handler(gated, **wire)
        return grpc.stream_stream_rpc_method_handler(
            self._streaming(method, handler.stream_stream), **wire
        )

    def _unary(self, method: str, behaviour: Unary) -> Unary:
        async def gated(request: Any, context: Context) -> Any:
            try:
                await self._admit(method, context)
                return await behaviour(request, context)
            except grpc.aio.AbortError:
                raise
            except Exception as exc:
                await _unexpected(method, exc, context)

        return gated

    def _streaming(self, method: str, behaviour: Streaming) -> Streaming:
        async def gated(request: Any, context: Context) -> AsyncIterator[Any]:
            try:
                await self._admit(method, context)
                async for response in behaviour(request, context):
                    yield response
            except grpc.aio.AbortError:
                raise
            except Exception as exc:
                await _unexpected(method, exc, context)

        return gated

    async def _admit(self, method: str, context: Context) -> None:
        identity = peer_identity(context)
        if identity is None:  # mutual TLS makes every peer present a certificate
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "no client certificate")
        reason = self._revocations.refusal(
            identity.name, identity.serial, identity.issued
        ) or peer_ended(identity, datetime.now(UTC))
        if reason is not None:
            now = time.monotonic()
            if now - self._refusals_logged.get(identity.serial, -REFUSAL_LOG_EVERY_S) >= (
                REFUSAL_LOG_EVERY_S
            ):
                self._refusals_logged[identity.serial] = now
                log.warning("refused %s: %s", _short(method), reason)
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, reason)
        if method.endswith("/Login"):
            wait = self._throttle.take(identity.name)
            if wait:
                await context.abort(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"too many logins with the certificate of {identity.name}: "
                    f"try again in {max(wait, 0.1):.1f}s",
                )
            self._revocations.seen(identity)


def _short(method: str) -> str:
    """``/flstack.v1.Federation/Login`` → ``Federation/Login``."""
    return method.rsplit(".", 1)[-1]


async def _unexpected(method: str, exc: Exception, context: Context) -> NoReturn:
    log.error("%s failed with an unexpected error", _short(method), exc_info=exc)
    await context.abort(
        grpc.StatusCode.INTERNAL,
        f"the server could not handle this call ({_short(method)}) because of an unexpected "
        "error; the server's log has the details",
    )
