"""Whether others than the user reading them may change the files that decide for a site or
a project, judged as ssh's StrictModes judges ``~/.ssh``.

Permission bits alone say nothing about who owns a file: a file owned by another user is
that user's to change (chmod it, replace it), and whoever may write a folder, or any folder
above it, may rename what is in it away and put something of their own in its place (a
``local/`` that sets ``trust_custom_code``). So a file or folder is safe when it is owned by
the reading user or root and nobody else may write it, and so is every folder above it up
to ``/``, except a root-owned folder with the sticky bit (``/tmp``), where others may create
files but not rename or delete those of others.

A link is judged by all it leads through: the file it ends at, and every folder that its
resolution passes, each link's own folder included (whoever may write one of them may point
the path elsewhere), so a link in ``startup/`` to a file in a folder others may write is as
unsafe as that file in such a folder.
"""

from __future__ import annotations

import errno
import os
import pwd
import stat
from dataclasses import dataclass, replace
from pathlib import Path

from flcore.schema import ConfigError

ROOT_UID = 0
OTHERS_WRITE = 0o022
PRIVATE_DIR_MODE = 0o700
MAX_LINKS = 40
"""Links followed in one path before it is refused, as the kernel's ELOOP limit."""


def trusted_owners() -> frozenset[int]:
    """The users whose files this process may trust: itself and root."""
    return frozenset({ROOT_UID, os.geteuid()})


def user_name(uid: int) -> str:
    """The user's name, or its number where the system knows none."""
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


@dataclass(frozen=True)
class Exposure:
    """How others may change a path: ``reason`` in words, and whether the fix is a chown
    (another user owns it) or a chmod (others may write it)."""

    reason: str
    foreign_owner: bool
    place: Path | None = None
    """The path to fix when it is not the one judged: a folder a link leads through."""

    def fix(self, target: Path, recursive: bool = False) -> str:
        """The command that makes ``target`` (or :attr:`place`) this user's alone."""
        if self.place is not None:
            return f"{self._command(self.place, '')}, or put the file itself in place of the link"
        return self._command(target, "-R " if recursive else "")

    def _command(self, target: Path, flag: str) -> str:
        if self.foreign_owner:
            flag += "-h " if target.is_symlink() else ""
            return f"chown {flag}{user_name(os.geteuid())} {target}"
        return f"chmod {flag}go-w {target}"


def _owners_words(owners: frozenset[int]) -> str:
    return " or ".join(sorted({user_name(uid) for uid in owners}))


def exposure(
    path: Path, what: str, owners: frozenset[int] | None, sticky_ok: bool = False
) -> Exposure | None:
    """How others may change ``path`` itself (``what`` names it in the reason), None when
    they may not. ``owners`` None accepts any owner (the bits alone are judged);
    ``sticky_ok`` accepts a root-owned folder with the sticky bit.

    Raises:
        OSError: it cannot be looked at.
    """
    info = path.stat()
    if owners is not None and info.st_uid not in owners:
        return Exposure(
            f"{what} is owned by {user_name(info.st_uid)}, not by {_owners_words(owners)}", True
        )
    mode = stat.S_IMODE(info.st_mode)
    shared = sticky_ok and info.st_uid == ROOT_UID and mode & stat.S_ISVTX
    if mode & OTHERS_WRITE and not shared:
        return Exposure(f"{what} has mode {mode:04o}", False)
    return None


@dataclass(frozen=True)
class _Way:
    """What resolving a link passes: the real folders in which it looks a name up (the one
    holding the link first), the further links it follows, and the path it ends at."""

    folders: list[Path]
    links: list[Path]
    target: Path


def _way(link: Path) -> _Way:
    """The way resolving ``link`` goes.

    Raises:
        OSError: a link cannot be read, or it leads through more than :data:`MAX_LINKS`.
    """
    current = link.parent.resolve()
    way = _Way([current], [], current)
    todo = list(Path(os.readlink(link)).parts)
    while todo:
        part = todo.pop(0)
        if part == os.sep:
            current = Path(os.sep)
        elif part == "..":
            current = current.parent
        elif part != ".":
            if current not in way.folders:
                way.folders.append(current)
            step = current / part
            if not step.is_symlink():
                current = step
                continue
            way.links.append(step)
            if len(way.links) >= MAX_LINKS:
                raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), str(link))
            todo[:0] = Path(os.readlink(step)).parts
    return replace(way, target=current)


def entry_exposure(path: Path, what: str, owners: frozenset[int] | None) -> Exposure | None:
    """As :func:`exposure`, but a link is judged by all it leads through: every folder its
    resolution looks a name up in, each further link (its owner may replace it in a sticky
    folder), and the file it ends at (see the module's docstring).

    Raises:
        OSError: it cannot be looked at.
    """
    if not path.is_symlink():
        return exposure(path, what, owners)
    way = _way(path)
    led = f"{what} is a link to {way.target}, and"
    for folder in way.folders:
        found = exposure(folder, f"{led} {folder}", owners, sticky_ok=True)
        if found is not None:
            return replace(found, place=folder)
    for link in way.links:
        uid = link.lstat().st_uid
        if owners is not None and uid not in owners:
            reason = f"{led} the link {link} on its way is owned by {user_name(uid)}"
            return Exposure(f"{reason}, not by {_owners_words(owners)}", True, link)
    found = exposure(way.target, f"{led} that", owners)
    return None if found is None else replace(found, place=way.target)


def others_may_change(path: Path, owners: frozenset[int] | None = None) -> Exposure | None:
    """How others than the owners (this user and root by default) may change ``path``, the
    file (and all a link leads through) or the folder it is in (None when they may not).

    Raises:
        OSError: it cannot be looked at.
    """
    owners = trusted_owners() if owners is None else owners
    return entry_exposure(path, path.name, owners) or exposure(
        path.parent, f"its folder {path.parent}", owners
    )


def check_folders_to(folder: Path, holding: str, owners: frozenset[int] | None = None) -> None:
    """Refuse ``folder`` (which holds ``holding``, as a message says it) when others may
    change it or any folder above it up to ``/``.

    ``owners`` None judges the permission bits alone (for a tool that does not know which
    user will read what it writes there).

    Raises:
        ConfigError: the folder the message names may be changed by others.
        OSError: a folder cannot be looked at.
    """
    resolved = folder.resolve()
    for checked in (resolved, *resolved.parents):
        found = exposure(checked, str(checked), owners, sticky_ok=checked != resolved)
        if found is None:
            continue
        whose = "this folder" if checked == resolved else f"{resolved}, below it,"
        elsewhere = "" if checked == resolved else f", or move {resolved} to a safe folder"
        raise ConfigError(
            f"{found.reason}, so others than {user_name(os.geteuid())} may replace {whose} "
            f"and what it holds ({holding}): run {found.fix(checked)}{elsewhere}"
        )


def make_private_folder(folder: Path) -> None:
    """Create ``folder`` and the folders above it that are missing, each 0700 whatever the
    umask; a folder that exists already is left as it is (whose it is is its owner's
    decision: :func:`check_folders_to` says when it is unsafe).

    Raises:
        OSError: a folder cannot be created.
    """
    missing = [p for p in (folder, *folder.parents) if not p.exists()]
    for created in reversed(missing):
        try:
            created.mkdir(mode=PRIVATE_DIR_MODE)
        except FileExistsError:  # made meanwhile by someone else: theirs to judge
            continue
        created.chmod(PRIVATE_DIR_MODE)
