"""What can be typed on the ``:`` line: the server's commands and the console's views.

The command names are the server's (``flserverd.commands``) plus
``set_timeout``, which the admin client keeps. Views are the console's own
screens, switched to the way k9s switches resources (``:clients``). The
read-only set mirrors the server's, so a member's mutating command is
refused here, with the reason, before any confirmation is shown (the server
refuses it too: this only saves a pointless question).
"""

from __future__ import annotations

import shlex

COMMAND_NAMES = (
    "abort",
    "check_status",
    "delete_run",
    "deploy",
    "help",
    "list_admins",
    "list_apps",
    "list_runs",
    "load_crl",
    "revoke",
    "set_run_number",
    "set_timeout",
    "show_run",
    "shutdown",
    "start",
    "start_mgpu",
    "upload_folder",
    "validate",
)
READ_ONLY = frozenset(
    {
        "check_status",
        "help",
        "list_admins",
        "list_apps",
        "list_runs",
        "show_run",
        "validate",
        "set_timeout",
    }
)
"""Commands a ``member`` may run (``set_timeout`` never leaves the console)."""
VIEWS = {
    "clients": "the dashboard, clients table focused",
    "logs": "the log view of one site (the selected one, or :logs NAME)",
    "runs": "every run on the server; enter opens its rounds, site by site",
    "apps": "the apps on the server, with size and hash",
    "admins": "the admins logged in, their role and last command",
}
SUPER = "super"


def command_words(line: str) -> list[str]:
    """The words of a command line as the server reads them (shell quoting).

    Splitting on spaces would take ``"abort" client`` for another command and
    skip the confirmation; an unbalanced quote falls back to plain words, and
    the server then refuses the line itself.
    """
    try:
        return shlex.split(line)
    except ValueError:
        return line.split()


def refusal(name: str, role: str) -> str | None:
    """Why ``role`` may not run the command ``name``, or None when it may."""
    if role == SUPER or name in READ_ONLY or name not in COMMAND_NAMES:
        return None
    return f"{role} role: read-only ({name} needs the {SUPER} role)"


def is_view(line: str) -> bool:
    """Whether a ``:`` line names a view rather than a command."""
    words = line.split()
    return bool(words) and words[0] in VIEWS
