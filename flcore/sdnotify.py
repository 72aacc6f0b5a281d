"""systemd readiness and status notifications (sd_notify), without a dependency.

The protocol is one datagram to the socket named by $NOTIFY_SOCKET; outside
systemd the variable is unset and every call is a no-op. Tests point the
variable at a socket of their own to see what the daemons announce.
"""

from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger(__name__)


def notify(*fields: str) -> bool:
    """Send e.g. ``notify("READY=1", "STATUS=serving")``; False when not under systemd."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    target = "\0" + address[1:] if address.startswith("@") else address
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.connect(target)
            sock.sendall("\n".join(fields).encode())
    except OSError as exc:
        log.warning("cannot notify systemd at %s: %s", address, exc)
        return False
    return True
