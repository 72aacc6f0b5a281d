"""Logging for daemons: one line per event on stderr, journald-aware.

Under systemd (JOURNAL_STREAM set) journald adds its own timestamps, so lines
carry a syslog priority prefix instead, which makes ``journalctl -p warning``
work. Elsewhere lines start with a timestamp.
"""

from __future__ import annotations

import logging
import os
import sys

from flcore.feed import MAX_TEXT, clip

_PRIORITIES = {
    logging.CRITICAL: 2,
    logging.ERROR: 3,
    logging.WARNING: 4,
    logging.INFO: 6,
    logging.DEBUG: 7,
}


class JournaldFormatter(logging.Formatter):
    """Prefix each line with ``<priority>`` for journald."""

    def format(self, record: logging.LogRecord) -> str:
        """Render the record with its syslog priority prefix."""
        priority = _PRIORITIES.get(record.levelno, 6)
        return f"<{priority}>{super().format(record)}"


def one_line(text: str, limit: int = MAX_TEXT) -> str:
    """A peer's string as a log argument: cut to ``limit``, its controls (newlines,
    escapes, bidirectional overrides) written as Python escapes. A newline followed by
    ``<3>`` would forge a journal line of another priority, and a megabyte would fill the
    log with one line."""
    return repr(clip(text, limit))[1:-1]


def setup_logging(level: str = "INFO") -> None:
    """Send every log record at ``level`` and above to stderr, once per process."""
    handler = logging.StreamHandler(sys.stderr)
    if os.environ.get("JOURNAL_STREAM"):
        handler.setFormatter(JournaldFormatter("%(name)s: %(message)s"))
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # grpc's own loggers are chatty at INFO about reconnects we handle ourselves.
    logging.getLogger("grpc").setLevel(logging.WARNING)
