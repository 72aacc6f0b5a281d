"""Daemon plumbing shared by flserverd and flclientd: stopping on signals."""

from __future__ import annotations

import asyncio
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
