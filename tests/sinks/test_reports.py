"""Run reports built from a real projection: contents, determinism, atomic writes, hostile input."""

from __future__ import annotations

import os
import sqlite3
import stat
from datetime import datetime
from html.parser import HTMLParser
from itertools import pairwise
from pathlib import Path
from typing import Any

import orjson
import pytest

from helpers import replay_into
from runwatch.projections import ORCHESTRATOR, format_time
from runwatch.sinks.reports import build_index, build_run_reports, nearest_rank, write_reports
from runwatch.stream.core.decode import decode
from runwatch.stream.devtools.writer import simulate

HOSTILE_RUN = "../../etc/x"
HOSTILE_TASK = '"><svg onload=alert(2)>'
HOSTILE_ERROR = "<script>document.title='pwned'</script><img src=x onerror=alert(1)>"
SIMULATED_ERRORS = {
    "tool exited with status 1",
    "timeout after 300s",
    "patch did not apply cleanly",
    "tests failed: 3 of 42",
    "worker lost heartbeat",
}


# -- the adapter: projection rows + decoded log lines → build_run_reports arguments ----------


def load_inputs(db: Path, events_dir: Path, run_id: str) -> dict[str, Any]:
    """The rows of one run from the database and its accepted orchestrator events, decoded
    from the JSONL files (deduplicated by id, sorted by time then id)."""
    connection = sqlite3.connect(db)
    connection.row_factory = sqlite3.Row
    try:

        def rows(table: str) -> list[dict[str, Any]]:
            query = f"SELECT * FROM {table} WHERE run_id = ?"
            return [dict(r) for r in connection.execute(query, (run_id,))]

        (run,) = rows("runs")
        tables = {name: rows(name) for name in ("tasks", "workstreams", "pattern_runs")}
    finally:
        connection.close()
    events = {}
    for path in sorted(events_dir.rglob("*.jsonl")):
        for line in path.read_bytes().splitlines():
            event = decode(line)
            if getattr(event, "family", None) == ORCHESTRATOR and event.run_id == run_id:
                events.setdefault(event.id, event)
    ordered = sorted(events.values(), key=lambda e: (e.time, e.id))
    return {
        "run": run,
        **tables,
        "events": [
            {
                "id": e.id,
                "type": e.type,
                "time": format_time(e.time),
                "severity": e.severity,
                "task_id": e.task,
                "workstream_id": e.workstream,
                "payload": e.payload,
            }
            for e in ordered
        ],
    }


def run_ids(db: Path) -> list[str]:
    connection = sqlite3.connect(db)
    try:
        return [r for (r,) in connection.execute("SELECT run_id FROM runs ORDER BY run_id")]
    finally:
        connection.close()


def run_rows(db: Path) -> list[dict[str, Any]]:
    connection = sqlite3.connect(db)
    connection.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in connection.execute("SELECT * FROM runs")]
    finally:
        connection.close()


class Elements(HTMLParser):
    """Every start tag of a page with its attributes, plus the document title's text."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.title: str | None = None
        self._in_title = False
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        self._in_title = tag == "title" and self.title is None  # the page's, not an SVG's
        if self._in_title:
            self.title = ""

    def handle_endtag(self, tag: str) -> None:
        self._in_title = False

    def handle_data(self, data: str) -> None:
        if self._in_title and self.title is not None:
            self.title += data

    def named(self, tag: str) -> list[dict[str, str | None]]:
        return [attrs for name, attrs in self.tags if name == tag]

    def bars(self, key: str = "data-task") -> list[str | None]:
        return [
            a.get(key)
            for a in self.named("rect")
            if "bar" in (a.get("class") or "").split() and key in a
        ]


def hostile_lines() -> list[dict[str, Any]]:
    """A run whose id, task id and error text try to escape their file and their markup."""
    base = {"run_id": HOSTILE_RUN, "severity": "info", "workstream_id": "WS-<b>x</b>"}
    return [
        {
            **base,
            "event_type": "run_created",
            "timestamp": "2026-02-01T10:00:00Z",
            "payload": {"total_tasks": 2},
        },
        {
            **base,
            "event_type": "task_started",
            "timestamp": "2026-02-01T10:00:01Z",
            "task_id": "T1",
        },
        {
            **base,
            "event_type": "task_failed",
            "timestamp": "2026-02-01T10:00:05Z",
            "task_id": "T1",
            "severity": "error",
            "payload": {"error": HOSTILE_ERROR},
        },
        {
            **base,
            "event_type": "task_started",
            "timestamp": "2026-02-01T10:00:02Z",
            "task_id": HOSTILE_TASK,
        },
    ]


NEVER = 1000 * 365 * 86_400.0


def make_corpus(root: Path) -> Path:
    """Simulated runs (failures, stalls, cancels, pattern runs) plus the hostile run,
    replayed into a real projection database."""
    simulate(root / "events", runs=8, seed=2, fail_rate=0.5, stall_rate=0.3)
    (root / "events" / "hostile.jsonl").write_bytes(
        b"".join(orjson.dumps(line) + b"\n" for line in hostile_lines())
    )
    # The corpus spans years (the hostile run): keep its quiet runs stalled, not abandoned.
    replay_into(root / "db.sqlite", root / "events", forget_after=NEVER)
    return root


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One projection for the module: simulating and replaying it is the slow part."""
    return make_corpus(tmp_path_factory.mktemp("corpus"))


def reports_for(corpus: Path, run_id: str) -> dict[str, bytes]:
    return build_run_reports(**load_inputs(corpus / "db.sqlite", corpus / "events", run_id))


def report_json(corpus: Path, run_id: str, kind: str) -> Any:
    files = reports_for(corpus, run_id)
    return orjson.loads(next(data for name, data in files.items() if name.endswith(kind)))


def seconds(start: str, end: str) -> float:
    return round((datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds(), 3)


# -- contents -----------------------------------------------------------------------------


def test_corpus_covers_the_interesting_cases(corpus: Path) -> None:
    """The checks below only mean something if the projection has every kind of run."""
    runs = run_rows(corpus / "db.sqlite")
    statuses = {r["status"] for r in runs}
    assert {"failed", "running", "pending", "succeeded", "canceled"} <= statuses
    assert any(r["tasks_pending"] for r in runs) and any(r["stalled"] for r in runs)
    assert any(report_json(corpus, r["run_id"], "_summary.json")["pattern_runs"] for r in runs)


def test_summary_counts_match_the_projection(corpus: Path) -> None:
    """The summary must agree with the database a user can query, run by run."""
    for run_id in run_ids(corpus / "db.sqlite"):
        inputs = load_inputs(corpus / "db.sqlite", corpus / "events", run_id)
        run, summary = inputs["run"], report_json(corpus, run_id, "_summary.json")
        tasks = summary["counts"]["tasks"]
        assert {k: tasks[k] for k in tasks if k != "total"} == {
            s: run[f"tasks_{s}"]
            for s in ("succeeded", "failed", "running", "pending", "skipped", "canceled")
        }
        assert tasks["total"] == run["tasks_total"]
        assert summary["counts"]["events"] == run["events_total"] == len(inputs["events"])
        assert sum(summary["errors"]["error_events_by_type"].values()) == run["error_events"]
        assert (summary["run_id"], summary["status"], summary["timings"]["ended_at"]) == (
            run["run_id"],
            run["status"],
            run["ended_at"],
        )
        assert [w["workstream_id"] for w in summary["workstreams"]] == sorted(
            w["workstream_id"] for w in inputs["workstreams"]
        )
        assert {p["pattern_run_id"] for p in summary["pattern_runs"]} == {
            p["pattern_run_id"] for p in inputs["pattern_runs"]
        }


def test_failed_tasks_carry_their_error_and_attempts(corpus: Path) -> None:
    """Why a run failed is the first thing a reader of its report looks for."""
    seen = 0
    for run_id in run_ids(corpus / "db.sqlite"):
        tasks = load_inputs(corpus / "db.sqlite", corpus / "events", run_id)["tasks"]
        failed = report_json(corpus, run_id, "_summary.json")["errors"]["failed_tasks"]
        expected = sorted((t["task_id"], t["attempts"]) for t in tasks if t["status"] == "failed")
        assert [(f["task_id"], f["attempts"]) for f in failed] == expected
        simulated = run_id != HOSTILE_RUN
        assert all(
            f["error"] in (SIMULATED_ERRORS if simulated else {HOSTILE_ERROR}) for f in failed
        )
        seen += len(failed)
    assert seen > 2


def test_metrics_durations_and_event_counts_match_rows(corpus: Path) -> None:
    """Per-task durations are the projection's start/end times, to the millisecond."""
    for run_id in run_ids(corpus / "db.sqlite"):
        inputs = load_inputs(corpus / "db.sqlite", corpus / "events", run_id)
        metrics = report_json(corpus, run_id, "_metrics.json")
        durations = {i["task_id"]: i["duration_s"] for i in metrics["task_durations"]["items"]}
        assert durations == {
            t["task_id"]: seconds(t["started_at"], t["ended_at"])
            if t["started_at"] and t["ended_at"]
            else None
            for t in inputs["tasks"]
        }
        assert sum(metrics["events_by_type"].values()) == inputs["run"]["events_total"]
        assert metrics["error_events"]["count"] == inputs["run"]["error_events"]
        assert len(metrics["error_events"]["events"]) == inputs["run"]["error_events"]
        assert metrics["percentile_method"] == "nearest-rank"


@pytest.mark.parametrize(
    ("values", "percent", "expected"),
    [
        ([], 50, None),
        ([7.0], 99, 7.0),
        ([4.0, 1.0, 3.0, 2.0], 50, 2.0),
        ([4.0, 1.0, 3.0, 2.0], 90, 4.0),
        ([float(v) for v in range(1, 11)], 90, 9.0),
        ([float(v) for v in range(1, 101)], 99, 99.0),
    ],
)
def test_nearest_rank_known_answers(
    values: list[float], percent: int, expected: float | None
) -> None:
    """Nearest rank returns an observed value at rank ⌈p·n/100⌉, never an interpolation."""
    assert nearest_rank(values, percent) == expected


def test_percentiles_of_hand_made_tasks() -> None:
    """Ten tasks of 1..10 s give p50 = 5, p90 = 9, p99 = 10 (nearest rank), open ones excluded."""
    run = {
        "run_id": "R",
        "status": "running",
        "stalled": 0,
        "created_at": "2026-01-01T00:00:00Z",
        "started_at": "2026-01-01T00:00:00Z",
        "ended_at": None,
        "duration_s": None,
        "last_event_at": "2026-01-01T00:01:00Z",
        "tasks_total": 11,
        "events_total": 0,
        "error_events": 0,
    }
    tasks = [
        {
            "task_id": f"T{n:02d}",
            "workstream_id": None,
            "status": "succeeded",
            "attempts": 1,
            "started_at": "2026-01-01T00:00:00.000000Z",
            "ended_at": f"2026-01-01T00:00:{n:02d}.000000Z",
        }
        for n in range(1, 11)
    ]
    tasks.append(
        {
            "task_id": "T11",
            "workstream_id": None,
            "status": "running",
            "attempts": 1,
            "started_at": "2026-01-01T00:00:30.000000Z",
            "ended_at": None,
        }
    )
    files = build_run_reports(run, tasks, [], [], [])
    stats = orjson.loads(files["R_metrics.json"])["task_durations"]
    assert {k: stats[k] for k in ("count", "min", "max", "p50", "p90", "p99")} == {
        "count": 10,
        "min": 1.0,
        "max": 10.0,
        "p50": 5.0,
        "p90": 9.0,
        "p99": 10.0,
    }
    assert Elements(files["R.html"].decode()).bars() == [f"T{n:02d}" for n in range(1, 12)]


def test_regeneration_is_byte_identical(corpus: Path, tmp_path: Path) -> None:
    """Reports carry no wall clock or unstable order: a rebuilt projection gives the same bytes."""
    rebuilt = tmp_path / "db.sqlite"
    replay_into(rebuilt, corpus / "events", forget_after=NEVER)
    for run_id in run_ids(corpus / "db.sqlite"):
        inputs = load_inputs(corpus / "db.sqlite", corpus / "events", run_id)
        again = load_inputs(rebuilt, corpus / "events", run_id)
        shuffled = {
            k: v[::-1] if k in ("tasks", "workstreams", "pattern_runs") else v
            for k, v in again.items()
        }
        assert build_run_reports(**inputs) == build_run_reports(**shuffled)
    assert build_index(run_rows(corpus / "db.sqlite")) == build_index(run_rows(rebuilt)[::-1])


# -- HTML ---------------------------------------------------------------------------------


def bars_per_attempt(tasks: list[dict[str, Any]]) -> list[str]:
    """What the timeline must draw: a bar per attempt (start event), and a marker for a task
    that never started."""
    return sorted(t["task_id"] for t in tasks for _ in range(max(t["attempts"], 1)))


def test_html_has_one_bar_per_attempt(corpus: Path) -> None:
    """Every task shows on the timeline, each attempt its own bar, pending and running too;
    a retried task shows the wait between its attempts."""
    retried = 0
    for run_id in run_ids(corpus / "db.sqlite"):
        inputs = load_inputs(corpus / "db.sqlite", corpus / "events", run_id)
        html = next(d for n, d in build_run_reports(**inputs).items() if n.endswith(".html"))
        page = Elements(html.decode())
        assert sorted(map(str, page.bars())) == bars_per_attempt(inputs["tasks"])
        assert len(page.named("line")) >= sum(t["attempts"] > 1 for t in inputs["tasks"])
        retried += sum(t["attempts"] > 1 for t in inputs["tasks"])
        assert sorted(map(str, page.bars("data-pattern-run"))) == sorted(
            p["pattern_run_id"] for p in inputs["pattern_runs"]
        )
        assert not page.named("script") and not page.named("link") and not page.named("img")
    assert retried, "the corpus must hold a retried task for this test to mean something"


def test_html_escapes_every_log_string(corpus: Path) -> None:
    """Run ids, task ids and error texts come from logs: they must never become markup."""
    html = next(d for n, d in reports_for(corpus, HOSTILE_RUN).items() if n.endswith(".html"))
    text = html.decode()
    page = Elements(text)
    assert "<script" not in text and "<img" not in text and "<svg onload" not in text
    assert "&lt;script&gt;document.title=&#x27;pwned&#x27;&lt;/script&gt;" in text
    assert "WS-&lt;b&gt;x&lt;/b&gt;" in text
    assert sorted(map(str, page.bars())) == sorted([HOSTILE_TASK, "T1"])
    assert page.title == f"Run {HOSTILE_RUN}"


# -- writing ------------------------------------------------------------------------------


def test_write_reports_skips_identical_files(corpus: Path, tmp_path: Path) -> None:
    """Regenerating unchanged reports must not touch them (no churn for watchers or rsync)."""
    run_id = run_ids(corpus / "db.sqlite")[0]
    files = reports_for(corpus, run_id)
    out = tmp_path / "reports"
    assert sorted(p.name for p in write_reports(out, files)) == sorted(files)
    stamps = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    assert write_reports(out, files) == []
    changed = dict(files)
    name = next(n for n in files if n.endswith(".html"))
    changed[name] = files[name] + b"<!-- changed -->\n"
    assert write_reports(out, changed) == [out / name]
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.name != name} == {
        n: s for n, s in stamps.items() if n != name
    }
    assert sorted(os.listdir(out)) == sorted(files)


def test_write_reports_replaces_atomically(tmp_path: Path) -> None:
    """A reader holding the old file keeps the whole old file; the name shows the new one."""
    out = tmp_path / "reports"
    write_reports(out, {"a.html": b"old contents\n"})
    with (out / "a.html").open("rb") as reader:
        write_reports(out, {"a.html": b"new contents\n"})
        assert reader.read() == b"old contents\n"
    assert (out / "a.html").read_bytes() == b"new contents\n"
    assert os.listdir(out) == ["a.html"]


def test_failed_write_leaves_no_temp_file(tmp_path: Path) -> None:
    """A write that cannot complete must leave neither a torn file nor a temp file behind."""
    out = tmp_path / "reports"
    (out / "run.html").mkdir(parents=True)
    with pytest.raises(OSError):
        write_reports(out, {"run.html": b"x"})
    assert os.listdir(out) == ["run.html"] and (out / "run.html").is_dir()


@pytest.mark.parametrize("name", ["../x.html", "a/b.html", ".hidden", "..", "", "/etc/passwd"])
def test_write_reports_refuses_paths(tmp_path: Path, name: str) -> None:
    """A name that is not a plain file name could write outside the reports folder."""
    with pytest.raises(ValueError, match="plain file name"):
        write_reports(tmp_path / "reports", {name: b"x"})
    assert list(tmp_path.iterdir()) == []


def test_hostile_run_id_lands_inside_the_directory(corpus: Path, tmp_path: Path) -> None:
    """A run id such as ../../etc/x names files inside reports/, never elsewhere."""
    out = tmp_path / "a" / "b" / "reports"
    written = write_reports(out, reports_for(corpus, HOSTILE_RUN))
    assert len(written) == 3 and all(p.parent == out for p in written)
    assert sorted(
        p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file()
    ) == sorted(f"a/b/reports/{p.name}" for p in written)
    summary = orjson.loads(
        next(p for p in written if p.name.endswith("_summary.json")).read_bytes()
    )
    assert summary["run_id"] == HOSTILE_RUN


# -- index --------------------------------------------------------------------------------


def test_index_lists_runs_newest_first_with_working_links(corpus: Path, tmp_path: Path) -> None:
    """The index is the way in: newest runs on top, each link opening that run's page."""
    db = corpus / "db.sqlite"
    runs = run_rows(db)
    out = tmp_path / "reports"
    for run_id in run_ids(db):
        write_reports(out, reports_for(corpus, run_id))
    write_reports(out, {"index.html": build_index(runs)})
    links = [str(a["href"]) for a in Elements((out / "index.html").read_text()).named("a")]
    assert len(links) == len(runs) and all((out / link).is_file() for link in links)
    by_title = {f"Run {r['run_id']}": r for r in runs}
    listed = [by_title[str(Elements((out / link).read_text()).title)] for link in links]
    keys = [(r["last_event_at"], r["run_id"]) for r in listed]
    assert all(a[0] > b[0] or (a[0] == b[0] and a[1] < b[1]) for a, b in pairwise(keys))


def test_index_breaks_ties_by_run_id() -> None:
    """Runs that ended at the same instant keep a stable order: run_id ascending."""
    row = {
        "status": "succeeded",
        "stalled": 0,
        "tasks_total": 1,
        "tasks_failed": 0,
        "duration_s": 1.0,
    }
    runs = [
        {**row, "run_id": rid, "last_event_at": when}
        for rid, when in [
            ("b", "2026-01-01T00:00:00Z"),
            ("a", "2026-01-01T00:00:00Z"),
            ("c", "2026-01-02T00:00:00Z"),
            ("d", None),
        ]
    ]
    links = [a["href"] for a in Elements(build_index(runs).decode()).named("a")]
    assert links == ["./c.html", "./a.html", "./b.html", "./d.html"]


# -- names, modes, hostile values -----------------------------------------------------------


def hand_made_run(run_id: str, *, failed_with: Any = None) -> dict[str, bytes]:
    """One run's reports; with `failed_with`, task T1 failed with that payload error."""
    run = {
        "run_id": run_id,
        "status": "failed" if failed_with is not None else "succeeded",
        "stalled": 0,
        "created_at": "2026-01-01T00:00:00Z",
        "started_at": "2026-01-01T00:00:00Z",
        "ended_at": "2026-01-01T00:01:00Z",
        "duration_s": 60.0,
        "last_event_at": "2026-01-01T00:01:00Z",
        "tasks_total": 1,
        "events_total": 1,
        "error_events": 1,
    }
    task = {
        "task_id": "T1",
        "workstream_id": None,
        "status": "failed" if failed_with is not None else "succeeded",
        "attempts": 1,
        "started_at": "2026-01-01T00:00:00Z",
        "ended_at": "2026-01-01T00:01:00Z",
    }
    event = {
        "id": "e1",
        "type": "task_failed",
        "time": "2026-01-01T00:01:00.000000Z",
        "severity": "error",
        "task_id": "T1",
        "workstream_id": None,
        "payload": {"error": failed_with},
    }
    return build_run_reports(run, [task], [], [], [event] if failed_with is not None else [])


def index_row(run_id: str) -> dict[str, Any]:
    return {
        "run_id": run_id,
        "status": "succeeded",
        "stalled": 0,
        "tasks_total": 1,
        "tasks_failed": 0,
        "last_event_at": "2026-01-01T00:01:00Z",
        "duration_s": 60.0,
    }


def test_a_run_named_index_never_replaces_the_index(tmp_path: Path) -> None:
    """Run ids come from the logs: `index` (in any case) gets files of its own, and the index
    page stays the index and links to them."""
    out = tmp_path / "reports"
    names = ("index", "INDEX", "Index")
    files = {name: file for run_id in names for name, file in hand_made_run(run_id).items()}
    assert len(files) == 3 * len(names) and "index.html" not in files
    write_reports(out, files)
    write_reports(out, {"index.html": build_index([index_row(run_id) for run_id in names])})
    for name in files:  # a run's report written after the index leaves the index alone
        write_reports(out, {name: files[name]})
    index = Elements((out / "index.html").read_text())
    assert index.title == "runwatch runs"
    titles = {str(Elements((out / str(a["href"])).read_text()).title) for a in index.named("a")}
    assert titles == {f"Run {run_id}" for run_id in names}


def test_a_deeply_nested_error_is_shown_bounded() -> None:
    """An error value nested deeper than the JSON encoder goes (255) still gives reports:
    the text shows the outer levels and marks where it was cut."""
    deep: Any = "bottom"
    for _ in range(300):
        deep = [deep]
    files = hand_made_run("R", failed_with=deep)
    [failed] = orjson.loads(files["R_summary.json"])["errors"]["failed_tasks"]
    assert failed["error"] == "[" * 32 + '"…"' + "]" * 32
    [event] = orjson.loads(files["R_metrics.json"])["error_events"]["events"]
    assert event["message"] == failed["error"]
    assert "[[[[" in files["R.html"].decode()
    shallow = hand_made_run("S", failed_with={"code": [1, 2]})
    [failed] = orjson.loads(shallow["S_summary.json"])["errors"]["failed_tasks"]
    assert failed["error"] == '{"code":[1,2]}'


def test_reports_are_not_world_readable(tmp_path: Path) -> None:
    """Reports quote pipeline errors: owner and group may read them, other users may not."""
    previous = os.umask(0)
    try:
        written = write_reports(tmp_path / "reports", hand_made_run("R"))
    finally:
        os.umask(previous)
    assert {stat.S_IMODE(path.stat().st_mode) for path in written} == {0o640}
