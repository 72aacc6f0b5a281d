"""The development half of :mod:`flcore.faultpoints`: what happens when a daemon reaches a
named point, as ``FLSTACK_FAULT`` says.

``FLSTACK_FAULT`` holds one or more comma-separated faults, each
``<action>:<point>[@<n>]``: at the ``n``-th time (1 by default) the process
reaches ``point`` it

* ``kill``: writes one line to stderr and sends itself SIGKILL (a kill -9
  at a known instant, the same in every run), or
* ``hold``: creates the FIFO ``$FLSTACK_FAULT_DIR/<point>.hold`` and blocks
  until someone opens it for writing (:func:`release`), so that a test can
  change the world (fill a disk) at that instant, without sleeping (a point
  reached on the event loop, such as the upload and download points, holds
  the whole daemon meanwhile; the fold and checkpoint points are reached in
  a worker thread), or
* ``fail``: raises :class:`InjectedFailure` there, as a bug in the server
  would (the run stops on "an unexpected error on the server").

Only :func:`flcore.faultpoints.reached` calls into this module, and only in
a development checkout; this module imports nothing of flstack's.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

FAULT_DIR_ENV = "FLSTACK_FAULT_DIR"
ACTIONS = ("kill", "hold", "fail")


class InjectedFailure(RuntimeError):
    """The error a ``fail`` fault raises."""


@dataclass
class Fault:
    """One armed fault: do ``action`` at the ``nth`` time ``point`` is reached."""

    action: str
    point: str
    nth: int
    seen: int = 0


class FaultSwitch:
    """Counts the points a process reaches and acts at the armed ones (thread-safe)."""

    def __init__(self, faults: list[Fault], hold_dir: Path | None) -> None:
        self.faults = faults
        self.hold_dir = hold_dir
        self._lock = threading.Lock()

    def __call__(self, point: str) -> None:
        due = []
        with self._lock:
            for fault in self.faults:
                if fault.point == point:
                    fault.seen += 1
                    if fault.seen == fault.nth:
                        due.append(fault)
        for fault in due:
            self._act(fault)

    def _act(self, fault: Fault) -> None:
        what = f"fault point {fault.point} reached ({fault.seen})"
        if fault.action == "kill":
            sys.stderr.write(f"{what}: SIGKILL\n")
            sys.stderr.flush()
            os.kill(os.getpid(), signal.SIGKILL)
            return
        if fault.action == "fail":
            raise InjectedFailure(f"fault point {fault.point}: injected failure")
        assert self.hold_dir is not None
        fifo = hold_path(self.hold_dir, fault.point)
        os.mkfifo(fifo)
        sys.stderr.write(f"{what}: holding until {fifo} is opened\n")
        sys.stderr.flush()
        with fifo.open("rb") as handle:
            handle.read()
        fifo.unlink()
        sys.stderr.write(f"fault point {fault.point} released\n")
        sys.stderr.flush()


def hold_path(hold_dir: Path, point: str) -> Path:
    """The FIFO a process holding at ``point`` waits on."""
    return hold_dir / f"{point}.hold"


def release(hold_dir: Path, point: str) -> None:
    """Let a process holding at ``point`` go on (it must be holding already)."""
    with hold_path(hold_dir, point).open("wb"):
        pass


def fault_spec(action: str, point: str, nth: int = 1) -> str:
    """One fault as ``FLSTACK_FAULT`` writes it."""
    return f"{action}:{point}@{nth}"


def from_spec(spec: str, points: Collection[str]) -> FaultSwitch:
    """Parse ``FLSTACK_FAULT``; a fault that cannot be read stops the process at start."""
    faults = []
    for item in filter(None, (part.strip() for part in spec.split(","))):
        action, _, rest = item.partition(":")
        point, _, nth = rest.partition("@")
        if action not in ACTIONS or point not in points or not (nth or "1").isdigit():
            raise SystemExit(
                f"FLSTACK_FAULT: cannot read {item!r}: expected <{'|'.join(ACTIONS)}>:<point>[@n] "
                f"with a point among {', '.join(sorted(points))}"
            )
        faults.append(Fault(action, point, int(nth or "1")))
    hold_dir = os.environ.get(FAULT_DIR_ENV)
    if any(f.action == "hold" for f in faults) and not hold_dir:
        raise SystemExit(f"FLSTACK_FAULT: a hold needs {FAULT_DIR_ENV} (where its FIFO goes)")
    return FaultSwitch(faults, Path(hold_dir) if hold_dir else None)
