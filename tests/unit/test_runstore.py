"""flserverd.runstore.RunStore: publishing models by hard link leaves no temporary name."""

from __future__ import annotations

import os
from pathlib import Path

from flserverd.runstore import RunStore


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".link"))


def test_publishing_the_file_a_name_already_is_leaves_nothing_behind(tmp_path: Path) -> None:
    """The best model often stays the same round, and a resume publishes again: a rename of a
    link over another link to the same file does nothing, which left `.<name>.link`."""
    store = RunStore(tmp_path)
    run = store.run_dir(1)
    run.mkdir()
    source = run / "round_3.safetensors"
    source.write_bytes(b"model of round 3")
    target = store.best_model(1)
    store.publish(source, target)
    store.publish(source, target)
    assert os.path.samefile(source, target)
    assert leftovers(run) == []


def test_publishing_replaces_the_name_and_clears_a_leftover(tmp_path: Path) -> None:
    store = RunStore(tmp_path)
    run = store.run_dir(1)
    run.mkdir()
    old, new = run / "round_1.safetensors", run / "round_2.safetensors"
    old.write_bytes(b"old")
    new.write_bytes(b"new")
    target = store.global_model(1)
    store.publish(old, target)
    os.link(old, run / f".{target.name}.link")  # what an earlier version (or a crash) left
    store.publish(old, target)
    assert leftovers(run) == []
    store.publish(new, target)
    assert target.read_bytes() == b"new" and os.path.samefile(new, target)
    assert old.read_bytes() == b"old"
    assert leftovers(run) == []
