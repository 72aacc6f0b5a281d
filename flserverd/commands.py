"""Admin commands: the Clara vocabulary, parsed, checked and carried out.

Each command returns the text an admin reads (Clara's wording and layout,
without the trailing "Done [...]" line, which the admin client adds from
the reply's timing) and the same facts as data for ``--json``. Usage errors
say what was expected. ``member`` admins may only look.
"""

from __future__ import annotations

import asyncio
import heapq
import json
import logging
import shlex
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime, timedelta
from functools import cached_property
from typing import Any

from flcore import status as st
from flcore.appreview import review_app
from flcore.certlife import WARN_DAYS
from flcore.crossvalmatrix import ValidationMatrix
from flcore.diskfault import disk_fault
from flcore.federation import MAX_RUN_NUMBER
from flcore.feed import MAX_LABEL, MAX_TEXT, MAX_TRACEBACK, CommandSeen, clip, clip_end
from flcore.folders import FolderError
from flcore.identity import ROLE_SUPER
from flcore.listingrecords import AdminLine, RunLine
from flserverd import confirm, listings
from flserverd.confirm import Confirmation
from flserverd.registry import RegisteredClient
from flserverd.revocation import CLOCK_SLACK_S, RevocationError, minute_after, when
from flserverd.server import DEPARTURE_WAIT_S, CommandError, Enforced, FLServer
from flserverd.statedb import AuditEntry
from flserverd.transfer import (
    FileChunk,
    TransferError,
    Upload,
    client_app_dir,
    copy_app,
    receive_app,
    uploaded_app,
)
from flserverd.views import RosterText, client_row, row_data

log = logging.getLogger(__name__)

MAX_GPUS = 64
MAX_UNWRITTEN_AUDIT = 10_000
INTERRUPTING = frozenset({"abort"})
"""Commands that never wait for another admin's command: abort stops a start in progress."""
IGNORED_SHOWN = 10
"""Names of an upload's ignored parts its reply lists; the others are counted."""
FILES_LISTED = 100
"""Files of an upload its reply's data lists (in upload order); ``file_count`` counts all."""
ENDING_SHOWN = 10
"""Kits ending soon that check_status server names (the first to end); the others are counted."""
MAX_REPLY_BYTES = 3 * 1024 * 1024
"""A reply's text and JSON together stay below gRPC's 4 MiB message limit."""
MAX_REPLY_TEXT = 512 * 1024
SHED_TEXT = 1024
"""Characters each string of an oversized reply's data keeps (a traceback its end)."""


@dataclass(frozen=True)
class Reply:
    """The outcome of one admin command.

    ``then`` runs once the reply has reached the admin: ``shutdown server``
    stops the server only after its answer went out.
    """

    ok: bool
    text: str
    data: dict[str, Any] = field(default_factory=dict)
    confirm_prompt: str = ""
    then: Callable[[], None] | None = None
    audit_id: int = 0
    """The audit row the command wrote in the transaction that carried it out (``delete_run``):
    it is not written again, and it says failed when the reply does."""

    @cached_property
    def data_json(self) -> str:
        """The data as JSON, encoded once: checking the reply's size and sending it both need
        it, and for 1,000 clients' rows it is tens of milliseconds."""
        return json.dumps(self.data, default=str)


@dataclass(frozen=True)
class Request:
    """An admin command as the servicer received it."""

    user: str
    role: str
    words: list[str]
    timeout: float
    confirmed: bool
    attachment: bytes = b""
    """A file the command line names, read by the admin client (load_crl)."""
    interactive: bool = False
    """The admin sits at a console that confirms whatever stops training."""
    answered: str = ""
    """The digest of the question a confirmation answers (empty: an older client's)."""
    line: str = ""
    """The command line as the admin sent it (what the audit records)."""


Handler = Callable[["AdminCommands", Request], Awaitable[Reply]]


@dataclass(frozen=True)
class Spec:
    """Usage and permission of one command."""

    usage: str
    summary: str
    read_only: bool
    handler: Handler


COMMANDS: dict[str, Spec] = {}


def command(usage: str, summary: str, read_only: bool = False) -> Callable[[Handler], Handler]:
    """Register a handler under the first word of its usage line."""

    def register(handler: Handler) -> Handler:
        COMMANDS[usage.split()[0]] = Spec(usage, summary, read_only, handler)
        return handler

    return register


def _usage(name: str) -> CommandError:
    return CommandError(f"usage: {COMMANDS[name].usage}")


def ask(question: Confirmation) -> Reply:
    """The reply that asks for confirmation: the question as text and as data."""
    return Reply(False, "", {"confirm": question.as_json()}, confirm_prompt=question.prompt())


def ask_first(request: Request, question: Confirmation | None) -> Reply | None:
    """The question to answer before the command runs, or None to run it: asked when the
    request is not confirmed, and again when it confirms a question that no longer says
    what the command would do (the console's dialog may stay open while another admin
    sets a new run or a site joins). A confirmation naming no question (an older
    client's) goes ahead, as it always did."""
    if question is None:
        return None
    if not request.confirmed:
        return ask(question)
    if request.answered and request.answered != question.digest():
        return ask(replace(question, title=f"{question.title} (changed since you were asked)"))
    return None


SHUTTING_DOWN = "the server is shutting down"


def _unstored(app: str, exc: Exception) -> Reply:
    """An upload that failed for a reason of the server's (its log has the traceback)."""
    log.error("upload_folder %s failed", app[:80], exc_info=exc)
    return Reply(
        False,
        f"the server could not store the upload: {getattr(exc, 'strerror', None) or exc};"
        " the app that was there is unchanged",
    )


MAX_LINE = 4096
"""The longest command line: longer ones are refused whole, and what is audited is cut."""


def _refusal(user: str, role: str, line: str) -> Reply | tuple[list[str], Spec]:
    """Why ``line`` is refused before it runs, or its words and command."""
    if len(line) > MAX_LINE:  # cut, it would act on a part of what was asked
        return Reply(
            False,
            f"the command line is {len(line):,} characters, more than the {MAX_LINE:,} a "
            "command may have: name fewer clients at a time",
        )
    try:
        words = shlex.split(line)
    except ValueError as exc:
        return Reply(False, f"cannot parse the command: {exc}")
    if not words:
        return Reply(False, "empty command: type help for the list of commands")
    spec = COMMANDS.get(words[0])
    if spec is None:
        return Reply(False, f"unknown command {words[0]!r}: type help for the list of commands")
    if not spec.read_only and role != ROLE_SUPER:
        return permission_denied(user, role)
    return words, spec


def permission_denied(user: str, role: str) -> Reply:
    """The refusal of a command ``role`` may not run, naming those it may."""
    allowed = ", ".join(name for name, spec in COMMANDS.items() if spec.read_only)
    return Reply(
        False, f"permission denied: {user} has the {role!r} role, which may only run {allowed}"
    )


def _run_number_of(request: Request, name: str) -> int:
    """The run number that ``name <N>`` names; CommandError with the usage otherwise."""
    word = request.words[1] if len(request.words) == 2 else ""
    number = whole_number(word, MAX_RUN_NUMBER)
    if not number:
        raise CommandError(f"usage: {name} <N>  (N is a whole number from 1 to {MAX_RUN_NUMBER})")
    return number


def whole_number(word: str, most: int) -> int | None:
    """``word`` as a whole number from 0 to ``most``; None when it is not one. ASCII digits
    only: ``int`` also reads other scripts' digits, which ``isdigit`` accepts in forms it
    does not ("²"), and a number of hundreds of digits is no run an admin means."""
    if not (word.isascii() and word.isdigit()) or len(word) > len(str(most)):
        return None
    number = int(word)
    return number if number <= most else None


_BREAKS = {ord("\n"): " ⏎ ", ord("\r"): " ⏎ "}


def instance_line(instance: str, text: str) -> str:
    """One client's line in a multi-client reply, as in the Clara guide; a line break in a
    client's text is shown as ⏎, so that no site can add a line that reads as another's."""
    return f"instance:{instance} : {text.translate(_BREAKS)}"


def ignored_note(dropped: set[str]) -> str:
    """What an upload's reply says of the parts outside ``config/`` and ``resources/``: the
    first names, so that a folder of thousands does not fill the reply."""
    names = sorted(dropped)
    listed = ", ".join(names[:IGNORED_SHOWN])
    if len(names) > IGNORED_SHOWN:
        listed += f" and {len(names) - IGNORED_SHOWN} more"
    return f"(ignored {listed}: only config/ and resources/ are kept)"


class AdminCommands:
    """Executes command lines against the server."""

    def __init__(self, server: FLServer) -> None:
        self.server = server
        self.digests = listings.AppDigests()
        self.roster = RosterText()
        self._one_at_a_time = asyncio.Lock()
        """Commands that change something run one at a time, in the order they arrive, so
        that two admins' conflicting commands (deploy and set_run_number, two starts, two
        shutdowns) each see the state the other one left."""
        self._turns: set[asyncio.Future[Reply]] = set()
        """Commands under way in their turn, kept until they end (their admin may be gone)."""
        self._unwritten: list[AuditEntry] = []
        """Audit entries a full disk kept out of the state database, oldest first."""

    async def execute(
        self,
        user: str,
        role: str,
        line: str,
        timeout: float,
        confirmed: bool,
        attachment: bytes = b"",
        interactive: bool = False,
        answered: str = "",
    ) -> Reply:
        """Parse and run one command line, and audit it once it ran (not when it only asked
        for confirmation); never raises for a bad command, and the reply always fits one
        message. ``answered``: the digest of the question a confirmation answers."""
        reply = await self._run(
            user, role, line, timeout, confirmed, attachment, interactive, answered
        )
        return fit_reply(reply)

    def _audited(self, user: str, line: str, reply: Reply) -> Reply:
        """``reply``, once the command it answers is in the audit trail (a question asked
        first is not: nothing ran)."""
        if reply.confirm_prompt:
            return reply
        if not reply.audit_id:
            self.audit(user, line, reply.ok)
            return reply
        if not reply.ok:
            try:
                self.server.db.audit_failed(reply.audit_id)
            except sqlite3.Error as exc:
                fault = disk_fault(exc)
                if fault is None:
                    raise
                log.error("the audit keeps %r as carried out: server %s", line, fault)
        self._announce(user, clip(line, MAX_LINE), reply.ok)
        return reply

    def audit_entries_with(self, request: Request) -> list[AuditEntry]:
        """What a command writes to the audit in the transaction that carries it out: the
        entries a full disk kept waiting, then its own, as succeeding (:meth:`_audited`
        marks it failed when its reply is). Once written, :meth:`audit_written`."""
        return [*self._unwritten, (time.time(), request.user, clip(request.line, MAX_LINE), True)]

    def audit_written(self) -> None:
        """The entries of :meth:`audit_entries_with` are in the state database."""
        self._unwritten.clear()

    def audit(self, user: str, line: str, ok: bool) -> None:
        """Record an admin's command in the state database and the console's feed.

        On a full disk the entry waits in memory (in order, bounded) and is written
        with the next one that can be: the command itself still runs and answers.
        """
        line = clip(line, MAX_LINE)  # an upload's app name is not bounded before it is judged
        self._unwritten.append((time.time(), user, line, ok))
        del self._unwritten[:-MAX_UNWRITTEN_AUDIT]
        try:
            self.server.db.audit_entries(self._unwritten)
        except sqlite3.Error as exc:
            fault = disk_fault(exc)
            if fault is None:
                raise
            if len(self._unwritten) == 1:
                log.error(
                    "admin commands are audited in memory until the disk takes writes again: "
                    "server %s",
                    fault,
                )
        else:
            if len(self._unwritten) > 1:
                log.info("%d audit entries kept in memory written", len(self._unwritten))
            self._unwritten.clear()
        self._announce(user, line, ok)

    def _announce(self, user: str, line: str, ok: bool) -> None:
        """Tell the admins' feed and the log that a command ran (it is in the audit)."""
        self.server.admins.ran(user, line, ok)
        self.server.bus.publish(CommandSeen(user, line, ok))
        log.info("admin %s ran %r: %s", user, line, "ok" if ok else "failed")

    async def upload(
        self, user: str, role: str, app: str, total_bytes: int, chunks: AsyncIterator[FileChunk]
    ) -> Reply:
        """Receive an app into transfer/ (upload_folder), validating every chunk and the
        configs; audited like a command."""
        if role != ROLE_SUPER:
            reply = permission_denied(user, role)
        else:
            reply = await self._receive(app, total_bytes, chunks)
        self.audit(user, f"upload_folder {app}", reply.ok)
        return fit_reply(reply)

    async def _receive(self, app: str, total_bytes: int, chunks: AsyncIterator[FileChunk]) -> Reply:
        store, startup = self.server.store, self.server.startup
        try:
            upload = await receive_app(
                store, app, total_bytes, startup.max_upload_mb, startup.checkpoint_dirs, chunks
            )
        except (FolderError, TransferError) as exc:
            return Reply(False, f"upload refused: {exc}")
        except Exception as exc:  # the admin gets an answer and the server carries on
            return _unstored(app, exc)
        # In place in its turn, like any command that changes what is deployed: a deploy
        # copying the app meanwhile took half of each version.
        reply = await self._in_turn(lambda: self._put_in_place(upload, app))
        if not reply.ok:
            await asyncio.to_thread(upload.discard)
        return reply

    async def _put_in_place(self, upload: Upload, app: str) -> Reply:
        if self.server.shutting_down:
            return Reply(False, SHUTTING_DOWN)
        try:
            target, files, dropped = await asyncio.to_thread(upload.finish)
            review = await asyncio.to_thread(review_app, target, app)
        except (FolderError, TransferError) as exc:
            return Reply(False, f"upload refused: {exc}")
        except Exception as exc:  # the admin gets an answer and the server carries on
            return _unstored(app, exc)
        text = f"Created folder {target}"
        if dropped:
            text += f"\n{ignored_note(dropped)}"
        if review.needs_approval:
            text += (
                f"\n{app} runs custom code: each site trains it only after its IT approved "
                f"sha256:{review.digest} (flclientd approve)"
            )
        data = {
            "app": app,
            "path": str(target),
            "files": files[:FILES_LISTED],
            "file_count": len(files),
            "sha256": review.digest,
        }
        return Reply(True, text, {**data, "needs_approval": review.needs_approval})

    async def _run(
        self,
        user: str,
        role: str,
        line: str,
        timeout: float,
        confirmed: bool,
        attachment: bytes,
        interactive: bool,
        answered: str,
    ) -> Reply:
        refusal = _refusal(user, role, line)
        if isinstance(refusal, Reply):
            return self._audited(user, line, refusal)
        words, spec = refusal
        request = Request(
            user, role, words, timeout, confirmed, attachment, interactive, answered, line
        )
        if spec.read_only or words[0] in INTERRUPTING:
            return await self._handle(spec, request, line)
        return await self._in_turn(lambda: self._changing(spec, request, line))

    async def _changing(self, spec: Spec, request: Request, line: str) -> Reply:
        if self.server.shutting_down:
            return self._audited(request.user, line, Reply(False, SHUTTING_DOWN))
        return await self._handle(spec, request, line)

    async def _in_turn(self, work: Callable[[], Awaitable[Reply]]) -> Reply:
        """``work``, a command that changes something, after every other such command. Once
        begun it runs to its end (and is audited) even when the admin's call ends first
        (its deadline passed while sites were waited for): cut off, a fan-out reached some
        sites and not others, and what was carried out went missing from the audit trail.
        An admin gone while it waits for its turn runs nothing."""
        await self._one_at_a_time.acquire()

        async def turn() -> Reply:
            try:
                return await work()
            finally:
                self._one_at_a_time.release()

        running = asyncio.ensure_future(turn())
        self._turns.add(running)
        running.add_done_callback(self._turns.discard)
        return await asyncio.shield(running)

    async def _handle(self, spec: Spec, request: Request, line: str) -> Reply:
        """Run a command's handler, and audit it; whatever goes wrong becomes the admin's
        answer."""
        return self._audited(request.user, line, await self._answer(spec, request, line))

    async def _answer(self, spec: Spec, request: Request, line: str) -> Reply:
        words = request.words
        try:
            return await spec.handler(self, request)
        except (CommandError, TransferError) as exc:
            return Reply(False, str(exc))
        except Exception as exc:  # the admin gets an answer and the server carries on
            fault = disk_fault(exc)
            if fault is not None:
                log.error("command %r failed: server %s", line, fault)
                return Reply(False, f"{words[0]} failed: server {fault}")
            log.exception("command %r failed", line)
            return Reply(
                False,
                f"the server could not carry out {words[0]} because of an unexpected error; "
                "the server's log has the details",
            )

    # ------------------------------------------------------------------ helpers

    def targets(self, names: list[str]) -> list[RegisteredClient]:
        """Registered clients named by instance (all when none are named)."""
        registry = self.server.registry
        if not names:
            clients = registry.clients()
            if not clients:
                raise CommandError("no clients are registered")
            return clients
        unknown = [n for n in names if registry.by_instance(n) is None]
        if unknown:
            known = ", ".join(s.instance for s in registry.clients()) or "none"
            raise CommandError(
                f"unknown client instance {', '.join(unknown)} (registered: {known})"
            )
        return [s for n in dict.fromkeys(names) if (s := registry.by_instance(n)) is not None]

    async def per_client(
        self, request: Request, clients: list[RegisteredClient], name: str, args: dict[str, Any]
    ) -> Reply:
        """Send a command to clients and report one line each."""
        results = await self.server.call(clients, name, args, request.timeout)
        lines = [instance_line(s.instance, r.text) for s, r in results]
        data = {s.instance: {**r.data, "ok": r.ok, "text": r.text} for s, r in results}
        return Reply(all(r.ok for _, r in results), "\n".join(lines) + "\n", {"clients": data})

    def question(self, request: Request, clients: list[RegisteredClient]) -> Confirmation | None:
        """What ``abort``/``shutdown`` asks before it stops anything (None: nothing to ask)."""
        server = self.server
        registered = [s.instance for s in server.registry.clients()]
        rows = [client_row(s) for s in clients]
        return confirm.question(request.words, rows, server.run_view(), registered)

    @staticmethod
    def target_kind(request: Request, name: str) -> tuple[str, list[str]]:
        """Split ``<cmd> server|client [instance…]``."""
        if len(request.words) < 2 or request.words[1] not in ("server", "client"):
            raise _usage(name)
        kind, rest = request.words[1], request.words[2:]
        if kind == "server" and rest:
            raise _usage(name)
        return kind, rest


# ---------------------------------------------------------------------- commands


@command("help", "list the commands", read_only=True)
async def _help(cmds: AdminCommands, request: Request) -> Reply:
    width = max(len(spec.usage) for spec in COMMANDS.values())
    lines = [f"{spec.usage.ljust(width)}  {spec.summary}" for spec in COMMANDS.values()]
    lines.append(
        "set_timeout <seconds>".ljust(width) + "  change how long commands wait for clients"
    )
    return Reply(True, "\n".join(lines), {"commands": {n: s.usage for n, s in COMMANDS.items()}})


@command(
    "check_status server [clients] | client [instance...]",
    "status of the server (clients: with every registered client's row as data) or of clients",
    read_only=True,
)
async def _check_status(cmds: AdminCommands, request: Request) -> Reply:
    server = cmds.server
    if request.words[1:2] == ["server"]:
        if request.words[2:] not in ([], [ROWS_WORD]):
            raise _usage("check_status")
        return _server_status(server, cmds.roster, with_rows=len(request.words) == 3)
    _, names = cmds.target_kind(request, "check_status")
    clients = cmds.targets(names)
    results = await server.call(clients, "check_status", {}, request.timeout)
    lines, data = [], {}
    for client, result in results:
        row = row_data(client_row(client))
        if result.ok:
            row.update(_reported(result.data, row))
            state = row["detail"] or row["status"]
        else:
            state = f"{client.status.status} (no reply: {result.text})"
        text = f"client name: {client.client_name}\ttoken: {client.token_id}\tstatus: {state}"
        if row.get("round", -1) >= 0 and row.get("status") in st.ACTIVE:
            text += f"\tround: {row['round']}"
        text += f"\tdevice: {row.get('device') or client.machine.device}"
        if row.get("error"):
            text += f"\terror: {row['error']}"
        lines.append(instance_line(client.instance, text))
        data[client.instance] = row
    return Reply(True, "\n".join(lines) + "\n", {"clients": data})


# What a client may report about itself in check_status; identity fields stay the server's.
REPORTED = (
    "status",
    "run_number",
    "round",
    "samples",
    "error",
    "traceback",
    "app",
    "device",
    "gpu_count",
    "cross_validate",
    "detail",
)


def _reported(data: dict[str, Any], row: dict[str, Any]) -> dict[str, Any]:
    """The fields of a client's reply that it may set, when their types are right, and its
    texts bounded as the server bounds them everywhere."""
    reported = {
        key: data[key]
        for key in REPORTED
        if key in data and (key not in row or type(data[key]) is type(row[key]))
    }
    for key, value in reported.items():
        if isinstance(value, str):
            reported[key] = (
                clip_end(value, MAX_TRACEBACK)
                if key == "traceback"
                else clip(value, MAX_TEXT if key == "error" else MAX_LABEL)
            )
    return reported


ROWS_WORD = "clients"
"""``check_status server clients``: the reply's data carries every registered client's row.

Without it the data has the run, the revocation list and the number of
registered clients: with 1,000 clients the rows are ~0.4 MB of JSON, which
cost the server and every admin that parses them ~100 ms on every call,
while a script that polls the status rarely needs them (the console has
them from its feed). The text lists every client either way, as Clara's.
"""


def _server_status(server: FLServer, roster: RosterText, with_rows: bool) -> Reply:
    view = server.run_view()
    lines = []
    if view.run_number:
        lines.append(f"FL run number: {view.run_number}")
    else:
        lines.append("FL run number has not been set.")
    status = view.server_status
    if view.reason and status == st.NOT_STARTED:
        status += f" (last start failed: {view.reason})"
    elif view.ending():
        status += f" ({view.ending()})"
    elif view.fault:
        status += f" ({view.fault})"
    lines.append(f"FL server status: {status}")
    if view.fault and status.startswith(st.STOPPED):
        lines.append(f"Disk: {view.fault}")
    if view.blocked:
        lines.append(f"Cannot progress: {view.blocked}")
    if view.current_round >= 0:
        lines.append(
            f"Current round: {view.current_round} / {view.num_rounds}"
            + (f" ({view.phase})" if view.phase and view.phase != "training" else "")
        )
        if view.server_status == st.STARTED:
            lines.append(
                f"Updates received: {view.updates_received} (min_num_clients "
                f"{view.min_num_clients}, max_num_clients {view.max_num_clients})"
            )
            lines.append(f"Waiting for: {', '.join(view.awaited) or 'nobody'}")
    if view.best_metric:
        lines.append(f"Best global model: {view.best_metric}")
    if view.failed_sites and view.server_status in st.ACTIVE:
        lines.append(f"Failed sites: {view.failed_sites_text()}")
    revocation = _revocation_state(server)
    lines.extend(revocation.pop("lines"))
    registered = roster.lines(server.registry)
    lines.append(f"Registered clients: {len(registered)}")
    lines.extend(registered)
    ending, first = _ending_certificates(server)
    if ending:
        now = datetime.now(UTC)
        soon = ", ".join(
            f"{name} {'ended on' if until <= now else 'on'} {until:%Y-%m-%d}"
            for name, until in first.items()
        )
        more = f", and {ending - len(first)} more" if ending > len(first) else ""
        lines.append(f"Certificates ending within {WARN_DAYS} days: {soon}{more}")
    data: dict[str, Any] = {
        "run": asdict(view),
        "revocation": revocation,
        "registered": len(registered),
        "certificates_ending": {name: until.isoformat() for name, until in first.items()},
        "certificates_ending_count": ending,
    }
    if with_rows:
        data["clients"] = [row_data(row) for row in server.client_rows()]
    return Reply(True, "\n".join(lines), data)


def _ending_certificates(server: FLServer) -> tuple[int, dict[str, datetime]]:
    """How many certificates end within WARN_DAYS or have ended, and the ENDING_SHOWN that
    end first, by name: lead IT re-issues them before they do (docs/operations.md,
    "Certificates end"). The server's own (every kit issued with it ends with it), and each
    site's and admin's the server has seen, whether it is connected or not (its newest
    certificate's end: an older kit's is no news). Kits issued together end together: a
    fleet's thousand would make every status a thousand dates long, and slow."""
    soon = datetime.now(UTC) + timedelta(days=WARN_DAYS)
    ending = {
        name: until
        for name, _, end in server.db.certificate_ends()
        if (until := datetime.fromtimestamp(end, UTC)) <= soon
    }
    own = server.own_certificate_end
    if own is not None and own <= soon:
        ending[server.startup.name] = own
    first = heapq.nsmallest(ENDING_SHOWN, ending.items(), key=lambda item: (item[1], item[0]))
    return len(ending), dict(first)


def _revocation_state(server: FLServer) -> dict[str, Any]:
    """What check_status server says about revocation: the CRL held and the names revoked
    here, as text lines (under "lines") and data."""
    revocations = server.revocations
    crl = revocations.crl
    names = revocations.names()
    stale = revocations.stale_warning()
    if crl is None:
        lines = ["Revocation list: none loaded"]
    else:
        due = f", next update {when(crl.next_update)}" if crl.next_update else ""
        lines = [f"Revocation list: number {crl.number}, {len(crl.serials)} revoked{due}"]
    if stale:
        lines.append(f"Warning: {stale}")
    lines.extend(
        f"Revoked on this server: {n.name} (by {n.by} on {when(n.since)}; a kit issued after "
        f"{minute_after(n.works_from)} works)"
        for n in names
    )
    return {
        "lines": lines,
        "crl_number": None if crl is None else crl.number,
        "crl_revoked": 0 if crl is None else len(crl.serials),
        "next_update": None
        if crl is None or crl.next_update is None
        else crl.next_update.isoformat(),
        "stale": bool(stale),
        "revoked_here": [n.name for n in names],
    }


@command("set_run_number <N>", "select (and create) the run that training happens in")
async def _set_run_number(cmds: AdminCommands, request: Request) -> Reply:
    number = _run_number_of(request, "set_run_number")
    existed = cmds.server.set_run_number(number)
    text = (
        f"Reuse the existing run folder: run_{number} (its models and logs are kept)"
        if existed
        else f"Create a new run folder: run_{number}"
    )
    log.info("run number set to %d by %s", number, request.user)
    return Reply(True, text, {"run_number": number, "existed": existed})


@command("upload_folder <app>", "send an app from your transfer/ folder to the server")
async def _upload_folder(cmds: AdminCommands, request: Request) -> Reply:
    return Reply(False, "upload_folder sends files: run it from fltui, which streams the folder")


@command(
    "deploy <app> server | client [instance...]",
    "copy an uploaded app into the current run on the server or clients",
)
async def _deploy(cmds: AdminCommands, request: Request) -> Reply:
    words = request.words
    if (
        len(words) < 3
        or words[2] not in ("server", "client")
        or (words[2] == "server" and len(words) > 3)
    ):
        raise _usage("deploy")
    name, kind, names = words[1], words[2], words[3:]
    server = cmds.server
    number = server.require_run()
    app = uploaded_app(server.store, name)
    if kind == "server":
        if app.server is None:
            raise CommandError(f"{name} has no config/config_fed_server.json to run on the server")
        if server.busy:
            raise CommandError(f"run {number} is training: abort it before deploying to the server")
        await asyncio.to_thread(copy_app, app.root, server.store.server_app(number), name)
        server.publish_run()
        return Reply(
            True,
            f"{name} has been deployed to the server (run_{number}/app_server).",
            {"app": name, "run_number": number, "target": "server"},
        )
    if app.client is None:
        raise CommandError(f"{name} has no config/config_fed_client.json to run on clients")
    clients = cmds.targets(names)
    await asyncio.to_thread(copy_app, app.root, client_app_dir(server.store, number, name), name)
    return await cmds.per_client(request, clients, "deploy", {"run_number": number, "app": name})


@command(
    "start server [fresh] | client [instance...]",
    "start training on the server (continuing a stopped run; fresh: from its first round) "
    "or on clients",
)
async def _start(cmds: AdminCommands, request: Request) -> Reply:
    fresh = request.words[1:] == ["server", "fresh"]
    kind, names = cmds.target_kind(request, "start") if not fresh else ("server", [])
    server = cmds.server
    if kind == "server":
        asked = ask_first(request, _fresh_question(server)) if fresh else None
        if asked is not None:
            return asked
        text = await server.start_training(fresh=fresh)
        return Reply(True, text, {"run_number": server.run_number, "fresh": fresh})
    number = server.require_run()
    return await cmds.per_client(
        request, cmds.targets(names), "start", {"run_number": number, "gpus": 0}
    )


def _fresh_question(server: FLServer) -> Confirmation | None:
    """The question before ``start server fresh`` throws away what a run has trained (None:
    it has trained nothing yet)."""
    number = server.require_run()
    record = server.db.get_run(number)
    if record is None or server.busy:
        return None
    ended = record.status + (f": {record.reason}" if record.reason else "")
    return confirm.start_fresh(number, record.next_round - record.start_round, ended)


@command(
    "start_mgpu client <gpu count> <instance>",
    "start a client's training on several GPUs (torchrun)",
)
async def _start_mgpu(cmds: AdminCommands, request: Request) -> Reply:
    words = request.words
    if len(words) != 4 or words[1] != "client":
        raise _usage("start_mgpu")
    gpus = whole_number(words[2], MAX_GPUS)
    if not gpus:
        raise CommandError(f"start_mgpu: the GPU count must be between 1 and {MAX_GPUS}")
    number = cmds.server.require_run()
    clients = cmds.targets([words[3]])
    return await cmds.per_client(request, clients, "start", {"run_number": number, "gpus": gpus})


@command("abort server | client [instance...]", "stop training on the server or on clients")
async def _abort(cmds: AdminCommands, request: Request) -> Reply:
    kind, names = cmds.target_kind(request, "abort")
    server = cmds.server
    clients = cmds.targets(names) if kind == "client" else []
    asked = ask_first(request, cmds.question(request, clients)) if request.interactive else None
    if asked is not None:
        return asked
    if kind == "server":
        reason = f"aborted by {request.user}"
        if server.starting:
            server.abort_training(reason)
            return Reply(True, "Server training start aborted.", {"run_number": server.run_number})
        training = server.active_training()
        if training is None or not server.abort_training(reason):
            raise CommandError("the server is not training")
        number = training.run.run_number
        if training.run.reason == st.FINISHED:
            return Reply(
                True,
                f"Run {number} had already finished (its final validation is recorded); "
                "nothing was aborted.",
                {"run_number": number, "round": training.current_round, "finished": True},
            )
        return Reply(
            True,
            f"Server training aborted: run {number} stopped at round {training.current_round}.",
            {"run_number": number, "round": training.current_round},
        )
    return await cmds.per_client(request, clients, "abort", {})


@command(
    "shutdown server | client [instance...]",
    "end the server or client daemons (asks for confirmation)",
)
async def _shutdown(cmds: AdminCommands, request: Request) -> Reply:
    kind, names = cmds.target_kind(request, "shutdown")
    server = cmds.server
    clients = cmds.targets(names) if kind == "client" else []
    asked = ask_first(request, cmds.question(request, clients))
    if asked is not None:
        return asked
    if kind == "client":
        reply = await cmds.per_client(request, clients, "shutdown", {})
        answers = reply.data["clients"]
        server.leaving(s for s in clients if answers[s.instance]["ok"])
        return reply
    server.shutting_down = True
    server.abort_training(f"server shut down by {request.user}")
    log.info("shutdown requested by %s", request.user)
    still_here = await server.departures(DEPARTURE_WAIT_S)
    if still_here:
        log.warning("shutting down before %s logged out", ", ".join(still_here))
    user = request.user
    return Reply(True, "Shutting down the server...", {}, then=lambda: server.stop_soon(user))


def _page_word(request: Request, name: str, fixed: int) -> str | None:
    """The page number word after ``fixed`` words (None: the first page)."""
    words = request.words
    if len(words) > fixed + 1:
        raise _usage(name)
    return words[fixed] if len(words) == fixed + 1 else None


def _page(word: str | None, total: int, size: int) -> listings.Page:
    try:
        return listings.page_of(word, total, size)
    except listings.PageError as exc:
        raise CommandError(str(exc)) from None


@command("list_runs [page]", "every run on the server, newest first", read_only=True)
async def _list_runs(cmds: AdminCommands, request: Request) -> Reply:
    server = cmds.server
    word = _page_word(request, "list_runs", 1)
    numbers = listings.run_numbers(server.store, server.db.run_numbers())
    page = _page(word, len(numbers), listings.PAGE)
    lines = [_run_line(server, n) for n in numbers[page.start : page.start + page.size]]
    return Reply(True, listings.runs_text(lines, page), listings.runs_data(lines, page))


def _run_line(server: FLServer, number: int, limit: int = listings.MAX_TEXT) -> RunLine:
    training = server.training_for(number)
    record = training.run if training is not None else server.db.get_run(number)
    view = server.run_view() if number == server.run_number else None
    app = server.store.deployed_app_name(number)
    return listings.run_line(number, record, view, app, limit)


@command(
    "show_run <N> [page]", "one run's metrics, round by round and site by site", read_only=True
)
async def _show_run(cmds: AdminCommands, request: Request) -> Reply:
    words = request.words
    number = whole_number(words[1], MAX_RUN_NUMBER) if len(words) >= 2 else None
    if number is None:
        raise _usage("show_run")
    server = cmds.server
    if not server.has_run(number):
        raise CommandError(f"there is no run {number} on this server (list_runs lists them)")
    header = _run_line(server, number, listings.MAX_ENDING)
    per_page = listings.rounds_per_page(len(server.db.fold_instances(number)))
    page = _page(_page_word(request, "show_run", 2), server.db.round_count(number), per_page)
    shown = listings.rounds_of(server.db, number, page)
    listings.add_sites(server.db, number, shown)
    data = {
        "run": asdict(header),
        "rounds": [asdict(line) for line in shown],
        **page.as_json(),
    }
    return Reply(True, listings.run_text(number, header, shown, page), data)


@command(
    "delete_run <N>",
    "delete a run that is over: its folder and its history (asks for confirmation)",
)
async def _delete_run(cmds: AdminCommands, request: Request) -> Reply:
    number = _run_number_of(request, "delete_run")
    server = cmds.server
    refusal = server.deletion_refusal(number)
    if refusal:
        raise CommandError(refusal)
    size_bytes = await asyncio.to_thread(server.store.run_bytes, number)
    size = megabytes(size_bytes)
    question = confirm.delete_run(number, size, _history(server, number))
    asked = ask_first(request, question)
    if asked is not None:
        return asked
    deletion = await server.delete_run(number, cmds.audit_entries_with(request))
    cmds.audit_written()
    if deletion.unmoved:
        return Reply(False, deletion.unmoved, audit_id=deletion.audit_id)
    left = deletion.left
    text = f"Deleted run {number} ({size})." + (f"\n{left}" if left else "")
    data = {"run_number": number, "bytes": size_bytes, "left": left}
    return Reply(True, text, data, audit_id=deletion.audit_id)


def megabytes(size: int) -> str:
    """``412.5 MB``: how a run's size is said (decimal megabytes, as the log says models)."""
    return f"{size / 1e6:.1f} MB"


def _history(server: FLServer, number: int) -> str:
    """What the state database holds of a run, as the question before its deletion says."""
    record = server.db.get_run(number)
    if record is None:
        return "It has no history in the state database: it never trained."
    ended = record.status + (f": {record.reason}" if record.reason else "")
    app = f" of {record.app}" if record.app else ""
    return (
        f"Its history: {record.next_round - record.start_round} completed round(s){app} "
        f"({ended}), each site's results and the cross-site results."
    )


@command("list_apps [page]", "the apps uploaded to the server, with size and hash", read_only=True)
async def _list_apps(cmds: AdminCommands, request: Request) -> Reply:
    store = cmds.server.store
    names = listings.app_names(store)
    page = _page(_page_word(request, "list_apps", 1), len(names), listings.PAGE)
    folders = [store.transfer / name for name in names[page.start : page.start + page.size]]
    lines = await asyncio.to_thread(lambda: [cmds.digests.line(f) for f in folders])
    data = {"apps": [asdict(line) for line in lines], **page.as_json()}
    return Reply(True, listings.apps_text(lines, page), data)


@command("list_admins [page]", "the admins logged in: role, consoles, last command", read_only=True)
async def _list_admins(cmds: AdminCommands, request: Request) -> Reply:
    admins = cmds.server.admins
    users = admins.users()
    page = _page(_page_word(request, "list_admins", 1), len(users), listings.PAGE)
    shown = users[page.start : page.start + page.size]
    data = {
        "admins": [AdminLine(user, admins.seen(user)).as_json() for user in shown],
        **page.as_json(),
    }
    return Reply(True, listings.admins_text(admins, shown, page), data)


@command("load_crl <file>", "load the project's revocation list (the crl.pem flprovision wrote)")
async def _load_crl(cmds: AdminCommands, request: Request) -> Reply:
    if len(request.words) != 2:
        raise _usage("load_crl")
    if not request.attachment:
        raise CommandError(
            "load_crl sends a file: run it from fltui, which reads the file it names"
        )
    server = cmds.server
    try:
        loaded = server.revocations.load(request.attachment)
    except RevocationError as exc:
        raise CommandError(f"revocation list refused: {exc}") from None
    enforced = server.enforce_revocations()
    crl = loaded.crl
    replaced = f" (replaces number {loaded.previous})" if loaded.previous is not None else ""
    due = f", next update {when(crl.next_update)}" if crl.next_update else ""
    lines = [
        f"Loaded revocation list number {crl.number}{replaced}: "
        f"{len(crl.serials)} certificate(s) revoked{due}."
    ]
    lines.extend(_enforced_lines(enforced))
    stale = server.revocations.stale_warning()
    if stale:
        lines.append(f"Warning: {stale}")
    data = {
        "crl_number": crl.number,
        "replaced": loaded.previous,
        "revoked": len(crl.serials),
        "removed": enforced.clients,
        "logged_out": enforced.admins,
        "stale": bool(stale),
    }
    return Reply(True, "\n".join(lines), data)


def _enforced_lines(enforced: Enforced) -> list[str]:
    """Who a revocation took effect on: the admin who ran it may be among those logged out
    (an old kit), and their next command fails on it."""
    lines = [
        f"Disconnected and removed: {', '.join(enforced.clients)}"
        if enforced.clients
        else "No client logged in now is revoked."
    ]
    if enforced.admins:
        lines.append(f"Admins logged out: {', '.join(enforced.admins)}")
    return lines


@command("revoke <name>", "refuse a client's or admin's certificates now (asks for confirmation)")
async def _revoke(cmds: AdminCommands, request: Request) -> Reply:
    if len(request.words) != 2:
        raise _usage("revoke")
    name, server = request.words[1], cmds.server
    if name == request.user:
        raise CommandError(
            "you cannot revoke the kit you are logged in with: another super admin must do it"
        )
    try:
        server.revocations.check_revocable(name)
    except RevocationError as exc:
        raise CommandError(str(exc)) from None
    if not request.confirmed:
        return Reply(
            False,
            "",
            confirm_prompt=(
                f"Every certificate of {name} issued until now will be refused by this "
                "server, for good, and its clients disconnected; only a kit lead IT issues "
                f"from {CLOCK_SLACK_S / 60:g} minutes from now on will work.\n"
                "Are you sure (Y/N):"
            ),
        )
    revoked = server.revocations.revoke(name, request.user)
    enforced = server.enforce_revocations()
    held = server.revocations.named(name)
    assert held is not None  # revoked now, or before
    works = minute_after(held.works_from)
    lines = [
        f"{name} is revoked on this server: every certificate of it issued until now is "
        f"refused from now on; a kit issued after {works} works."
        if revoked is not None
        else f"{name} was revoked on this server already.",
        *_enforced_lines(enforced),
        f"Lead IT should also run 'flprovision revoke {name}' (or re-issue its kit with "
        f"'flprovision --reissue {name}' after {works}: a kit issued earlier is refused too) "
        "where the project was provisioned, and load the crl.pem it writes with load_crl: "
        "the list is the project's record of it.",
    ]
    return Reply(
        True,
        "\n".join(lines),
        {"name": name, "removed": enforced.clients, "logged_out": enforced.admins},
    )


@command("validate all | <instance> <instance>...", "cross-site validation results", read_only=True)
async def _validate(cmds: AdminCommands, request: Request) -> Reply:
    names = request.words[1:]
    if not names:
        raise _usage("validate")
    server = cmds.server
    number = server.require_run()
    crossval = server.crossval_for(number)
    bystanders = {
        s.instance: "does not take part (cross_validate is off)"
        for s in server.registry.clients()
        if s.status.run_number == number and not s.status.cross_validate
    }
    matrix = crossval.matrix([] if names == ["all"] else names, bystanders)
    modes = server.metric_modes(number)
    metric = _matrix_metric(matrix, modes)
    data = {**matrix.as_json(), "metric": metric, "metric_modes": modes}
    if not matrix.cells and not matrix.notes:
        text = f"No cross-site validation results for run {number}."
        return Reply(True, text, data)
    return Reply(True, render_matrix(matrix, metric), data)


def _matrix_metric(matrix: ValidationMatrix, modes: dict[str, str]) -> str:
    """The metric to show: the app's validation metric when reported, else val_accuracy,
    else the first one reported."""
    names = matrix.metric_names()
    known = [name for name in (*modes, "val_accuracy") if name in names]
    return known[0] if known else names[0] if names else "val_accuracy"


def render_matrix(matrix: ValidationMatrix, metric: str) -> str:
    """The cross-site matrix as text: rows are models, columns the sites validating them."""
    corner = "model \\ site"
    columns = matrix.columns
    width = max([len(corner), *(len(r) for r in matrix.rows)]) + 2
    cell_width = max([10, *(len(c) + 2 for c in columns)])
    lines = [
        f"Cross-site validation of run {matrix.run_number} ({metric})",
        (corner.ljust(width) + "".join(c.ljust(cell_width) for c in columns)).rstrip(),
    ]
    for row in matrix.rows:
        shown = []
        for column in columns:
            cell = matrix.cell(row, column)
            if cell is None:
                shown.append("")
            elif cell.error:
                shown.append("error")
            else:
                value = cell.metrics.get(metric)
                shown.append("" if value is None else f"{value:.4f}")
        lines.append((row.ljust(width) + "".join(v.ljust(cell_width) for v in shown)).rstrip())
    for row, cells in matrix.cells.items():
        for column, cell in cells.items():
            if cell.error:
                lines.append(f"model of {row} on {column}: {cell.error}")
    for site, reason in sorted(matrix.notes.items()):
        lines.append(f"{site}: {reason}")
    return "\n".join(lines)


def fit_reply(reply: Reply) -> Reply:
    """A reply that fits one gRPC message, however much the sites wrote.

    Every text a site sends is bounded, but one reply may carry every
    instance's: past :data:`MAX_REPLY_BYTES` each string of the data keeps
    its first (a traceback its last) :data:`SHED_TEXT` characters, the text
    is cut, and past that the data is dropped; the text says so and how to
    ask for less.
    """
    if _size(reply) <= MAX_REPLY_BYTES:
        return reply
    shed = replace(reply, text=clip(reply.text, MAX_REPLY_TEXT), data=_shed(reply.data, ""))
    text, data = shed.text, shed.data
    if _size(shed) > MAX_REPLY_BYTES:
        data = {}
    note = (
        "(this reply was shortened to fit: ask about fewer clients at a time, "
        "e.g. check_status client <instance>)"
    )
    return replace(reply, text=f"{text.rstrip()}\n{note}", data={**data, "truncated": True})


def _size(reply: Reply) -> int:
    return len(reply.text.encode()) + len(reply.data_json.encode())


def _shed(value: Any, key: str) -> Any:
    if isinstance(value, str):
        return clip_end(value, SHED_TEXT) if key == "traceback" else clip(value, SHED_TEXT)
    if isinstance(value, dict):
        return {k: _shed(v, str(k)) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_shed(v, key) for v in value]
    return value
