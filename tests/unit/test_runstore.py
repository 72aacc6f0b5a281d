"""flserverd.runstore.RunStore: publishing models by hard link leaves no temporary name."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from flcore.diskfault import disk_fault
from fldev.smalldisk import small_disk
from flserverd.runstore import RunStore
from flserverd.transfer import copy_app


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


def test_what_a_crash_left_is_cleared_and_an_interrupted_deploy_put_back(tmp_path: Path) -> None:
    """Spools of runs that are not resumed, half uploads and half copies stayed forever; an
    app whose replacement a crash cut off was "not deployed"."""
    store = RunStore(tmp_path)
    left = [
        "run_1/.spool/round_0/site-a.safetensors",
        "run_2/.spool/.running_sum",
        "transfer/.upload-0a1b/config/config_train.json",
        "run_1/.app_server.0a1b/config/config_train.json",
        "run_1/deploy/.digits.0a1b/config/config_train.json",
    ]
    kept = ["transfer/digits/config/config_train.json", "run_1/deploy/digits/config/x.json"]
    for name in (*left, *kept, "run_1/.app_server.old/config/config_train.json"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("{}")
    store.clear_leftovers()
    assert [name for name in left if (tmp_path / name).exists()] == []
    assert all((tmp_path / name).exists() for name in kept)
    assert (tmp_path / "run_1" / "app_server" / "config" / "config_train.json").exists()
    assert not (tmp_path / "run_1" / ".app_server.old").exists()


@pytest.mark.usefixtures("mountable")
def test_an_app_copied_onto_a_full_disk_is_a_disk_fault_and_leaves_nothing(
    tmp_path: Path,
) -> None:
    """copytree gathered the ENOSPC into an error without an errno: the admin read "an
    unexpected error", and the half copy stayed."""
    source = tmp_path / "app"
    (source / "resources").mkdir(parents=True)
    (source / "resources" / "weights.bin").write_bytes(os.urandom(3 * 1024 * 1024))
    disk = tmp_path / "disk"
    disk.mkdir()
    with small_disk(disk, 2):
        with pytest.raises(OSError) as failed:
            copy_app(source, disk / "run_1" / "app_server", "app")
        assert disk_fault(failed.value) is not None
        assert [p.name for p in (disk / "run_1").iterdir()] == []
