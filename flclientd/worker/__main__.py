"""``python -m flclientd.worker``: the entry point of every rank of the training child.

The child ends without tearing down its interpreter: with torch loaded that
takes a second or two of CPU (more than the daemon's grace on a busy
machine) and keeps the site from being ``training stopped`` meanwhile.
Everything the child writes is complete before it answers (model files are
renamed into place), its output is flushed, and the exit handlers (its
own, logging's, and those of the app's code) still run.
"""

from __future__ import annotations

import atexit
import os
import sys

from flclientd.worker.main import main

code = main()
atexit._run_exitfuncs()
sys.stdout.flush()
sys.stderr.flush()
os._exit(code)
