"""How long a kit's certificates stay valid, and what is said before they end.

A participant's certificate is issued for ``cert_validity_days`` (360 by
default) and the project CA for ten years. When one ends, every TLS
handshake of its holder fails and gRPC says no more than "handshake
failed", a year after anyone last thought about the kits. So a daemon reads
its own certificate and the CA's at start: one that has ended, or is not
valid yet (a clock that is wrong), is a clear error before any port opens,
and one that ends within :data:`WARN_DAYS` is a warning, repeated daily
while the daemon runs. The server also warns when a site or an admin whose
certificate ends soon logs in, since only lead IT can issue new kits, and
says once when one has ended (the handshake TLS then refuses gives gRPC
Python's server no hook, so nothing else would be logged).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509

from flcore.identity import KIND_SERVER, Identity, identity_from_certificate
from flcore.schema import ConfigError
from flcore.tls import NamesTlsFiles

log = logging.getLogger(__name__)

WARN_DAYS = 30
"""Days before its end from which a certificate's end is warned about."""
DAY_S = 86_400.0


def _when(moment: datetime) -> str:
    return f"{moment:%Y-%m-%d %H:%M} UTC"


@dataclass(frozen=True)
class CertLife:
    """One certificate's validity, named for the log, with what to do when it ends."""

    what: str
    """``this kit's certificate (flclient1)``, ``the project CA``."""
    not_before: datetime
    not_after: datetime
    renewal: str
    """Who makes a new one, and how."""

    @classmethod
    def of(cls, cert: x509.Certificate, what: str, renewal: str) -> CertLife:
        """The validity of ``cert``."""
        return cls(what, cert.not_valid_before_utc, cert.not_valid_after_utc, renewal)

    def ended(self, now: datetime) -> bool:
        """Whether the certificate has ended at ``now`` (no clock fix makes it valid again)."""
        return now >= self.not_after

    def problem(self, now: datetime) -> str | None:
        """Why the certificate cannot be used at ``now``, or None."""
        if self.ended(now):
            return f"{self.what} expired on {_when(self.not_after)}: {self.renewal}"
        if now < self.not_before:
            return (
                f"{self.what} is valid from {_when(self.not_before)} only, and this machine's "
                f"clock says {_when(now)}: set the clock right (NTP)"
            )
        return None

    def warning(self, now: datetime) -> str | None:
        """That the certificate ends within :data:`WARN_DAYS` of ``now``, or None."""
        return ends_soon(self.what, self.not_after, now, self.renewal)


def ends_soon(what: str, end: datetime, now: datetime, renewal: str) -> str | None:
    """That ``what`` ends at ``end``, within :data:`WARN_DAYS` of ``now``, and what to do;
    None when it does not (or has ended already)."""
    left = end - now
    if not timedelta(0) < left <= timedelta(days=WARN_DAYS):
        return None
    days = left.days
    within = "less than a day" if days < 1 else f"{days} day{'s' if days > 1 else ''}"
    return f"{what} expires on {_when(end)}, in {within}: {renewal} before then"


def participant_renewal(name: str) -> str:
    """What a site or an admin whose certificate ends must do."""
    return (
        f"ask lead IT for a new kit (flprovision --reissue {name}; a site that makes its own "
        "key sends a new request) and extract it in place of this one"
    )


SERVER_RENEWAL = (
    "lead IT re-issues every kit with flprovision --force (the server's kit is never re-issued "
    "alone); extract the new server kit in place of this one and hand out the others"
)
CA_RENEWAL = "lead IT must provision the project again (every kit ends with its CA)"


def kit_lives(startup_dir: Path, config: NamesTlsFiles, name: str) -> list[CertLife]:
    """The validity of a kit's own certificate and of its project CA.

    Raises:
        ConfigError: a certificate file cannot be read or is no certificate.
    """
    own, ca = (_certificate(startup_dir / f) for f in (config.ssl_cert, config.ssl_root_cert))
    server = identity_from_certificate(own).kind == KIND_SERVER
    return [
        CertLife.of(
            own,
            f"this kit's certificate ({name})",
            SERVER_RENEWAL if server else participant_renewal(name),
        ),
        CertLife.of(ca, "the project CA", CA_RENEWAL),
    ]


def _certificate(path: Path) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror or exc}") from None
    except ValueError:
        raise ConfigError(f"{path} holds no certificate; re-extract the kit") from None


def judged(lives: Sequence[CertLife], now: datetime) -> tuple[list[str], list[str]]:
    """What ``lives`` say at ``now``: the problems of the certificates that cannot be used,
    and the warnings about those that end soon."""
    problems = [p for p in (life.problem(now) for life in lives) if p is not None]
    warnings = [w for w in (life.warning(now) for life in lives) if w is not None]
    return problems, warnings


def tell(lives: Sequence[CertLife], now: datetime) -> list[str]:
    """Log a warning for each certificate that ends soon; the problems of those that cannot
    be used at ``now``."""
    problems, warnings = judged(lives, now)
    for warning in warnings:
        log.warning("%s", warning)
    return problems


class NotValidYet(ConfigError):
    """A certificate is not valid yet by this machine's clock: a clock that NTP corrects
    soon after boot, so the daemon is started again (exit 3), unlike for an ended one."""


def check_lives(lives: Sequence[CertLife], now: datetime) -> None:
    """What a daemon checks at start: warns about a certificate that ends soon.

    Raises:
        ConfigError: a certificate has ended.
        NotValidYet: none has ended, and one is not valid yet.
    """
    problems = tell(lives, now)
    ended = [life.problem(now) for life in lives if life.ended(now)]
    if ended:
        raise ConfigError(str(ended[0]))
    if problems:
        raise NotValidYet(problems[0])


async def watch_lives(
    lives: Sequence[CertLife],
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    pause: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> None:
    """Say once a day, for as long as the daemon runs, what :func:`check_lives` says at start
    (an ended certificate as an error: the daemon goes on, and its peers refuse it)."""
    while True:
        await pause(DAY_S)
        for problem in tell(lives, clock()):
            log.error("%s", problem)


def peer_ended(identity: Identity, now: datetime) -> str | None:
    """Why the server refuses a call of ``identity`` whose certificate has ended at ``now``
    (None: it has not). TLS checks the end at the handshake only, and a connection that
    stays up outlives it."""
    if identity.valid_until is None or now < identity.valid_until:
        return None
    return (
        f"the certificate of {identity.name} expired on {_when(identity.valid_until)}: "
        f"{participant_renewal(identity.name)}"
    )


PEER_ENDS_CHECK_S = 3600.0
"""How often the server looks for certificates of its participants that have ended."""


async def watch_peer_ends(
    ends: Callable[[], Sequence[tuple[str, str, float]]],
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    pause: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> None:
    """Log one WARNING when the certificate of a site or an admin the server has seen ends
    (``ends``: name, kind and end as a POSIX time, its newest certificate's): TLS then
    refuses it at the handshake, where gRPC gives the server no hook and nothing to log,
    so lead IT would hear of it from the site alone. One that ended before the server
    started is said at its start."""
    said: set[tuple[str, float]] = set()
    while True:
        now = clock().timestamp()
        for name, kind, end in ends():
            if end <= now and (name, end) not in said:
                said.add((name, end))
                log.warning(
                    "the certificate of %s %s expired on %s: it can no longer connect until "
                    "lead IT issues it a renewed kit (flprovision --reissue %s, or signs its "
                    "new request if it makes its own key)",
                    kind,
                    name,
                    _when(datetime.fromtimestamp(end, UTC)),
                    name,
                )
        await pause(PEER_ENDS_CHECK_S)


MAX_WARNED = 10_000
"""Participants remembered as warned today (they are provisioned kits, so few; bounded
all the same)."""


class EndingPeers:
    """The server's warning, at most once a day per certificate, when a site or an admin
    whose certificate ends soon logs in: lead IT reads the server's log, and only lead IT
    can issue the new kit. By certificate, not name: a replacement kit that ends sooner
    than the one warned of today is warned of too."""

    def __init__(self, clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self._clock = clock
        self._warned: dict[int, str] = {}
        """The day (ISO date) each certificate (by serial) was last warned about."""

    def logged_in(self, identity: Identity) -> None:
        """Warn about ``identity``'s certificate if it ends soon and was not warned of today."""
        if identity.valid_until is None:
            return
        now = self._clock()
        today = now.date().isoformat()
        if self._warned.get(identity.serial) == today:
            return
        warning = ends_soon(
            f"the certificate of {identity.kind} {identity.name}",
            identity.valid_until,
            now,
            f"lead IT must issue it a new kit (flprovision --reissue {identity.name}, or sign "
            "its new request if it makes its own key)",
        )
        if warning is None:
            return
        if len(self._warned) >= MAX_WARNED:
            self._warned.clear()
        self._warned[identity.serial] = today
        log.warning("%s", warning)
