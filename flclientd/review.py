"""``flclientd show-app`` and ``flclientd approve``: site IT reads an app's code and approves it.

``show-app --workspace W NAME`` prints the newest deployed copy of an app (``show-app
--workspace W sha256:DIGEST`` the copy with that digest, which a waiting run names):
its digest, whether this site lets it run, what in it is custom code, and
every file with its content. Control characters and the Unicode controls
that reorder or hide text ("Trojan Source") are printed as visible escapes
and counted, so that what the reviewer reads is what Python would run.
``approve --workspace W SHA256`` adds a digest to
``local/approved_apps.json``; a run waiting for it starts within a second.
Neither needs the daemon to be running, nor the server.
"""

from __future__ import annotations

import argparse
import importlib.machinery
import io
import re
import sys
import tokenize
from pathlib import Path
from typing import TextIO

from flclientd.approvals import ApprovalError, ApprovalList, parse_digest
from flclientd.siteapps import DeployedApp, deployed_apps
from flcore.appreview import AppReview, review_app
from flcore.feed import MAX_LABEL, clip
from flcore.folders import FolderError
from flcore.pipes import stops_when_reader_leaves
from flcore.schema import ConfigError
from flcore.startup import STARTUP_DIR, load_client

COMMANDS = ("show-app", "approve")

_INVISIBLE = {0x200E, 0x200F, 0x061C, *range(0x202A, 0x202F), *range(0x2066, 0x206A)}
"""Bidirectional marks, embeddings, overrides and isolates: they change the order in which a
terminal shows code, not the order in which Python reads it."""


def visible(text: str, keep: str = "\n\t") -> tuple[str, int]:
    """``text`` with control and bidirectional characters as escapes, and how many there were.

    The controls in ``keep`` stay as they are: newlines and tabs of a file's content; a
    name keeps none (a newline in it could pass for another line of the output).
    """
    out, hidden = [], 0
    for char in text:
        code = ord(char)
        if (code < 0x20 and char not in keep) or 0x7F <= code < 0xA0 or code in _INVISIBLE:
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")
            hidden += 1
        else:
            out.append(char)
    return "".join(out), hidden


def parse_args(argv: list[str]) -> argparse.Namespace:
    """Command line of the site IT commands."""
    parser = argparse.ArgumentParser(
        prog="flclientd", description="Review and approve the apps deployed at this site."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    show = commands.add_parser(
        "show-app", help="print a deployed app's files, its digest and whether it may run here"
    )
    show.add_argument("--workspace", type=Path, required=True, help="the client workspace")
    show.add_argument(
        "app", help="the app's name as deployed, or sha256:DIGEST for the copy a waiting run names"
    )
    show.add_argument("--list", action="store_true", help="list the files without their contents")
    approve = commands.add_parser("approve", help="let the app with this SHA-256 run at this site")
    approve.add_argument("--workspace", type=Path, required=True, help="the client workspace")
    approve.add_argument("sha256", help="the app's digest, as show-app prints it")
    return parser.parse_args(argv)


@stops_when_reader_leaves
def main(argv: list[str], out: TextIO | None = None) -> int:
    """Run ``show-app`` or ``approve`` (printing to ``out``, stdout by default); 0 on success,
    1 when it cannot be done."""
    out = out or sys.stdout
    args = parse_args(argv)
    workspace: Path = args.workspace.resolve()
    try:
        if not (workspace / STARTUP_DIR).is_dir():
            raise ReviewError(
                f"{workspace} holds no {STARTUP_DIR}/ folder: give the client workspace"
            )
        if args.command == "show-app":
            show_app(workspace, args.app, args.list, out)
        else:
            approve(workspace, args.sha256, out)
    except BrokenPipeError:
        raise  # the reader left (``| head``): stop without a word
    except (ReviewError, ApprovalError, FolderError, ConfigError, OSError) as exc:
        print(f"flclientd {args.command}: {exc}", file=sys.stderr)
        return 1
    return 0


class ReviewError(Exception):
    """What site IT asked for cannot be done; the message says why."""


def _reviews(workspace: Path, name: str | None = None) -> list[tuple[DeployedApp, AppReview]]:
    return [
        (app, review_app(app.folder, app.name))
        for app in deployed_apps(workspace)
        if name is None or app.name == name
    ]


def _may_run(workspace: Path, review: AppReview) -> str:
    """Whether this site lets the app run, in words."""
    if not review.needs_approval:
        return "needs no approval: built-in components only"
    approvals = ApprovalList(workspace)
    try:
        if approvals.allows(review.digest):
            return f"approved at this site ({approvals.path})"
    except ApprovalError as exc:
        return f"NOT approved: {exc}"
    approve = (
        "After reading it, approve it with:\n"
        f"  flclientd approve --workspace {workspace} {review.digest}"
    )
    try:
        trusted = load_client(workspace).trust_custom_code
    except ConfigError as exc:
        # Run by another user than the daemon's (root on a service's workspace), the site's
        # settings may be refused to this process: "NOT approved" alone could be untrue.
        return (
            "NOT approved at this site; whether it runs anyway (trust_custom_code) cannot be "
            f"told from here, its settings are refused: {exc}\n{approve}"
        )
    if trusted:
        return "runs without approval: this site set trust_custom_code"
    return f"NOT approved at this site. {approve}"


def show_app(workspace: Path, name: str, list_only: bool, out: TextIO) -> None:
    """Print the newest deployed copy of app ``name``, or the copy whose digest ``name`` is
    (``sha256:…``): the one a waiting run names, which is the one ``approve`` lets run,
    even where a newer copy of the same name was deployed since."""
    digest = _digest_in(name)
    if digest is None:
        found = _reviews(workspace, name)
    else:
        found = [(app, review) for app, review in _reviews(workspace) if review.digest == digest]
    if not found:
        wanted = f"with the digest {digest}" if digest else f"named {name!r}"
        raise ReviewError(
            f"no app {wanted} is deployed in {workspace} (deployed apps are in "
            "run_<N>/app_<instance>/; an admin deploys them with 'deploy <app> client')"
        )
    app, review = found[0]
    name = app.name
    where = app.folder.relative_to(workspace)
    print(f"app {visible(name, keep='')[0]}, deployed in {where}", file=out)
    print(f"sha256:{review.digest}", file=out)
    print(f"status: {_may_run(workspace, review)}", file=out)
    if review.needs_approval:
        print("custom code:", file=out)
        for line in review.custom_code():
            print(f"  {visible(line)[0]}", file=out)
    for other, other_review in found[1:]:
        if other_review.digest != review.digest:
            print(
                f"note: {other.folder.relative_to(workspace)} holds another version "
                f"({other_review.short})",
                file=out,
            )
    print(f"\nfiles ({len(review.files)}):", file=out)
    for rel in review.files:
        print(f"  {(app.folder / rel).stat().st_size:>12,}  {visible(rel)[0]}", file=out)
    if list_only:
        return
    for rel in review.files:
        _show_file(app.folder / rel, rel, out)


def _read_as_python_does(data: bytes, rel: str) -> tuple[str, str] | None:
    """A file's text and the encoding it was read in: for Python source, the one its coding
    declaration names, as the interpreter reads it (a ``# coding: utf-7`` line showed one
    comment to the reviewer where Python ran a hidden line); None for what is no text."""
    encoding = "utf-8"
    if rel.endswith(tuple(importlib.machinery.SOURCE_SUFFIXES)):
        try:
            encoding, _ = tokenize.detect_encoding(io.BytesIO(data).readline)
        except SyntaxError:  # an unknown encoding: Python refuses the file too
            return None
    try:
        text = data.decode(encoding)
    except (UnicodeDecodeError, LookupError):
        return None
    return None if "\0" in text else (text, encoding)


def _digest_in(text: str) -> str | None:
    """The digest ``text`` gives (``sha256:`` and 64 hex digits, or the digits alone), else
    None: then it is an app's name."""
    if not (text.startswith("sha256:") or re.fullmatch(r"[0-9a-fA-F]{64}", text)):
        return None
    return parse_digest(text)


def _show_file(path: Path, rel: str, out: TextIO) -> None:
    data = path.read_bytes()
    shown_rel = visible(rel)[0]
    read = _read_as_python_does(data, rel)
    if read is None:
        print(f"\n===== {shown_rel} ({len(data):,} bytes): binary, not shown =====", file=out)
        return
    text, encoding = read
    shown, hidden = visible(text)
    print(f"\n===== {shown_rel} ({len(data):,} bytes) =====", file=out)
    if encoding not in ("utf-8", "utf-8-sig"):
        print(
            f"!!! declares the encoding {encoding}: shown as Python reads it, which an editor "
            "may show otherwise; read this file with care",
            file=out,
        )
    if hidden:
        print(
            f"!!! {hidden} control or bidirectional character(s), shown as \\x.. or \\u....: "
            "read this file with care",
            file=out,
        )
    print(shown, end="" if shown.endswith("\n") else "\n", file=out)


def approve(workspace: Path, text: str, out: TextIO) -> None:
    """Approve a digest, naming the deployed app it belongs to when there is one."""
    digest = parse_digest(text)
    names = sorted({app.name for app, review in _reviews(workspace) if review.digest == digest})
    approvals = ApprovalList(workspace)
    added = approvals.approve(digest, ", ".join(names))
    # The names are what the server deployed the apps under: escapes are shown, not obeyed.
    listed = visible(clip(", ".join(names), MAX_LABEL), keep="")[0]
    what = f"app {listed} sha256:{digest}" if names else f"sha256:{digest}"
    if not added:
        print(f"{what} was approved already ({approvals.path})", file=out)
        return
    print(f"approved {what} in {approvals.path}", file=out)
    if names:
        print("a run waiting for it starts within a second", file=out)
    else:
        print("no app deployed here has this digest yet; it may run once one is", file=out)
