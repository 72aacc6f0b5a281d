"""Which peer certificates the server refuses, and why: the project's CRL and the names
revoked at the console.

Two things revoke a certificate on this server:

- The project's certificate revocation list, signed by ``flprovision
  revoke``/``crl`` with the CA key on lead IT's machine and handed over with
  the console command ``load_crl``. It is checked against the project CA,
  accepted only when it is newer than the list held (a replayed old list
  would un-revoke), kept in ``state/crl.pem`` and read again at every start.
- ``revoke NAME`` typed at the console. The server has no CA key and cannot
  sign a CRL, so this is the server's own refusal, kept in the state
  database: every certificate naming NAME that was issued before the
  revocation is refused, whatever its serial. A kit issued after it (by
  ``flprovision --reissue NAME``, :data:`CLOCK_SLACK_S` later or more) works:
  only the CA's holder can issue one, so it is the replacement, not the kit
  revoked. So the refusal never has to end, and no CRL ends it: a list
  names serials, and the server may never have seen the serial of the kit
  it refuses (one stolen before its first use), so a list signed later for
  another reason would have let that kit in again.

A stale CRL (past its next update) keeps revoking what it lists; the server
warns and says how to refresh it. gRPC Python has no hook into the TLS
handshake, so the check runs before every call (:mod:`flserverd.gate`): a
connection that completed a handshake can do nothing without a call.
"""

from __future__ import annotations

import logging
import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from cryptography import x509

from flcore.atomic import atomic_write_bytes
from flcore.crl import CrlError, RevocationList, parse_crl, read_crl
from flcore.identity import Identity
from flcore.schema import ConfigError, email_like, name_like
from flserverd.statedb import StateDB

log = logging.getLogger(__name__)

CRL_STORE = "crl.pem"
"""The CRL the server holds, in its ``state/`` folder."""
CLOCK_SLACK_S = 300.0
"""How far lead IT's clock may be ahead of the server's: a certificate that says it was issued
up to this long after a console revocation is refused too (its time has whole seconds)."""
_NEW_KIT = "this kit no longer works; ask lead IT for a new one"
_INSTANCE = re.compile(r"(.+)_[1-9][0-9]{0,5}")
"""An instance's name: its kit's name, then ``_<n>`` (:func:`flcore.identity.instance_name`)."""
_REFRESH = "lead IT should run 'flprovision crl' and load the new crl.pem with load_crl"


class RevocationError(Exception):
    """A CRL or a revocation the server refuses; the message says why and what to do."""


@dataclass(frozen=True)
class RevokedName:
    """A name revoked at the console."""

    name: str
    since: float
    by: str

    @property
    def works_from(self) -> float:
        """After when a kit of this name must have been issued to work: its replacement."""
        return self.since + CLOCK_SLACK_S


@dataclass(frozen=True)
class CrlLoaded:
    """What loading a CRL changed."""

    crl: RevocationList
    previous: int | None
    """The number of the list it replaced (None: the server held none)."""


def _certificate(path: Path, what: str) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "strerror", None) or exc
        raise RevocationError(f"cannot read {what} {path}: {reason}") from None


def when(stamp: datetime | float) -> str:
    """A moment as people read it in replies and logs (UTC)."""
    moment = stamp if isinstance(stamp, datetime) else datetime.fromtimestamp(stamp, UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


def minute_after(stamp: float) -> str:
    """The whole minute at or after a moment, as :func:`when` says it: "after" it is true."""
    return when(math.ceil(stamp / 60) * 60.0)


class Revocations:
    """The CRL held and the names revoked here; one verdict per peer certificate."""

    def __init__(
        self,
        db: StateDB,
        crl_path: Path,
        ca_path: Path,
        server_name: str,
        server_cert: Path | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._db = db
        self.crl_path = crl_path
        self._ca_path = ca_path
        self._server_name = server_name
        self._server_cert = server_cert
        self._clock = clock
        self._crl: RevocationList | None = None
        self._names = {name: RevokedName(name, since, by) for name, since, by in db.revoked_names()}
        self._recorded: set[int] = set()
        self._stale_warned = False

    def open(self) -> None:
        """Read the CRL kept in the workspace, if any.

        Raises:
            ConfigError: the kept list cannot be used. The server does not
                start then: starting without it would un-revoke every kit it
                lists, and load_crl cannot be typed while the server is down.
        """
        if not self.crl_path.exists():
            return
        try:
            self._crl = read_crl(self.crl_path, self._ca())
        except (CrlError, RevocationError) as exc:
            raise ConfigError(
                f"the revocation list this server held cannot be used ({exc}); it will not "
                f"start without it: copy the project's current crl.pem to {self.crl_path} "
                "and start it again"
            ) from None
        log.info(
            "revocation list number %d loaded: %d certificate(s) revoked",
            self._crl.number,
            len(self._crl.serials),
        )
        self.check_stale()

    def _ca(self) -> x509.Certificate:
        return _certificate(self._ca_path, "the project CA certificate")

    def _refuse_revoking_the_server(self, crl: RevocationList) -> None:
        if self._server_cert is None:
            return
        serial = _certificate(self._server_cert, "this server's certificate").serial_number
        if crl.is_revoked(serial):
            raise RevocationError(
                f"the list revokes this server's own certificate (serial {serial:x}), which "
                "cannot be revoked: clients and admins check the server by the project CA and "
                "its host name, not by a revocation list. If the server's key leaked, provision "
                "the project into a new workspace (a new CA) and replace every kit"
            )

    @property
    def crl(self) -> RevocationList | None:
        """The CRL held (None before the first load_crl)."""
        return self._crl

    def names(self) -> list[RevokedName]:
        """Names revoked at the console, oldest first."""
        return sorted(self._names.values(), key=lambda revoked: revoked.since)

    def named(self, name: str) -> RevokedName | None:
        """The console's revocation of ``name`` (None: it has none)."""
        return self._names.get(name)

    # ------------------------------------------------------------------ verdicts

    def refusal(self, name: str, serial: int, issued: datetime | None) -> str | None:
        """Why the certificate ``serial`` of ``name``, issued at ``issued``, is refused (None:
        it is not)."""
        crl = self._crl
        if crl is not None and crl.is_revoked(serial):
            return (
                f"the certificate of {name} (serial {serial:x}) is revoked by the project's "
                f"revocation list (number {crl.number}): {_NEW_KIT}"
            )
        revoked = self._names.get(name)
        if revoked is None or (issued is not None and issued.timestamp() > revoked.works_from):
            return None
        if issued is not None and issued.timestamp() > revoked.since:
            # Most likely the replacement, issued too soon: its site must hear that it needs
            # another one, and when, not that its kit "no longer works".
            return (
                f"this kit of {name} was issued on {when(issued)}, within "
                f"{CLOCK_SLACK_S / 60:g} minutes after {revoked.by} revoked {name} on this "
                f"server ({when(revoked.since)}), a margin kept for lead IT's clock being "
                f"ahead of the server's, so it is refused too: lead IT should re-issue it "
                f"once more ('flprovision --reissue {name}'); one issued after "
                f"{minute_after(revoked.works_from)} works"
            )
        return (
            f"{name} was revoked on this server by {revoked.by} on {when(revoked.since)}: "
            f"{_NEW_KIT} (one issued after {minute_after(revoked.works_from)} works)"
        )

    def seen(self, identity: Identity) -> None:
        """Remember the certificate a peer logs in with: ``revoke`` tells a name no kit can
        have from one that logged in here."""
        if identity.serial and identity.serial not in self._recorded:
            end = identity.valid_until.timestamp() if identity.valid_until else None
            self._db.record_certificate(identity.serial, identity.name, identity.kind, end)
            self._recorded.add(identity.serial)

    # ------------------------------------------------------------------ changes

    def check_revocable(self, name: str) -> None:
        """Refuse the server's own name, and one that cannot be a participant's.

        Raises:
            RevocationError: saying why ``name`` cannot be revoked here.
        """
        if name == self._server_name:
            raise RevocationError(
                f"{name!r} is this server: its certificate cannot be revoked. Clients and "
                "admins check the server by the project CA and its host name, not by a "
                "revocation list, so refusing it here would protect nothing. If its key "
                "leaked, provision the project into a new workspace (a new CA) and replace "
                "every kit"
            )
        if name_like(name) is not None and email_like(name) is not None:
            raise RevocationError(
                f"{name[:80]!r} is not a client name or an admin's email as project.yml names them"
            )
        # What a console shows or a person types that is not the certificate's name: revoking
        # it would answer "revoked" while the kit went on working.
        if self._db.certificates_of(name):
            return
        kit = _INSTANCE.fullmatch(name)
        meant = self._db.name_like(name) or (
            kit.group(1) if kit and self._db.certificates_of(kit.group(1)) else None
        )
        if meant is not None:
            raise RevocationError(
                f"no certificate named {name!r} logged in here, but {meant!r} did: revoke "
                f"{meant} (a kit's name, exactly as project.yml has it; {name!r} may be one of "
                "its instances, or differ in case)"
            )

    def revoke(self, name: str, by: str) -> RevokedName | None:
        """Refuse every certificate of ``name`` issued until now; None when it is refused
        already.

        Raises:
            RevocationError: ``name`` is the server's or cannot be a participant's.
        """
        self.check_revocable(name)
        if name in self._names:
            return None
        revoked = RevokedName(name, self._clock(), by)
        self._db.save_revoked_name(name, revoked.since, by)
        self._names[name] = revoked
        log.warning("%s revoked %s on this server: its certificates are refused", by, name)
        return revoked

    def load(self, data: bytes) -> CrlLoaded:
        """Check a CRL from an admin, keep it and apply it.

        Raises:
            RevocationError: not signed by the project CA, not a CRL, or not
                newer than the list held.
        """
        try:
            crl = parse_crl(data, self._ca(), "the revocation list")
        except CrlError as exc:
            raise RevocationError(str(exc)) from None
        self._refuse_revoking_the_server(crl)
        held = self._crl
        if not crl.supersedes(held):
            assert held is not None
            raise RevocationError(
                f"the revocation list is number {crl.number}, and this server holds number "
                f"{held.number}: an older or equal list cannot replace it (it could un-revoke "
                "a kit). Load the crl.pem that 'flprovision revoke' or 'flprovision crl' "
                "wrote last"
            )
        atomic_write_bytes(self.crl_path, crl.pem)
        self._crl = crl
        self._stale_warned = False
        log.info(
            "revocation list number %d loaded (was %s): %d certificate(s) revoked",
            crl.number,
            "none" if held is None else held.number,
            len(crl.serials),
        )
        self.check_stale()
        return CrlLoaded(crl, None if held is None else held.number)

    # ------------------------------------------------------------------ staleness

    def stale_since(self) -> datetime | None:
        """When the CRL held passed its next update (None: it is current, or none is held)."""
        crl = self._crl
        if crl is None or not crl.is_stale(datetime.fromtimestamp(self._clock(), UTC)):
            return None
        return crl.next_update

    def stale_warning(self) -> str:
        """What to tell people about a stale CRL ("" when it is current)."""
        since = self.stale_since()
        if since is None:
            return ""
        return (
            f"the revocation list is stale: its next update was due {when(since)}. It still "
            f"revokes what it lists; {_REFRESH}"
        )

    def check_stale(self) -> None:
        """Log a warning once when the CRL held is (or becomes) stale."""
        warning = self.stale_warning()
        if warning and not self._stale_warned:
            log.warning("%s", warning)
        self._stale_warned = bool(warning)
