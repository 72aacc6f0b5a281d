"""Completion for the ``:`` line: command and view names, then the words each one takes.

The vocabulary is :mod:`fltui.vocabulary`; instance names come from the
live picture, the apps to upload from the admin's ``transfer/`` folder and
the apps to deploy from the server (its last ``list_apps``) at the moment of
typing.
"""

from __future__ import annotations

from collections.abc import Sequence

from fltui.vocabulary import COMMAND_NAMES, VIEWS

TARGETED = ("check_status", "start", "abort", "shutdown")
KINDS = ("server", "client")


def candidates(
    words: Sequence[str],
    instances: Sequence[str],
    apps: Sequence[str],
    server_apps: Sequence[str] = (),
) -> list[str]:
    """Words that may follow ``words`` (the complete words typed so far): ``apps`` are the
    admin's to upload, ``server_apps`` the server's to deploy."""
    if not words:
        return sorted((*COMMAND_NAMES, *VIEWS))
    name, args = words[0], list(words[1:])
    unused = [i for i in instances if i not in args]
    if name == "logs":
        return list(instances) if not args else []
    if name in TARGETED:
        if not args:
            return list(KINDS)
        if args == ["server"] and name == "check_status":
            return ["clients"]  # every client's row in the reply's data
        return unused if args[0] == "client" else []
    if name == "deploy":
        if not args:
            return list(server_apps)
        if len(args) == 1:
            return list(KINDS)
        return unused if args[1] == "client" else []
    if name == "upload_folder":
        return list(apps) if not args else []
    if name == "start_mgpu":
        if not args:
            return ["client"]
        return unused if len(args) == 2 else []
    if name == "validate":
        return ["all", *unused] if not args else ([] if "all" in args else unused)
    return []


def complete(
    line: str, instances: Sequence[str], apps: Sequence[str], server_apps: Sequence[str] = ()
) -> str | None:
    """The whole line with its last word completed, or None when nothing fits."""
    words = line.split()
    if line.endswith(" ") or not words:
        done, partial = words, ""
    else:
        done, partial = words[:-1], words[-1]
    for word in candidates(done, instances, apps, server_apps):
        if word.startswith(partial) and word != partial:
            return line + word[len(partial) :]
    return None
