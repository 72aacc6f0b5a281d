"""Daemon plumbing shared by flserverd and flclientd: stopping on signals, memory arenas."""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import signal
from collections.abc import Callable

from flcore.sdnotify import notify

log = logging.getLogger(__name__)


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


M_ARENA_MAX = -8  # glibc's mallopt parameter number
MALLOC_ARENAS = 2


def limit_malloc_arenas() -> None:
    """Keep glibc to a couple of malloc arenas.

    glibc gives threads their own arenas, and each keeps the freed 1 MiB
    chunk buffers of the gRPC streams it served, so a server's memory grew
    with every client uploading at once (about 65 MB per client for a 25 M
    parameter model). Two arenas reuse those buffers instead; round times
    are unchanged (docs/benchmarks.md). Elsewhere than glibc it does nothing.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    if not libc.mallopt(M_ARENA_MAX, MALLOC_ARENAS):
        log.debug("mallopt(M_ARENA_MAX) was refused")
