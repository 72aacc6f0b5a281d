"""TensorBoard event files for a run's metrics.

Uses the tensorboard package's event writer, which (unlike the torch-side
writers) does not import torch: the server daemon stays small.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

from tensorboard.compat.proto import event_pb2, summary_pb2
from tensorboard.summary.writer.event_file_writer import EventFileWriter


class ScalarWriter:
    """Appends scalar values to a run's TensorBoard log folder.

    The event file is opened at the first write, and anew after a write failed: the
    tensorboard writer keeps its first error and raises it at every later write, so one full
    disk would have failed the files of every later round, and a writer opened for a resume
    that could not go on would have left its thread and its file behind at every retry.
    """

    def __init__(self, logdir: Path) -> None:
        self._logdir = logdir
        self._writer: EventFileWriter | None = None

    def add(self, step: int, values: dict[str, float]) -> None:
        """Record one step's scalars and flush them to disk."""
        summary = summary_pb2.Summary(
            value=[summary_pb2.Summary.Value(tag=k, simple_value=v) for k, v in values.items()]
        )
        if self._writer is None:
            self._logdir.mkdir(parents=True, exist_ok=True)
            self._writer = EventFileWriter(str(self._logdir))
        try:
            self._writer.add_event(
                event_pb2.Event(wall_time=time.time(), step=step, summary=summary)
            )
            self._writer.flush()
        except Exception:
            writer, self._writer = self._writer, None
            with contextlib.suppress(OSError):  # the error is the one being raised
                writer.close()
            raise

    def close(self) -> None:
        """Flush and close the event file."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None
