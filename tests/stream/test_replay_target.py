"""A replay's summary names the database it replaced, whichever store it built into: the
SQLite file, or the PostgreSQL schema the URL names (not the scratch schema it built in), in
both cases printable (no password)."""

from __future__ import annotations

from pathlib import Path

from helpers import replay_into
from runwatch.sinks.store.target import Target
from runwatch.stream.devtools.writer import simulate
from runwatch.stream.services.replay import replay
from runwatch.stream.settings.service import Settings
from runwatch.stream.sources.discovery import expand


def test_a_postgres_replay_summary_names_the_target_schema(
    postgres_url: str, tmp_path: Path
) -> None:
    simulate(tmp_path / "corpus", runs=2, seed=3)
    url = f"{postgres_url}&password=unused-secret"  # the test server trusts loopback
    summary = replay(expand([str(tmp_path / "corpus")]), url, Settings(), progress=False)
    target = Target.parse(url)
    assert summary.database == target.printable
    assert summary.as_dict()["database"].endswith(f"schema={target.schema}")
    assert "_replay_" not in summary.database and "unused-secret" not in summary.database


def test_a_sqlite_replay_summary_names_the_target_file(tmp_path: Path) -> None:
    simulate(tmp_path / "corpus", runs=2, seed=3)
    db = tmp_path / "rw.db"
    assert replay_into(db, tmp_path / "corpus").database == str(db)
