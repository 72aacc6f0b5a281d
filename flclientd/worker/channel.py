"""The child's end of the socket to the daemon (rank 0 only).

A thread reads requests into a queue so that the daemon's going away is
noticed at once, even in the middle of an epoch: with nobody left to take
its results, the child kills its whole process group (other ranks,
DataLoader workers) rather than hold a GPU for nothing.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import signal
import socket
import threading
from pathlib import Path
from typing import Any

from flclientd.worker.protocol import OP_STOP, decode, encode

logger = logging.getLogger(__name__)


class ParentChannel:
    """JSON lines to and from the daemon over its Unix socket."""

    def __init__(self, path: str) -> None:
        self._path = Path(path)
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.connect(path)
        self._send_lock = threading.Lock()
        self._requests: queue.Queue[dict[str, Any]] = queue.Queue()
        self._stopping = threading.Event()
        threading.Thread(target=self._read, name="parent-channel", daemon=True).start()

    def send(self, message: dict[str, Any]) -> None:
        """Send one message (safe from any thread)."""
        with self._send_lock:
            self._sock.sendall(encode(message))

    def next_request(self) -> dict[str, Any]:
        """Block until the daemon asks for something."""
        return self._requests.get()

    def close(self) -> None:
        """Close the socket on a requested exit."""
        self._stopping.set()
        self._sock.close()

    def _read(self) -> None:
        with self._sock.makefile("rb") as stream:
            try:
                for line in stream:
                    try:
                        request = decode(line)
                    except ValueError as exc:
                        logger.error("ignored a malformed request from the daemon: %s", exc)
                        continue
                    if request.get("op") == OP_STOP:
                        self._stopping.set()
                    self._requests.put(request)
            except OSError:
                pass
        if not self._stopping.is_set():
            logger.error("the client daemon went away; stopping the training process")
            self._remove_daemon_folder()
            # The daemon gives the child a process group of its own; a group shared
            # with whoever started us (not the daemon, then) is not ours to kill.
            if os.getpgrp() != os.getpgid(os.getppid()):
                os.killpg(os.getpgrp(), signal.SIGKILL)
            os.kill(os.getpid(), signal.SIGKILL)

    def _remove_daemon_folder(self) -> None:
        """Remove what the daemon no longer can: its private folder, if only ours is in it."""
        self._path.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            self._path.parent.rmdir()
