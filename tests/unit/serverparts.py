"""What unit tests of the server's domain objects build a server from, without a kit."""

from __future__ import annotations

from flcore.startup import ServerStartup


def server_startup() -> ServerStartup:
    """A server's startup settings as a kit would give them (ports are never opened)."""
    return ServerStartup(
        project="p",
        name="server",
        host="localhost",
        fed_port=1,
        admin_port=2,
        listen_host="localhost",
        heart_beat_timeout=60,
        heartbeat_interval=5,
    )
