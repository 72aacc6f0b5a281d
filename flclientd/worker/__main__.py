"""``python -m flclientd.worker``: the entry point of every rank of the training child."""

from __future__ import annotations

import sys

from flclientd.worker.main import main

sys.exit(main())
