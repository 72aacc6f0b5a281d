"""``python -m flclientd.worker``: the entry point of every rank of the training child (which
ends without tearing down torch: :mod:`flapp.runtime.leave`)."""

from __future__ import annotations

from flapp.runtime.leave import leave
from flclientd.worker.main import main

leave(main())
