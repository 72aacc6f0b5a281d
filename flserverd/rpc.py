"""Helpers shared by the server's gRPC servicers."""

from __future__ import annotations

from typing import Any

import grpc

from flcore.identity import Identity, identity_from_auth_context

Context = grpc.aio.ServicerContext[Any, Any]


def peer_identity(context: Context) -> Identity | None:
    """The identity in the verified peer certificate of a call."""
    return identity_from_auth_context(context.auth_context())
