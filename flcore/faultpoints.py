"""Named points in the daemons where the fault suite can stop a process, and why a product
install can never be stopped there.

The daemons call :func:`reached` at the moments a crash is most likely to
lose or double something: half a download, half an upload, half a fold,
half a checkpoint, a checkpoint renamed but not yet committed. In a product
install the call does nothing. It acts only when both of these hold:

* the environment variable :data:`FAULT_ENV` names a point, and
* the development package ``fldev`` is importable *from the same source
  tree as this package*. ``fldev`` is not part of the installed product
  (pyproject.toml leaves it out), so neither a kit's environment nor a
  ``fldev`` folder put on ``PYTHONPATH`` (by a kit, or an app's
  ``resources/``) can turn a point on: a ``fldev`` found anywhere but beside
  ``flcore`` is refused, and the refusal is logged.

What happens at a point (SIGKILL, or holding the process until the test
lets it go) is decided by :mod:`fldev.faultswitch`; this module only names
the points and finds the switch.
"""

from __future__ import annotations

import importlib
import logging
import os
import threading
from collections.abc import Callable, Mapping
from pathlib import Path

log = logging.getLogger(__name__)

FAULT_ENV = "FLSTACK_FAULT"
SWITCH_MODULE = "fldev.faultswitch"

SERVER_DOWNLOAD = "server.download"
"""The server has sent the first chunk of a model download."""
SERVER_UPLOAD = "server.upload"
"""The server has spooled the first chunk of an update."""
SERVER_FOLD = "server.fold"
"""An update is half folded into its round's sum."""
SERVER_CHECKPOINT = "server.checkpoint"
"""The next round's model is half written (temp file, before the rename)."""
SERVER_COMMIT = "server.commit"
"""The next round's model was renamed into place; the state database does not point at it yet."""
SERVER_OUTPUTS = "server.outputs"
"""The round is committed; global_model, metrics.jsonl and TensorBoard are not written yet."""
SERVER_DELETE_RUN = "server.delete_run"
"""A run's history is deleted and its folder renamed aside; the folder is not removed yet."""
CLIENT_DOWNLOAD = "client.download"
"""A client has received the first chunk of a round's global model."""
CLIENT_TRAIN = "client.train"
"""A client has asked its training child to train a round."""
CLIENT_UPLOAD = "client.upload"
"""A client has sent the first chunk of its update."""

POINTS = frozenset(
    {
        SERVER_DOWNLOAD,
        SERVER_UPLOAD,
        SERVER_FOLD,
        SERVER_CHECKPOINT,
        SERVER_COMMIT,
        SERVER_OUTPUTS,
        SERVER_DELETE_RUN,
        CLIENT_DOWNLOAD,
        CLIENT_TRAIN,
        CLIENT_UPLOAD,
    }
)

Switch = Callable[[str], None]

_lock = threading.Lock()
_switch: Switch | None = None
_looked = False


def find_switch(environ: Mapping[str, str]) -> Switch | None:
    """The development switch for the points ``environ`` names, or None (the product's case).

    Returns None, with a warning when a point was named, unless ``fldev``
    sits beside ``flcore`` in one source tree.
    """
    spec = environ.get(FAULT_ENV, "")
    if not spec:
        return None
    try:
        module = importlib.import_module(SWITCH_MODULE)
    except ImportError:
        log.warning(
            "%s is set but ignored: fault points exist in a development checkout only", FAULT_ENV
        )
        return None
    here = Path(__file__).resolve().parent.parent
    if Path(str(module.__file__)).resolve().parent.parent != here:
        log.warning(
            "%s is set but ignored: %s at %s is not part of this checkout (%s)",
            FAULT_ENV,
            SWITCH_MODULE,
            module.__file__,
            here,
        )
        return None
    switch: Switch = module.from_spec(spec, POINTS)
    return switch


def arm() -> None:
    """Read :data:`FAULT_ENV` now (a daemon does at start, so a refusal is logged at once)."""
    global _switch, _looked
    with _lock:
        if not _looked:
            _switch = find_switch(os.environ)
            _looked = True


def reached(point: str) -> None:
    """The process is at ``point``: nothing happens unless a development switch is armed."""
    if not _looked:
        arm()
    if _switch is not None:
        _switch(point)
