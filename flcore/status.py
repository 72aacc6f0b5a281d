"""Status words shown to admins, as in the Clara guide.

They are plain strings on the wire and in check_status output, so the
console, scripts and people all read the same words.
"""

from __future__ import annotations

from dataclasses import dataclass

NOT_STARTED = "training not started"
STARTING = "training starting"
STARTED = "training started"
STOPPED = "training stopped"
STOPPING = "training stopping"
"""A client whose training was aborted or ended, until its training child is really gone:
no status claims a training that is over, nor a stop that has not happened yet."""
FAILED = "training failed"
CROSS_VALIDATING = "cross site validation"
WAITING_APPROVAL = "waiting for approval"
"""A site was told to train an app with custom code that its IT has not approved yet;
``ClientStatus.detail`` names the app and its digest."""
PAUSED = "training paused"
"""A run (on the server) or a site that cannot write to its disk: it goes on by itself once
the write succeeds again."""

FINISHED = "finished"
"""The reason of a run that trained all its rounds and validated the final model (any other
reason of a stopped run says why it stopped before its end)."""

LOGGED_OUT = "logged out"
"""Why the server dropped a client that left on purpose (shutdown, SIGTERM): the
console tells it apart from a client lost to the heartbeat timeout."""

REVOKED = "certificate revoked"
"""The last status of a client whose certificate was revoked, and why the server dropped it:
the console shows the site as revoked rather than lost."""

# Statuses during which a site or the server has a run in progress.
ACTIVE = frozenset({STARTING, STARTED, PAUSED, CROSS_VALIDATING, WAITING_APPROVAL})


@dataclass
class ClientStatus:
    """What a client says about itself: sent on every change and with each heartbeat."""

    status: str = NOT_STARTED
    run_number: int = 0
    round: int = -1
    samples: int = 0
    error: str = ""
    traceback: str = ""
    app: str = ""
    gpus_in_use: int = 0
    cross_validate: bool = False
    detail: str = ""
