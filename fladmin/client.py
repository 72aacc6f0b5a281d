"""The admin client: the one way a console or a script talks to the server.

The full-screen console, ``fltui --cmd``, the demo and the benchmarks all
use it, so scripts see exactly what people see. Commands travel as text lines; ``set_timeout`` is
kept here (it is how long the server waits for clients on our behalf) and
``upload_folder`` streams an app from the admin's ``transfer/`` folder;
``load_crl <file>`` reads the file here and sends it with the command line.
Strings from the server pass :func:`flcore.feed.printable` as they arrive
here, since they carry what sites wrote and end up on a terminal.
"""

from __future__ import annotations

import asyncio
import json
import math
import shlex
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import grpc

from flcore.certlife import judged, kit_lives
from flcore.configfile import parse_json, read_bounded
from flcore.feed import json_printable, printable
from flcore.folders import FolderError, folder_size, iter_chunks
from flcore.kitsig import KitSignatureError, verify_startup
from flcore.proto.gen import flstack_admin_pb2 as admin_pb2
from flcore.proto.gen import flstack_admin_pb2_grpc as admin_grpc
from flcore.proto.gen import flstack_common_pb2 as common_pb2
from flcore.schema import ConfigError
from flcore.startup import AdminStartup, load_admin
from flcore.tls import CHANNEL_OPTIONS, TlsFiles, channel_credentials, foreign_server

DEFAULT_TIMEOUT_S = 10.0
MAX_TIMEOUT_S = 3600.0
LOGIN_TIMEOUT_S = 10.0
LOGIN_PACED_TRIES = 10
LOGIN_PACE_S = 0.2
"""A login the server paces is tried again this often, this long apart (it lets one more
through every 0.1 s)."""
RPC_SLACK_S = 5.0
REFUSED_CODES = (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED)

T = TypeVar("T")
MAX_ASKED = 8
"""Command lines whose last question a session remembers."""
ATTACHING = frozenset({"load_crl"})
"""Commands whose one argument is a file on the admin's machine, sent along."""
MAX_ATTACHMENT_BYTES = 3 * 1024 * 1024
"""Fits one gRPC message; a CRL of tens of thousands of revoked certificates."""


class AdminError(Exception):
    """The server cannot be reached or refuses the login; the message says why.

    ``refused`` tells a refused login (wrong user, not an admin certificate)
    from a server that cannot be reached: retrying helps only the latter.
    """

    def __init__(self, message: str, refused: bool = False) -> None:
        super().__init__(message)
        self.refused = refused


@dataclass(frozen=True)
class CommandReply:
    """The reply to one command line, as a person or a script sees it."""

    line: str
    ok: bool
    text: str
    data: dict[str, Any] = field(default_factory=dict)
    usecs: int = 0
    finished_at: str = ""
    confirm_prompt: str = ""

    def render(self) -> str:
        """What a person reads: the reply text, then the Done line."""
        text = self.text.rstrip("\n")
        return f"{text}\n" * bool(text) + f"Done [{self.usecs} usecs] {self.finished_at}"

    def as_json(self) -> str:
        """One JSON object per command, for scripts: standard JSON, so a value that is not a
        finite number (a site's NaN metric) is ``null``; Python would write ``NaN``, which
        strict readers such as jq refuse."""
        record = {
            "command": self.line,
            "ok": self.ok,
            "text": self.text,
            "data": self.data,
            "usecs": self.usecs,
            "finished_at": self.finished_at,
        }
        try:
            return json.dumps(record, sort_keys=True, allow_nan=False)
        except ValueError:
            return json.dumps(_finite_json(record), sort_keys=True, allow_nan=False)


def parse_timeout(text: str) -> float | None:
    """Seconds for ``set_timeout`` (and ``--timeout``): above 0, at most an hour; else None."""
    try:
        seconds = float(text)
    except ValueError:
        return None
    return seconds if 0 < seconds <= MAX_TIMEOUT_S else None  # nan fails both comparisons


TIMEOUT_RULE = f"a number of seconds, more than 0 and at most {MAX_TIMEOUT_S:g}"


def _local(line: str, ok: bool, text: str, data: dict[str, Any] | None = None) -> CommandReply:
    now = datetime.now().strftime("%Y-%m-%d %H:%M:%S.%f")
    return CommandReply(line, ok, text, data or {}, 0, now)


def load_kit(startup_dir: Path) -> AdminStartup:
    """Check an admin kit's signature and its certificates' validity and read its settings.

    Raises:
        AdminError: the kit is missing, tampered with or unreadable (a folder
            without permission, a name too long), or its certificate or the CA has
            ended (the server would refuse the handshake without a word on why): the
            console then asks again.
    """
    try:
        verify_startup(startup_dir)
        kit = load_admin(startup_dir)
        problems, _ = judged(kit_lives(startup_dir, kit, kit.email), datetime.now(UTC))
        if problems:
            raise AdminError(problems[0])
        return kit
    except (KitSignatureError, ConfigError) as exc:
        raise AdminError(str(exc)) from None
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise AdminError(f"{startup_dir}: cannot read the admin kit ({reason})") from None


def kit_warnings(startup_dir: Path, kit: AdminStartup) -> list[str]:
    """What the admin should hear of the kit's certificates: that one ends soon (the server
    logs it too, but lead IT may not read that log before the kit stops working)."""
    try:
        _, warnings = judged(kit_lives(startup_dir, kit, kit.email), datetime.now(UTC))
    except ConfigError:
        return []  # load_kit read them a moment ago; a kit swapped meanwhile says so at login
    return warnings


class AdminClient:
    """A logged-in admin session."""

    def __init__(
        self, startup_dir: Path, kit: AdminStartup, user: str, interactive: bool = False
    ) -> None:
        """A session for ``user`` with the kit in ``startup_dir``; ``interactive``: the admin
        sits at a console that confirms whatever stops training (the server then asks
        before an abort too, not only before a shutdown)."""
        self.startup_dir = startup_dir
        self.interactive = interactive
        self.kit = kit
        self.user = user
        self.timeout = DEFAULT_TIMEOUT_S
        self.token = ""
        self.role = ""
        self.project = kit.project
        self._asked: dict[str, str] = {}
        """The digest of the last question each command line was asked (a few lines at
        most): its confirmation names it, so that the server asks again if it changed."""
        files = TlsFiles.named_by(kit, startup_dir)
        try:
            credentials = channel_credentials(files)
        except ConfigError as exc:
            raise AdminError(str(exc)) from None
        self._channel = grpc.aio.secure_channel(
            kit.admin_target, credentials, options=CHANNEL_OPTIONS
        )
        self._stub = admin_grpc.AdminStub(self._channel)

    @property
    def transfer_dir(self) -> Path:
        """The admin's ``transfer/`` folder, beside ``startup/``."""
        return self.startup_dir.parent / "transfer"

    async def login(self) -> None:
        """Log in with the kit's certificate; AdminError says why it failed. The server
        paces one kit's logins (10 a second, after a burst): a login it asks to wait, such
        as a console's own while a script of the same kit loops, waits and tries again."""
        request = admin_pb2.AdminLoginRequest(user=self.user)
        for tries_left in reversed(range(LOGIN_PACED_TRIES)):
            try:
                reply = await self._stub.Login(request, timeout=LOGIN_TIMEOUT_S)
                break
            except grpc.aio.AioRpcError as exc:
                if exc.code() != grpc.StatusCode.RESOURCE_EXHAUSTED or not tries_left:
                    refused = exc.code() in REFUSED_CODES
                    message = describe_rpc_error(exc, self.kit.admin_target)
                    raise AdminError(message, refused) from None
            await asyncio.sleep(LOGIN_PACE_S)
        self.token, self.role = reply.token, printable(reply.role)
        self.project = printable(reply.project)

    async def close(self) -> None:
        """Close the connection."""
        await self._channel.close()

    async def execute(self, line: str, confirmed: bool = False) -> CommandReply:
        """Run one command line and return its reply (AdminError when the server is gone)."""
        line = line.strip()
        if "\x00" in line or not _is_utf8(line):  # a script's stray byte, a NUL
            shown = line.encode("utf-8", "replace").decode().replace("\x00", "\ufffd")
            return _local(shown, False, "a command must be UTF-8 text without NUL characters")
        try:
            words = shlex.split(line)
        except ValueError as exc:
            return _local(line, False, f"cannot parse the command: {exc}")
        if words and words[0] == "set_timeout":
            return self._set_timeout(line, words)
        if words and words[0] == "upload_folder":
            if len(words) != 2:
                return _local(line, False, "usage: upload_folder <app>")
            return await self.upload_folder(words[1])
        attachment = b""
        if words and words[0] in ATTACHING:
            if len(words) != 2:
                return _local(line, False, f"usage: {words[0]} <file>")
            try:
                attachment = read_attachment(Path(words[1]).expanduser())
            except AdminError as exc:
                return _local(line, False, str(exc))
        request = admin_pb2.CommandRequest(
            line=line,
            timeout_s=self.timeout,
            confirmed=confirmed,
            interactive=self.interactive,
            attachment=attachment,
            confirm_digest=self._asked.pop(line, "") if confirmed else "",
        )

        def send() -> Awaitable[admin_pb2.CommandReply]:
            request.token = self.token
            return self._stub.Execute(request, timeout=self.timeout + RPC_SLACK_S)

        try:
            reply = await self._logged_in(send)
        except grpc.aio.AioRpcError as exc:
            raise AdminError(describe_rpc_error(exc, self.kit.admin_target)) from None
        answer = _from_wire(line, reply)
        question = answer.data.get("confirm") if answer.confirm_prompt else None
        if isinstance(question, dict) and isinstance(question.get("digest"), str):
            self._asked[line] = question["digest"]
            while len(self._asked) > MAX_ASKED:
                del self._asked[next(iter(self._asked))]
        return answer

    async def _logged_in(self, call: Callable[[], Awaitable[T]]) -> T:
        """``call`` (which sends the token), again after a new login when the server no
        longer knows the token: it forgets one idle for 12 hours and an admin's oldest once
        there are 64, and a console that only followed the feed meanwhile would otherwise
        be refused every command until it quit. The server refused before doing anything,
        so nothing runs twice; a kit refused now is refused by the login."""
        try:
            return await call()
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.UNAUTHENTICATED:
                raise
        await self.login()
        return await call()

    def _set_timeout(self, line: str, words: list[str]) -> CommandReply:
        seconds = parse_timeout(words[1]) if len(words) == 2 else None
        if seconds is None:
            return _local(line, False, f"usage: set_timeout <seconds>  ({TIMEOUT_RULE})")
        self.timeout = seconds
        return _local(
            line, True, f"Command timeout set to {seconds:g} seconds", {"timeout_s": seconds}
        )

    async def upload_folder(self, app: str) -> CommandReply:
        """Stream ``transfer/<app>`` (config/ and resources/ only) to the server."""
        line = f"upload_folder {app}"
        folder = self.transfer_dir / app
        if "/" in app or app in ("", ".", ".."):
            return _local(line, False, f"app name {app!r} must be a folder name inside transfer/")
        if not folder.is_dir():
            return _local(
                line, False, f"no folder {folder}: put the app in your transfer/ folder first"
            )
        try:
            total, count = folder_size(folder)
        except (FolderError, OSError) as exc:
            return _local(line, False, f"upload refused: {exc}")
        failure: list[str] = []

        async def messages() -> AsyncIterator[admin_pb2.UploadMessage]:
            # grpc.aio turns an exception raised here into a cancelled call, losing
            # it: a file that cannot be read is noted, and the stream just ends.
            header = admin_pb2.UploadHeader(
                token=self.token, app=app, total_bytes=total, file_count=count
            )
            yield admin_pb2.UploadMessage(header=header)
            try:
                for path, offset, data, eof in iter_chunks(folder):
                    chunk = common_pb2.FileChunk(path=path, offset=offset, data=data, eof=eof)
                    yield admin_pb2.UploadMessage(chunk=chunk)
            except (FolderError, OSError) as exc:
                failure.append(str(exc))

        try:
            reply = await self._logged_in(
                lambda: self._stub.UploadFolder(
                    messages(), timeout=upload_deadline(total, self.timeout)
                )
            )
        except grpc.aio.AioRpcError as exc:
            if not failure:
                raise AdminError(describe_rpc_error(exc, self.kit.admin_target)) from None
        else:
            if not failure:
                return _from_wire(line, reply)
        # The server saw the stream end early; the reason is on this side.
        return _local(line, False, f"upload failed: {failure[0]}")

    async def events(self) -> AsyncIterator[admin_pb2.Event]:
        """The server's live feed: a snapshot, then deltas (AdminError when it breaks)."""
        call = self._stub.Events(admin_pb2.EventsRequest(token=self.token))
        try:
            async for event in call:
                yield event
        except grpc.aio.AioRpcError as exc:
            raise AdminError(describe_rpc_error(exc, self.kit.admin_target)) from None


def _is_utf8(text: str) -> bool:
    """Whether ``text`` can be sent (no lone surrogate, as a non-UTF-8 byte read under a
    C locale becomes)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


UPLOAD_SLOWEST_BYTES_S = 125_000
"""The slowest link an upload is given time for: 1 Mbit/s."""


def upload_deadline(total_bytes: int, timeout: float) -> float:
    """Seconds an upload of ``total_bytes`` may take: a minute (or the command timeout) plus
    its bytes at :data:`UPLOAD_SLOWEST_BYTES_S` (a fixed minute cut a 200 MB app off any
    link under 27 Mbit/s)."""
    return max(60.0, timeout) + total_bytes / UPLOAD_SLOWEST_BYTES_S


def read_attachment(path: Path) -> bytes:
    """The file a command sends along; AdminError says why it cannot be sent."""
    try:
        data = read_bounded(path, MAX_ATTACHMENT_BYTES)
    except ConfigError as exc:
        raise AdminError(str(exc)) from None
    except OSError as exc:
        raise AdminError(f"cannot read {path}: {exc.strerror or exc}") from None
    if not data:
        raise AdminError(f"{path} is empty")
    if b"PRIVATE KEY" in data or b"-----BEGIN X509 CRL-----" not in data:
        # A mistyped path beside crl.pem (a kit's key) would reach the server before it
        # refused it.
        raise AdminError(
            f"{path} is not a revocation list (crl.pem, as flprovision wrote it); nothing sent"
        )
    return data


def _printable_json(value: Any) -> Any:
    """A reply's data with every string cleaned: it carries what sites wrote (errors, notes)."""
    return _mapped_json(value, lambda leaf: printable(leaf) if isinstance(leaf, str) else leaf)


def _finite_json(value: Any) -> Any:
    """``value`` with every float that is not finite replaced by None."""
    return _mapped_json(
        value, lambda leaf: None if isinstance(leaf, float) and not math.isfinite(leaf) else leaf
    )


def _mapped_json(value: Any, leaf: Callable[[Any], Any]) -> Any:
    """Parsed JSON with ``leaf`` applied to every key and every value that is no container."""
    if isinstance(value, list):
        return [_mapped_json(item, leaf) for item in value]
    if isinstance(value, dict):
        return {leaf(key): _mapped_json(item, leaf) for key, item in value.items()}
    return leaf(value)


def _from_wire(line: str, reply: admin_pb2.CommandReply) -> CommandReply:
    """A reply as the console and scripts see it, its texts safe to draw on a terminal."""
    text = reply.text
    try:
        raw = parse_json(reply.data_json, "reply data", allow_nan=True) if reply.data_json else {}
    except ConfigError as exc:  # said, not dropped in silence: --json would print {} as "ok"
        raw = {}
        note = f"(this reply's data cannot be read: {exc})\n"
        text = note if not text else text + ("" if text.endswith("\n") else "\n") + note
    data = raw if json_printable(reply.data_json) else _printable_json(raw)
    return CommandReply(
        line,
        reply.ok,
        printable(text),
        data,
        reply.usecs,
        printable(reply.finished_at),
        printable(reply.confirm_prompt),
    )


def describe_rpc_error(exc: grpc.aio.AioRpcError, target: str) -> str:
    """Turn a gRPC failure into a sentence an admin can act on."""
    code = exc.code()
    details = printable(exc.details() or code.name)
    foreign = foreign_server(exc, target)
    if foreign is not None:
        return foreign
    if code == grpc.StatusCode.UNAVAILABLE:
        return f"cannot connect to the server at {target}: {details}"
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return f"the server at {target} did not answer in time (see set_timeout)"
    if code in REFUSED_CODES:
        return f"login refused: {details}"
    return f"{code.name.lower()}: {details}"
