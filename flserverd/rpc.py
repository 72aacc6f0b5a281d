"""Helpers shared by the server's gRPC servicers."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import grpc

from flcore.certlife import peer_ended
from flcore.identity import Identity, identity_from_auth_context

Context = grpc.aio.ServicerContext[Any, Any]


def peer_identity(context: Context) -> Identity | None:
    """The identity in the verified peer certificate of a call."""
    return identity_from_auth_context(context.auth_context())


def at_certificate_end(
    identity: Identity | None, act: Callable[[str], None]
) -> asyncio.TimerHandle | None:
    """Call ``act`` with the refusal of an ended certificate when ``identity``'s ends: TLS
    checked the end at the handshake only, and a stream (a site's control stream, a
    console's feed) outlives it unless it is ended then. The caller cancels the handle."""
    end = identity.valid_until if identity is not None else None
    if identity is None or end is None:
        return None
    reason = peer_ended(identity, end)
    assert reason is not None  # at its end a certificate has ended
    delay = max((end - datetime.now(UTC)).total_seconds(), 0.0)
    return asyncio.get_running_loop().call_later(delay, act, reason)
