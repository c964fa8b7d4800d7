"""The store contract, run against every backend: SQLite (a file) and PostgreSQL (a throw-away
schema; skipped, and named in the summary, when the server is unreachable).

A backend passes when it keeps the delivery contract (one transaction per commit, idempotent
upserts, compare-and-set stream positions) and a real corpus folded into it gives exactly
the rows SQLite gives and the golden files expect.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import orjson
import psycopg
import pytest
from golden.test_golden import differences, portable

from runwatch.sinks.store import (
    Store,
    connect,
    db_errors,
    is_postgres,
    open_store,
    transaction,
)
from runwatch.sinks.store.api import (
    Changes,
    Checkpoint,
    DeadLetter,
    OutboxEntry,
    OwnershipLost,
    StoreError,
)
from runwatch.sinks.store.postgres import PostgresStore, drop_schema, swap_schema
from runwatch.sinks.store.postgres_sql import to_postgres
from runwatch.sinks.store.schema import SCHEMA_VERSION
from runwatch.sinks.store.target import Target
from runwatch.stream.core.decisions import Decisions
from runwatch.stream.core.decode import RAW_KEEP
from runwatch.stream.core.lines import LineSplitter
from runwatch.stream.core.processor import Processor
from runwatch.stream.devtools.writer import simulate
from runwatch.stream.settings.alerts import default_alert_setup
from runwatch.stream.sources.discovery import checkpoint_for, expand

NOW = "2026-01-01T00:00:00.000000Z"
GOLDEN = Path(__file__).parents[1] / "golden"
Where = str | Path


def run_row(run_id: str, status: str = "running", **fields: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "run_id": run_id,
        "status": status,
        "created_at": "2026-01-01T00:00:00.000000Z",
        "started_at": None,
        "ended_at": None,
        "last_event_at": "2026-01-01T00:00:01.000000Z",
        "duration_s": 1.25,
        "tasks_total": 2,
        "tasks_succeeded": 1,
        "tasks_failed": 0,
        "tasks_running": 1,
        "tasks_pending": 0,
        "tasks_skipped": 0,
        "tasks_canceled": 0,
        "events_total": 3,
        "error_events": 0,
        "stalled": 0,
    }
    return row | fields


def letter(offset: int, reason: str = "invalid_json") -> DeadLetter:
    return DeadLetter("/logs/a.jsonl", offset, 1, reason, "not JSON", b"{\xff\x00", 3)


def outbox(entry_id: str, state: str = "pending") -> OutboxEntry:
    return OutboxEntry(
        entry_id,
        "alert",
        "console",
        state,
        {"id": entry_id, "n": 1},
        run_id="r1",
        alert_id="a1",
        rule="run_failure",
        event_time=NOW,
    )


def rows(store: Store, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    return [tuple(row) for row in store.db.execute(sql, params)]


def everything() -> Changes:
    """One of each kind of write."""
    return Changes(
        runs=[run_row("r1"), run_row("r2", "succeeded", ended_at=NOW)],
        tasks=[
            {
                "run_id": "r1",
                "task_id": "t1",
                "workstream_id": "w",
                "status": "running",
                "attempts": 1,
                "started_at": NOW,
                "ended_at": None,
            }
        ],
        workstreams=[
            {
                "run_id": "r1",
                "workstream_id": "w",
                "status": "running",
                "tasks_total": 1,
                "tasks_succeeded": 0,
                "tasks_failed": 0,
                "tasks_running": 1,
            }
        ],
        pattern_runs=[
            {
                "pattern_run_id": "p1",
                "pattern_id": "PAT",
                "job_id": "j",
                "step_id": "s",
                "run_id": None,
                "status": "running",
                "phase": "x",
                "started_at": NOW,
                "finished_at": None,
                "duration_s": None,
                "error_message": None,
            }
        ],
        states=[("r:r1", orjson.dumps({"run_id": "r1"}))],
        index=[("r:r1", orjson.dumps([["e1", 1, 0, 10], ["e2", 1, 10, 10]]))],
        dead_letters=[letter(7)],
        checkpoints=[Checkpoint(1, 2, "/logs/a.jsonl", "fp", 20, 3, "th")],
        counters={"events_accepted": 2},
        derived=[{"type": "RUN_COMPLETED", "run_id": "r2", "event_time": NOW}],
        outbox=[outbox("o1")],
        alert_states=[("run_failure", "r2", orjson.dumps({"firing": True}))],
    )


def test_upserts_are_idempotent(store: Store) -> None:
    """Writing the same state twice (a restart re-folding a batch) must change nothing."""
    changes = everything()
    changes.counters = {}
    store.commit(changes, NOW)
    once = store.snapshot(), store.checkpoints(), list(store.alert_states())
    store.commit(changes, NOW)
    assert (store.snapshot(), store.checkpoints(), list(store.alert_states())) == once
    store.commit(Changes(runs=[run_row("r1", "failed", duration_s=2.5)]), NOW)
    assert [(r["status"], r["duration_s"]) for r in store.snapshot()["runs"]] == [
        ("failed", 2.5),
        ("succeeded", 1.25),
    ]


def test_a_key_twice_in_one_batch(store: Store) -> None:
    """A run flushed twice in one commit (evicted, then read back) keeps its last row; a dead
    letter or outbox entry repeated in one commit keeps its first."""
    store.commit(
        Changes(
            runs=[run_row("r1", "running"), run_row("r1", "failed")],
            dead_letters=[letter(7, "invalid_json"), letter(7, "nul_bytes")],
            outbox=[outbox("o1", "pending"), outbox("o1", "recorded")],
            states=[("g", b"1"), ("g", b"2")],
        ),
        NOW,
    )
    snapshot = store.snapshot()
    assert [r["status"] for r in snapshot["runs"]] == ["failed"]
    assert [d["reason"] for d in snapshot["dead_letters"]] == ["invalid_json"]
    assert rows(store, "SELECT id, state FROM outbox") == [("o1", "pending")]
    assert rows(store, "SELECT state FROM fold_state") == [(b"2",)]


def test_one_writer_at_a_time(store_target: Where) -> None:
    """Writers take turns as in SQLite, so derived events appear in commit order; one that
    cannot get its turn in time fails instead of interleaving."""
    open_store(store_target).close()
    first, second = connect(store_target), connect(store_target, timeout_s=0.2)
    try:
        with transaction(first):
            first.execute("INSERT INTO counters VALUES (?, ?)", ("held", 1))
            with pytest.raises(db_errors()):
                second.execute("BEGIN IMMEDIATE")
        with transaction(second):
            second.execute("UPDATE counters SET value = ? WHERE name = ?", (2, "held"))
        assert first.execute("SELECT value FROM counters").fetchall() == [(2,)]
    finally:
        first.close()
        second.close()


def test_commit_is_atomic(store: Store) -> None:
    """A failure anywhere in a batch must leave nothing of it, or a crash corrupts the rows."""
    with pytest.raises(RuntimeError), store.transaction():
        store.write(everything(), NOW)
        raise RuntimeError("crash after the writes")
    broken = everything()
    broken.alert_states.append(("rule", "g", None))  # type: ignore[arg-type]
    with pytest.raises(db_errors()):
        store.commit(broken, NOW)  # fails on its last table, after all the others
    assert all(not table for table in store.snapshot().values())
    assert store.counters() == {} and store.checkpoints() == {}
    assert rows(store, "SELECT count(*) FROM derived_events") == [(0,)]


def test_dead_letters_ignore_repeats(store: Store) -> None:
    """A line re-read after a restart is the same dead letter, kept once, as first seen."""
    store.commit(Changes(dead_letters=[letter(7), letter(9)]), NOW)
    store.commit(Changes(dead_letters=[letter(7, "nul_bytes")]), "later")
    got = store.snapshot()["dead_letters"]
    assert [(d["offset"], d["reason"], d["raw"]) for d in got] == [
        (7, "invalid_json", b"{\xff\x00"),
        (9, "invalid_json", b"{\xff\x00"),
    ]
    assert rows(store, "SELECT DISTINCT seen_at FROM dead_letters") == [(NOW,)]


def test_counters_add(store: Store) -> None:
    """Counters are sums over commits: a batch adds, it never overwrites."""
    store.commit(Changes(counters={"events_accepted": 3, "lines_blank": 1}), NOW)
    store.commit(Changes(counters={"events_accepted": 4}), NOW)
    assert store.counters() == {"events_accepted": 7, "lines_blank": 1}


def test_checkpoints_round_trip(store: Store) -> None:
    """A restart resumes exactly where the last commit left each file, or not at all."""
    first = Checkpoint(1, 2, "/logs/a.jsonl", "fp", 20, 3, "th")
    moved = Checkpoint(1, 2, "/logs/a.jsonl", "fp", 90, 9, "th2")
    other = Checkpoint(1, 5, "/logs/b.jsonl", "fp", 0, 1, "th")
    store.commit(Changes(checkpoints=[first, other]), NOW)
    store.commit(Changes(checkpoints=[moved], forget=[(1, 5)]), NOW)
    assert store.checkpoints() == {(1, 2): moved}


def test_load_group_returns_state_and_seen_ids(store: Store) -> None:
    """An evicted run comes back with every event id it folded, so none is applied twice."""
    store.commit(
        Changes(
            states=[("r:r1", orjson.dumps({"v": 1}))],
            index=[("r:r1", orjson.dumps([["e1", 1, 0, 5]]))],
        ),
        NOW,
    )
    store.commit(
        Changes(
            states=[("r:r1", orjson.dumps({"v": 2}))],
            index=[("r:r1", orjson.dumps([["e2", 1, 5, 5], ["e3", 2, 0, 4]]))],
        ),
        NOW,
    )
    assert store.load_group("r:r1") == ({"v": 2}, {"e1", "e2", "e3"})
    assert store.load_group("r:missing") == (None, set())


def test_a_state_saved_in_parts_comes_back_whole(store: Store) -> None:
    """A run's header and its tasks are written apart, each only when it changed (the last
    copy of a task in one commit wins); `load_group` puts them back together."""
    store.commit(
        Changes(
            states=[("r:r1", orjson.dumps({"v": 1}))],
            task_states=[("r:r1", "a", b'["pending"]'), ("r:r1", "b", b'["running"]')],
        ),
        NOW,
    )
    store.commit(
        Changes(
            states=[("r:r1", orjson.dumps({"v": 2})), ("r:r2", b"{}")],
            task_states=[("r:r1", "b", b'["failed"]'), ("r:r1", "b", b'["succeeded"]')],
        ),
        NOW,
    )
    tasks = {"a": ["pending"], "b": ["succeeded"]}
    assert store.load_group("r:r1") == ({"v": 2, "tasks": tasks}, set())
    assert store.load_group("r:r2") == ({}, set()), "no tasks: the header alone"
    assert rows(store, "SELECT count(*) FROM fold_tasks") == [(2,)]


def test_open_runs_are_the_unfinished_ones(store: Store) -> None:
    """Stall detection after a restart starts from exactly the runs still open."""
    store.commit(
        Changes(runs=[run_row("a"), run_row("b", "pending", stalled=1), run_row("c", "failed")]),
        NOW,
    )
    assert sorted(store.open_runs()) == [
        ("a", "2026-01-01T00:00:01.000000Z", 0),
        ("b", "2026-01-01T00:00:01.000000Z", 1),
    ]
    store.commit(Changes(stalled=[(1, "a")]), NOW)
    assert dict((r, s) for r, _, s in store.open_runs()) == {"a": 1, "b": 1}


def test_alert_states_replace(store: Store) -> None:
    """The alert book resumes from its last state per (rule, group), not an older one."""
    store.commit(Changes(alert_states=[("rule", "g", b'{"n":1}'), ("rule", "h", b'{"n":5}')]), NOW)
    store.commit(Changes(alert_states=[("rule", "g", b'{"n":2}')]), NOW)
    assert sorted(store.alert_states()) == [("rule", "g", {"n": 2}), ("rule", "h", {"n": 5})]


def test_unevaluated_until_marked(store: Store) -> None:
    """Events recorded by deliveries reach the alert rules once: listed until marked."""
    store.commit(
        Changes(derived=[{"type": "RUN_COMPLETED", "run_id": "r", "event_time": NOW}]), NOW
    )
    with transaction(store.db) as db:
        db.executemany(
            "INSERT INTO derived_events (type, run_id, event_time, data, "
            "recorded_at, unevaluated) VALUES (?, ?, ?, ?, ?, 1)",
            [
                ("ALERT_SENT", "r", NOW, orjson.dumps({"type": "ALERT_SENT", "n": n}), NOW)
                for n in (1, 2)
            ],
        )
    pending = store.unevaluated()
    assert [(seq, data["n"]) for seq, data in pending] == [(2, 1), (3, 2)]
    store.commit(Changes(evaluated=[pending[0][0]]), NOW)
    assert [data["n"] for _, data in store.unevaluated()] == [2]


def test_meta_replaces_and_keeps_the_schema_version(store: Store) -> None:
    """Build facts can be rewritten; the schema version and database id stay."""
    store.set_meta([("built_by", "replay"), ("inputs", "3")])
    store.set_meta([("inputs", "4")])
    meta = store.meta()
    assert meta["schema_version"] == str(SCHEMA_VERSION) and len(meta["database_id"]) == 32
    assert (meta["built_by"], meta["inputs"]) == ("replay", "4")


def test_outbox_records_an_id_once(store: Store) -> None:
    """A decision recorded twice (replay, restart) is one entry, as first decided."""
    store.commit(Changes(outbox=[outbox("o1"), outbox("o2")]), NOW)
    store.commit(Changes(outbox=[outbox("o1", "recorded")]), "later")
    assert rows(store, "SELECT id, channel, state, decided_at FROM alerts ORDER BY id") == [
        ("o1", "console", "pending", NOW),
        ("o2", "console", "pending", NOW),
    ]


def test_stream_positions_compare_and_set(store: Store) -> None:
    """A stream advances only from the position this process last saw; if it moved, another
    process owns the stream, and nothing of this batch may land."""
    assert store.position("orders.0") is None
    store.commit(Changes(positions=[("orders.0", None, 5)]), NOW)
    store.commit(Changes(positions=[("orders.0", 5, 9)], counters={"events_accepted": 1}), NOW)
    assert store.position("orders.0") == 9
    stale = Changes(
        positions=[("orders.0", 5, 12)],
        counters={"events_accepted": 1},
        runs=[run_row("r1")],
        dead_letters=[letter(1)],
    )
    with pytest.raises(
        OwnershipLost,
        match=r"another process owns stream 'orders.0' "
        r"\(expected position 5, found 9, written by .+:\d+\); this one stops "
        r"to avoid corrupting the projection",
    ) as lost:
        store.commit(stale, NOW)
    assert (lost.value.stream, lost.value.expected, lost.value.found) == ("orders.0", 5, 9)
    with pytest.raises(OwnershipLost, match=r"expected no position, found 9"):
        store.commit(Changes(positions=[("orders.0", None, 1)], runs=[run_row("r1")]), NOW)
    assert isinstance(lost.value, StoreError)
    assert store.position("orders.0") == 9 and store.counters() == {"events_accepted": 1}
    assert store.snapshot()["runs"] == [] and store.snapshot()["dead_letters"] == []


def test_two_processes_cannot_both_advance_a_stream(store_target: Where) -> None:
    """Two writers that read the same position: the second to commit loses, cleanly."""
    first, second = open_store(store_target), open_store(store_target)
    try:
        first.commit(Changes(positions=[("s", None, 1)]), NOW)
        seen = second.position("s")
        first.commit(Changes(positions=[("s", 1, 2)]), NOW)
        with pytest.raises(OwnershipLost, match="expected position 1, found 2"):
            second.commit(Changes(positions=[("s", seen, 3)]), NOW)
        assert first.position("s") == second.position("s") == 2
    finally:
        first.close()
        second.close()


def test_db_takes_question_mark_placeholders(store: Store, store_target: Where) -> None:
    """Callers write one SQL for both backends: `?` marks, SQLite's INSERT OR IGNORE."""
    store.commit(
        Changes(runs=[run_row("r1"), run_row("r2", "failed")], dead_letters=[letter(7)]), NOW
    )
    db = store.db
    assert db.execute("SELECT count(*), sum(tasks_total) FROM runs").fetchone() == (2, 4)
    cursor = db.execute(
        "SELECT run_id, status FROM runs WHERE status = ? AND run_id LIKE 'r%'", ("failed",)
    )
    assert [d[0] for d in cursor.description] == ["run_id", "status"]
    assert list(cursor) == [("r2", "failed")]
    assert db.execute(
        "SELECT source, offset FROM dead_letters WHERE offset > ? ORDER BY offset LIMIT ? OFFSET ?",
        (0, 5, 0),
    ).fetchall() == [("/logs/a.jsonl", 7)]
    assert db.execute("SELECT 'a ? b', ?", ("x",)).fetchone() == ("a ? b", "x")
    other = connect(store_target)
    try:
        with transaction(other):
            other.executemany(
                "INSERT OR IGNORE INTO archival_log VALUES (?, ?, ?, ?, ?, ?)",
                [("r1", "a.zip", "00", 10, 2, NOW)] * 2,
            )
            changed = other.execute("UPDATE runs SET stalled=? WHERE run_id=?", (1, "r1"))
            assert changed.rowcount == 1
    finally:
        other.close()
    assert rows(store, "SELECT run_id, size_bytes FROM archival_log") == [("r1", 10)]
    assert rows(store, "SELECT stalled FROM runs WHERE run_id=?", "r1") == [(1,)]


@pytest.mark.parametrize(
    ("version", "word"), [(99, "newer"), (SCHEMA_VERSION - 1, "older")], ids=["newer", "older"]
)
def test_another_schema_version_is_refused(store_target: Where, version: int, word: str) -> None:
    """A database from another runwatch (an older one saved a run's state whole) is
    refused with a message, never misread."""
    store = open_store(store_target)
    store.set_meta([("schema_version", str(version))])
    store.close()
    with pytest.raises(
        StoreError,
        match=rf"schema version {version} is {word} than this runwatch "
        rf"supports \({SCHEMA_VERSION}\); rebuild it with `runwatch replay`",
    ):
        open_store(store_target)


def test_a_foreign_database_is_refused(store_target: Where) -> None:
    """Pointing --db at someone else's tables is refused before anything is written."""
    if is_postgres(store_target):
        parsed = Target.parse(str(store_target))
        with psycopg.connect(parsed.conninfo, autocommit=True) as admin:
            admin.execute(f"CREATE SCHEMA {parsed.schema}")
            admin.execute(f"CREATE TABLE {parsed.schema}.customers (id int)")
    else:
        Path(store_target).parent.mkdir(parents=True)
        with sqlite3.connect(store_target) as foreign:
            foreign.execute("CREATE TABLE customers (id INTEGER)")
        foreign.close()
    with pytest.raises(StoreError, match="not a runwatch database"):
        open_store(store_target)


def fold(store: Store, paths: list[Path]) -> None:
    """Fold real files into `store` the way `replay --workers 0` does, one commit per file
    and a tiny cache, so runs are written out and read back (load_group) along the way."""
    alerts = default_alert_setup()
    decisions = Decisions(alerts.rules, store, alerts.policy(deliver=False))  # type: ignore[arg-type]
    processor = Processor(
        store,
        stall_after_s=1800,
        max_line_bytes=8 << 20,  # type: ignore[arg-type]
        wall_clock=lambda: NOW,
        max_groups=8,
        rules=alerts.rules,
        decisions=decisions,
    )
    for path in expand([str(p) for p in paths]):
        splitter = LineSplitter(0, 1, max_line_bytes=8 << 20, keep=RAW_KEEP)
        source_id = store.source_id(str(path))
        for lines in (splitter.feed(path.read_bytes()), splitter.finish()):
            processor.process(str(path), source_id, lines)
        processor.commit([checkpoint_for(path, splitter.offset, splitter.line)])
    processor.detect(processor.max_event_time)
    processor.commit([])


def test_text_with_nul_characters_is_dead_lettered_alike(store: Store, tmp_path: Path) -> None:
    """A `\\u0000` inside a JSON string cannot be stored in a PostgreSQL text column, so both
    backends dead-letter the line (with its bytes) rather than one failing every restart."""
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "nul.jsonl").write_text(
        '{"event_type": "run_started", "timestamp": "2026-01-01T00:00:00Z", '
        '"run_id": "a\\u0000b"}\n',
        encoding="utf-8",
    )
    fold(store, [logs])
    snap = store.snapshot()
    assert snap["runs"] == []
    assert [d["reason"] for d in snap["dead_letters"]] == ["nul_bytes"]


def every_row(store: Store) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table, sorted: the whole projection, not only the converged part."""
    tables = [
        "runs",
        "tasks",
        "workstreams",
        "pattern_runs",
        "dead_letters",
        "checkpoints",
        "sources",
        "fold_state",
        "event_index",
        "counters",
        "derived_events",
        "outbox",
        "alert_state",
        "archival_log",
        "archival_late",
        "stream_positions",
    ]
    return {t: sorted(rows(store, f"SELECT * FROM {t}"), key=repr) for t in tables}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("corpus") / "c"
    simulate(out, runs=20, seed=5)
    return out


@pytest.fixture(scope="module")
def sqlite_build(corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The reference: every corpus folded into SQLite, once for the module."""
    built = {}
    for name, paths in corpora(corpus).items():
        store = open_store(tmp_path_factory.mktemp(name) / "rw.db")
        fold(store, paths)
        built[name] = store.snapshot(), every_row(store)
        store.close()
    return built


def corpora(corpus: Path) -> dict[str, list[Path]]:
    cases = {case: [GOLDEN / case / "input"] for case in ("upstream", "mixed", "simulated")}
    return {"simulate-20-5": [corpus], **cases}


@pytest.mark.parametrize("name", ["simulate-20-5", "upstream", "mixed", "simulated"])
def test_a_real_corpus_gives_the_same_rows(
    name: str, store_target: Where, corpus: Path, sqlite_build: dict[str, Any]
) -> None:
    """Any backend folds the same logs into the same rows: SQLite's, and the golden files'."""
    store = open_store(store_target)
    try:
        fold(store, corpora(corpus)[name])
        snapshot, table_rows = store.snapshot(), every_row(store)
    finally:
        store.close()
    assert snapshot == sqlite_build[name][0]
    assert table_rows == sqlite_build[name][1]
    assert all(table_rows[t] for t in ("runs", "fold_state", "event_index", "checkpoints"))
    expected = GOLDEN / name / "expected.json"
    if expected.is_file():
        golden = json.loads(expected.read_text(encoding="utf-8"))
        assert differences(golden, portable(snapshot, GOLDEN / name / "input")) == []


def test_swap_schema_replaces_a_projection_at_once(postgres_url: str) -> None:
    """Replay builds into a fresh scratch schema (a leftover one is dropped first); swapping
    it in is one transaction, and the old projection disappears with it."""
    target = Target.parse(postgres_url)
    scratch = f"{target.schema}_scratch"
    old = PostgresStore(postgres_url)
    old.commit(Changes(runs=[run_row("old")]), NOW)
    old.close()
    leftover = PostgresStore(postgres_url.replace(target.schema, scratch))
    leftover.commit(Changes(runs=[run_row("interrupted")]), NOW)
    leftover.close()
    drop_schema(postgres_url.replace(target.schema, scratch))
    new = PostgresStore(postgres_url.replace(target.schema, scratch), fast_unsafe=True)
    new.commit(Changes(runs=[run_row("new")]), NOW)
    new.finalize()
    new.close()
    swap_schema(postgres_url, scratch, target.schema)
    swapped = PostgresStore(postgres_url)
    try:
        assert [r["run_id"] for r in swapped.snapshot()["runs"]] == ["new"]
        assert swapped.db.execute(
            "SELECT count(*) FROM pg_namespace WHERE nspname = ?", (scratch,)
        ).fetchone() == (0,)
    finally:
        swapped.close()


def test_urls_name_a_schema_and_print_without_secrets() -> None:
    """The printable form goes into messages and logs: it must never carry a password."""
    target = Target.parse(
        "postgresql://rw:s3cret@db.example:5433/prod?schema=live&sslmode=require&password=other"
    )
    assert target.schema == "live"
    assert target.printable == ("postgresql://rw@db.example:5433/prod?sslmode=require&schema=live")
    assert "schema" not in target.conninfo and "s3cret" in target.conninfo
    assert Target.parse("postgres://h/db").schema == "runwatch"
    assert is_postgres("postgres://h/db") and not is_postgres(Path("state/rw.db"))
    with pytest.raises(StoreError, match="not a plain name") as refused:
        Target.parse("postgresql://rw:s3cret@h/db?schema=a;drop")
    assert "s3cret" not in str(refused.value)


def test_sqlite_sql_is_rewritten_for_postgresql() -> None:
    """Only what differs is rewritten; string literals and quoted names stay as written."""
    assert to_postgres("SELECT offset FROM t WHERE a = ? AND b LIKE '?%' LIMIT ? OFFSET ?") == (
        "SELECT \"offset\" FROM t WHERE a = %s AND b LIKE '?%%' LIMIT %s OFFSET %s"
    )
    assert to_postgres("SELECT '%'", False) == "SELECT '%'"
    assert to_postgres("INSERT OR IGNORE INTO t VALUES (?) RETURNING id") == (
        "INSERT INTO t VALUES (%s) ON CONFLICT DO NOTHING RETURNING id"
    )
    with pytest.raises(ValueError, match="ON CONFLICT"):
        to_postgres("INSERT OR REPLACE INTO t VALUES (?)")
