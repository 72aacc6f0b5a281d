"""Where a run's files live on the server, and how they are written.

::

    <workspace>/transfer/<app>/            uploaded apps (config/ and resources/ only)
    <workspace>/run_<N>/app_server/        the app deployed to the server for run N
    <workspace>/run_<N>/models/round_<r>.safetensors   input model of round r (the last
                                           keep_round_models rounds and the best are kept)
    <workspace>/run_<N>/global_model.safetensors       latest global model (hard link)
    <workspace>/run_<N>/best_global_model.safetensors  best by the validation metric
    <workspace>/run_<N>/metrics.jsonl      one JSON object per completed round
    <workspace>/run_<N>/tb/                TensorBoard event files
    <workspace>/run_<N>/.spool/            uploads in flight (deleted at start)
    <workspace>/run_<N>/.spool/round_<r>/  accepted updates of round r, until it is aggregated
    <workspace>/run_<N>/mlflow_run.json    the MLflow run this run logs to (flserverd.tracking)
    <workspace>/state/deleting/run_<N>.<hex>/  a deleted run's folder, until it is removed

Models are only ever replaced by rename (or a hard link renamed into place),
so a reader or a crash sees either the old file or the new one.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from flcore.atomic import fsync_dir
from flcore.diskfault import free_bytes
from flcore.folders import restore_interrupted
from flserverd.statedb import RoundSummary

log = logging.getLogger(__name__)

GLOBAL_MODEL = "global_model.safetensors"
BEST_MODEL = "best_global_model.safetensors"
SPOOL_DIR = ".spool"
DELETING_DIR = "deleting"
"""Subfolder of ``state/`` that a deleted run's folder is renamed into before it is removed:
the server's own, where neither a run nor an app's MLflow store may be (flcore.serverpaths)."""


class RunStore:
    """Paths and file operations of the server workspace."""

    def __init__(self, workspace: Path) -> None:
        self.workspace = workspace
        self.transfer = workspace / "transfer"
        self.transfer.mkdir(exist_ok=True)
        self.deleting = workspace / "state" / DELETING_DIR

    def run_dir(self, run_number: int) -> Path:
        """The folder of run N (``run_N``)."""
        return self.workspace / f"run_{run_number}"

    def create_run(self, run_number: int) -> bool:
        """Create ``run_N/`` if needed; returns True when it already existed."""
        path = self.run_dir(run_number)
        existed = path.is_dir()
        path.mkdir(exist_ok=True)
        return existed

    def server_app(self, run_number: int) -> Path:
        """Where ``deploy <app> server`` puts the app."""
        return self.run_dir(run_number) / "app_server"

    def deployed_app_name(self, run_number: int) -> str:
        """Name of the app deployed to the server for a run ('' when none)."""
        marker = self.server_app(run_number) / ".app_name"
        return marker.read_text().strip() if marker.exists() else ""

    def round_model(self, run_number: int, round_number: int) -> Path:
        """The input model of a round (the output of the previous one)."""
        return self.run_dir(run_number) / "models" / f"round_{round_number}.safetensors"

    def global_model(self, run_number: int) -> Path:
        """The latest global model, for people and scripts."""
        return self.run_dir(run_number) / GLOBAL_MODEL

    def best_model(self, run_number: int) -> Path:
        """The best global model so far by the validation metric."""
        return self.run_dir(run_number) / BEST_MODEL

    def spool_dir(self, run_number: int) -> Path:
        """Uploads being received for a run."""
        path = self.run_dir(run_number) / SPOOL_DIR
        path.mkdir(parents=True, exist_ok=True)
        return path

    def spool_usage(self, run_number: int) -> tuple[int, int]:
        """Files and bytes in a run's spool now: uploads being received and accepted updates
        waiting for their round's aggregation (creates nothing; safe from any thread)."""
        files = size = 0
        for info in _files(self.run_dir(run_number) / SPOOL_DIR):
            size += info.st_size
            files += 1
        return files, size

    def run_bytes(self, run_number: int) -> int:
        """Bytes run N's folder holds: each file once, however many names it has (the global
        models are hard links to round models), links not followed; safe from any thread."""
        sizes = {
            (info.st_dev, info.st_ino): info.st_size for info in _files(self.run_dir(run_number))
        }
        return sum(sizes.values())

    def aside_problem(self, run_number: int) -> str:
        """Why run N's folder cannot be taken away in one rename ("" when it can, or when the
        run has no folder): the server removes only folders of its own, inside the workspace."""
        folder = self.run_dir(run_number)
        if folder.is_symlink():
            return (
                f"run_{run_number} is a link to {os.readlink(folder)}, not a folder of the "
                "server's own: remove the link (and what it leads to, if you mean to) by hand"
            )
        if folder.is_dir() and folder.stat().st_dev != self.deleting.parent.stat().st_dev:
            return (
                f"run_{run_number} is on another file system than the server's state/ folder, "
                "so it cannot be taken away in one step: remove it by hand"
            )
        return ""

    def set_aside(self, run_number: int) -> Path | None:
        """Take run N's folder away in one rename, into ``state/deleting/``, where it waits to
        be removed (off the server's loop; a start removes what a crash left there); None when
        the run has no folder. Nothing else of the workspace moves."""
        folder = self.run_dir(run_number)
        if folder.is_symlink() or not folder.is_dir():
            return None
        self.deleting.mkdir(exist_ok=True)
        target = self.deleting / f"{folder.name}.{uuid.uuid4().hex}"
        os.rename(folder, target)
        fsync_dir(self.workspace)
        return target

    def keep_update(self, run_number: int, round_number: int, instance: str, spool: Path) -> Path:
        """Move an accepted update's spool file into its round's folder, where it waits to be
        folded (:class:`flserverd.aggregator.CanonicalFold`); returns its new path."""
        folder = self.round_updates(run_number, round_number)
        folder.mkdir(exist_ok=True)
        target = folder / f"{instance}.safetensors"
        os.replace(spool, target)
        return target

    def drop_round_updates(self, run_number: int, round_number: int) -> None:
        """Delete the kept updates of a round that was aggregated."""
        shutil.rmtree(self.round_updates(run_number, round_number), ignore_errors=True)

    def round_updates(self, run_number: int, round_number: int) -> Path:
        """The folder where a round's accepted updates wait until it is aggregated."""
        return self.spool_dir(run_number) / f"round_{round_number}"

    def clear_spool(self, run_number: int) -> None:
        """Delete half-received uploads (after a restart they are worthless)."""
        shutil.rmtree(self.run_dir(run_number) / SPOOL_DIR, ignore_errors=True)

    def clear_leftovers(self) -> None:
        """At start: what uploads, deploys and rounds cut short by a crash left (every run's
        spool: a resumed run's clients send again; apps half uploaded or half copied), and an
        app whose replacement a crash cut off put back."""
        for previous in (
            *self.workspace.glob("run_*/.*.old"),
            *self.workspace.glob("run_*/*/.*.old"),
        ):
            restore_interrupted(previous.with_name(previous.name[1 : -len(".old")]))
        for folder in self.deleting.glob("run_*"):
            try:
                shutil.rmtree(folder)
            except OSError as exc:
                log.warning("could not remove %s, a deleted run's folder: %s", folder, exc)
            else:
                log.info("removed %s, a deleted run's folder a stop had left", folder)
        for folder in (
            *self.workspace.glob(f"run_*/{SPOOL_DIR}"),
            *self.transfer.glob(".upload-*"),
            *self.workspace.glob("run_*/.app_server.*"),
            *self.workspace.glob("run_*/deploy/.*.*"),
        ):
            if not folder.name.endswith(".old"):
                shutil.rmtree(folder, ignore_errors=True)

    def clear_outputs(self, run_number: int, keep_round: int) -> None:
        """Forget what an earlier start of run N produced (it is trained again from the
        start): models but the initial one of ``keep_round``, metrics, TensorBoard files,
        uploads and cross-site results. Without this, metrics.jsonl would hold the rounds of
        both starts."""
        folder = self.run_dir(run_number)
        self.clear_spool(run_number)
        for name in ("cross_site", "tb"):
            shutil.rmtree(folder / name, ignore_errors=True)
        for name in ("cross_site_validation.json", "metrics.jsonl", GLOBAL_MODEL, BEST_MODEL):
            (folder / name).unlink(missing_ok=True)
        self.drop_round_models(run_number, {keep_round})

    def free_bytes(self) -> int:
        """Bytes free in the workspace's file system."""
        return free_bytes(self.workspace)

    def publish(self, source: Path, target: Path) -> None:
        """Make ``target`` the same file as ``source`` atomically (a hard link, no copy).

        When it already is (the best model did not change, a resume publishes
        again), nothing is done: renaming a link over another link to the same
        file does nothing and would leave the temporary name behind.
        """
        tmp = target.with_name(f".{target.name}.link")
        tmp.unlink(missing_ok=True)  # left by a crash (or by a version before this check)
        if target.exists() and os.path.samefile(source, target):
            return
        os.link(source, tmp)
        os.replace(tmp, target)
        fsync_dir(target.parent)

    def drop_round_models(self, run_number: int, keep: set[int]) -> None:
        """Delete round models no longer needed to resume (hard links keep published ones)."""
        folder = self.run_dir(run_number) / "models"
        for path in folder.glob("round_*.safetensors"):
            number = path.stem.removeprefix("round_")
            if number.isdigit() and int(number) not in keep:
                path.unlink(missing_ok=True)
        # A checkpoint cut off by a crash or a full disk leaves its temp file (flcore.atomic).
        for path in folder.glob(".round_*.safetensors.*.tmp"):
            path.unlink(missing_ok=True)

    def append_metrics(self, summary: RoundSummary) -> None:
        """Append one round's metrics to ``metrics.jsonl`` (one JSON object per line)."""
        path = self.run_dir(summary.run) / "metrics.jsonl"
        with path.open("a+b") as handle:
            # A line cut short by a crash stays a line of its own; readers skip it.
            start = b"\n" if handle.tell() and not _ends_with_newline(handle) else b""
            line = json.dumps(summary.as_json(), sort_keys=True).encode()
            handle.write(start + line + b"\n")
            handle.flush()
            os.fsync(handle.fileno())

    def metrics_times(self, run_number: int) -> set[float]:
        """The ``time`` of every record in ``metrics.jsonl`` (to find what a crash cut off)."""
        path = self.run_dir(run_number) / "metrics.jsonl"
        if not path.exists():
            return set()
        times = set()
        for line in path.read_bytes().splitlines():  # a stray byte spoils its line only
            try:
                times.add(float(json.loads(line)["time"]))
            except (ValueError, KeyError, TypeError):  # UnicodeDecodeError is a ValueError
                continue  # a line half-written by a crash
        return times

    def tensorboard_dir(self, run_number: int) -> Path:
        """Folder of the TensorBoard event files of a run."""
        return self.run_dir(run_number) / "tb"


def _files(folder: Path) -> Iterator[os.stat_result]:
    """What ``os.lstat`` says of every file under ``folder`` (links are not followed); an
    entry that goes meanwhile (a file folded, a round's folder dropped) is left out."""
    folders = [folder]
    while folders:
        try:
            with os.scandir(folders.pop()) as entries:
                for entry in entries:
                    with contextlib.suppress(FileNotFoundError):
                        if entry.is_dir(follow_symlinks=False):
                            folders.append(Path(entry.path))
                        else:
                            yield entry.stat(follow_symlinks=False)
        except (FileNotFoundError, NotADirectoryError):
            continue


def _ends_with_newline(handle: BinaryIO) -> bool:
    handle.seek(-1, os.SEEK_END)
    last = handle.read(1)
    handle.seek(0, os.SEEK_END)
    return last == b"\n"
