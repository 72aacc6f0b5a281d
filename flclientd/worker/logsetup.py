"""Logging of the training child, in lines the daemon can read the level back from."""

from __future__ import annotations

import logging
import sys

from flclientd.worker.protocol import mark_log_line


class MarkedFormatter(logging.Formatter):
    """Marks every line of a record (tracebacks included) with the record's level."""

    def format(self, record: logging.LogRecord) -> str:
        """The record as marked lines."""
        text = super().format(record)
        return "\n".join(mark_log_line(record.levelno, line) for line in text.splitlines())


def setup_child_logging(rank: int) -> None:
    """Send all records to stderr, marked, naming the rank when there are several."""
    handler = logging.StreamHandler(sys.stderr)
    where = f"rank {rank} " if rank else ""
    handler.setFormatter(MarkedFormatter(f"{where}%(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    logging.captureWarnings(True)
