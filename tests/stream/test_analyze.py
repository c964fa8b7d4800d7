"""`runwatch analyze`: offline statistics that agree with replay, from logs or a database.

The tests named `test_cli_*` run the real `runwatch analyze` executable (the command is
`stream/cli/analyze.py`); the others call the library."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest

from helpers import UPSTREAM, replay_into, run_cli
from runwatch.sinks.analysis import SECTIONS, render
from runwatch.stream.analysis.analyze import NEEDS_LOGS, analyze_database, analyze_logs
from runwatch.stream.analysis.observe import Window, normalise, parse_moment
from runwatch.stream.cli.analyze import window_from_args
from runwatch.stream.cli.registry import build_parser
from runwatch.stream.devtools.writer import simulate
from runwatch.stream.errors import UsageError
from runwatch.stream.services.replay import ReplaySummary
from runwatch.stream.settings.service import Settings
from runwatch.stream.sources.discovery import expand

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
T0 = "2026-01-05T10:00:00Z"


def line(event_type: str, when: str, **fields: Any) -> bytes:
    return orjson.dumps({"event_type": event_type, "timestamp": when, **fields}) + b"\n"


def analyse(*paths: Path, **options: Any) -> dict[str, Any]:
    return analyze_logs(expand([str(p) for p in paths]), Settings(), progress=False, **options)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("analyze") / "corpus"
    simulate(out, runs=40, seed=21)
    return out


@pytest.fixture(scope="module")
def replayed(corpus: Path) -> tuple[Path, ReplaySummary]:
    db = corpus.parent / "replayed.db"
    return db, replay_into(db, corpus)


@pytest.fixture(scope="module")
def analysis(corpus: Path) -> dict[str, Any]:
    return analyse(corpus, workers=0)


def test_counts_match_a_replay_of_the_same_files(
    analysis: dict[str, Any], replayed: tuple[Path, ReplaySummary]
) -> None:
    """The issue's promise: the analysis of a corpus counts exactly what replay counts."""
    _, summary = replayed
    totals = analysis["totals"]
    assert (totals["events_accepted"], totals["events_duplicate"], totals["events_rejected"]) == (
        summary.tally.accepted,
        summary.tally.duplicate,
        summary.tally.rejected_total,
    )
    assert summary.tally.duplicate > 0
    assert {s: totals[f"runs_{s}"] for s in summary.runs_by_status} == summary.runs_by_status
    assert totals["runs"] == sum(day["runs"] for day in analysis["runs_by_day"]) == 40
    assert totals["runs_stalled"] == summary.stalled_runs
    assert totals["pattern_runs"] == summary.pattern_runs
    assert sum(h["events"] for h in analysis["events_per_hour"]) == summary.tally.accepted
    assert analysis["analysis"]["lines"] == summary.lines


def test_an_abandoned_run_is_counted_like_replay_counts_it(tmp_path: Path) -> None:
    """A run silent past forget_after is `abandoned`: the analysis must count it too, or its
    totals stop adding up to replay's."""
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "a.jsonl").write_bytes(
        line("run_started", T0, run_id="QUIET")
        + line("run_started", "2026-01-20T10:00:00Z", run_id="BUSY")
        + line(
            "run_completed", "2026-01-20T10:05:00Z", run_id="BUSY", payload={"status": "succeeded"}
        )
    )
    summary = replay_into(tmp_path / "rw.db", logs)
    assert summary.runs_by_status == {"abandoned": 1, "succeeded": 1}
    totals = analyse(logs, workers=0)["totals"]
    assert {s: totals[f"runs_{s}"] for s in summary.runs_by_status} == summary.runs_by_status
    assert totals["runs"] == 2


def test_database_analysis_agrees_with_the_logs_and_names_what_it_lacks(
    analysis: dict[str, Any], replayed: tuple[Path, ReplaySummary]
) -> None:
    """`--db` must give the same table-based figures and say which ones need the logs."""
    db, _ = replayed
    from_db = analyze_database(Settings(database=db))
    for section in ("runs_by_day", "slowest_tasks", "dead_letters"):
        assert from_db[section] == analysis[section], section
    assert from_db["durations"] == [
        d for d in analysis["durations"] if d["kind"] not in ("tool", "pattern_tool")
    ]
    assert [f for f in from_db["failing"] if f["scope"] == "pattern"] == [
        f for f in analysis["failing"] if f["scope"] == "pattern"
    ]
    assert from_db["totals"].items() <= analysis["totals"].items()
    assert from_db["analysis"]["missing"] == NEEDS_LOGS
    assert from_db["events_per_hour"] == [] and from_db["clock_skew"] == []
    assert len(from_db["stall_incidents"]) == from_db["totals"]["runs_stalled"] > 0


def test_workers_and_regions_do_not_change_the_analysis(
    corpus: Path, tmp_path: Path, analysis: dict[str, Any]
) -> None:
    """Workers see cut regions and repeats across batches; the result must not depend on it."""
    parallel = analyse(corpus, workers=2, chunk_bytes=64 * 1024)
    assert parallel == analysis


def test_durations_failures_and_tools_are_found(analysis: dict[str, Any]) -> None:
    """Per workstream, phase, pattern and tool durations, and failures per scope with messages."""
    kinds = {d["kind"] for d in analysis["durations"]}
    assert kinds == {"run", "task", "workstream", "phase", "pattern", "pattern_tool", "tool"}
    for row in analysis["durations"]:
        if row["count"]:
            assert row["min"] <= row["p50"] <= row["p90"] <= row["p99"] <= row["max"], row
    scopes = {f["scope"] for f in analysis["failing"]}
    assert scopes == {"task", "tool", "pattern", "type"}
    slowest = analysis["slowest_tasks"]
    assert [t["duration_s"] for t in slowest] == sorted(
        (t["duration_s"] for t in slowest), reverse=True
    )
    named = {(m["scope"], m["name"]) for m in analysis["error_messages"]}
    assert named == {(f["scope"], f["name"]) for f in analysis["failing"]}


def test_the_real_upstream_files(tmp_path: Path) -> None:
    """The upstream samples: repeated pattern events, a runless failure, a run gone quiet."""
    result = analyse(UPSTREAM)
    totals = result["totals"]
    assert (totals["events_accepted"], totals["events_duplicate"], totals["runs"]) == (14, 8, 1)
    durations = {(d["kind"], d["name"]): d["p50"] for d in result["durations"] if d["count"]}
    assert durations == {
        ("phase", "execution"): 5.3,
        ("pattern", "PAT-PYTEST-001"): 5.3,
        ("pattern", "PAT-SEMGRP-001"): 18.74,
        ("pattern_tool", "semgrep"): 18.74,
    }
    assert [(f["scope"], f["name"], f["top_message"]) for f in result["failing"]] == [
        ("type", "patch_failed", "Test error")
    ]
    assert result["stall_incidents"] == [
        {
            "run_id": "run-123",
            "silent_from": "2025-12-05T18:40:42.556302Z",
            "resumed_at": None,
            "silent_s": 73161.457,
            "open": True,
        }
    ]
    assert result["events_per_hour"] == [
        {"hour": "2025-11-26T14:00Z", "events": 8},
        {"hour": "2025-12-05T18:00Z", "events": 5},
        {"hour": "2025-12-06T15:00Z", "events": 1},
    ]
    assert result["runs_by_day"][0]["pending"] == 1 and totals["success_rate"] is None


@pytest.mark.parametrize(
    ("first", "second", "expected"),
    [
        ("timeout after 300s", "timeout after 12.5s", "timeout after <n>s"),
        ("cannot open /tmp/a/b.py", "cannot open src/core/x.py", "cannot open <path>"),
        (
            "run RUN-01KE6JQ3001E0W5YKV3YEN407F lost",
            "run RUN-01KE9VP5FHZXRNV9ATRZ6BSJZ3 lost",
            "run <id> lost",
        ),
        (
            "job 123e4567-e89b-12d3-a456-426614174000 gone",
            "job 9b2f7c1e-0000-4000-8000-00000000beef gone",
            "job <uuid> gone",
        ),
        ("commit 3f2a9c1e7b missing", "commit 0xdeadbeef missing", "commit <hex> missing"),
        ("key 'alpha' missing", 'key "beta" missing', "key <str> missing"),
        ("at 2026-01-05T08:00:00Z", "at 2025-12-31 23:59:59+01:00", "at <time>"),
    ],
)
def test_normalisation_groups_similar_errors(first: str, second: str, expected: str) -> None:
    """Errors that differ only in numbers, ids, paths, quotes or times must count as one."""
    assert normalise(first) == normalise(second) == expected


def test_similar_task_errors_group_with_a_raw_example(tmp_path: Path) -> None:
    """Grouping happens in the analysis too, keeping the first raw message as the example."""
    log = tmp_path / "events.jsonl"
    log.write_bytes(
        b"".join(
            line(
                "task_failed",
                f"2026-01-05T10:0{i}:00Z",
                run_id=f"R{i}",
                task_id="T",
                severity="error",
                payload={"error": f"timeout after {seconds}s"},
            )
            for i, seconds in enumerate((300, 120, 5))
        )
    )
    result = analyse(log)
    [by_type] = [m for m in result["error_messages"] if m["scope"] == "type"]
    assert (by_type["message"], by_type["count"], by_type["example"]) == (
        "timeout after <n>s",
        3,
        "timeout after 300s",
    )
    assert len([f for f in result["failing"] if f["scope"] == "task"]) == 3


def test_clock_skew_counts_backward_and_future_stamps(tmp_path: Path) -> None:
    """A writer whose clock jumps back, or stamps the future, is visible per file."""
    log = tmp_path / "skewed.jsonl"
    in_an_hour = datetime.now(UTC) + timedelta(hours=1)
    log.write_bytes(
        b"".join(
            [
                line("run_started", "2026-01-05T10:00:00Z", run_id="A"),
                line("run_started", "2026-01-05T09:00:00Z", run_id="B"),  # other run: not skew
                line("task_started", "2026-01-05T10:00:05Z", run_id="A", task_id="t"),
                line("task_progress", "2026-01-05T09:58:55Z", run_id="A", task_id="t"),  # 70 s back
                line("task_progress", "2026-01-05T10:00:06.5Z", run_id="A", task_id="t"),
                line("task_progress", "2026-01-05T10:00:06Z", run_id="A", task_id="t"),  # 0.5 s: no
                # an hour ahead: past the file's mtime, within max_future_skew (later is bad_time)
                line("task_completed", in_an_hour.isoformat(), run_id="A", task_id="t"),
            ]
        )
    )
    result = analyse(log)
    assert result["clock_skew"] == [
        {"source": str(log), "backwards": 1, "future": 1, "worst_backwards_s": 70.0}
    ]
    assert (result["totals"]["clock_skew_backwards"], result["totals"]["clock_skew_future"]) == (
        1,
        1,
    )


def test_skew_across_cut_regions_is_counted_once(tmp_path: Path) -> None:
    """A file cut into regions for the workers: steps back at the cuts still count, once."""
    log = tmp_path / "zigzag.jsonl"
    log.write_bytes(
        b"".join(
            line(
                "task_progress",
                f"2026-01-05T10:{k // 2 % 60:02d}:{10 - 5 * (k % 2):02d}Z",
                run_id=f"R{k // 120}",
                task_id="t",
                payload={"pad": "x" * 60},
            )
            for k in range(4000)
        )
    )
    one = analyse(log, workers=0)
    many = analyse(log, workers=2, chunk_bytes=64 * 1024)
    assert many["clock_skew"] == one["clock_skew"]
    assert one["totals"]["clock_skew_backwards"] == 2000


def test_a_silence_inside_a_run_is_a_closed_stall_incident(tmp_path: Path) -> None:
    """A run quiet for longer than stall_after that then goes on was stalled for that time."""
    log = tmp_path / "gap.jsonl"
    log.write_bytes(
        b"".join(
            [
                line("run_started", "2026-01-05T10:00:00Z", run_id="A"),
                line("task_started", "2026-01-05T10:00:10Z", run_id="A", task_id="t"),
                line("task_completed", "2026-01-05T11:00:10Z", run_id="A", task_id="t"),
                line("run_completed", "2026-01-05T11:00:20Z", run_id="A"),
                line(
                    "task_progress", "2026-01-05T13:00:00Z", run_id="A", task_id="late"
                ),  # after end
            ]
        )
    )
    result = analyse(log)
    assert result["stall_incidents"] == [
        {
            "run_id": "A",
            "silent_from": "2026-01-05T10:00:10.000000Z",
            "resumed_at": "2026-01-05T11:00:10.000000Z",
            "silent_s": 3600.0,
            "open": False,
        }
    ]


def test_since_and_until_select_runs_and_events(corpus: Path, analysis: dict[str, Any]) -> None:
    """A window keeps the runs created and the events stamped inside it, nothing else."""
    hours = analysis["events_per_hour"]
    since, until = hours[2]["hour"], hours[5]["hour"]
    window = Window(parse_moment(since, "--since", NOW), parse_moment(until, "--until", NOW))
    cut = analyse(corpus, window=window)
    assert cut["events_per_hour"] == hours[2:5]
    assert cut["totals"]["events_in_window"] == sum(h["events"] for h in hours[2:5])
    assert cut["totals"]["events_accepted"] == analysis["totals"]["events_accepted"]
    assert 0 < cut["totals"]["runs"] < analysis["totals"]["runs"]
    assert all(since <= t["started_at"] < until for t in cut["slowest_tasks"])
    assert cut["analysis"]["since"].startswith(since[:13])


def test_window_arguments_accept_times_dates_and_durations() -> None:
    """Users type dates, ISO times or `7d`; an until date means the end of that day."""
    window = window_from_args("2026-01-05", "2026-01-05", NOW)
    assert window.hi - window.lo == 86_400_000_000
    relative = window_from_args("7d", None, NOW)
    assert relative.since == parse_moment("2026-02-22T12:00:00Z", "--since", NOW)
    assert parse_moment("2026-01-05T10:00:00+02:00", "--since", NOW) == parse_moment(
        "2026-01-05T08:00:00", "--since", NOW
    )
    with pytest.raises(UsageError, match="--since 'yesterday'"):
        window_from_args("yesterday", None, NOW)
    with pytest.raises(UsageError, match="before --until"):
        window_from_args("2026-01-06", "2026-01-05T12:00:00Z", NOW)


def test_json_has_every_section_and_round_trips(analysis: dict[str, Any]) -> None:
    """Scripts read the JSON: every section is there, with the same values."""
    loaded = orjson.loads(render(analysis, "json"))
    assert loaded == analysis
    assert list(loaded) == ["analysis", "totals", *(s.key for s in SECTIONS)]


def test_csv_blocks_read_back_per_section(analysis: dict[str, Any]) -> None:
    """Each section is a block with its own header; every row names its section."""
    blocks: dict[str, list[list[str]]] = {}
    header: list[str] = []
    for row in csv.reader(io.StringIO(render(analysis, "csv").decode())):
        if row and row[0] == "section":
            header = row
        elif row:
            assert len(row) == len(header)
            blocks.setdefault(row[0], []).append(row)
    assert len(blocks["durations"]) == len(analysis["durations"])
    assert len(blocks["events_per_hour"]) == len(analysis["events_per_hour"])
    totals = {key: value for _, key, value in blocks["totals"]}
    assert int(totals["events_accepted"]) == analysis["totals"]["events_accepted"]


def test_html_and_table_escape_log_strings(tmp_path: Path) -> None:
    """Log text is attacker-controlled: the page and the terminal show it, never run it."""
    log = tmp_path / "hostile.jsonl"
    hostile = "<script>alert(1)</script>"
    log.write_bytes(
        b"".join(
            [
                line("task_started", T0, run_id="R", task_id="t", workstream_id=hostile),
                line(
                    "tool_call_completed",
                    T0,
                    run_id="R",
                    task_id="t",
                    tool_id=hostile,
                    severity="error",
                    payload={
                        "duration_ms": 1500,
                        "error": f"\x1b[2J<img src=x> \u202e{hostile}",
                    },
                ),
                line("task_failed", "2026-01-05T10:00:02Z", run_id="R", task_id="t"),
            ]
        )
    )
    result = analyse(log)
    page = render(result, "html").decode()
    assert page.count("<svg") >= 3
    assert "<script" not in page and "<img" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "Content-Security-Policy" in page and "http://" not in page.replace(
        'xmlns="http://www.w3.org/2000/svg"', ""
    )
    text = render(result, "table").decode()
    assert "\x1b" not in text and "\\x1b[2J" in text
    assert "\u202e" not in text and "\\u202e" in text  # a bidi override cannot reorder a line


def test_table_lists_every_section(analysis: dict[str, Any]) -> None:
    """The terminal view shows each section under its title."""
    text = render(analysis, "table").decode()
    assert all(section.title in text for section in SECTIONS)
    assert f"{analysis['totals']['events_accepted']:,}" in text


def test_the_command_writes_its_output_file(corpus: Path, tmp_path: Path) -> None:
    """The registered command works in-process: arguments, handler, atomic --out."""
    parser = build_parser()
    out = tmp_path / "out" / "analysis.json"
    args = parser.parse_args(
        [
            "analyze",
            str(corpus),
            "--format",
            "json",
            "--out",
            str(out),
            "--workers",
            "0",
            "--no-progress",
        ]
    )
    assert args.handler(args) == 0
    assert orjson.loads(out.read_bytes())["totals"]["runs"] == 40
    assert [p.name for p in out.parent.iterdir()] == ["analysis.json"]


def test_cli_json_matches_replay(corpus: Path, replayed: tuple[Path, ReplaySummary]) -> None:
    """The real executable prints the JSON analysis (needs the cli.py wiring)."""
    result = run_cli("analyze", corpus, "--format", "json")
    assert result.returncode == 0, result.stderr
    assert orjson.loads(result.stdout)["totals"]["events_accepted"] == replayed[1].tally.accepted


def test_cli_over_a_database_writes_html(
    replayed: tuple[Path, ReplaySummary], tmp_path: Path
) -> None:
    """`--db FILE` with no PATH analyses the database (needs the cli.py wiring)."""
    out = tmp_path / "report.html"
    result = run_cli("analyze", "--db", replayed[0], "--format", "html", "--out", out)
    assert result.returncode == 0, result.stderr
    assert "<svg" in out.read_text() and "Without the logs" in out.read_text()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--since", "soon"), "is not an ISO-8601 time"),
        (("--top", "0"), "--top must be 1 or more"),
        (("PATH", "--db", "x.db"), "not both"),
        (("--db", "missing.db"), "missing.db: no such database"),
    ],
)
def test_cli_usage_errors_exit_2_with_one_line(
    args: tuple[str, ...], message: str, corpus: Path, tmp_path: Path
) -> None:
    """Bad arguments are one line naming the problem, exit 2 (needs the cli.py wiring)."""
    argv = [str(corpus) if a == "PATH" else a for a in args]
    result = run_cli("analyze", *argv, cwd=tmp_path)
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr


def test_csv_cells_from_the_logs_cannot_become_formulas(tmp_path: Path) -> None:
    """Analysts open the CSV in a spreadsheet; a log string must not run there as a formula."""
    log = tmp_path / "formula.jsonl"
    formula = '=HYPERLINK("http://x","y")'
    log.write_bytes(
        b"".join(
            [
                line("task_started", T0, run_id="R", task_id="t", workstream_id=formula),
                line("task_failed", "2026-01-05T10:00:02Z", run_id="R", task_id="t"),
            ]
        )
    )
    cells = [
        cell
        for row in csv.reader(io.StringIO(render(analyse(log), "csv").decode()))
        for cell in row
    ]
    assert "'" + formula in cells
    assert formula not in cells
