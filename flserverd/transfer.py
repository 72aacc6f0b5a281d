"""Apps on the server: receiving uploads into transfer/, deploying them into runs.

An upload lands in a staging folder and replaces ``transfer/<app>`` only
after every file arrived and the app's configs validated (its paths for the
server among them: flcore.serverpaths), so a broken or interrupted upload
never damages the copy that was there. Deploying copies
the app into the run, so later uploads do not change what a run trains.
"""

from __future__ import annotations

import asyncio
import shutil
import uuid
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

from flcore.appconfig import App, load_app
from flcore.folders import FolderError, FolderReceiver, replace_folder, restore_interrupted
from flcore.schema import ConfigError, name_like, shown
from flcore.serverpaths import check_app_paths
from flserverd.runstore import RunStore

FileChunk = tuple[str, int, bytes, bool]
"""A slice of one file of an uploaded app: path, byte offset, bytes, last of its file."""


class TransferError(Exception):
    """An upload or deploy was refused; the message says why and what to do."""


def check_app_name(name: str) -> str:
    """App names become folder names: refuse anything else."""
    problem = name_like(name)
    if problem:
        raise TransferError(f"app name {shown(name)} {problem}")
    return name


class Upload:
    """One upload_folder in progress."""

    def __init__(
        self, store: RunStore, app: str, max_bytes: int, checkpoint_dirs: Sequence[str]
    ) -> None:
        self.store = store
        self.app = check_app_name(app)
        self.checkpoint_dirs = checkpoint_dirs
        staging = store.transfer / f".upload-{uuid.uuid4().hex}"
        self.receiver = FolderReceiver(staging, max_bytes)

    def write(self, path: str, offset: int, data: bytes, eof: bool) -> None:
        """Take one chunk (FolderError on a bad path or size)."""
        self.receiver.write(path, offset, data, eof)

    def finish(self) -> tuple[Path, list[str], set[str]]:
        """Validate the app and move it into place; returns (folder, files, dropped)."""
        try:
            files = self.receiver.finish()
            if not files:
                raise FolderError("the upload holds no files under config/ or resources/")
            app = load_app(self.receiver.staging)
            check_app_paths(app.root, app.server, self.store.workspace, self.checkpoint_dirs)
        except (FolderError, ConfigError) as exc:
            self.receiver.discard()
            raise TransferError(str(exc)) from None
        target = self.store.transfer / self.app
        replace_folder(self.receiver.staging, target)
        return target, files, self.receiver.dropped

    def discard(self) -> None:
        """Forget a failed upload."""
        self.receiver.discard()


async def receive_app(
    store: RunStore,
    app: str,
    total_bytes: int,
    max_mb: int,
    checkpoint_dirs: Sequence[str],
    chunks: AsyncIterator[FileChunk],
) -> Upload:
    """Receive an upload_folder into a staging folder; :meth:`Upload.finish` (in a worker
    thread: it fsyncs every file) puts it in place as ``transfer/<app>``.

    Raises TransferError (or FolderError) with what was wrong; a refused
    upload leaves the app that was there untouched, and its staging folder
    is removed in a worker thread (thousands of files must not stall the
    server's loop).
    """
    max_bytes = max_mb * 1024 * 1024
    if total_bytes > max_bytes:
        raise TransferError(
            f"app is {total_bytes / 1048576:.1f} MiB, over the server's limit of {max_mb} MiB"
        )
    upload = Upload(store, app, max_bytes, checkpoint_dirs)
    try:
        async for path, offset, data, eof in chunks:
            upload.write(path, offset, data, eof)
    except BaseException:
        asyncio.get_running_loop().run_in_executor(None, upload.discard)
        raise
    return upload


def uploaded_app(store: RunStore, app: str) -> App:
    """The checked app ``transfer/<app>``, or TransferError saying to upload it."""
    folder = store.transfer / check_app_name(app)
    restore_interrupted(folder)
    if not folder.is_dir():
        raise TransferError(
            f"no app named {app!r} on the server: upload it first with upload_folder {app}"
        )
    try:
        return load_app(folder)
    except ConfigError as exc:
        raise TransferError(f"app {app!r} is not valid: {exc}") from None


def copy_app(source: Path, target: Path, app: str) -> None:
    """Copy an app folder into a run atomically and remember its name.

    File by file, so that a failure is the OSError it is (``copytree`` gathers them into one
    error without an errno, and a full disk read as an unexpected error), and whatever was
    copied goes again.
    """
    staging = target.with_name(f".{target.name}.{uuid.uuid4().hex}")
    try:
        staging.mkdir(parents=True)
        for path in sorted(source.rglob("*")):  # an uploaded app: folders and plain files
            copy = staging / path.relative_to(source)
            if path.is_dir():
                copy.mkdir(exist_ok=True)
            else:
                shutil.copy2(path, copy)
        (staging / ".app_name").write_text(app + "\n")
        replace_folder(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def client_app_dir(store: RunStore, run_number: int, app: str) -> Path:
    """Where the server keeps the copy of an app that clients of a run fetch."""
    return store.run_dir(run_number) / "deploy" / app
