"""Command-line tools stop quietly when whoever reads their output goes away.

``fltui --cmd list_runs | head -2`` closes the pipe after two lines, and Python
raises BrokenPipeError at the next write: a traceback, or ``[Errno 32] Broken
pipe`` where a tool reports the OSErrors it meets. A Unix tool stops there and
says nothing, so the console, ``flclientd show-app`` and ``flprovision`` do too.
Only their command-line entry points use this: a daemon writes to its log, and
its serving path never meets a reader that left.
"""

from __future__ import annotations

import functools
import os
import signal
import sys
from collections.abc import Callable
from typing import ParamSpec

P = ParamSpec("P")

EXIT_READER_GONE = 128 + signal.SIGPIPE
"""The exit code a shell reports for a tool that SIGPIPE stopped (141), as for ``seq 1000000 |
head -1`` under ``set -o pipefail``."""


def stops_when_reader_leaves(main: Callable[P, int]) -> Callable[P, int]:
    """``main``, returning :data:`EXIT_READER_GONE` without a word when its output's reader
    has gone."""

    @functools.wraps(main)
    def run(*args: P.args, **kwargs: P.kwargs) -> int:
        try:
            code = main(*args, **kwargs)
            sys.stdout.flush()
        except BrokenPipeError:
            # Python flushes stdout once more as it exits; that flush would fail and say so.
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            os.close(devnull)
            return EXIT_READER_GONE
        return code

    return run
