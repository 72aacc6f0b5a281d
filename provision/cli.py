"""``flprovision``: provision kits, revoke them, sign requests, verify, extract and assemble kits.

Exit codes: 0 success, 2 project.yml is invalid (and nothing was written),
1 any other error, a wrong command line included. Errors and warnings are
one line each on stderr, and so is the project CA's fingerprint after a
provisioning run, so that stdout stays the lines scripts read. Passwords
appear only in the password lines on stdout and, with ``--passwords-file``,
in that file (created with mode 0600).
"""

from __future__ import annotations

import argparse
import difflib
import getpass
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from cryptography import x509

from flcore.daemon import forbid_core_dumps
from flcore.kitsig import ROOT_CERT_FILE, KitSignatureError, startup_folder, verify_startup
from flcore.pipes import stops_when_reader_leaves
from flcore.schema import ConfigError
from provision.csr import REQUEST_ROLES, assemble, colon_hex, make_request, sign_request
from provision.engine import provision_workspace
from provision.errors import ProvisionError
from provision.extract import extract_kit
from provision.passwords import PasswordsFile
from provision.pki import fingerprint
from provision.project import KEY_TYPES
from provision.projectfile import load_project
from provision.revocation import (
    CRL_DAYS,
    REASONS,
    REISSUE_REASON,
    CrlWritten,
    check_days,
    refresh_crl,
    revoke,
)
from provision.templates import sample_project

PROG = "flprovision"
EXIT_OK = 0
EXIT_ERROR = 1
EXIT_INVALID_PROJECT = 2


def _provision_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Issue an encrypted startup kit to every participant of project.yml.",
        epilog=(
            "other commands: 'flprovision init [PATH]' writes a sample project.yml; "
            "'flprovision revoke NAME -w WORKSPACE' revokes a participant's certificates; "
            "'flprovision crl -w WORKSPACE' signs the revocation list again; "
            "'flprovision request', 'sign' and 'assemble' make a kit whose key never leaves "
            "its site; "
            "'flprovision verify KIT_DIR' checks an extracted kit; "
            "'flprovision extract KIT.zip -p PASSWORD -d DIR' unpacks one. "
            "'flprovision COMMAND --help' says more."
        ),
    )
    _add_project(parser)
    _add_workspace(parser)
    parser.add_argument(
        "--force",
        action="store_true",
        help="re-issue every kit (under the same CA), not only new ones",
    )
    parser.add_argument(
        "--reissue",
        metavar="NAME",
        help="give only NAME (a client or admin kit name) a new kit, revoking its old certificates",
    )
    parser.add_argument(
        "--passwords-file",
        type=Path,
        metavar="FILE",
        help="also write the password lines to FILE (created with mode 0600)",
    )
    _add_days(parser)
    parser.add_argument("-v", "--verbose", action="store_true", help="log each step to stderr")
    return parser


def _add_project(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-p",
        "--project",
        type=Path,
        default=Path("project.yml"),
        help="the project description (default: ./project.yml)",
    )


def _add_workspace(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-w",
        "--workspace",
        type=Path,
        required=True,
        help="the provisioning workspace (CA state, packages/, audit.json, crl.pem)",
    )


def _add_days(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--days",
        type=int,
        default=CRL_DAYS,
        metavar="N",
        help=f"days until the next update of the revocation list written (default: {CRL_DAYS})",
    )


def _revoke_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=f"{PROG} revoke",
        description=(
            "Revoke every certificate issued to NAME (a client name or an admin email) and "
            "write the project's revocation list, crl.pem, for the server."
        ),
    )
    parser.add_argument("name", metavar="NAME")
    _add_workspace(parser)
    parser.add_argument(
        "--reason",
        choices=REASONS,
        default="unspecified",
        help="why, as the revocation list records it (default: unspecified)",
    )
    _add_days(parser)
    return parser


def _crl_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=f"{PROG} crl",
        description=(
            "Sign the project's revocation list again (a new number and next update), "
            "with every certificate revoked so far; the first one is empty."
        ),
    )
    _add_workspace(parser)
    _add_days(parser)
    return parser


def _init_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=f"{PROG} init", description="Write a commented sample project.yml."
    )
    parser.add_argument(
        "path",
        nargs="?",
        type=Path,
        default=Path("project.yml"),
        help="where to write it (default: ./project.yml)",
    )
    parser.add_argument("--force", action="store_true", help="overwrite an existing file")
    return parser


def _verify_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=f"{PROG} verify",
        description="Check that an extracted kit's startup/ folder matches its signature.",
    )
    parser.add_argument(
        "kit_dir",
        type=Path,
        metavar="KIT_DIR",
        help="the workspace root holding startup/, or startup/ itself",
    )
    return parser


def _extract_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=f"{PROG} extract",
        description="Decrypt a kit, check its signature and unpack it with the right file modes.",
    )
    parser.add_argument("kit", type=Path, metavar="KIT.zip")
    parser.add_argument(
        "-p",
        "--password",
        help="the kit's password; left out, it is asked for, or read as the first line of the "
        "input when that is no terminal (ps and the shell's history show a -p)",
    )
    parser.add_argument(
        "-d",
        "--dest",
        type=Path,
        default=Path("."),
        metavar="DIR",
        help="workspace root to extract into (default: current folder)",
    )
    return parser


def _run_provision(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format=f"{PROG}: %(message)s",
    )
    check_days(args.days)
    project = load_project(args.project)
    passwords = PasswordsFile(args.passwords_file) if args.passwords_file else None
    try:
        result = provision_workspace(
            project, args.workspace, args.force, reissue=args.reissue, crl_days=args.days
        )
    except BaseException:
        if passwords is not None:
            passwords.discard()
        raise
    for warning in result.warnings:
        print(f"{PROG}: {warning}", file=sys.stderr)
    if result.crl is not None:
        _print_crl(result.crl)
    for kit in result.written:
        print(kit.password_line())
    if result.skipped:
        names = ", ".join(f"{name}.zip" for name in result.skipped)
        print(f"===> skipped {names}: already issued (--force re-issues every kit)")
    for name in result.awaiting:
        print(f"===> awaiting {name}: csr: true, so it sends a request ({PROG} sign REQUEST.csr)")
    if passwords is not None:
        passwords.write(result.written)
    # Last, and on stderr: stdout stays the lines scripts parse (and --passwords-file copies).
    sys.stdout.flush()
    print(_fingerprint_line(result.ca_fingerprint), file=sys.stderr)
    return EXIT_OK


def _fingerprint_line(digest: str) -> str:
    """The line that gives lead IT the project CA's fingerprint to pass on by phone."""
    return f"===> {_named_ca(digest)}"


def _named_ca(digest: str) -> str:
    """A project CA named by its fingerprint, as lead IT and site IT compare it over the phone."""
    return f"project CA fingerprint (SHA-256): {colon_hex(digest)}"


def _print_crl(crl: CrlWritten) -> None:
    for each in crl.revoked:
        print(f"===> revoked {each.name}: certificate serial {each.serial} ({each.reason})")
    if crl.next_update is None:
        return
    replaced = any(each.reason == REISSUE_REASON for each in crl.revoked)
    # A re-issue revokes kits still in use: loading the list before the new ones are in place
    # cuts those sites (and the lead's own console) off.
    when = (
        "once every new kit is in place (until then the old ones keep working)"
        if replaced
        else "now"
    )
    print(
        f"===> wrote {crl.path}: CRL number {crl.number}, {crl.listed} certificate(s) revoked "
        f"in all, next update {crl.next_update:%Y-%m-%d}; load it into the running server "
        f"(console command load_crl) {when}"
    )


def _request_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=f"{PROG} request",
        description=(
            "At a site: make a private key that never leaves DIR, and a certificate request "
            "(DIR/request/NAME.csr) to send to lead IT."
        ),
    )
    parser.add_argument("name", metavar="NAME", help="the client name, or the admin's email")
    parser.add_argument("--role", choices=REQUEST_ROLES, required=True)
    parser.add_argument(
        "-w",
        "--workspace",
        type=Path,
        required=True,
        metavar="DIR",
        help="the participant's workspace root: startup/ will be assembled there",
    )
    parser.add_argument(
        "--key-type", choices=KEY_TYPES, default=KEY_TYPES[0], help="default: %(default)s"
    )
    return parser


def _sign_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=f"{PROG} sign",
        description=(
            "At lead IT: check a certificate request against project.yml and write the "
            "participant's kit without a key (packages/NAME.zip) to send back."
        ),
    )
    parser.add_argument("request", type=Path, metavar="REQUEST.csr")
    _add_project(parser)
    _add_workspace(parser)
    parser.add_argument(
        "--reissue",
        action="store_true",
        help="the participant has a certificate already: replace it and revoke the old one",
    )
    _add_days(parser)
    return parser


def _assemble_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=f"{PROG} assemble",
        description="At a site: build startup/ from the kit lead IT signed and the key made here.",
    )
    parser.add_argument("kit", type=Path, metavar="KIT.zip")
    parser.add_argument(
        "-w",
        "--workspace",
        type=Path,
        default=Path("."),
        metavar="DIR",
        help="the workspace where the request was made (default: current folder)",
    )
    parser.add_argument(
        "--ca-fingerprint",
        metavar="SHA256",
        help="the project CA's fingerprint as lead IT gave it; the kit is refused if it differs",
    )
    return parser


def _run_request(args: argparse.Namespace) -> int:
    made = make_request(args.name, args.role, args.workspace, args.key_type)
    print(f"wrote the private key {made.key} (mode 0600): it stays here")
    print(f"wrote the request {made.csr}: send it to lead IT, who run: {PROG} sign {made.csr.name}")
    return EXIT_OK


def _run_sign(args: argparse.Namespace) -> int:
    check_days(args.days)
    project = load_project(args.project)
    signed = sign_request(project, args.workspace, args.request, args.reissue, crl_days=args.days)
    for warning in signed.warnings:
        print(f"{PROG}: {warning}", file=sys.stderr)
    if signed.crl is not None:
        _print_crl(signed.crl)
    print(signed.kit.password_line())
    print(_fingerprint_line(signed.ca_fingerprint))
    return EXIT_OK


def _run_assemble(args: argparse.Namespace) -> int:
    done = assemble(args.kit, args.workspace, args.ca_fingerprint)
    print(f"assembled {done.startup} for {done.name} with the key made here")
    print(_named_ca(done.ca_fingerprint))
    if args.ca_fingerprint is None:
        print("compare it with the one lead IT gave you (or pass it with --ca-fingerprint)")
    return EXIT_OK


def _run_revoke(args: argparse.Namespace) -> int:
    crl = revoke(args.workspace, args.name, args.reason, args.days)
    if not crl.revoked:
        print(f"===> {args.name}: every certificate is revoked already; {crl.path} lists them")
    _print_crl(crl)
    return EXIT_OK


def _run_crl(args: argparse.Namespace) -> int:
    _print_crl(refresh_crl(args.workspace, args.days))
    return EXIT_OK


def _run_init(args: argparse.Namespace) -> int:
    path: Path = args.path
    if path.exists() and not args.force:
        raise ProvisionError(f"{path}: already exists; use --force to overwrite it")
    try:
        path.write_text(sample_project(), encoding="utf-8")
    except OSError as exc:
        raise ProvisionError(f"{path}: cannot write it ({exc.strerror})") from None
    print(f"wrote {path}; edit it, then run: {PROG} -p {path} -w WORKSPACE")
    return EXIT_OK


def _run_verify(args: argparse.Namespace) -> int:
    startup = startup_folder(args.kit_dir)
    verify_startup(startup)
    print(f"OK: {startup} matches its signature")
    # The seal is the kit's own CA's: a kit swapped on its way is sealed too. Its CA's
    # fingerprint, compared with lead IT's by another channel, is what tells.
    ca = x509.load_pem_x509_certificate((startup / ROOT_CERT_FILE).read_bytes())
    print(_named_ca(fingerprint(ca)))
    return EXIT_OK


MAX_PASSWORD_LINE = 1024


def _run_extract(args: argparse.Namespace) -> int:
    password = args.password
    if password is None and sys.stdin.isatty():
        password = getpass.getpass(f"password for {args.kit}: ")
    elif password is None:  # a script's pipe or file: kept out of ps and the shell's history
        password = sys.stdin.readline(MAX_PASSWORD_LINE).rstrip("\r\n")
        if not password:
            raise ProvisionError(
                "no password: type it when asked, or give it as the first line of the input "
                f"({PROG} extract KIT.zip < password-file)"
            )
    startup = extract_kit(args.kit, password, args.dest)
    print(f"extracted {args.kit} into {startup}")
    return EXIT_OK


Command = tuple[Callable[[], argparse.ArgumentParser], Callable[[argparse.Namespace], int]]
COMMANDS: dict[str, Command] = {
    "init": (_init_parser, _run_init),
    "revoke": (_revoke_parser, _run_revoke),
    "crl": (_crl_parser, _run_crl),
    "request": (_request_parser, _run_request),
    "sign": (_sign_parser, _run_sign),
    "assemble": (_assemble_parser, _run_assemble),
    "verify": (_verify_parser, _run_verify),
    "extract": (_extract_parser, _run_extract),
}


def _unknown_command(word: str) -> str:
    """What to say of a first word that names no command: argparse took it for an argument
    of provisioning and asked for -w instead."""
    close = difflib.get_close_matches(word, COMMANDS, n=1)
    guess = f"did you mean '{close[0]}'? " if close else ""
    return (
        f"unknown command {word!r}: {guess}the commands are {', '.join(COMMANDS)}, and "
        f"'{PROG} -p project.yml -w WORKSPACE' provisions ('{PROG} --help' says more)"
    )


@stops_when_reader_leaves
def main(argv: Sequence[str] | None = None) -> int:
    """Run flprovision with ``argv`` (default: the command line) and return the exit code."""
    forbid_core_dumps()  # it holds the CA key and the kits' passwords
    args = list(sys.argv[1:] if argv is None else argv)
    if args and not args[0].startswith("-") and args[0] not in COMMANDS:
        print(f"{PROG}: error: {_unknown_command(args[0])}", file=sys.stderr)
        return EXIT_ERROR
    command = args.pop(0) if args and args[0] in COMMANDS else None
    make_parser, run = COMMANDS[command] if command else (_provision_parser, _run_provision)
    try:
        namespace = make_parser().parse_args(args)
    except SystemExit as exc:  # argparse has printed usage or help already
        # Its usage errors would exit 2, which here means an invalid project.yml.
        return EXIT_OK if exc.code in (0, None) else EXIT_ERROR
    try:
        return run(namespace)
    except BrokenPipeError:
        raise  # the reader left (``| head``): stop without a word
    except ConfigError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return EXIT_INVALID_PROJECT
    except (ProvisionError, KitSignatureError) as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except OSError as exc:
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"{PROG}: error: {where}{exc.strerror or exc}", file=sys.stderr)
        return EXIT_ERROR
    except Exception as exc:  # a bug: still one line, not a traceback, and exit 1
        print(f"{PROG}: error: unexpected {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
