"""flserverd.registry (registered clients, tokens, instance names) and flserverd.statedb."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from flcore.federation import MachineInfo
from flcore.identity import KIND_CLIENT, Identity
from flcore.tokens import token_key
from flserverd.aggregator import UpdateStats
from flserverd.registry import AuthError, ClientRegistry
from flserverd.statedb import (
    WAL_KEPT_BYTES,
    ClientRecord,
    RoundSummary,
    RunRecord,
    StateDB,
    WireTally,
)

SITE_A = Identity("site-a", "hospital-a", KIND_CLIENT)
SITE_B = Identity("site-b", "hospital-b", KIND_CLIENT)


class Clock:
    """A clock the test moves by hand."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def db(tmp_path: Path) -> Iterator[StateDB]:
    database = StateDB(tmp_path / "state.db")
    yield database
    database.close()


# --------------------------------------------------------------------------- registry


def test_a_kit_runs_at_most_max_instances_and_a_resume_is_not_one_more(db: StateDB) -> None:
    registry = ClientRegistry(db, 600, max_instances=2)
    first, first_token, _ = registry.login(SITE_A, "", MachineInfo())
    registry.login(SITE_A, "", MachineInfo())
    with pytest.raises(AuthError, match="kit site-a already runs 2 instances") as refused:
        registry.login(SITE_A, "", MachineInfo())
    assert "max_instances_per_kit" in str(refused.value)
    assert registry.login(SITE_A, first_token, MachineInfo()) == (first, first_token, True)
    registry.login(SITE_B, "", MachineInfo())  # another kit is not affected
    registry.remove(first)
    assert registry.login(SITE_A, "", MachineInfo())[0].instance == "site-a"
    assert len(registry) == 3


def test_tokens_are_random_and_a_near_miss_is_unknown(db: StateDB) -> None:
    registry = ClientRegistry(db, 600)
    client, client_token, _ = registry.login(SITE_A, "", MachineInfo())
    _, other_token, _ = registry.login(SITE_B, "", MachineInfo())
    assert len(client_token) >= 20 and client_token != other_token
    near = client_token[:-1] + ("A" if client_token[-1] != "A" else "B")
    for token in (near, client_token[:8], client_token + "x", ""):
        with pytest.raises(AuthError, match="unknown or expired token"):
            registry.authenticate(token, SITE_A)
    assert registry.authenticate(client_token, SITE_A) is client


def test_instance_names_for_concurrent_clients_of_one_kit(db: StateDB) -> None:
    registry = ClientRegistry(db, 600)
    names = []
    for _ in range(3):
        client, _, resumed = registry.login(SITE_A, "", MachineInfo())
        client.connected = True
        assert resumed is False
        names.append(client.instance)
    other, _, _ = registry.login(SITE_B, "", MachineInfo())
    assert names == ["site-a", "site-a_1", "site-a_2"]
    assert other.instance == "site-b"
    assert len({s.token_key for s in registry.clients()}) == 4  # the default cap is 4 per kit
    assert [s.instance for s in registry.clients()] == [
        "site-a",
        "site-a_1",
        "site-a_2",
        "site-b",
    ]
    assert all(s.client_name == "site-a" and s.org == "hospital-a" for s in registry.clients()[:3])


def test_free_instance_name_is_reused_after_remove(db: StateDB) -> None:
    registry = ClientRegistry(db, 600)
    first, _, _ = registry.login(SITE_A, "", MachineInfo())
    second, _, _ = registry.login(SITE_A, "", MachineInfo())
    third, _, _ = registry.login(SITE_A, "", MachineInfo())
    registry.remove(second)
    again, _, _ = registry.login(SITE_A, "", MachineInfo())
    assert again.instance == "site-a_1"
    registry.remove(first)
    assert registry.login(SITE_A, "", MachineInfo())[0].instance == "site-a"
    assert third.instance == "site-a_2"


def test_token_resumes_disconnected_client(db: StateDB) -> None:
    clock = Clock()
    registry = ClientRegistry(db, 600, clock)
    client, client_token, _ = registry.login(SITE_A, "", MachineInfo(hostname="old"))
    client.connected = False
    clock.now += 100
    resumed, _, was_resumed = registry.login(SITE_A, client_token, MachineInfo(hostname="new"))
    assert was_resumed is True
    assert resumed is client
    assert resumed.instance == "site-a"
    assert resumed.last_heartbeat == clock.now
    assert resumed.machine.hostname == "new"
    assert len(registry) == 1


def test_token_of_connected_client_resumes_it(db: StateDB) -> None:
    """After a network blip the client may log in before the old stream is seen to die."""
    registry = ClientRegistry(db, 600)
    client, client_token, _ = registry.login(SITE_A, "", MachineInfo())
    client.connected = True
    second, _, was_resumed = registry.login(SITE_A, client_token, MachineInfo())
    assert was_resumed is True
    assert second is client and second.instance == "site-a"
    assert len(registry) == 1


def test_without_a_token_a_second_process_gets_a_new_instance(db: StateDB) -> None:
    registry = ClientRegistry(db, 600)
    first, _, _ = registry.login(SITE_A, "", MachineInfo())
    second, _, was_resumed = registry.login(SITE_A, "", MachineInfo())
    assert was_resumed is False and second.instance == "site-a_1"
    assert registry.by_instance("site-a") is first


def test_token_with_another_certificate_refused_at_login(db: StateDB) -> None:
    registry = ClientRegistry(db, 600)
    _, client_token, _ = registry.login(SITE_A, "", MachineInfo())
    with pytest.raises(AuthError, match="belongs to client 'site-a'"):
        registry.login(SITE_B, client_token, MachineInfo())
    assert len(registry) == 1
    assert registry.by_instance("site-b") is None


def test_authenticate_binds_token_to_identity(db: StateDB) -> None:
    clock = Clock()
    registry = ClientRegistry(db, 600, clock)
    client, client_token, _ = registry.login(SITE_A, "", MachineInfo())
    clock.now += 30
    assert registry.authenticate(client_token, SITE_A) is client
    assert client.last_heartbeat == clock.now
    # same name from another org's certificate is still the same client name
    with pytest.raises(AuthError, match="another certificate"):
        registry.authenticate(client_token, SITE_B)
    with pytest.raises(AuthError, match="another certificate"):
        registry.authenticate(client_token, None)
    with pytest.raises(AuthError, match="unknown or expired token"):
        registry.authenticate("not-a-token", SITE_A)


def test_unknown_token_at_login_registers_anew(db: StateDB) -> None:
    registry = ClientRegistry(db, 600)
    client, client_token, resumed = registry.login(SITE_A, "stale-token-from-before", MachineInfo())
    assert resumed is False
    assert client_token != "stale-token-from-before"
    assert client.instance == "site-a"


def test_expired_after_timeout(db: StateDB) -> None:
    clock = Clock()
    registry = ClientRegistry(db, 10, ticks=clock)
    quiet, _, _ = registry.login(SITE_A, "", MachineInfo())
    chatty, _, _ = registry.login(SITE_B, "", MachineInfo())
    clock.now += 6
    registry.heard(chatty)
    clock.now += 4  # quiet: silent 10 s, exactly the timeout
    assert registry.expired() == []
    clock.now += 0.5
    assert registry.expired() == [quiet]
    clock.now += 6  # chatty: silent 10.5 s
    assert {s.instance for s in registry.expired()} == {"site-a", "site-b"}
    registry.remove(quiet)
    assert registry.expired() == [chatty]


def test_a_step_of_the_wall_clock_drops_no_one_and_keeps_no_dead_client(db: StateDB) -> None:
    """NTP or a resumed VM moves the wall clock an hour: silences are measured on the
    monotonic clock. Forward, every client was dropped at the next sweep; back, a dead one
    stayed registered for an hour."""
    wall, ticks = Clock(1_000_000), Clock()
    registry = ClientRegistry(db, 10, wall, ticks=ticks)
    alive, _, _ = registry.login(SITE_A, "", MachineInfo())
    dead, _, _ = registry.login(SITE_B, "", MachineInfo())
    wall.now += 3600
    ticks.now += 6
    registry.heard(alive)
    assert registry.expired() == []
    assert alive.last_heartbeat == 1_003_600  # what people are shown: the wall clock
    wall.now -= 7200
    ticks.now += 5
    assert registry.expired() == [dead]
    assert registry.silence(dead) == 11


def test_a_full_disk_keeps_registrations_in_memory(
    db: StateDB, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Logins and removals go on when the state database cannot be written; the heartbeat
    sweep must never stop on it."""
    registry = ClientRegistry(db, 10, Clock())

    def full(*_: object) -> None:
        error = sqlite3.OperationalError("database or disk is full")
        error.sqlite_errorcode = sqlite3.SQLITE_FULL
        raise error

    monkeypatch.setattr(db, "save_client", full)
    monkeypatch.setattr(db, "delete_client", full)
    client, _, resumed = registry.login(SITE_A, "", MachineInfo())
    assert not resumed and registry.by_instance("site-a") is client
    registry.remove(client)
    assert registry.by_instance("site-a") is None


def test_registrations_survive_a_new_registry(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    db = StateDB(path)
    clock = Clock(5000)
    registry = ClientRegistry(db, 10, clock)
    _, a_token, _ = registry.login(SITE_A, "", MachineInfo())
    _, a1_token, _ = registry.login(SITE_A, "", MachineInfo())
    b, _, _ = registry.login(SITE_B, "", MachineInfo())
    registry.remove(b)
    db.close()

    db = StateDB(path)
    clock.now += 1000  # long after the old heartbeats
    restored = ClientRegistry(db, 10, clock)
    assert [(s.instance, s.token_key) for s in restored.clients()] == [
        ("site-a", token_key(a_token)),
        ("site-a_1", token_key(a1_token)),
    ]
    assert restored.expired() == []  # restored clients get a full timeout to reconnect
    client, _, resumed = restored.login(SITE_A, a1_token, MachineInfo())
    assert resumed is True and client.instance == "site-a_1"
    assert restored.authenticate(a_token, SITE_A).instance == "site-a"
    with pytest.raises(AuthError):
        restored.login(SITE_B, a_token, MachineInfo())
    assert restored.login(SITE_B, "", MachineInfo())[0].instance == "site-b"
    assert restored.login(SITE_A, "", MachineInfo())[0].instance == "site-a_2"
    db.close()


# --------------------------------------------------------------------------- statedb


def _run(**changes: object) -> RunRecord:
    record = RunRecord(
        run_number=3,
        status="training started",
        phase="training",
        app="app",
        start_round=0,
        num_rounds=5,
        next_round=0,
    )
    for key, value in changes.items():
        setattr(record, key, value)
    return record


def test_meta(db: StateDB) -> None:
    assert db.get_meta("run_number") is None
    db.set_meta("run_number", "4")
    db.set_meta("run_number", "5")
    assert db.get_meta("run_number") == "5"


def test_run_record_round_trip(tmp_path: Path, db: StateDB) -> None:
    assert db.get_run(3) is None
    record = _run(best_round=2, best_value=0.75, failed_sites=["x", "y"], reason="r")
    db.save_run(record)
    assert db.get_run(3) == record
    db.close()
    reopened = StateDB(tmp_path / "state.db")
    assert reopened.get_run(3) == record
    reopened.close()


def _summary(round_number: int, run_number: int = 3, **metrics: float) -> RoundSummary:
    return RoundSummary(run_number, round_number, 100.0 + round_number, ["site-a"], metrics)


def test_complete_round_moves_pointer_and_stores_metrics(tmp_path: Path, db: StateDB) -> None:
    db.save_run(_run())
    record = _run(next_round=1)
    db.complete_round(record, _summary(0, acc=0.5))
    record.next_round = 2
    db.complete_round(record, _summary(1, acc=0.6))
    run = db.get_run(3)
    assert run is not None and run.next_round == 2
    assert db.round_records(3) == [_summary(0, acc=0.5), _summary(1, acc=0.6)]
    assert db.round_records(3, last=1) == [_summary(1, acc=0.6)]  # what the feed shows
    assert db.round_records(3, last=5) == db.round_records(3)
    assert db.round_records(4) == []


def test_round_summary_json_keeps_the_metrics_jsonl_format() -> None:
    updates = {"a": UpdateStats(0.25, 0.8), "b": UpdateStats(None, 12.0)}  # b: norm not measured
    training = RoundSummary(
        1, 0, 5.0, ["a", "b"], {"acc": 0.5}, duration_s=1.5, samples=30, updates=updates
    )
    assert training.as_json() == {
        "run": 1,
        "round": 0,
        "time": 5.0,
        "duration_s": 1.5,
        "samples": 30,
        "updates": {"a": {"norm": 0.25, "score": 0.8}, "b": {"score": 12.0}},
        "clients": ["a", "b"],
        "metrics": {"acc": 0.5},
    }
    final = RoundSummary(1, 3, 6.0, ["a"], {"acc": 0.7}, final=True)
    assert final.as_json() == {
        "run": 1,
        "round": 3,
        "time": 6.0,
        "final": True,
        "clients": ["a"],
        "metrics": {"acc": 0.7},
    }
    wire = WireTally("int8", down_bytes=25, down_raw_bytes=100, up_bytes=26, up_raw_bytes=100)
    compressed = replace(training, wire=wire)
    assert compressed.as_json()["wire"] == {
        "compression": "int8",
        "down_bytes": 25,
        "down_raw_bytes": 100,
        "up_bytes": 26,
        "up_raw_bytes": 100,
    }
    assert wire.described() == ("models on the wire 0.0 MB for 0.0 MB of tensors (int8, 26%)")
    for summary in (training, final, compressed):
        assert RoundSummary.from_json(summary.as_json()) == summary


def test_complete_round_is_one_transaction(tmp_path: Path, db: StateDB) -> None:
    db.save_run(_run(next_round=1))
    db.complete_round(_run(next_round=1), _summary(0))
    # make the metrics insert fail: the pointer must not move either
    other = sqlite3.connect(tmp_path / "state.db")
    other.execute(
        "CREATE TRIGGER refuse BEFORE INSERT ON round_metrics"
        " BEGIN SELECT RAISE(ABORT, 'disk'); END"
    )
    other.commit()
    other.close()
    with pytest.raises(sqlite3.DatabaseError, match="disk"):
        db.complete_round(_run(next_round=2), _summary(1))
    run = db.get_run(3)
    assert run is not None and run.next_round == 1
    assert db.round_records(3) == [_summary(0)]
    # the connection is usable afterwards (no transaction left open)
    db.set_meta("k", "v")
    assert db.get_meta("k") == "v"


def test_folded_primary_key(db: StateDB) -> None:
    db.record_folded(3, 0, "site-a", 10, {"acc": 0.5})
    assert db.is_folded(3, 0, "site-a")
    assert not db.is_folded(3, 0, "site-b")
    assert not db.is_folded(3, 1, "site-a")
    assert not db.is_folded(4, 0, "site-a")
    with pytest.raises(sqlite3.IntegrityError):
        db.record_folded(3, 0, "site-a", 99, {})
    db.record_folded(3, 1, "site-a", 10, {})
    db.record_folded(4, 0, "site-a", 10, {})


def test_forget_unfinished_folds(db: StateDB) -> None:
    for round_number in (0, 1, 2):
        db.record_folded(3, round_number, "site-a", 1, {})
    db.record_folded(3, 2, "site-b", 1, {})
    db.record_folded(4, 2, "site-a", 1, {})
    assert db.forget_unfinished_folds(3, 2, 5) == 2
    assert db.is_folded(3, 0, "site-a") and db.is_folded(3, 1, "site-a")
    assert not db.is_folded(3, 2, "site-a") and not db.is_folded(3, 2, "site-b")
    assert db.is_folded(4, 2, "site-a")  # other runs untouched
    db.record_folded(3, 2, "site-a", 1, {})  # may be recorded again
    assert db.forget_unfinished_folds(3, 5, 5) == 0


def test_a_run_started_over_forgets_its_rounds_with_its_record_replaced(db: StateDB) -> None:
    db.complete_round(_run(next_round=1), _summary(0))
    db.record_folded(3, 0, "site-a", 1, {})
    db.save_validation(3, "site-a", "site-b", {"acc": 1.0}, "")
    db.complete_round(_run(run_number=4, next_round=1), _summary(0, run_number=4))
    db.start_over(_run(next_round=0))
    assert db.round_records(3) == []
    assert not db.is_folded(3, 0, "site-a")
    assert db.validation_results(3) == []
    assert db.round_records(4) == [_summary(0, run_number=4)]
    assert db.get_run(3) == _run(next_round=0)


def test_a_start_over_that_fails_leaves_the_old_run_whole(
    db: StateDB, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The rows went in one transaction and the new record in another: a crash between them
    left the old record without its history."""
    db.complete_round(_run(next_round=1), _summary(0))
    failing = ("INSERT INTO no_such_table VALUES (?)", (1,))
    monkeypatch.setattr(db, "_run_upsert", lambda run: failing)
    with pytest.raises(sqlite3.OperationalError):
        db.start_over(_run(next_round=0))
    assert db.round_records(3) == [_summary(0)]
    assert db.get_run(3) == _run(next_round=1)


def test_clients_table(db: StateDB) -> None:
    one = ClientRecord(token_key("t1"), "site-a", "site-a", "org", 1.0)
    two = ClientRecord(token_key("t2"), "site-a", "site-a_1", "org", 2.0)
    db.save_client(one)
    db.save_client(two)
    assert sorted(db.load_clients(), key=lambda s: s.created_at) == [one, two]
    db.delete_client(token_key("t1"))
    assert db.load_clients() == [two]
    moved = ClientRecord(token_key("t2"), "site-a", "site-a_1", "org", 9.0)
    db.save_client(moved)  # saving a token again updates its row
    assert db.load_clients() == [moved]


@pytest.mark.parametrize("table", ["sessions", "clients"])
def test_clients_of_an_older_state_database_are_kept_and_their_tokens_hashed(
    tmp_path: Path, table: str
) -> None:
    """Registered clients were once kept with their tokens themselves, in a table named
    ``sessions`` and later ``clients``: the registrations stay, the tokens do not."""
    path = tmp_path / "old.sqlite3"
    old = sqlite3.connect(path)
    old.execute(
        f"CREATE TABLE {table} (token TEXT PRIMARY KEY, client_name TEXT NOT NULL,"
        " instance TEXT NOT NULL UNIQUE, org TEXT NOT NULL, created_at REAL NOT NULL)"
    )
    insert = f"INSERT INTO {table} VALUES (?, ?, ?, ?, ?)"  # noqa: S608 (a test's own name)
    old.execute(insert, ("t1-secret", "site-a", "site-a", "org", 1.0))
    old.commit()
    old.close()
    db = StateDB(path)
    try:
        record = ClientRecord(token_key("t1-secret"), "site-a", "site-a", "org", 1.0)
        assert db.load_clients() == [record]
        restored = ClientRegistry(db, heart_beat_timeout=30.0)
        assert restored.authenticate("t1-secret", SITE_A).instance == "site-a"
    finally:
        db.close()
    assert b"t1-secret" not in path.read_bytes()  # the dropped table's pages were zeroed


def test_the_state_database_holds_no_client_token(tmp_path: Path) -> None:
    """A copy of the state database (a backup, a stolen disk) gives no token to log in with."""
    path = tmp_path / "state.sqlite3"
    db = StateDB(path)
    registry = ClientRegistry(db, heart_beat_timeout=30.0)
    tokens = [registry.login(SITE_A, "", MachineInfo()).token for _ in range(3)]
    db.close()
    stored = path.read_bytes()
    assert all(token.encode() not in stored for token in tokens)
    reopened = StateDB(path)
    try:
        restored = ClientRegistry(reopened, heart_beat_timeout=30.0)
        assert restored.authenticate(tokens[1], SITE_A).instance == "site-a_1"
    finally:
        reopened.close()


def test_audit_log_order_and_limit(db: StateDB) -> None:
    for i in range(6):
        db.audit(f"admin{i % 2}@example.org", f"command {i}", ok=i != 3)
    log = db.audit_log(limit=4)
    assert [(user, line, ok) for _, user, line, ok in log] == [
        ("admin0@example.org", "command 2", True),
        ("admin1@example.org", "command 3", False),
        ("admin0@example.org", "command 4", True),
        ("admin1@example.org", "command 5", True),
    ]
    times = [t for t, _, _, _ in log]
    assert times == sorted(times)
    assert len(db.audit_log()) == 6


def test_validation_results(db: StateDB) -> None:
    db.save_validation(3, "site-b", "site-a", {"acc": 0.7}, "")
    db.save_validation(3, "global", "site-a", {"acc": 0.9}, "")
    db.save_validation(3, "site-a", "site-b", {}, "CUDA out of memory")
    db.save_validation(3, "site-b", "site-a", {"acc": 0.75}, "")  # replaces the cell
    db.save_validation(4, "global", "site-a", {"acc": 0.1}, "")
    assert db.validation_results(3) == [
        ("global", "site-a", {"acc": 0.9}, ""),
        ("site-a", "site-b", {}, "CUDA out of memory"),
        ("site-b", "site-a", {"acc": 0.75}, ""),
    ]
    assert db.validation_results(4) == [("global", "site-a", {"acc": 0.1}, "")]
    assert db.validation_results(5) == []


# --------------------------------------------------------------------------- what is kept


def _fold_rounds(db: StateDB, rounds: range, sites: tuple[str, ...], run_number: int = 3) -> None:
    for round_number in rounds:
        for site in sites:
            db.record_folded(run_number, round_number, site, 10, {"acc": 0.5})


def _folds(db: StateDB, run_number: int = 3) -> list[tuple[int, str]]:
    return [(r, site) for r, site, _, _ in db.folds(run_number, 0, 100)]


def test_a_run_that_ends_forgets_the_round_it_ended_in_and_keeps_its_history(
    db: StateDB, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The open round's fold records were left behind by every abort, and by every failure:
    rows that no round and no resume would read (continuing the run forgets them)."""
    sites = ("site-a", "site-b")
    for number in (0, 1):
        db.complete_round(_run(next_round=number + 1), _summary(number))
    _fold_rounds(db, range(3), sites)  # rounds 0 and 1 committed, round 2 open
    _fold_rounds(db, range(3), sites, run_number=4)
    db.save_validation(3, "global", "site-a", {"acc": 0.9}, "")
    db.audit("admin@example.org", "abort server", ok=True)
    db.record_certificate(0x1F, "site-a", KIND_CLIENT)
    db.save_revoked_name("site-c", 1.0, "admin@example.org")
    ended = _run(next_round=2, status="training stopped", reason="aborted by admin@example.org")

    failing = ("INSERT INTO no_such_table VALUES (?)", (1,))
    with monkeypatch.context() as patched:
        patched.setattr(db, "_run_upsert", lambda run: failing)
        with pytest.raises(sqlite3.OperationalError):
            db.end_run(ended)
    assert (2, "site-a") in _folds(db)  # one transaction: nothing went without the record

    db.end_run(ended)
    assert db.get_run(3) == ended
    assert _folds(db) == [(r, s) for r in (0, 1) for s in sites]  # show_run's sites stay
    assert len(_folds(db, run_number=4)) == 6  # other runs untouched
    assert db.round_records(3) == [_summary(0), _summary(1)]
    assert db.validation_results(3) == [("global", "site-a", {"acc": 0.9}, "")]
    # What a security officer reads is never pruned, by a run's end or its start over.
    db.start_over(_run(next_round=0))
    assert [line for _, _, line, _ in db.audit_log()] == ["abort server"]
    assert db.certificates_of("site-a") == [0x1F]
    assert db.revoked_names() == [("site-c", 1.0, "admin@example.org")]


def test_the_reports_on_the_final_model_stay_until_the_final_model_changes(db: StateDB) -> None:
    """They are recorded as round num_rounds: a run that ends in (or is taken up in) its
    final validation keeps them; a run continued with more rounds trains that model on, and
    they go."""
    in_final = _run(num_rounds=2, next_round=2, phase="final validation")
    _fold_rounds(db, range(3), ("site-a", "site-b"))
    everything = _folds(db)
    assert db.forget_unfinished_folds(3, 2, 2) == 0  # a restart in the final validation
    db.end_run(replace(in_final, status="training stopped", reason="finished"))
    assert _folds(db) == everything
    assert db.forget_unfinished_folds(3, 2, 4) == 2  # continued with num_rounds=4
    assert _folds(db) == everything[:4]


def test_a_client_state_is_kept_only_beside_its_registration(tmp_path: Path) -> None:
    """A status saved for a client removed meanwhile (or left by an earlier version) was a
    row no start read and no removal deleted."""
    path = tmp_path / "state.db"
    db = StateDB(path)
    kept, other, gone = token_key("t-kept"), token_key("t-other"), token_key("t-gone")
    for key, name in ((kept, "site-a"), (other, "site-b")):
        db.save_client(ClientRecord(key, name, name, "org", 1.0))
        db.save_client_state(key, {"status": "training started"}, {"host": name})
    db.save_client_state(gone, {"status": "training started"}, {"host": "c"})
    assert sorted(db.client_states()) == sorted([kept, other])
    db.close()

    older = sqlite3.connect(path)  # what an earlier version could leave
    older.execute("INSERT INTO client_state VALUES (?, '{}', '{}')", (gone,))
    older.commit()
    older.close()
    db = StateDB(path)
    try:
        db.delete_client(other)  # the next removal takes it with it
        assert db.client_states() == {kept: ({"status": "training started"}, {"host": "site-a"})}
    finally:
        db.close()


def test_the_write_ahead_log_shrinks_back_after_a_long_run_is_forgotten(tmp_path: Path) -> None:
    """start server fresh of a long run zeroes its history's pages through the WAL, which then
    kept that size (tens of MB for thousands of rounds) until the server stopped."""
    path = tmp_path / "state.db"
    db = StateDB(path)
    try:
        sites = [f"site-{i:05d}" for i in range(4000)]
        updates = {site: UpdateStats(1.0, 0.5) for site in sites}
        for number in range(30):  # ~9 MB of round records
            summary = RoundSummary(3, number, 100.0 + number, sites, {}, updates=updates)
            db.complete_round(_run(next_round=number + 1), summary)
        db.start_over(_run(next_round=0))
        wal = Path(f"{path}-wal")
        assert wal.stat().st_size > 2 * WAL_KEPT_BYTES  # the deletion went through it
        db.set_meta("run_number", "3")  # the next write starts the WAL over
        assert wal.stat().st_size <= WAL_KEPT_BYTES
        assert db.round_records(3) == []
    finally:
        db.close()
