"""The schema is defined once (`TABLES`): the database it creates, the rows the projections
produce and the code that may speak SQL all agree with it."""

from __future__ import annotations

import ast
import sqlite3
from pathlib import Path

from runwatch.projections import Event, PatternRunState, RunState
from runwatch.sinks.store import reads
from runwatch.sinks.store.schema import CONVERGED, SCHEMA_VERSION, TABLES
from runwatch.sinks.store.sqlite import SqliteStore
from runwatch.stream.core.decode import decode
from runwatch.stream.sources.discovery import expand

ROOT = Path(__file__).parents[2]
GOLDEN_INPUTS = [ROOT / "tests" / "golden" / case / "input" for case in ("mixed", "upstream")]


def test_created_tables_are_the_specs(tmp_path: Path) -> None:
    """What SQLite creates from the generated DDL has exactly the specs' columns, types,
    NOT NULLs, defaults and keys, so no table can drift from its one definition."""
    SqliteStore(tmp_path / "p.db").close()
    db = sqlite3.connect(tmp_path / "p.db")
    created = {name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert created == set(TABLES)
    for table in TABLES.values():
        info = db.execute(f"PRAGMA table_info({table.name})").fetchall()
        assert [row[1] for row in info] == list(table.names), table.name
        for (_, name, kind, notnull, default, _), column in zip(info, table.columns, strict=True):
            assert column.type in ("TEXT", "INTEGER", "REAL", "BLOB"), name
            assert (kind, bool(notnull), default) == (column.type, column.required, column.default)
        key = sorted((row[5], row[1]) for row in info if row[5] > 0)
        assert tuple(name for _, name in key) == table.key, table.name
        sql = db.execute("SELECT sql FROM sqlite_master WHERE name=?", (table.name,)).fetchone()
        assert sql[0].endswith("WITHOUT ROWID") == table.without_rowid, table.name
    db.close()


def _folded() -> tuple[dict[str, RunState], dict[str, PatternRunState]]:
    runs: dict[str, RunState] = {}
    patterns: dict[str, PatternRunState] = {}
    for path in expand([str(p) for p in GOLDEN_INPUTS]):
        for line in path.read_bytes().splitlines():
            event = decode(line)
            if not isinstance(event, Event):
                continue
            if event.family == "p" and event.task:
                patterns.setdefault(event.task, PatternRunState(event.task)).apply(event)
            elif event.family == "o" and event.run_id:
                runs.setdefault(event.run_id, RunState(event.run_id)).apply(event)
    return runs, patterns


def test_projection_rows_have_exactly_the_tables_columns() -> None:
    """Every converged row dict the projections produce names each column of its table and
    nothing else, so an upsert by name can neither miss a column nor drop a field."""
    runs, patterns = _folded()
    rows: dict[str, list[dict[str, object]]] = {
        "runs": [state.row() for state in runs.values()],
        "tasks": [row for state in runs.values() for row in state.task_rows()],
        "workstreams": [row for state in runs.values() for row in state.workstream_rows()],
        "pattern_runs": [state.row() for state in patterns.values()],
    }
    assert set(rows) == set(CONVERGED)
    for field, table in CONVERGED.items():
        assert rows[field], f"the golden inputs produce no {field} rows"
        for row in rows[field]:
            assert set(row) == set(table.names), (field, set(row) ^ set(table.names))


def test_only_the_store_speaks_to_the_database() -> None:
    """stream/ and projections/ import no database driver: all SQL lives in sinks/store."""
    drivers = {"sqlite3", "psycopg", "psycopg_pool"}
    for folder in ("stream", "projections"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            tree = ast.parse(path.read_text())
            imported = {
                alias.name.split(".")[0]
                for node in ast.walk(tree)
                if isinstance(node, ast.Import)
                for alias in node.names
            } | {
                node.module.split(".")[0]
                for node in ast.walk(tree)
                if isinstance(node, ast.ImportFrom) and node.module and node.level == 0
            }
            assert not imported & drivers, path.relative_to(ROOT)


def test_read_only_probes_survive_any_file_name(tmp_path: Path) -> None:
    """The health probe and the live view open the file by a `file:` URI: a `#`, `?` or `%`
    in its path must name the same file, not cut the URI short."""
    path = tmp_path / "odd #1?x=%41" / "run#watch.db"
    SqliteStore(path).close()
    assert reads.schema_version(path) == str(SCHEMA_VERSION)
    frame = reads.frame(path, active=5, recent=5)
    assert (frame.problem, frame.counts) == (None, {})
