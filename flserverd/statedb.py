"""Server state that must survive a restart, in one SQLite file.

Runs and their round pointer, registered clients and their tokens' SHA-256, which updates were
folded into which round (and which sites reported on the final model), round
metrics, cross-site validation results, the audit of admin commands, the
certificates peers logged in with and the names an admin revoked here. SQLite
in WAL mode with synchronous=FULL gives atomic, durable transactions, which is
what lets a round's completion and the exactly-once record of its updates
survive kill -9.

What is kept for how long (docs/operations.md, "What the state database
keeps"): a run's rounds, fold records and cross-site results are its history
(``show_run``, ``validate``) and go only when the run starts over or is
deleted (``delete_run``, with its record); fold records of a round that will
never be committed go when the run ends; registrations and the client states
beside them go with the client; the audit, the certificates seen and the
revoked names are never deleted.
"""

from __future__ import annotations

import functools
import json
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flcore.tokens import token_key
from flserverd.aggregator import UpdateStats

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    run_number INTEGER PRIMARY KEY,
    status TEXT NOT NULL,
    phase TEXT NOT NULL DEFAULT '',
    app TEXT NOT NULL DEFAULT '',
    start_round INTEGER NOT NULL DEFAULT 0,
    num_rounds INTEGER NOT NULL DEFAULT 0,
    next_round INTEGER NOT NULL DEFAULT 0,
    best_round INTEGER,
    best_value REAL,
    failed_sites TEXT NOT NULL DEFAULT '[]',
    reason TEXT NOT NULL DEFAULT '',
    updated_at REAL NOT NULL,
    failures TEXT NOT NULL DEFAULT '{}',
    metric TEXT NOT NULL DEFAULT '',
    started_at REAL NOT NULL DEFAULT 0,
    ended_at REAL NOT NULL DEFAULT 0,
    resumed_at REAL NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS registrations (
    token_sha256 BLOB PRIMARY KEY,
    client_name TEXT NOT NULL,
    instance TEXT NOT NULL UNIQUE,
    org TEXT NOT NULL,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS client_state (
    token_sha256 BLOB PRIMARY KEY,
    status TEXT NOT NULL,
    machine TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS folded (
    run_number INTEGER NOT NULL,
    round INTEGER NOT NULL,
    instance TEXT NOT NULL,
    samples INTEGER NOT NULL,
    metrics TEXT NOT NULL,
    folded_at REAL NOT NULL,
    PRIMARY KEY (run_number, round, instance)
);
CREATE TABLE IF NOT EXISTS round_metrics (
    run_number INTEGER NOT NULL,
    round INTEGER NOT NULL,
    record TEXT NOT NULL,
    PRIMARY KEY (run_number, round)
);
CREATE TABLE IF NOT EXISTS validation (
    run_number INTEGER NOT NULL,
    model_owner TEXT NOT NULL,
    validator TEXT NOT NULL,
    metrics TEXT NOT NULL,
    error TEXT NOT NULL,
    PRIMARY KEY (run_number, model_owner, validator)
);
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    time REAL NOT NULL,
    user TEXT NOT NULL,
    line TEXT NOT NULL,
    ok INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS certificates (
    serial TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    kind TEXT NOT NULL,
    first_seen REAL NOT NULL,
    not_after REAL
);
CREATE TABLE IF NOT EXISTS revoked_names (
    name TEXT PRIMARY KEY,
    since REAL NOT NULL,
    by_user TEXT NOT NULL
);
"""


RUN_COLUMNS_ADDED = {
    "failures": "TEXT NOT NULL DEFAULT '{}'",
    "metric": "TEXT NOT NULL DEFAULT ''",
    "started_at": "REAL NOT NULL DEFAULT 0",
    "ended_at": "REAL NOT NULL DEFAULT 0",
    "resumed_at": "REAL NOT NULL DEFAULT 0",
}
CERTIFICATE_COLUMNS_ADDED = {"not_after": "REAL"}
"""A certificate seen before the server recorded ends has none until it logs in again."""
SAVE_RUN = (
    "INSERT OR REPLACE INTO runs(run_number, status, phase, app, start_round, num_rounds,"
    " next_round, best_round, best_value, failed_sites, reason, failures, metric, started_at,"
    " ended_at, resumed_at, updated_at)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
UNCOMMITTED_FOLDS = "DELETE FROM folded WHERE run_number=? AND round>=? AND round<?"
"""Fold records of a run's training rounds from its round pointer on (run, next_round,
num_rounds): rounds not committed, whose sums died with a process or with the run. Reports on
the final model are recorded as round num_rounds and are not among them."""
RUN_HISTORY = ("round_metrics", "folded", "validation")
"""The tables that hold a run's history beside its record, each by its ``run_number``."""
AuditEntry = tuple[float, str, str, bool]
"""One admin command in the audit: when it ran, who ran it, its line, whether it succeeded."""
GET_RUN = (
    "SELECT run_number, status, phase, app, start_round, num_rounds, next_round, best_round,"
    " best_value, failed_sites, reason, failures, metric, started_at, ended_at, resumed_at"
    " FROM runs WHERE run_number=?"
)


@dataclass
class RunRecord:
    """A run as the database keeps it; next_round is the round pointer."""

    run_number: int
    status: str
    phase: str = ""
    app: str = ""
    start_round: int = 0
    num_rounds: int = 0
    next_round: int = 0
    best_round: int | None = None
    best_value: float | None = None
    failed_sites: list[str] = field(default_factory=list)
    reason: str = ""
    failures: dict[str, str] = field(default_factory=dict)
    """The first line of each failed site's error."""
    metric: str = ""
    """The validation metric that picks the best model (best_value is its value)."""
    started_at: float = 0.0
    ended_at: float = 0.0
    """When the run first started (its start from round ``start_round``) and when it last
    ended (0: not yet)."""
    resumed_at: float = 0.0
    """When the run last continued after it stopped before its end (0: it never did)."""

    @property
    def last_started(self) -> float:
        """When the run last started or continued: statuses from before are of an earlier
        start."""
        return max(self.started_at, self.resumed_at)


@dataclass
class WireTally:
    """Model bytes a round moved: the global model sent to sites (``down``) and the updates
    received (``up``), as the tensor chunks carried them on the wire (``*_bytes``: payload
    only, without protobuf, gRPC and TLS framing) and as the tensors they stand for
    (``*_raw_bytes``). Every chunk sent or taken in for the round counts, also those of a
    transfer that was cut off or of an update refused or repeated: the link carried them."""

    compression: str = "none"
    down_bytes: int = 0
    down_raw_bytes: int = 0
    up_bytes: int = 0
    up_raw_bytes: int = 0

    def add(self, outward: bool, wire: int, raw: int) -> None:
        """Count one chunk sent to a site (``outward``) or received from one."""
        if outward:
            self.down_bytes += wire
            self.down_raw_bytes += raw
        else:
            self.up_bytes += wire
            self.up_raw_bytes += raw

    def described(self) -> str:
        """The saving in words, for the log."""
        wire = self.down_bytes + self.up_bytes
        raw = self.down_raw_bytes + self.up_raw_bytes
        share = f", {wire / raw:.0%}" if raw else ""
        return (
            f"models on the wire {wire / 1e6:.1f} MB for {raw / 1e6:.1f} MB of tensors "
            f"({self.compression}{share})"
        )

    def as_json(self) -> dict[str, Any]:
        """The tally as metrics.jsonl and the database keep it."""
        return dict(vars(self))

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> WireTally:
        """Read a tally written by :meth:`as_json`."""
        counts = {key: int(data.get(key, 0)) for key in vars(cls()) if key != "compression"}
        return cls(compression=str(data.get("compression", "none")), **counts)


@dataclass(frozen=True)
class RoundSummary:
    """A completed round (or the final validation, ``final``): one line of metrics.jsonl.

    ``metrics`` are the sample-weighted means of what clients reported;
    ``duration_s``, ``samples``, ``updates`` (each update's norm and outlier
    score, by instance) and ``wire`` (the model bytes the round moved) belong to
    training rounds only.
    """

    run: int
    round: int
    time: float
    clients: list[str]
    metrics: dict[str, float]
    duration_s: float = 0.0
    samples: int = 0
    final: bool = False
    updates: dict[str, UpdateStats] = field(default_factory=dict)
    wire: WireTally | None = None

    @functools.cached_property
    def ranked_scores(self) -> tuple[tuple[str, float], ...]:
        """(instance, outlier score) of the round's updates, highest first; sorted once, as
        the feed shows the top ones in every run-state event."""
        return tuple(sorted(((n, s.score) for n, s in self.updates.items()), key=lambda i: -i[1]))

    def as_json(self) -> dict[str, Any]:
        """The record as metrics.jsonl and the database keep it."""
        data: dict[str, Any] = {"run": self.run, "round": self.round, "time": self.time}
        if self.final:
            data["final"] = True
        else:
            data.update(duration_s=self.duration_s, samples=self.samples)
            data["updates"] = {name: stats.as_json() for name, stats in self.updates.items()}
            if self.wire is not None:
                data["wire"] = self.wire.as_json()
        data.update(clients=list(self.clients), metrics=dict(self.metrics))
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RoundSummary:
        """Read a record written by :meth:`as_json`."""
        return cls(
            run=int(data["run"]),
            round=int(data["round"]),
            time=float(data["time"]),
            clients=[str(c) for c in data.get("clients", [])],
            metrics={str(k): float(v) for k, v in data.get("metrics", {}).items()},
            duration_s=float(data.get("duration_s", 0.0)),
            samples=int(data.get("samples", 0)),
            final=bool(data.get("final", False)),
            updates={
                str(name): UpdateStats(
                    None if stats.get("norm") is None else float(stats["norm"]),
                    float(stats["score"]),
                )
                for name, stats in data.get("updates", {}).items()
            },
            wire=WireTally.from_json(data["wire"]) if "wire" in data else None,
        )


@dataclass(frozen=True)
class ClientRecord:
    """A registered client that outlives server restarts."""

    token_key: bytes
    """The SHA-256 of its token (:func:`flcore.tokens.token_key`)."""
    client_name: str
    instance: str
    org: str
    created_at: float


WAL_KEPT_BYTES = 4 << 20
"""What the write-ahead log is cut back to once it was checkpointed: its size between SQLite's
automatic checkpoints (1,000 pages of 4 KiB)."""

BUSY_WAIT_S = 0.5
"""How long a write waits for a lock another program holds (only one server may use the
database, flserverd.lock sees to it): on the event loop, so briefly; then the write fails
as a storage fault, training pauses, and the write is tried again later."""


class StateDB:
    """Typed access to the state database; used from the server's event loop only."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._db = sqlite3.connect(path, timeout=BUSY_WAIT_S, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        # Deleted rows (a dropped client, a legacy table of tokens) are overwritten, not left
        # in free pages for a copy of the file to give away.
        self._db.execute("PRAGMA secure_delete=ON")
        # A transaction that deletes a long run's history (start server fresh) writes every page
        # it zeroes to the WAL; without a limit the file kept that size until the server stopped.
        self._db.execute(f"PRAGMA journal_size_limit={WAL_KEPT_BYTES}")
        self._db.executescript(SCHEMA)
        self._add_missing_columns()
        self._hash_legacy_tokens()

    def _hash_legacy_tokens(self) -> None:
        """State databases of earlier versions kept clients' tokens themselves (in ``clients``,
        before that in ``sessions``): keep the registrations, store only the tokens' SHA-256,
        and drop the old table, in one transaction."""
        tables = {
            row[0] for row in self._db.execute("SELECT name FROM sqlite_master WHERE type='table'")
        }
        for legacy in ("sessions", "clients"):
            if legacy not in tables:
                continue
            columns = "token, client_name, instance, org, created_at"
            query = f"SELECT {columns} FROM {legacy}"  # noqa: S608 (a name of the tuple above)
            rows = self._db.execute(query).fetchall()
            self._write(
                [
                    (
                        "INSERT OR IGNORE INTO registrations"
                        "(token_sha256, client_name, instance, org, created_at)"
                        " VALUES (?, ?, ?, ?, ?)",
                        (token_key(token), *rest),
                    )
                    for token, *rest in rows
                ]
                + [(f"DROP TABLE {legacy}", ())]
            )

    def _add_missing_columns(self) -> None:
        """A database written before a table grew its newer columns gets them, empty."""
        for table, added in (
            ("runs", RUN_COLUMNS_ADDED),
            ("certificates", CERTIFICATE_COLUMNS_ADDED),
        ):
            have = {row[1] for row in self._db.execute(f"PRAGMA table_info({table})")}
            for name, declaration in added.items():
                if name not in have:
                    self._db.execute(f"ALTER TABLE {table} ADD COLUMN {name} {declaration}")

    def close(self) -> None:
        """Close the connection (the WAL is checkpointed by SQLite)."""
        self._db.close()

    def _write(self, statements: list[tuple[str, tuple[Any, ...]]]) -> int:
        """Run several statements as one durable transaction; returns the rows they changed."""
        self._db.execute("BEGIN IMMEDIATE")
        changed = 0
        try:
            for sql, params in statements:
                changed += self._db.execute(sql, params).rowcount
            self._db.execute("COMMIT")
        except BaseException:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            raise
        return changed

    def get_meta(self, key: str) -> str | None:
        """A single setting, e.g. the current run number."""
        row = self._db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def set_meta(self, key: str, value: str) -> None:
        """Store a single setting."""
        self._write([("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (key, value))])

    @staticmethod
    def _run_upsert(run: RunRecord) -> tuple[str, tuple[Any, ...]]:
        return (
            SAVE_RUN,
            (
                run.run_number,
                run.status,
                run.phase,
                run.app,
                run.start_round,
                run.num_rounds,
                run.next_round,
                run.best_round,
                run.best_value,
                json.dumps(run.failed_sites),
                run.reason,
                json.dumps(run.failures),
                run.metric,
                run.started_at,
                run.ended_at,
                run.resumed_at,
                time.time(),
            ),
        )

    def save_run(self, run: RunRecord) -> None:
        """Insert or replace a run record."""
        self._write([self._run_upsert(run)])

    def end_run(self, run: RunRecord) -> None:
        """Store the record of a run that ended, and forget the fold records of the round it
        ended in, in one transaction: that round is never committed (continuing the run
        takes its updates again), and its updates were deleted with it."""
        self._write(
            [
                self._run_upsert(run),
                (UNCOMMITTED_FOLDS, (run.run_number, run.next_round, run.num_rounds)),
            ]
        )

    def get_run(self, run_number: int) -> RunRecord | None:
        """The record of one run, or None if it never trained."""
        row = self._db.execute(GET_RUN, (run_number,)).fetchone()
        return None if row is None else _run_record(row)

    def run_numbers(self) -> list[int]:
        """The number of every run that has a record (it was started at least once)."""
        return [int(r[0]) for r in self._db.execute("SELECT run_number FROM runs")]

    def fold_instances(self, run_number: int) -> list[str]:
        """The sites whose updates were folded into a round of a run (or that reported on its
        final model)."""
        rows = self._db.execute(
            "SELECT DISTINCT instance FROM folded WHERE run_number=?", (run_number,)
        ).fetchall()
        return [str(r[0]) for r in rows]

    def folds(self, run_number: int, first: int, last: int) -> list[tuple[int, str, int, str]]:
        """(round, instance, samples, metrics JSON) of each update folded into rounds
        ``first``..``last`` of a run, by round and instance; round ``num_rounds`` holds the
        sites' reports on the final model."""
        return [
            (int(r[0]), str(r[1]), int(r[2]), str(r[3]))
            for r in self._db.execute(
                "SELECT round, instance, samples, metrics FROM folded"
                " WHERE run_number=? AND round BETWEEN ? AND ? ORDER BY round, instance",
                (run_number, first, last),
            )
        ]

    def complete_round(self, run: RunRecord, summary: RoundSummary) -> None:
        """Move the round pointer and store the round's metrics in one transaction."""
        self._write(
            [
                self._run_upsert(run),
                (
                    "INSERT OR REPLACE INTO round_metrics(run_number, round, record)"
                    " VALUES (?, ?, ?)",
                    (run.run_number, summary.round, json.dumps(summary.as_json())),
                ),
            ]
        )

    def round_records(self, run_number: int, last: int | None = None) -> list[RoundSummary]:
        """Metrics of every completed round of a run, in order; with ``last``, of the last
        that many only (what the feed shows: a run of thousands of rounds and sites is
        hundreds of megabytes of records, once read at every start and status)."""
        rows = self._db.execute(
            "SELECT record FROM (SELECT round, record FROM round_metrics WHERE run_number=?"
            " ORDER BY round DESC LIMIT ?) ORDER BY round",
            (run_number, -1 if last is None else last),  # LIMIT -1: no limit
        ).fetchall()
        return [RoundSummary.from_json(json.loads(r[0])) for r in rows]

    def round_count(self, run_number: int) -> int:
        """How many completed rounds (the final validation among them) a run has."""
        row = self._db.execute(
            "SELECT COUNT(*) FROM round_metrics WHERE run_number=?", (run_number,)
        ).fetchone()
        return int(row[0])

    def round_records_from(self, run_number: int, start: int, count: int) -> list[RoundSummary]:
        """Up to ``count`` of a run's completed rounds in order, from the ``start``-th (a page
        of ``show_run``: reading every round of a long run held the server's loop)."""
        rows = self._db.execute(
            "SELECT record FROM round_metrics WHERE run_number=? ORDER BY round LIMIT ? OFFSET ?",
            (run_number, count, start),
        ).fetchall()
        return [RoundSummary.from_json(json.loads(r[0])) for r in rows]

    def start_over(self, run: RunRecord) -> None:
        """A run trained again from its start: its metrics, folds and cross-site results are
        forgotten and ``run`` is its record, in one transaction, so that a crash leaves
        either the old run whole or the new one."""
        self._write([*_forget_history(run.run_number), self._run_upsert(run)])

    def delete_run(self, run_number: int, audit: list[AuditEntry]) -> tuple[int, int]:
        """Forget a run: its record, rounds, fold records and cross-site results, and record
        the ``audit`` entries (the command deleting it last), in one transaction: a process
        killed once the history is gone has the command in the audit all the same. Returns
        the history rows deleted and the id of the command's audit row. The caller removes
        its folder only after this: a crash between the two leaves a folder without history,
        never history naming files that are gone."""
        rows = self._write(
            [
                *_forget_history(run_number),
                ("DELETE FROM runs WHERE run_number=?", (run_number,)),
                *_audit_inserts(audit),
            ]
        )
        # The audit insert was this connection's last, and nothing writes in between: the
        # loop's thread owns the connection.
        audit_id = int(self._db.execute("SELECT last_insert_rowid()").fetchone()[0])
        return rows - len(audit), audit_id

    def is_folded(self, run_number: int, round_number: int, instance: str) -> bool:
        """Whether this (run, round, instance) update was already counted."""
        row = self._db.execute(
            "SELECT 1 FROM folded WHERE run_number=? AND round=? AND instance=?",
            (run_number, round_number, instance),
        ).fetchone()
        return row is not None

    def record_folded(
        self,
        run_number: int,
        round_number: int,
        instance: str,
        samples: int,
        metrics: dict[str, float],
    ) -> None:
        """Record that an update was folded into the round's running sum, or (as round
        ``num_rounds``) that a site's report on the final model was counted."""
        self._write(
            [
                (
                    "INSERT INTO folded(run_number, round, instance, samples, metrics, folded_at)"
                    " VALUES (?, ?, ?, ?, ?, ?)",
                    (run_number, round_number, instance, samples, json.dumps(metrics), time.time()),
                )
            ]
        )

    def forget_fold(self, run_number: int, round_number: int, instance: str) -> None:
        """Drop the record of one update that could not be counted after all, so that its
        resend is taken, not answered as a duplicate."""
        self._write(
            [
                (
                    "DELETE FROM folded WHERE run_number=? AND round=? AND instance=?",
                    (run_number, round_number, instance),
                )
            ]
        )

    def forget_unfinished_folds(self, run_number: int, next_round: int, num_rounds: int) -> int:
        """Drop fold records of training rounds that were not completed (their sums died with
        the process), so that clients resending after a restart are counted again, once. The
        reports on the final model stay: they are counted whole (``num_rounds`` is the run's
        number of rounds as it is taken up)."""
        return self._write([(UNCOMMITTED_FOLDS, (run_number, next_round, num_rounds))])

    def save_client(self, client: ClientRecord) -> None:
        """Persist a registered client so its token survives a server restart."""
        self._write(
            [
                (
                    "INSERT OR REPLACE INTO registrations"
                    "(token_sha256, client_name, instance, org, created_at)"
                    " VALUES (?, ?, ?, ?, ?)",
                    (
                        client.token_key,
                        client.client_name,
                        client.instance,
                        client.org,
                        client.created_at,
                    ),
                )
            ]
        )

    def delete_client(self, key: bytes) -> None:
        """Forget a dropped or logged-out client (by its token's SHA-256), with its state and
        any state left without a registration (a status saved as its client was removed, by
        an earlier version): no start reads those, and nothing else would delete them."""
        self._write(
            [
                ("DELETE FROM registrations WHERE token_sha256=?", (key,)),
                (
                    "DELETE FROM client_state"
                    " WHERE token_sha256 NOT IN (SELECT token_sha256 FROM registrations)",
                    (),
                ),
            ]
        )

    def save_client_state(
        self, key: bytes, status: dict[str, Any], machine: dict[str, Any]
    ) -> None:
        """What a registered client (by its token's SHA-256) last said about itself and its
        machine, so that a restarted server shows it (offline) as it was rather than blank.
        Kept only beside its registration: a client removed meanwhile leaves no row that
        nothing would read or delete."""
        self._write(
            [
                (
                    "INSERT OR REPLACE INTO client_state(token_sha256, status, machine)"
                    " SELECT ?, ?, ? WHERE EXISTS"
                    " (SELECT 1 FROM registrations WHERE token_sha256=?)",
                    (key, json.dumps(status), json.dumps(machine), key),
                )
            ]
        )

    def client_states(self) -> dict[bytes, tuple[dict[str, Any], dict[str, Any]]]:
        """The last status and machine of each registered client, by its token's SHA-256."""
        rows = self._db.execute("SELECT token_sha256, status, machine FROM client_state").fetchall()
        return {bytes(r[0]): (json.loads(r[1]), json.loads(r[2])) for r in rows}

    def load_clients(self) -> list[ClientRecord]:
        """All clients registered before a restart."""
        rows = self._db.execute(
            "SELECT token_sha256, client_name, instance, org, created_at FROM registrations"
        ).fetchall()
        return [ClientRecord(*row) for row in rows]

    def save_validation(
        self, run_number: int, owner: str, validator: str, metrics: dict[str, float], error: str
    ) -> None:
        """Store one cell of the cross-site validation matrix."""
        self._write(
            [
                (
                    "INSERT OR REPLACE INTO validation(run_number, model_owner, validator,"
                    " metrics, error) VALUES (?, ?, ?, ?, ?)",
                    (run_number, owner, validator, json.dumps(metrics), error),
                )
            ]
        )

    def validation_results(self, run_number: int) -> list[tuple[str, str, dict[str, float], str]]:
        """(owner, validator, metrics, error) for every cell stored for a run."""
        rows = self._db.execute(
            "SELECT model_owner, validator, metrics, error FROM validation WHERE run_number=?"
            " ORDER BY model_owner, validator",
            (run_number,),
        ).fetchall()
        return [(r[0], r[1], json.loads(r[2]), r[3]) for r in rows]

    def audit(self, user: str, line: str, ok: bool, at: float | None = None) -> None:
        """Record an admin command (run at ``at``, now by default)."""
        self.audit_entries([(time.time() if at is None else at, user, line, ok)])

    def audit_entries(self, entries: list[AuditEntry]) -> None:
        """Record admin commands (time, user, line, ok), in this order, in one transaction."""
        self._write(_audit_inserts(entries))

    def audit_failed(self, audit_id: int) -> None:
        """A command recorded as carried out with what it changed (``delete_run``) failed
        after that: its one audit row says so."""
        self._write([("UPDATE audit SET ok=0 WHERE id=?", (audit_id,))])

    def audit_log(self, limit: int = 100) -> list[AuditEntry]:
        """The most recent admin commands, newest last."""
        rows = self._db.execute(
            "SELECT time, user, line, ok FROM audit ORDER BY id DESC LIMIT ?", (limit,)
        ).fetchall()
        return [(r[0], r[1], r[2], bool(r[3])) for r in reversed(rows)]

    def record_certificate(
        self, serial: int, name: str, kind: str, not_after: float | None = None
    ) -> None:
        """Remember a certificate a peer logged in with (its first time only), and when it
        ends (also for one recorded before ends were)."""
        self._write(
            [
                (
                    "INSERT INTO certificates(serial, name, kind, first_seen, not_after)"
                    " VALUES (?, ?, ?, ?, ?) ON CONFLICT(serial) DO UPDATE SET"
                    " not_after=excluded.not_after WHERE certificates.not_after IS NULL",
                    (f"{serial:x}", name, kind, time.time(), not_after),
                )
            ]
        )

    def certificate_ends(self) -> list[tuple[str, str, float]]:
        """Each participant's name, kind and the end of its certificate that ends last (its
        newest kit's: an older one's end is no news), for those whose end is known."""
        rows = self._db.execute(
            "SELECT name, kind, MAX(not_after) FROM certificates"
            " WHERE not_after IS NOT NULL GROUP BY name, kind"
        )
        return [(str(name), str(kind), float(end)) for name, kind, end in rows]

    def certificates_of(self, name: str) -> list[int]:
        """Serial numbers of every certificate ``name`` ever logged in with."""
        rows = self._db.execute("SELECT serial FROM certificates WHERE name=?", (name,))
        return sorted(int(row[0], 16) for row in rows)

    def name_like(self, name: str) -> str | None:
        """A name some certificate logged in with that differs from ``name`` only by case
        (None: there is none, or ``name`` itself logged in)."""
        rows = self._db.execute(
            "SELECT DISTINCT name FROM certificates WHERE lower(name)=lower(?)", (name,)
        ).fetchall()
        names = {str(row[0]) for row in rows}
        return None if name in names or not names else min(names)

    def save_revoked_name(self, name: str, since: float, by_user: str) -> None:
        """Record that an admin revoked ``name`` on this server."""
        self._write(
            [
                (
                    "INSERT OR REPLACE INTO revoked_names(name, since, by_user) VALUES (?, ?, ?)",
                    (name, since, by_user),
                )
            ]
        )

    def revoked_names(self) -> list[tuple[str, float, str]]:
        """(name, since, by_user) of every name revoked here, oldest first."""
        rows = self._db.execute("SELECT name, since, by_user FROM revoked_names ORDER BY since")
        return [(str(r[0]), float(r[1]), str(r[2])) for r in rows]


def _forget_history(run_number: int) -> list[tuple[str, tuple[Any, ...]]]:
    """The statements that delete a run's rounds, fold records and cross-site results."""
    return [
        (f"DELETE FROM {table} WHERE run_number=?", (run_number,))  # noqa: S608 (RUN_HISTORY)
        for table in RUN_HISTORY
    ]


def _audit_inserts(entries: list[AuditEntry]) -> list[tuple[str, tuple[Any, ...]]]:
    return [
        ("INSERT INTO audit(time, user, line, ok) VALUES (?, ?, ?, ?)", (t, u, x, int(ok)))
        for t, u, x, ok in entries
    ]


def _run_record(row: tuple[Any, ...]) -> RunRecord:
    return RunRecord(
        run_number=row[0],
        status=row[1],
        phase=row[2],
        app=row[3],
        start_round=row[4],
        num_rounds=row[5],
        next_round=row[6],
        best_round=row[7],
        best_value=row[8],
        failed_sites=json.loads(row[9]),
        reason=row[10],
        failures=json.loads(row[11]),
        metric=row[12],
        started_at=row[13],
        ended_at=row[14],
        resumed_at=row[15],
    )
