"""Crash-safe file replacement (flcore.atomic): the modes of what it writes."""

from __future__ import annotations

import stat
from pathlib import Path

from flcore.atomic import atomic_write_bytes, atomic_writer


def test_files_are_their_owner_s_alone_unless_a_mode_says_otherwise(tmp_path: Path) -> None:
    """The mode is set explicitly, past the umask: a default of 0644 made every model and
    record the daemons wrote readable by all, the units' UMask=0077 notwithstanding."""
    with atomic_writer(tmp_path / "global_model.safetensors") as handle:
        handle.write(b"model")
    atomic_write_bytes(tmp_path / "record.json", b"{}")
    atomic_write_bytes(tmp_path / "approved_apps.json", b"{}", mode=0o644)
    modes = {path.name: stat.S_IMODE(path.stat().st_mode) for path in tmp_path.iterdir()}
    assert modes == {
        "global_model.safetensors": 0o600,
        "record.json": 0o600,
        "approved_apps.json": 0o644,
    }
