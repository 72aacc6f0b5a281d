"""The run's TensorBoard writer on a disk that fills and has room again (a tmpfs: root only)."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from fldev.smalldisk import fill, free_up, small_disk
from flserverd.tensorboard import ScalarWriter


def test_a_writer_never_written_opens_nothing(tmp_path: Path) -> None:
    """A Training built for a resume that cannot go on yet (retried every 3 s) made one."""
    threads = threading.active_count()
    writer = ScalarWriter(tmp_path / "tb")
    assert threading.active_count() == threads and not (tmp_path / "tb").exists()
    writer.close()


# tensorboard's writer thread ends on the error and prints it, as the daemon's does to stderr.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
@pytest.mark.usefixtures("mountable")
def test_a_write_that_failed_on_a_full_disk_is_not_the_last(tmp_path: Path) -> None:
    """tensorboard's writer keeps its first error: every later round's write failed with a
    stale "disk full" until the server restarted."""
    disk = tmp_path / "disk"
    disk.mkdir()
    with small_disk(disk, 1):
        writer = ScalarWriter(disk / "tb")
        writer.add(0, {"val_accuracy": 0.5})
        fill(disk)
        with pytest.raises(OSError):
            for step in range(1, 200):  # the event file's buffer takes a few first
                writer.add(step, {"val_accuracy": 0.5, "pad" * 200: 1.0})
        free_up(disk)
        writer.add(1000, {"val_accuracy": 0.75})
        writer.close()
        events = EventAccumulator(str(disk / "tb"))
        events.Reload()
        steps = [scalar.step for scalar in events.Scalars("val_accuracy")]
        assert steps[0] == 0 and steps[-1] == 1000
