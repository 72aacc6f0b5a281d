"""Which training children's private folders a daemon removes from the temp dir
(flclientd.runner.remove_orphans): only those that dead daemons of this user left."""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import pytest

from flclientd.runner import ORPHAN_AGE_S, PRIVATE_DIR_PREFIX, private_folder, remove_orphans

NOBODY = 65534


def _aged(folder: Path) -> Path:
    """``folder``, made when missing, as old as a dead daemon's may be."""
    folder.mkdir(mode=0o700, exist_ok=True)
    then = time.time() - 2 * ORPHAN_AGE_S
    os.utime(folder, (then, then))
    return folder


@pytest.mark.skipif(os.geteuid() != 0, reason="another user's folder needs root")
def test_only_folders_no_live_daemon_holds_and_of_this_user_go(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    live, held = private_folder()
    try:
        _aged(live)
        dead = tmp_path / f"{PRIVATE_DIR_PREFIX}dead"
        dead.mkdir()
        (dead / "ipc.sock").touch()
        _aged(dead)
        young = tmp_path / f"{PRIVATE_DIR_PREFIX}young"  # made a moment ago, not locked yet
        young.mkdir()
        theirs = _aged(tmp_path / f"{PRIVATE_DIR_PREFIX}theirs")
        os.chown(theirs, NOBODY, NOBODY)
        other = _aged(tmp_path / "unrelated")
        assert remove_orphans(tmp_path) == 1
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
            [live.name, young.name, theirs.name, other.name]
        )
    finally:
        os.close(held)
    assert remove_orphans(tmp_path) == 1  # the live one's daemon is gone now
    assert not live.exists()
