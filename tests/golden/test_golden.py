"""Golden cases: a folder of JSONL input replays to exactly the rows in its expected.json.

Each case is `tests/golden/<case>/input/` (JSONL files, searched recursively) and
`tests/golden/<case>/expected.json` (every row of every converged table). Dead-letter
`source` is stored relative to the case's input folder and `raw` as UTF-8 text (bad bytes as
`\\xNN`), so the file stays readable and the case can live anywhere.

To accept a deliberate change of behaviour, rewrite the expected files and review the diff:

    RUNWATCH_UPDATE_GOLDEN=1 .venv/bin/pytest tests/golden
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from helpers import replay_into, snapshot

HERE = Path(__file__).parent
CASES = sorted(p.name for p in HERE.iterdir() if (p / "input").is_dir())
UPDATE = os.environ.get("RUNWATCH_UPDATE_GOLDEN") == "1"
KEYS = {
    "runs": ("run_id",),
    "tasks": ("run_id", "task_id"),
    "workstreams": ("run_id", "workstream_id"),
    "pattern_runs": ("pattern_run_id",),
    "dead_letters": ("source", "offset"),
}

Rows = dict[str, list[dict[str, Any]]]


def portable(rows: Rows, input_dir: Path) -> Rows:
    """The snapshot with dead-letter paths relative to the input folder and raw bytes as text."""
    base = input_dir.resolve()
    letters = [
        {
            **row,
            "source": Path(row["source"]).relative_to(base).as_posix(),
            "raw": bytes(row["raw"]).decode("utf-8", "backslashreplace"),
        }
        for row in rows["dead_letters"]
    ]
    letters.sort(key=lambda row: (row["source"], row["offset"]))
    return {**rows, "dead_letters": letters}


def differences(expected: Rows, actual: Rows) -> list[str]:
    """Every table, key and column where the two snapshots disagree, one line each."""
    problems = []
    for table in sorted(set(expected) | set(actual)):
        if table not in KEYS:
            problems.append(f"{table}: unexpected table")
            continue
        key = KEYS[table]
        want = {tuple(row[k] for k in key): row for row in expected.get(table, [])}
        got = {tuple(row[k] for k in key): row for row in actual.get(table, [])}
        for ident in sorted(set(want) | set(got), key=repr):
            label = f"{table}[{', '.join(map(str, ident))}]"
            if ident not in got:
                problems.append(f"{label}: missing row (expected {want[ident]})")
            elif ident not in want:
                problems.append(f"{label}: unexpected row {got[ident]}")
            else:
                for column in sorted(set(want[ident]) | set(got[ident])):
                    old = want[ident].get(column, "<no column>")
                    new = got[ident].get(column, "<no column>")
                    if old != new:
                        problems.append(f"{label}.{column}: expected {old!r}, got {new!r}")
    return problems


def test_golden_cases_are_present() -> None:
    """A case folder lost in a merge would silently shrink the regression net."""
    assert {"upstream", "simulated", "mixed"} <= set(CASES)
    for case in CASES:
        assert (HERE / case / "expected.json").is_file() or UPDATE, f"{case}: no expected.json"
        assert list((HERE / case / "input").rglob("*.jsonl")), f"{case}: no input files"


def test_differences_name_table_key_and_column() -> None:
    """A golden failure must say exactly which row and column moved, or nobody can review it."""
    expected: Rows = {
        "runs": [{"run_id": "r1", "status": "succeeded"}, {"run_id": "r2", "status": "failed"}]
    }
    actual: Rows = {
        "runs": [{"run_id": "r1", "status": "partial"}, {"run_id": "r3", "status": "failed"}]
    }
    assert differences(expected, actual) == [
        "runs[r1].status: expected 'succeeded', got 'partial'",
        "runs[r2]: missing row (expected {'run_id': 'r2', 'status': 'failed'})",
        "runs[r3]: unexpected row {'run_id': 'r3', 'status': 'failed'}",
    ]


@pytest.mark.parametrize("case", CASES)
def test_golden(case: str, tmp_path: Path) -> None:
    """Replaying a case's input reproduces every checked-in row, so any behaviour change shows."""
    folder = HERE / case
    db = tmp_path / "golden.db"
    replay_into(db, folder / "input")
    actual = portable(snapshot(db), folder / "input")
    expected_file = folder / "expected.json"
    if UPDATE:
        expected_file.write_text(
            json.dumps(actual, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
        )
        assert json.loads(expected_file.read_text(encoding="utf-8")) == actual
        return
    expected = json.loads(expected_file.read_text(encoding="utf-8"))
    problems = differences(expected, actual)
    assert not problems, (
        f"{case}: {len(problems)} difference(s) from {expected_file.relative_to(HERE)} "
        "(RUNWATCH_UPDATE_GOLDEN=1 rewrites it if the change is intended):\n  "
        + "\n  ".join(problems)
    )
