"""App folders on the wire: what may be sent, and checking what arrives.

upload_folder and deploy move app folders file by file in chunks. The sender
refuses links and special files (they could point outside the app); the
receiver trusts nothing: every path must be relative, free of ``..`` and
inside ``config/`` or ``resources/`` (anything else is dropped, as Clara
does), and the total size and file count are bounded before anything is
written.
"""

from __future__ import annotations

import errno
import importlib.machinery
import io
import os
import re
import shutil
import stat
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from flcore.appconfig import APP_TOP_LEVEL
from flcore.atomic import fsync_dir, fsync_tree
from flcore.tensorfile import CHUNK_BYTES

MAX_FILES = 10_000


class FolderError(ValueError):
    """An app folder or its stream is not acceptable; the message says why."""


MAX_NAME_BYTES = 255
"""Longest file or folder name, in UTF-8 bytes: NAME_MAX of the usual Linux, macOS and Windows
file systems."""
MAX_PATH_BYTES = 1024
"""Longest path inside an app, in UTF-8 bytes: a quarter of Linux's PATH_MAX (4096), which
leaves room for the folder the app lands in (a workspace, ``run_N/app_<instance>``)."""
MAX_PATH_DEPTH = 32
"""Most folders a path inside an app may go down; real apps use four or five."""
BYTECODE_DIR = "__pycache__"
"""Python's compiled-code folder: never sent, and refused when it arrives, so that the code a
site reviews and approves is the code it runs (a stale ``.pyc`` there would run instead)."""

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")  # C0, DEL and C1: a terminal acts on all


def shown_path(raw: str, limit: int = 80) -> str:
    """A path as messages quote it: at most ``limit`` characters, so that a 10 KB name cannot
    flood a reply or a log."""
    return repr(raw if len(raw) <= limit else raw[:limit] + "...")


def check_relpath(raw: str) -> PurePosixPath:
    """Accept only plain relative POSIX paths inside the folder, within every limit a file
    system sets (name and path length, depth, no NUL or control characters, valid UTF-8).

    Checked by the sender before it sends and by the receiver before it creates anything, so
    a name no disk can hold is refused with its reason instead of failing half-way with an
    ``OSError``.
    """
    where = shown_path(raw)
    if not raw:
        raise FolderError("invalid path '' in upload: a file must have a name")
    if "\\" in raw:
        raise FolderError(f"invalid path {where} in upload: use '/' between folders, not '\\'")
    if _CONTROL.search(raw):
        raise FolderError(
            f"invalid path {where} in upload: NUL, newline and other control characters "
            "are not allowed in file names"
        )
    try:
        length = len(raw.encode("utf-8"))
    except UnicodeEncodeError:
        raise FolderError(
            f"invalid path {where} in upload: the name is not valid UTF-8; rename the file"
        ) from None
    path = PurePosixPath(raw)
    if path.is_absolute():
        raise FolderError(f"absolute path {where} refused: paths must be relative to the app")
    parts = raw.split("/")
    if len(parts) > MAX_PATH_DEPTH:
        raise FolderError(
            f"path {where} refused: it is {len(parts):,} levels deep, and app paths may be "
            f"at most {MAX_PATH_DEPTH}"
        )
    if any(part in ("..", ".", "") for part in parts):
        raise FolderError(f"path {where} refused: '..' and '.' are not allowed in app paths")
    if length > MAX_PATH_BYTES:
        raise FolderError(
            f"path {where} refused: it is {length:,} bytes long, and app paths may be at most "
            f"{MAX_PATH_BYTES:,}; shorten its folder or file names"
        )
    for part in parts:
        if len(part.encode("utf-8")) > MAX_NAME_BYTES:
            raise FolderError(
                f"name {shown_path(part)} refused: it is {len(part.encode('utf-8')):,} bytes "
                f"long, and file systems allow at most {MAX_NAME_BYTES} per file or folder name"
            )
    return path


def iter_app_files(root: Path) -> Iterator[tuple[str, Path]]:
    """Yield (relative path, file) for the files of ``config/`` and ``resources/``.

    Raises FolderError for links and special files, which never travel.
    """
    if not root.is_dir():
        raise FolderError(f"{root} is not a folder")
    for top in APP_TOP_LEVEL:
        base = root / top
        if base.is_symlink():
            raise FolderError(f"{base} is a symbolic link; links are not uploaded")
        if not base.is_dir():
            continue
        for dirpath, dirnames, filenames in os.walk(base):
            dirnames.sort()
            here = Path(dirpath)
            for name in [*dirnames, *sorted(filenames)]:
                path = here / name
                rel = path.relative_to(root).as_posix()
                check_relpath(rel)  # before os.walk goes any deeper
                if path.is_symlink():
                    raise FolderError(f"{rel} is a symbolic link; links are not uploaded")
                if name in filenames:
                    if not path.is_file():
                        raise FolderError(f"{rel} is not a regular file")
                    if BYTECODE_DIR not in path.parts:
                        yield rel, path


def _open_plain(path: Path, rel: str) -> io.BufferedReader:
    """Open a listed file for reading as the plain file it was listed as: never through a
    link, never a FIFO or device (the listing and the reading are moments apart, and what
    stood there could be swapped for a link to the admin's key)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise FolderError(f"{rel} is a symbolic link; links are not uploaded") from None
        raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise FolderError(f"{rel} is not a regular file")
    return os.fdopen(fd, "rb")


def folder_size(root: Path) -> tuple[int, int]:
    """Bytes and file count of what iter_app_files would send."""
    files = list(iter_app_files(root))
    return sum(p.stat().st_size for _, p in files), len(files)


def human_size(size: int) -> str:
    """``512 B``, ``12.3 KiB``, ``4.0 MiB``."""
    if size < 1024:
        return f"{size} B"
    value = float(size)
    for unit in ("KiB", "MiB", "GiB"):
        value /= 1024
        if value < 1024 or unit == "GiB":
            break
    return f"{value:.1f} {unit}"


def iter_chunks(root: Path) -> Iterator[tuple[str, int, bytes, bool]]:
    """Yield (path, offset, data, eof) for every file, in chunks.

    Each chunk is read and its file closed before it is yielded: a reader that pauses
    between chunks (the server's sender while a site does not read) holds no descriptor.
    """
    for rel, path in iter_app_files(root):
        offset = 0
        while True:
            with _open_plain(path, rel) as handle:
                handle.seek(offset)
                data = handle.read(CHUNK_BYTES)
                at_end = len(data) < CHUNK_BYTES or not handle.peek(1)
            yield rel, offset, data, at_end
            offset += len(data)
            if at_end:
                break


class FolderReceiver:
    """Writes an incoming app folder into a staging folder, checking every chunk."""

    def __init__(self, staging: Path, max_bytes: int, max_files: int = MAX_FILES) -> None:
        self.staging = staging
        self.max_bytes = max_bytes
        self.max_files = max_files
        self.total_bytes = 0
        self.ignored_bytes = 0
        self.files: list[str] = []
        self.dropped: set[str] = set()
        self._current: tuple[str, BinaryIO] | None = None
        self._offset = 0
        staging.mkdir(parents=True)

    def write(self, raw_path: str, offset: int, data: bytes, eof: bool) -> None:
        """Take one chunk; raises FolderError on anything unexpected."""
        path = check_relpath(raw_path)
        if path.parts[0] not in APP_TOP_LEVEL or len(path.parts) < 2:
            self._ignore(path.parts[0], len(data))
            return
        if BYTECODE_DIR in path.parts:
            raise FolderError(
                f"{shown_path(raw_path)}: compiled Python ({BYTECODE_DIR}) is not accepted in "
                "apps; send the sources only"
            )
        self.total_bytes += len(data)
        if self.total_bytes > self.max_bytes:
            limit = self.max_bytes / (1024 * 1024)
            raise FolderError(f"upload exceeds the server's limit of {limit:g} MiB")
        if self._current is None or self._current[0] != raw_path:
            if self._current is not None:
                raise FolderError(f"{self._current[0]}: file ended without its last chunk")
            if offset != 0 or raw_path in self.files:
                raise FolderError(f"{raw_path}: chunks out of order")
            if len(self.files) >= self.max_files:
                raise FolderError(f"upload has more than {self.max_files} files")
            target = self.staging.joinpath(*path.parts)
            try:
                target.parent.mkdir(parents=True, exist_ok=True)
                handle = target.open("xb")
            except (FileExistsError, NotADirectoryError, IsADirectoryError):
                raise FolderError(f"{raw_path}: clashes with another file of the upload") from None
            except OSError as exc:
                raise _unstorable(raw_path, exc) from None
            self.files.append(raw_path)
            self._current = (raw_path, handle)
            self._offset = 0
        if offset != self._offset:
            raise FolderError(f"{raw_path}: chunk at byte {offset}, expected {self._offset}")
        current = self._current[1]
        try:
            current.write(data)
            if eof:
                current.close()
        except OSError as exc:
            raise _unstorable(raw_path, exc) from None
        self._offset += len(data)
        if eof:
            self._current = None

    def _ignore(self, name: str, size: int) -> None:
        """Drop a chunk outside ``config/`` and ``resources/``, within bounds of its own: as
        many names as an upload may have files, as many bytes as it may keep."""
        if name not in self.dropped and len(self.dropped) >= self.max_files:
            raise FolderError(f"upload names more than {self.max_files} other files and folders")
        self.dropped.add(name)
        self.ignored_bytes += size
        if self.ignored_bytes > self.max_bytes:
            limit = self.max_bytes / (1024 * 1024)
            raise FolderError(
                f"upload sends more than {limit:g} MiB outside config/ and resources/"
            )

    def finish(self) -> list[str]:
        """Check the stream ended cleanly; returns the files written."""
        if self._current is not None:
            name = self._current[0]
            self._current[1].close()
            self._current = None
            raise FolderError(f"{name}: upload ended in the middle of this file")
        shadowing = _shadowing_binaries(self.files)
        if shadowing:
            raise FolderError(
                f"{shadowing}: Python would import this compiled module instead of the source "
                "beside it, which is what a reviewer reads; send one or the other"
            )
        return self.files

    def discard(self) -> None:
        """Remove the staging folder after a failed transfer."""
        if self._current is not None:
            self._current[1].close()
            self._current = None
        shutil.rmtree(self.staging, ignore_errors=True)


def _shadowing_binaries(files: list[str]) -> str:
    """The first extension module that has a source module of the same name beside it (the
    interpreter prefers the extension), or ''."""
    sources = {
        str(PurePosixPath(name).with_suffix(""))
        for name in files
        if name.endswith(tuple(importlib.machinery.SOURCE_SUFFIXES))
    }
    for name in files:
        if name.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES)):
            path = PurePosixPath(name)
            module = str(path.with_name(path.name.split(".", 1)[0]))
            if module in sources:
                return name
    return ""


def _unstorable(raw_path: str, exc: OSError) -> FolderError:
    """What the checks above could not foresee (a full disk, a file system with shorter names)."""
    return FolderError(
        f"{shown_path(raw_path)} cannot be stored here: {exc.strerror or exc}; nothing was kept"
    )


def _previous(target: Path) -> Path:
    return target.with_name(f".{target.name}.old")


def restore_interrupted(target: Path) -> None:
    """Bring back the previous copy of a folder whose replacement a crash cut off."""
    previous = _previous(target)
    if previous.is_dir() and not target.exists():
        previous.rename(target)


def replace_folder(staging: Path, target: Path) -> None:
    """Move a complete staging folder over ``target`` (old content removed).

    Two renames: a crash between them leaves the previous copy as
    ``.<name>.old``, which :func:`restore_interrupted` puts back. The new content is made
    durable first, so that it is whole once the old copy is gone.
    """
    fsync_tree(staging)
    restore_interrupted(target)
    if target.exists():
        previous = _previous(target)
        shutil.rmtree(previous, ignore_errors=True)
        target.rename(previous)
        staging.rename(target)
        shutil.rmtree(previous, ignore_errors=True)
    else:
        target.parent.mkdir(parents=True, exist_ok=True)
        staging.rename(target)
    fsync_dir(target.parent)
