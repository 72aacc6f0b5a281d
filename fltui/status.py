"""How a state reads on screen: always a glyph, a word and a tone.

The tone names a theme colour (``success``, ``warning``, ``error``,
``muted``), never a literal colour, so themes apply and ``NO_COLOR`` still
leaves the glyph and the word to tell states apart.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass

from rich.cells import cell_len, set_cell_size

from flcore import status as st
from flcore.feed import ClientRow, stale_after


@dataclass(frozen=True)
class Look:
    """Glyph, word and tone of a state."""

    glyph: str
    word: str
    tone: str

    @property
    def label(self) -> str:
        """``● online``."""
        return f"{self.glyph} {self.word}"


ONLINE = Look("●", "online", "success")
STALE = Look("◌", "stale", "warning")
OFFLINE = Look("◌", "offline", "warning")
LOST = Look("✖", "lost", "error")
LEFT = Look("○", "left", "muted")
REVOKED = Look("⊘", "revoked", "error")
"""Dropped because its certificate was revoked: it will not come back with this kit."""
UNKNOWN = Look("?", "unknown", "muted")
"""The console's own link is down: the site may be fine, nobody here can tell."""

_TRAINING = {
    st.NOT_STARTED: Look("○", "not started", "muted"),
    st.STARTING: Look("◔", "starting", "accent"),
    st.STARTED: Look("▶", "started", "success"),
    st.STOPPING: Look("◑", "stopping", "warning"),
    st.PAUSED: Look("⏸", "paused", "warning"),
    st.STOPPED: Look("■", "stopped", "muted"),
    st.FAILED: Look("✖", "failed", "error"),
    st.CROSS_VALIDATING: Look("◇", "cross-val", "accent"),
    st.WAITING_APPROVAL: Look("⏸", "approval", "warning"),
    st.REVOKED: REVOKED,
}


def health(
    row: ClientRow,
    now: float,
    heartbeat_interval: float,
    gone: str | None,
    frozen_at: float | None = None,
) -> Look:
    """Whether a client is online, stale (silent), offline (link down), lost or left.

    ``gone`` is why the server dropped the client (None while registered): a
    client that logged out left on purpose, one whose certificate was revoked
    cannot return with its kit, any other reason means it was lost.
    ``frozen_at`` is when the console's own link broke: from then on nothing
    here is known about the site.
    """
    if frozen_at is not None:
        return UNKNOWN
    if gone is not None:
        return {st.LOGGED_OUT: LEFT, st.REVOKED: REVOKED}.get(gone, LOST)
    if not row.connected:
        return OFFLINE
    if row.last_heartbeat and now - row.last_heartbeat > stale_after(heartbeat_interval):
        return STALE
    return ONLINE


def training(status: str) -> Look:
    """A client's or the server's training status, without the repeated word "training"."""
    return _TRAINING.get(status, Look("?", status.removeprefix("training ") or "unknown", "muted"))


def server_look(status: str) -> Look:
    """The server's status as the header shows it: the full words of the Clara guide."""
    look = training(status)
    return Look(look.glyph, status, look.tone)


def age(seconds: float) -> str:
    """A short, whole-unit age: ``4s``, ``12m``, ``3h``, ``2d``."""
    seconds = max(0, int(seconds))
    if seconds < 100:
        return f"{seconds}s"
    if seconds < 100 * 60:
        return f"{seconds // 60}m"
    if seconds < 48 * 3600:
        return f"{seconds // 3600}h"
    return f"{seconds // 86400}d"


def local_time(stamp: float, form: str) -> str:
    """``stamp`` in local time as ``form`` (``time.strftime``), or question marks as wide as
    that would be where the stamp is no time the platform can show (a peer's NaN or year
    30,000,000 once took the console down)."""
    try:
        return time.strftime(form, time.localtime(stamp))
    except (OverflowError, OSError, ValueError):
        return re.sub(r"[0-9]", "?", time.strftime(form, time.localtime(0)))


def clock_time(stamp: float) -> str:
    """``HH:MM:SS`` in local time."""
    return local_time(stamp, "%H:%M:%S")


def clock_date(stamp: float) -> str:
    """``mm-dd HH:MM`` in local time: a listing's dates, short enough to leave room."""
    return local_time(stamp, "%m-%d %H:%M")


def device(row: ClientRow) -> str:
    """``CPU`` or ``2 GPUs`` (the device name is in the client's detail)."""
    if row.gpu_count:
        return f"{row.gpu_count} GPU" + ("s" if row.gpu_count > 1 else "")
    return row.device.upper() if row.device in ("", "cpu") else row.device


def shortened(name: str, width: int) -> str:
    """``name`` in at most ``width`` cells, cut in the middle with ``…`` when longer.

    Names of one site's instances differ at the end (``hospital-ab``,
    ``hospital-ab_1``) and those of a project's sites often share their
    start, so a cut that drops the end makes two sites look like one:
    the start and the end are kept, the marker says something is missing.
    """
    if cell_len(name) <= width:
        return name
    if width < 2:
        return "…"[:width]
    room = width - 1
    tail = ""
    for char in reversed(name):
        if cell_len(char + tail) > room // 2:
            break
        tail = char + tail
    return set_cell_size(name, room - cell_len(tail)) + "…" + tail
