"""fltui: the admin console of an flstack project.

``fltui --startup DIR --user EMAIL`` opens the full-screen console (a login
screen asks for whatever is missing); ``fltui provision [WORKSPACE]`` opens
the provisioning wizard without a server. ``--cmd "<command>"``
(repeatable) runs commands without a screen and prints exactly what the
console would; ``--json`` prints each reply as one JSON object instead.
``--shell`` gives a line-mode prompt. Exit codes: 0 when every command
succeeded, 1 when one failed, 2 when the server cannot be reached or the
login is refused; 141 when the reader of the output left (``| head``),
as for any Unix tool.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from fladmin.client import (
    TIMEOUT_RULE,
    AdminClient,
    AdminError,
    CommandReply,
    kit_warnings,
    load_kit,
    parse_timeout,
)
from fladmin.link import AdminLink
from flcore.daemon import forbid_core_dumps
from flcore.kitsig import startup_folder
from flcore.pipes import stops_when_reader_leaves

DEFAULT_STARTUP = Path("startup")
EXIT_OK = 0
EXIT_COMMAND = 1
EXIT_CONNECT = 2
MAX_ASKS = 3
"""Questions one command may ask: the first, and again while what it acts on changes."""


def timeout_seconds(text: str) -> float:
    """``--timeout``: what ``set_timeout`` accepts, refused at once otherwise."""
    seconds = parse_timeout(text)
    if seconds is None:
        raise argparse.ArgumentTypeError(f"{text!r}: must be {TIMEOUT_RULE}")
    return seconds


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command line of the console."""
    parser = argparse.ArgumentParser(
        prog="fltui",
        usage="%(prog)s [options]\n       %(prog)s provision [WORKSPACE]",
        description=__doc__.splitlines()[0],
        epilog="fltui provision [WORKSPACE] opens the provisioning wizard, no server needed "
        "(fltui provision --help).",
    )
    parser.add_argument(
        "--startup",
        type=Path,
        help="the admin kit's startup/ folder, or the folder that holds it (default: ./startup)",
    )
    parser.add_argument("--user", help="your admin email (default: the kit's)")
    parser.add_argument(
        "--cmd",
        action="append",
        default=[],
        metavar="COMMAND",
        help='run a command and exit, e.g. --cmd "check_status server" (repeatable)',
    )
    parser.add_argument("--json", action="store_true", help="with --cmd: print JSON replies")
    parser.add_argument("--yes", action="store_true", help="answer Y to confirmations (shutdown)")
    parser.add_argument(
        "--shell", action="store_true", help="line-mode prompt instead of the console"
    )
    parser.add_argument(
        "--timeout",
        type=timeout_seconds,
        help="command timeout in seconds, at most 3600 (like set_timeout)",
    )
    return parser.parse_args(argv)


def parse_provision_args(argv: list[str]) -> argparse.Namespace:
    """Command line of ``fltui provision``."""
    parser = argparse.ArgumentParser(
        prog="fltui provision",
        description="Provisioning wizard: write project.yml and issue startup kits.",
    )
    parser.add_argument(
        "workspace",
        nargs="?",
        type=Path,
        default=Path("fl-workspace"),
        help="provisioning workspace; its project.yml is opened if it has one "
        "(default: ./fl-workspace)",
    )
    return parser.parse_args(argv)


@stops_when_reader_leaves
def main(argv: list[str] | None = None) -> int:
    """Entry point of the fltui console script."""
    forbid_core_dumps()  # it holds the admin's key, a login token, the wizard's passwords
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["provision"]:
        return open_wizard(parse_provision_args(argv[1:]).workspace)
    args = parse_args(argv)
    if args.cmd or args.shell:
        return asyncio.run(run(args))
    return open_console(args)


def open_console(args: argparse.Namespace) -> int:
    """The full-screen console; the login screen asks for what the arguments lack."""
    from fltui.app import ConsoleApp  # Textual is loaded only for the screen

    startup: Path | None = args.startup
    if startup is None and DEFAULT_STARTUP.is_dir():
        startup = DEFAULT_STARTUP
    if startup is not None:
        startup = startup_folder(startup)
    user = args.user or ""
    if startup is None:
        app = ConsoleApp(user=user, timeout=args.timeout)
    else:
        try:
            link = AdminLink(startup, args.user)
        except AdminError as exc:
            app = ConsoleApp(startup=startup, user=user, problem=str(exc), timeout=args.timeout)
        else:
            app = ConsoleApp(link, timeout=args.timeout)
    app.run()
    return EXIT_OK


def open_wizard(workspace: Path) -> int:
    """The provisioning wizard on its own."""
    from fltui.wizard.app import ProvisionApp

    ProvisionApp(workspace).run()
    return EXIT_OK


def kit_folder(given: Path | None) -> Path:
    """The admin kit's startup/ folder: ``--startup``, ./startup without it.

    Raises:
        AdminError: neither was given nor is there a ./startup here, said as such rather
            than as a damaged kit.
    """
    if given is None and not DEFAULT_STARTUP.is_dir():
        raise AdminError(
            f"no --startup given and no {DEFAULT_STARTUP}/ folder in {Path.cwd()}: give the "
            "admin kit's startup/ folder with --startup"
        )
    return startup_folder((given or DEFAULT_STARTUP).resolve())


async def connect(args: argparse.Namespace) -> AdminClient:
    """Read the kit, connect and log in (AdminError on failure)."""
    startup = kit_folder(args.startup)
    kit = load_kit(startup)
    for warning in kit_warnings(startup, kit):
        print(f"fltui: warning: {warning}", file=sys.stderr)
    client = AdminClient(startup, kit, args.user or kit.email)
    try:
        await client.login()
    except AdminError:
        await client.close()
        raise
    if args.timeout is not None:
        client.timeout = args.timeout
    return client


async def run(args: argparse.Namespace) -> int:
    """Run --cmd commands or the shell."""
    try:
        client = await connect(args)
    except AdminError as exc:
        print(f"fltui: {exc}", file=sys.stderr)
        return EXIT_CONNECT
    try:
        if args.cmd:
            return await run_commands(client, args.cmd, args.json, args.yes)
        return await shell(client, args.yes)
    finally:
        await client.close()


async def confirm(prompt: str) -> bool:
    """Ask a Y/N question on the terminal."""
    if not sys.stdin.isatty():
        return False
    answer = await asyncio.to_thread(input, f"{prompt} ")
    return answer.strip().lower() in ("y", "yes")


async def execute(client: AdminClient, line: str, assume_yes: bool) -> CommandReply:
    """Run one command, asking for confirmation when the server wants it: again when what
    it would act on changed before the answer came (the server then asks anew), a few
    times at most."""
    reply = await client.execute(line)
    for _ in range(MAX_ASKS):
        if not reply.confirm_prompt:
            return reply
        if not (assume_yes or await confirm(reply.confirm_prompt)):
            if sys.stdin.isatty():
                return cancelled(line, "not confirmed", reply)
            # A script is shown what it would have done, so that its author can decide.
            asked = reply.confirm_prompt.rsplit("\n", 1)[0]
            return cancelled(
                line, f"needs confirmation: add --yes to go ahead with\n{asked}", reply
            )
        reply = await client.execute(line, confirmed=True)
    if reply.confirm_prompt:
        return cancelled(
            line, "what it acts on kept changing while it was asked: run it again", reply
        )
    return reply


def cancelled(line: str, reason: str, asked: CommandReply) -> CommandReply:
    """The reply of a command that asked and was not confirmed (nothing was run)."""
    return CommandReply(
        line, False, f"{line.split()[0]} cancelled: {reason}", {}, 0, asked.finished_at
    )


async def run_commands(client: AdminClient, lines: list[str], as_json: bool, yes: bool) -> int:
    """The --cmd mode: each command's reply, in order; stop at a lost connection."""
    code = EXIT_OK
    for line in lines:
        if not as_json:
            # Echoed first: a question asked on the terminal belongs under the command.
            print(f"> {line}", flush=True)
        try:
            reply = await execute(client, line, yes)
        except AdminError as exc:
            print(f"fltui: {exc}", file=sys.stderr)
            return EXIT_CONNECT
        if as_json:
            print(reply.as_json(), flush=True)
        else:
            print(f"{reply.render()}\n", flush=True)
        if not reply.ok:
            code = EXIT_COMMAND
    return code


async def shell(client: AdminClient, yes: bool) -> int:
    """A line-mode prompt: type commands, ``bye`` or end of input to leave."""
    print(f"Logged in to {client.project} as {client.user} ({client.role}).")
    print("Type help for the commands, bye to leave.")
    code = EXIT_OK
    while True:
        try:
            line = await asyncio.to_thread(input, "> ")
        except EOFError:
            print()
            return code
        if line.strip() in ("bye", "exit", "quit"):
            return code
        if not line.strip():
            continue
        try:
            reply = await execute(client, line, yes)
        except AdminError as exc:
            print(f"fltui: {exc}", file=sys.stderr)
            return EXIT_CONNECT
        print(reply.render(), flush=True)
        if not reply.ok:
            code = EXIT_COMMAND
