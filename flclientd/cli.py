"""flclientd: the federated learning client daemon of one site.

Runs in the foreground and logs to stderr (journald under systemd). It
verifies its startup kit, finds out what accelerators the site has, logs in
to the server and then does what admins ask. The site's data folder is
given by --data-root or the DATA_ROOT environment variable. Exit codes: 0
after a shutdown command or SIGTERM, 2 for a bad kit or a refused
certificate, 3 when the server stayed unreachable for the retry window.

Site IT reviews and approves apps with custom code through the same
command: ``flclientd show-app --workspace W APP`` and ``flclientd approve
--workspace W SHA256`` (:mod:`flclientd.review`).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from pathlib import Path

from flclientd import review
from flclientd.agent import Agent
from flclientd.device import probe_device
from flclientd.logforward import LogForwarder
from flclientd.uplink import EXIT_REFUSED
from flcore.certlife import kit_lives, watch_lives
from flcore.daemon import (
    collect_garbage_in_bulk,
    daemon_parser,
    start_daemon,
    stop_on_signals,
)
from flcore.exporter import EndpointSettings, endpoint_settings, serve_metrics
from flcore.project import claim_state, kit_project
from flcore.schema import ConfigError
from flcore.sdnotify import notify
from flcore.startup import CLIENT_FILE, STARTUP_DIR, ClientStartup, load_client
from flcore.tls import TlsFiles

log = logging.getLogger("flclientd")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command line of the client daemon."""
    parser = daemon_parser("flclientd", __doc__.splitlines()[0], "client")
    parser.epilog = (
        "Site IT: 'flclientd show-app --workspace W APP' prints an app deployed here and its "
        "SHA-256; 'flclientd approve --workspace W SHA256' lets it run."
    )
    parser.add_argument(
        "--data-root",
        type=Path,
        default=os.environ.get("DATA_ROOT") or None,
        help="the site's data folder (default: $DATA_ROOT)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the flclientd console script: the daemon, or a site IT command."""
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in review.COMMANDS:
        return review.main(argv)
    args = parse_args(argv)
    started = start_daemon(args, load_client, log)
    if isinstance(started, int):
        return started
    workspace, startup = started
    try:
        claim_state(
            workspace / "state",
            kit_project(startup.project, workspace / STARTUP_DIR / startup.ssl_root_cert),
            "its approvals and local/ settings (which code it runs) and its login",
            "Extract this project's kit into a workspace of its own (or put this workspace's "
            "own kit back)",
        )
    except ConfigError as exc:
        log.error("%s", exc)
        return EXIT_REFUSED
    data_root = args.data_root.resolve() if args.data_root else None
    if data_root is not None and not data_root.is_dir():
        log.error("data root %s is not a folder: check --data-root or DATA_ROOT", data_root)
        return EXIT_REFUSED
    try:
        metrics = endpoint_settings(startup, workspace, CLIENT_FILE)
    except ConfigError as exc:
        log.error("%s", exc)
        return EXIT_REFUSED
    forwarder = None
    if startup.forward_logs:
        forwarder = LogForwarder(startup.log_lines_per_second)
        logging.getLogger().addHandler(forwarder)
    return asyncio.run(serve(workspace, startup, data_root, forwarder, metrics))


async def serve(
    workspace: Path,
    startup: ClientStartup,
    data_root: Path | None,
    forwarder: LogForwarder | None,
    metrics: EndpointSettings | None = None,
) -> int:
    """Run the agent until shutdown, SIGTERM or the end of the retry window."""
    files = TlsFiles.named_by(startup, workspace / STARTUP_DIR)
    lives = kit_lives(workspace / STARTUP_DIR, startup, startup.name)
    device = await asyncio.to_thread(probe_device)
    try:
        agent = Agent(workspace, startup, files, data_root, device, forwarder)
    except ConfigError as exc:
        log.error("%s", exc)
        return EXIT_REFUSED
    endpoint = None
    if metrics is not None:
        from flclientd.telemetry import ClientTelemetry  # imports prometheus_client

        try:
            endpoint = serve_metrics(metrics, [ClientTelemetry(agent)], lives)
        except ConfigError as exc:
            log.error("%s", exc)
            return EXIT_REFUSED
    stop_on_signals(agent.request_shutdown)
    kit_watch = asyncio.get_running_loop().create_task(watch_lives(lives))
    collect_garbage_in_bulk()
    notify("READY=1", f"STATUS=client {startup.name} of {startup.project} on {device.device}")
    if data_root is None:
        log.warning(
            "no data root: neither DATA_ROOT nor --data-root is set, so an app whose dataset "
            "names its files relative to the data root fails at this site; set DATA_ROOT "
            "(or pass --data-root) and start the client again"
        )
    log.info(
        "flclientd ready: client %s of project %s, server %s, device %s, data root %s",
        startup.name,
        startup.project,
        startup.server_target,
        device.device,
        data_root or "(not set)",
    )
    try:
        code = await agent.run()
    finally:
        kit_watch.cancel()
        if endpoint is not None:
            await asyncio.to_thread(endpoint.close)
    log.info("flclientd stopped")
    return code
