"""Daemon plumbing shared by flserverd and flclientd: the command line and start-up they
have in common, stopping on signals, memory arenas, process limits."""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import errno
import fcntl
import functools
import gc
import logging
import os
import resource
import signal
import socket
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol, TypeVar

from flcore import faultpoints
from flcore.certlife import NotValidYet, check_lives, kit_lives
from flcore.kitsig import KitSignatureError, verify_startup
from flcore.logs import setup_logging
from flcore.schema import ConfigError
from flcore.sdnotify import notify
from flcore.startup import STARTUP_DIR
from flcore.tls import NamesTlsFiles

log = logging.getLogger(__name__)


class KitConfig(NamesTlsFiles, Protocol):
    """A daemon's startup config: the kit's PEM files and the participant's name."""

    @property
    def name(self) -> str:
        """The participant the kit was issued to."""


S = TypeVar("S", bound=KitConfig)

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
DAEMON_UMASK = 0o077
"""Every file and folder a daemon or its training child creates is its user's alone (models,
metrics, run folders), as the units' ``UMask=`` has it, however the daemon was started."""


def daemon_parser(prog: str, description: str, workspace: str) -> argparse.ArgumentParser:
    """The command line both daemons start with: ``--workspace`` (``workspace`` says whose)
    and ``--log-level``."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument(
        "--workspace",
        type=Path,
        required=True,
        help=f"the {workspace} workspace: the folder that holds the kit's startup/ folder",
    )
    parser.add_argument(
        "--log-level",
        default="INFO",
        type=str.upper,
        choices=LOG_LEVELS,
        help="DEBUG, INFO, WARNING or ERROR",
    )
    return parser


EXIT_KIT = 2
"""The kit cannot be used as it is: systemd does not start the daemon again."""
EXIT_RETRY = 3
"""Worth starting again (systemd does, after 5 s): the server was unreachable, or the
clock is behind the kit's certificates (NTP corrects it soon after boot)."""


def start_daemon(
    args: argparse.Namespace, load: Callable[[Path], S], daemon_log: logging.Logger
) -> tuple[Path, S] | int:
    """What both daemons do before anything else: files for their user alone, no core
    dumps, room for connections, few malloc arenas, logging to stderr, then the kit's
    signature, its startup config (refused where others may change it) and its
    certificates' validity (an ended one is refused, one that ends soon warned about).

    Returns the resolved workspace and the loaded config, or after logging (to
    ``daemon_log``) why the kit cannot be used, the exit code: :data:`EXIT_RETRY` when
    a certificate is not valid yet by this machine's clock, :data:`EXIT_KIT` otherwise.
    """
    os.umask(DAEMON_UMASK)
    forbid_core_dumps()
    raise_open_files()
    limit_malloc_arenas()
    setup_logging(args.log_level)
    faultpoints.arm()
    workspace: Path = args.workspace.resolve()
    try:
        verify_startup(workspace / STARTUP_DIR)
        config = load(workspace)
        check_lives(kit_lives(workspace / STARTUP_DIR, config, config.name), datetime.now(UTC))
        return workspace, config
    except NotValidYet as exc:
        daemon_log.error("%s; exiting to be started again", exc)
        return EXIT_RETRY
    except (KitSignatureError, ConfigError) as exc:
        daemon_log.error("%s", exc)
        return EXIT_KIT
    except OSError as exc:  # a kit file the daemon's user may not read, a name too long
        daemon_log.error(
            "cannot read the kit: %s: %s; check that this user may read every file of "
            "startup/ and local/",
            exc.filename or workspace,
            exc.strerror or exc,
        )
        return EXIT_KIT


def stop_on_signals(stop: Callable[[], None]) -> None:
    """SIGTERM or SIGINT calls ``stop`` (a clean stop); a second one exits at once.

    The second signal is the way out when a clean stop hangs, as systemd and
    people at a terminal expect.
    """
    loop = asyncio.get_running_loop()
    received: list[int] = []

    def on_signal(signum: int) -> None:
        name = signal.Signals(signum).name
        if received:
            log.warning("second %s: exiting at once", name)
            os._exit(1)
        received.append(signum)
        log.info("%s received: stopping", name)
        notify("STOPPING=1")
        stop()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)


def hold_workspace(path: Path, program: str) -> int:
    """Lock file ``path`` for as long as this process lives; returns its descriptor.

    Two daemons on one workspace would each take the other's files for leftovers of a crash:
    a second flserverd, before it found its ports taken, deleted the accepted updates of the
    run the first one was collecting.

    Raises:
        ConfigError: another process holds the lock.
    """
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise ConfigError(
            f"another {program} is running on the workspace {path.parent.parent}; stop it "
            "first (systemctl status, or the start script of this kit)"
        ) from None
    return fd


def listen_problem(address: str) -> str:
    """Why a server cannot listen on ``address`` (``host:port``), found by binding it as gRPC
    does: gRPC says only that it failed, and to set one of its own variables to learn why.
    """
    host, _, port = address.rpartition(":")
    host = host.strip("[]")
    try:
        found = socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError, ValueError):
        return f"cannot listen on {address}: {host} is no name or address this machine knows"
    reasons = {
        errno.EADDRINUSE: "the address is in use; is another server running? (ss -ltnp "
        f"shows which process listens on port {port})",
        errno.EADDRNOTAVAIL: f"{host} is no address of this machine",
        errno.EACCES: "this user may not listen on a port below 1024: choose another port",
    }
    for family, kind, protocol, _, where in found:
        with socket.socket(family, kind, protocol) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gRPC does
            try:
                probe.bind(where)
            except OSError as exc:
                reason = reasons.get(exc.errno or 0, exc.strerror or str(exc))
                return f"cannot listen on {address}: {reason}"
    return f"cannot listen on {address}, though the address is free now: start the server again"


OPEN_FILES_WANTED = 65_536
PR_SET_DUMPABLE = 4  # prctl(2)


def forbid_core_dumps() -> None:
    """No core file, ever, from a daemon or the children it starts.

    A core dump holds the process's memory: the kit's private key, login
    tokens, models and site data, written to wherever the system keeps
    cores, readable by whoever reads those. The limit is inherited, and a
    hard limit of 0 cannot be raised again by anything the daemon runs.

    The process is also made not dumpable: then only root may read its memory and its
    environment under /proc, not the children it starts as the same user (an app's code
    there read the server's MLflow credentials from /proc/<parent>/environ).
    """
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    libc = _libc()
    if libc is not None:
        libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)


def raise_open_files() -> int:
    """Lift the soft limit on open files towards the hard one; returns the limit now.

    A server holds a descriptor per connection, and systems often start
    processes at 1,024.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = OPEN_FILES_WANTED if hard == resource.RLIM_INFINITY else min(hard, OPEN_FILES_WANTED)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
        soft = wanted
    return soft


M_ARENA_MAX = -8  # glibc's mallopt parameter number
MALLOC_ARENAS = 2


@functools.cache
def _libc() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None


GC_YOUNG_OBJECTS = 50_000
"""Container objects a daemon allocates (net) before the garbage collector's young pass."""


def collect_garbage_in_bulk() -> None:
    """Collect cyclic garbage in fewer, larger passes, and never scan what startup loaded.

    Called once a daemon is ready. With Python's default thresholds (700,
    10, 10) a server with 1,000 clients heartbeating made a young pass every
    ~0.1 s, an older one (5-15 ms: each client's long-lived objects pass
    through it) every ~0.4 s and a full one (~100 ms) every few minutes,
    landing inside fan-outs and heartbeats: 0.8-1.1 s of collection in a
    50 s check, against ~0.1 s with these settings (docs/benchmarks.md §12,
    "The garbage collector"). Most of a daemon's containers (messages,
    futures, tasks) are freed by their reference counts long before a pass;
    what a pass finds is the rare cycle, which now waits a little longer.
    The modules, classes and settings loaded at start live as long as the
    daemon, so ``gc.freeze`` takes them out of every later pass.
    """
    gc.freeze()
    gc.set_threshold(GC_YOUNG_OBJECTS, 10, 10)


def return_free_memory() -> None:
    """Hand the memory malloc keeps free back to the system (glibc's ``malloc_trim``).

    A model transfer frees its chunk buffers when it ends, but glibc keeps
    freed memory below the top of its heaps, so the server's resident
    memory after a round of 32 transfers stayed ~20-30 MB above what it
    used (docs/benchmarks.md §12, "Uploads take turns"). Elsewhere than
    glibc it does nothing.
    """
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)


def limit_malloc_arenas() -> None:
    """Keep glibc to a couple of malloc arenas.

    glibc gives threads their own arenas, and each keeps the freed 1 MiB
    chunk buffers of the gRPC streams it served, so a server's memory grew
    with every client uploading at once (about 65 MB per client for a 25 M
    parameter model). Two arenas reuse those buffers instead; round times
    are unchanged (docs/benchmarks.md). Elsewhere than glibc it does nothing.
    """
    libc = _libc()
    if libc is None:
        return
    if not libc.mallopt(M_ARENA_MAX, MALLOC_ARENAS):
        log.debug("mallopt(M_ARENA_MAX) was refused")
