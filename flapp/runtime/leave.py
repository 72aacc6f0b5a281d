"""How flstack's children end: without tearing down an interpreter that has torch loaded.

Tearing down such an interpreter (clearing torch's thousands of modules and
objects) takes a second or two of CPU. The server waits for the model-init
child to end before round 0 is offered, and a client daemon waits for its
stopped training child before the site is ``training stopped`` (it kills one
that takes longer than its grace). Everything a child writes is complete
before it ends (model files are renamed into place), so it runs the exit
handlers (its own, logging's, and those of the app's code), flushes its
output and leaves.
"""

from __future__ import annotations

import atexit
import os
import sys
from typing import NoReturn


def leave(code: int) -> NoReturn:
    """End the process with ``code`` after its exit handlers, without the teardown."""
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
