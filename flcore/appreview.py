"""What an app would run at a site, and the digest by which a site approves it.

Custom code in an app's ``resources/`` runs at every site with the rights of
the site's daemon, and it comes from whoever can upload apps. So a site runs
such an app only once its own IT approved this exact content (see
``flclientd/approvals.py``). An approval names a SHA-256 over everything in
``config/`` and ``resources/``, framed so that no two different folders can
give the same input to the hash::

    sha256( b"flstack-app-v1\\0"
            for each file, in the order of its relative POSIX path's UTF-8 bytes:
                len(path) as 8 bytes big-endian, path (UTF-8),
                len(content) as 8 bytes big-endian, content )

Every regular file counts, whatever its name; empty folders do not (they
travel nowhere). Changing, adding, removing or renaming a file changes the
digest, so a site is asked again. The server prints the digest when the app
is uploaded and ``list_apps`` lists it, ``flclientd show-app`` at the site
prints the same one, and ``python3 -m flcore.appreview APP_FOLDER`` computes
it from a local copy (what ``upload_folder`` would send of it), so an app's
author can tell sites which digest to expect and anyone can check a copy.
It is the only digest of an app anywhere: one that standard tools compute
(``sha256sum`` of a listing) would be a second value for the same app, and
its listing is ambiguous for names holding newlines.

An app needs no approval when nothing in it can run as code: no file that
Python would import (any suffix of ``importlib.machinery.all_suffixes()``:
sources, bytecode, extension modules) and, in ``config_train.json``, only
built-in components, named exactly as ``<module>.<Name>`` for a module of
:data:`BUILT_IN_MODULES`. Other torch modules are not built-in on purpose:
``torch.hub.load`` fetches and runs code from the internet, and one
attribute more (``torch.nn.functional.torch.hub.load``) reaches it from any
module that imports torch, which is why the path must stop right after the
module. An app that trains a MONAI bundle always needs approval: a
bundle's configs instantiate any class they name and evaluate the
expressions they hold (``"$..."``) as Python.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.machinery
import os
import re
import stat
import sys
from dataclasses import dataclass
from pathlib import Path

from flcore.appconfig import (
    APP_TOP_LEVEL,
    CONFIG_DIR,
    RESOURCES_DIR,
    TRAIN_CONFIG,
    BundleConfig,
    TrainConfig,
    parse_train_config,
    read_json,
)
from flcore.folders import FolderError, iter_app_files

DIGEST_DOMAIN = b"flstack-app-v1\0"
"""Prefix of the hashed input: a digest of this format can never be one of another."""
BUILT_IN_MODULES = frozenset(
    {
        "flapp",
        "flapp.models",
        "flapp.datasets",
        "flapp.trainer",
        "torch.nn",
        "torch.optim",
        # Their names before the move to flapp, still read (flapp.runtime.components).
        "flcore.models",
        "flcore.datasets",
        "flclientd.worker.trainer",
    }
)
"""Modules whose classes config_train.json may name without making the app custom code."""
CODE_SUFFIXES = tuple(sorted(set(importlib.machinery.all_suffixes())))
"""File endings Python imports: ``.py``, ``.pyc``, extension modules (``.so``, ...)."""
SHORT_DIGEST = 12
"""Hex digits of the digest shown in statuses and messages."""

_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*")
_READ_BYTES = 1024 * 1024


@dataclass(frozen=True)
class AppReview:
    """What an app folder holds, its digest, and what in it is custom code."""

    name: str
    digest: str
    files: tuple[str, ...]
    code_files: tuple[str, ...]
    custom_components: tuple[str, ...]

    @property
    def needs_approval(self) -> bool:
        """Whether a site must approve the app before it runs there."""
        return bool(self.code_files or self.custom_components)

    @property
    def short(self) -> str:
        """``sha256:`` and the first hex digits of the digest, as statuses show it."""
        return f"sha256:{self.digest[:SHORT_DIGEST]}"

    @property
    def waiting(self) -> str:
        """A site's status detail while it waits for its IT."""
        return f"waiting for approval of app {self.name} {self.short}"

    def custom_code(self) -> list[str]:
        """Why the app needs approval, one line per file or component."""
        return [
            *(f"code file {path}" for path in self.code_files),
            *(f"component {component}" for component in self.custom_components),
        ]


def is_built_in(path: str) -> bool:
    """Whether a component's dotted path names a built-in class: ``<module>.<Name>``."""
    module, _, name = path.rpartition(".")
    return module in BUILT_IN_MODULES and _NAME.fullmatch(name) is not None


def app_files(root: Path) -> list[tuple[str, Path]]:
    """Every regular file under the app's ``config/`` and ``resources/``, as (relative POSIX
    path, file), sorted as the digest takes them.

    Raises:
        FolderError: a link or special file, which an app received over the wire never holds.
    """
    found: list[tuple[str, Path]] = []
    for top in APP_TOP_LEVEL:
        base = root / top
        if base.is_symlink() or (base.exists() and not base.is_dir()):
            raise FolderError(f"{base} is not a plain folder")
        for dirpath, dirnames, filenames in os.walk(base):
            here = Path(dirpath)
            for name in [*dirnames, *filenames]:
                path = here / name
                mode = path.lstat().st_mode
                rel = path.relative_to(root).as_posix()
                if stat.S_ISLNK(mode):
                    raise FolderError(f"{rel} is a symbolic link; an app holds plain files only")
                if name in filenames:
                    if not stat.S_ISREG(mode):
                        raise FolderError(f"{rel} is not a regular file")
                    found.append((rel, path))
    return _in_digest_order(found)


def app_digest(files: list[tuple[str, Path]]) -> str:
    """The hex SHA-256 of files as :func:`app_files` lists them (framing: module docstring).

    Raises:
        FolderError: a file changed size while it was read.
    """
    digest = hashlib.sha256(DIGEST_DOMAIN)
    for rel, path in files:
        encoded = rel.encode("utf-8", "surrogateescape")
        digest.update(len(encoded).to_bytes(8, "big"))
        digest.update(encoded)
        with path.open("rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            digest.update(size.to_bytes(8, "big"))
            left = size
            while left:
                data = handle.read(min(_READ_BYTES, left))
                if not data:
                    break
                digest.update(data)
                left -= len(data)
            if left or handle.read(1):
                raise FolderError(f"{rel} changed while it was read; try again")
    return digest.hexdigest()


def _in_digest_order(files: list[tuple[str, Path]]) -> list[tuple[str, Path]]:
    return sorted(files, key=lambda item: item[0].encode("utf-8", "surrogateescape"))


def upload_digest(root: Path) -> str:
    """The digest of what ``upload_folder`` sends of a local app folder (it leaves out
    ``__pycache__``), which is the digest the server and the sites give the app once
    uploaded.

    Raises:
        FolderError: a link, special file or path an upload refuses.
        OSError: a file cannot be read.
    """
    return app_digest(_in_digest_order(list(iter_app_files(root))))


def main(argv: list[str] | None = None) -> int:
    """``python3 -m flcore.appreview APP_FOLDER...``: print each folder's digest as
    ``sha256:<hex>  <folder>``, the value ``upload_folder``, ``list_apps`` and the sites
    show, so that an admin can confirm it to site IT without the server."""
    parser = argparse.ArgumentParser(
        prog="python3 -m flcore.appreview",
        description="Print the SHA-256 by which sites approve an app, from a local copy.",
    )
    parser.add_argument("folders", nargs="+", type=Path, metavar="APP_FOLDER")
    failed = 0
    for folder in parser.parse_args(argv).folders:
        try:
            print(f"sha256:{upload_digest(folder)}  {folder}")
        except (FolderError, OSError) as exc:
            print(f"cannot hash {folder}: {exc}", file=sys.stderr)
            failed = 1
    return failed


def review_app(root: Path, name: str) -> AppReview:
    """Hash an app folder and find what in it is custom code.

    Raises:
        FolderError: the folder holds links or special files.
        ConfigError: config_train.json is missing or invalid.
        OSError: a file cannot be read.
    """
    files = app_files(root)
    return AppReview(
        name=name,
        digest=app_digest(files),
        files=tuple(rel for rel, _ in files),
        code_files=tuple(rel for rel, _ in files if rel.endswith(CODE_SUFFIXES)),
        custom_components=_custom_components(
            parse_train_config(read_json(root / CONFIG_DIR / TRAIN_CONFIG))
        ),
    )


def _custom_components(train: TrainConfig | BundleConfig) -> tuple[str, ...]:
    """What config_train.json names that is not built in; a MONAI bundle always is."""
    if isinstance(train, BundleConfig):
        return (f"bundle: {RESOURCES_DIR}/{train.folder} (its configs run as code)",)
    named = {
        "model": train.model,
        "dataset": train.dataset,
        "optimizer": train.optimizer,
        "loss": train.loss,
        "trainer": train.trainer,
    }
    return tuple(
        f"{role}: {spec.path}"
        for role, spec in named.items()
        if spec is not None and not is_built_in(spec.path)
    )


if __name__ == "__main__":
    sys.exit(main())
