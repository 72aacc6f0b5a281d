"""flserverd: the federated learning server daemon.

Runs in the foreground and logs to stderr (journald under systemd). It
verifies its startup kit, opens the federation and admin ports with mutual
TLS, tells systemd it is ready, and on SIGTERM stops accepting calls, lets
in-flight checkpoint writes finish and exits 0; a second signal exits at
once.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
from pathlib import Path

import grpc

from flcore.certlife import kit_lives, watch_lives, watch_peer_ends
from flcore.daemon import (
    collect_garbage_in_bulk,
    daemon_parser,
    hold_workspace,
    listen_problem,
    raise_open_files,
    start_daemon,
    stop_on_signals,
)
from flcore.exporter import endpoint_settings
from flcore.proto.gen import flstack_admin_pb2_grpc as admin_grpc
from flcore.schema import ConfigError
from flcore.sdnotify import notify
from flcore.startup import SERVER_FILE, STARTUP_DIR, ServerStartup, load_server
from flcore.tls import TlsFiles, server_credentials, server_options
from flcore.version import flstack_version
from flserverd.admin_service import AdminService
from flserverd.federation_service import FederationService, serve_federation
from flserverd.gate import Gate
from flserverd.project import claim_state, kit_project
from flserverd.server import FLServer
from flserverd.throttle import LOGIN_BURST, LOGINS_PER_SECOND, Throttle
from flserverd.watching import start_watching

log = logging.getLogger("flserverd")

EXIT_CONFIG = 2
RPC_GRACE_S = 5.0
CHECKPOINT_GRACE_S = 30.0
SIGNALLED = "a signal (systemctl stop, kill or Ctrl+C)"
"""Who stopped a server that no admin shut down, as consoles are told."""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command line of the server daemon."""
    return daemon_parser("flserverd", __doc__.splitlines()[0], "server").parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the flserverd console script."""
    started = start_daemon(parse_args(argv), load_server, log)
    if isinstance(started, int):
        return started
    workspace, startup = started
    try:
        return asyncio.run(serve(workspace, startup))
    except ConfigError as exc:
        log.error("%s", exc)
        return EXIT_CONFIG


def _bind(server: grpc.aio.Server, address: str, credentials: grpc.ServerCredentials) -> None:
    try:
        port = server.add_secure_port(address, credentials)
    except RuntimeError:  # gRPC says only that it failed, and to set one of its variables
        raise ConfigError(listen_problem(address)) from None
    if port == 0:
        raise ConfigError(listen_problem(address))


async def serve(workspace: Path, startup: ServerStartup) -> int:
    """Run the server until SIGTERM, SIGINT or an admin's shutdown."""
    credentials = server_credentials(TlsFiles.named_by(startup, workspace / STARTUP_DIR))
    lives = kit_lives(workspace / STARTUP_DIR, startup, startup.name)
    metrics = endpoint_settings(startup, workspace, SERVER_FILE)
    hold_workspace(workspace / "state" / "flserverd.lock", "flserverd")
    ca_path = workspace / STARTUP_DIR / startup.ssl_root_cert
    claim_state(workspace / "state", kit_project(startup.project, ca_path))
    server = FLServer(workspace, startup, flstack_version())
    try:
        await server.open()
    except ConfigError:
        await server.close(0)
        raise
    throttle = Throttle(LOGIN_BURST + 2 * startup.max_instances_per_kit, LOGINS_PER_SECOND)
    gate = Gate(server.revocations, throttle)
    options = server_options(raise_open_files())
    federation = grpc.aio.server(options=options, interceptors=[gate])
    federation_service = FederationService(server)
    serve_federation(federation_service, federation)
    admin = grpc.aio.server(options=options, interceptors=[gate])
    admin_grpc.add_AdminServicer_to_server(AdminService(server), admin)
    try:
        _bind(federation, f"{startup.listen_host}:{startup.fed_port}", credentials)
        _bind(admin, f"{startup.listen_host}:{startup.admin_port}", credentials)
        watching = start_watching(server, federation_service.exchange, metrics, workspace, lives)
    except ConfigError:
        await server.close(0)
        raise
    await federation.start()
    await admin.start()

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    stop_on_signals(stop.set)
    shutdown = loop.create_task(server.shutdown_requested.wait())
    stopped = loop.create_task(stop.wait())

    kit_watch = loop.create_task(watch_lives(lives))
    peers_watch = loop.create_task(watch_peer_ends(server.db.certificate_ends))
    collect_garbage_in_bulk()
    notify("READY=1", f"STATUS=serving project {startup.project}")
    log.info(
        "flserverd %s ready: project %s, federation on %s:%d, admin on %s:%d",
        server.version,
        startup.project,
        startup.listen_host,
        startup.fed_port,
        startup.listen_host,
        startup.admin_port,
    )
    await asyncio.wait({shutdown, stopped}, return_when=asyncio.FIRST_COMPLETED)
    shutdown.cancel()
    stopped.cancel()
    server.announce_stop(SIGNALLED)
    server.end_control_streams()
    await asyncio.gather(federation.stop(RPC_GRACE_S), admin.stop(RPC_GRACE_S))
    await server.close(CHECKPOINT_GRACE_S)
    await watching.close()
    kit_watch.cancel()
    peers_watch.cancel()
    log.info("flserverd stopped")
    return 0
