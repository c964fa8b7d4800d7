"""`runwatch analyze`: offline statistics over JSONL logs or over an existing projection database.

Over logs, the files are replayed (`replay.replay`: the same decoding, folding and worker
processes as `runwatch replay`, into a scratch database in a temporary directory) with a
`LogObserver` beside the fold that gathers what the tables do not keep; the rest is SQL over
the scratch tables. Over a database (`--db FILE` and no PATH; without either, the config's
database) the same SQL runs, and what only the logs know is listed under `analysis.missing`
instead of being approximated. Times are UTC, durations seconds, percentiles nearest-rank.

- totals: the input tally as replay counts it (events accepted, duplicate = an id seen
  again, rejected, blank lines; always the whole input); runs, tasks, pattern runs, stall
  incidents and clock skew in the window.
- runs_by_day: runs by the UTC day of `created_at` (their first event) and current status;
  success_rate = succeeded / (succeeded + failed + partial + quarantined): canceled and
  unfinished runs are left out.
- durations: `run` (duration_s of ended runs: all, then per status), `task` and `workstream`
  (ended_at − started_at of ended tasks), `phase`, `pattern` and `pattern_tool` (pattern
  runs by the phase they ended in, by pattern id, and, from the logs, by the tool their
  events name in `details.context.tool`: duration_s, else finished_at − started_at), `tool`
  (logs: `payload.duration_ms`, `duration_s` or `duration_seconds` of orchestrator events
  naming a tool in `tool_id` (the event bus's field; null there means none), else `tool`,
  `payload.tool` or `payload.tool_name`: tool_call_completed). Tool calls and pattern runs
  are kept apart: they time different work.
- slowest_tasks: the `--top` ended tasks with the longest ended_at − started_at.
- failing: failure events per scope, the most common normalised message beside each:
  `task` (run + task key), `tool` and `type` (the event type) from the logs; `pattern`
  (failed pattern runs and their error_message, from the table; with the logs also
  counted for the pattern's tool, `details.context.tool`). A failure event is an error event
  of the contract (severity error/critical, or a type ending in `_failed`), a step_completed
  whose payload.status is not succeeded/canceled/skipped, a run_completed with status
  failed, or a pattern event that failed. Each scope lists its `--top` names.
- error_messages: for each name in `failing`, its three most common normalised messages with
  a count and one raw example. Normalising replaces quoted strings, times, paths, UUIDs,
  ULIDs (also prefixed: RUN-01…), hex ids and numbers by <str> <time> <path> <uuid> <id>
  <hex> <n>, so "timeout after 300s" and "timeout after 120s" are one message.
- stall_incidents: from the logs, a stretch of more than stall_after without an event of a
  run that had not ended yet (it starts before the run's ended_at): what the live service
  would have flagged. An open one lasts to the horizon (the latest event time, as replay
  judges stalls): the run is stalled now. From a database: its RUN_STALLED records, resumed
  at the run's next RUN_RECOVERED.
- events_per_hour: distinct accepted events by the UTC hour of their time (logs only).
- dead_letters: rejected lines by reason, with the first one's file and line.
- clock_skew (logs only), per file: `backwards` counts events stamped more than 1 s before
  the previous event of the same run (pattern run; runless events: the file) in that file;
  `future` counts events stamped more than 5 min after the file's modification time. Both
  count every line, duplicates included: skew belongs to the writer, not to the event set.

--since/--until take an ISO-8601 time (naive = UTC), a date (for --until the end of that
day) or a duration back from now on the wall clock (90m, 12h, 7d, 2w); since is inclusive,
until exclusive. Runs are selected by created_at, tasks and pattern runs by started_at,
events, failures, tool calls, skew and stall incidents by their time. The whole input is
always folded, so a run cut by the window keeps its true status.
"""

from __future__ import annotations

import heapq
import tempfile
from collections import Counter, defaultdict
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

import orjson

from runwatch.projections import RUN_TERMINAL, format_time
from runwatch.projections.slo import evaluate, transitions
from runwatch.sinks.analysis import RUN_STATUSES
from runwatch.sinks.reports import PERCENTILES, nearest_rank
from runwatch.sinks.store import Connection, connect
from runwatch.sinks.store import analysis_reads as reads
from runwatch.sinks.store.slo_reads import finished_runs
from runwatch.stream.analysis.observe import (
    ALL_TIME,
    HOUR_US,
    FailureKey,
    FileStats,
    LogObserver,
    Window,
    incident,
    normalise,
)
from runwatch.stream.core.decode import parse_time
from runwatch.stream.services.replay import PARALLEL_CHUNK_BYTES, replay
from runwatch.stream.settings.database import open_existing
from runwatch.stream.settings.service import Settings

MESSAGES_PER_NAME: Final = 3
SUCCESS_DENOMINATOR: Final = ("succeeded", "failed", "partial", "quarantined")
NEEDS_LOGS: Final = {
    "events_per_hour": "event times are in the logs; the tables keep no per-event rows",
    "clock_skew": "the order of lines in each file is in the logs only",
    "durations.tool": "tool calls are events; the tables keep no tool names",
    "failing.task/tool/type": "failure events and their messages are in the logs only",
    "stall_incidents": "partial: only the RUN_STALLED records the database holds (a "
    "replay-built one holds only the stalls still open at its end)",
}
Row = dict[str, Any]


def analyze_logs(
    files: list[Path],
    settings: Settings,
    window: Window = ALL_TIME,
    *,
    top: int = 10,
    workers: int | None = None,
    progress: bool | None = None,
    chunk_bytes: int = PARALLEL_CHUNK_BYTES,
) -> dict[str, Any]:
    """Replay `files` into a scratch database beside a `LogObserver`, then analyse both.
    `workers` and `chunk_bytes` are replay's."""
    observer = LogObserver(window, int(settings.stall_after * 1_000_000))
    with tempfile.TemporaryDirectory(prefix="runwatch-analyze-") as scratch:
        target = Path(scratch) / "analysis.db"
        summary = replay(
            files,
            target,
            settings,
            progress=progress,
            workers=workers,
            chunk_bytes=chunk_bytes,
            observer=observer,
        )
        db = connect(target)
        try:
            analysis = _analyse(db, window, top, settings, observer)
        finally:
            db.close()
    analysis["analysis"].update(files=summary.files, bytes=summary.bytes, lines=summary.lines)
    return analysis


def analyze_database(
    settings: Settings, window: Window = ALL_TIME, *, top: int = 10
) -> dict[str, Any]:
    """The same statistics from an existing database; what needs the logs is listed as missing."""
    store = open_existing(settings)
    try:
        analysis = _analyse(store.db, window, top, settings, None)
        analysis["analysis"]["database"] = str(store.path)
    finally:
        store.close()
    return analysis


def _analyse(
    db: Connection, window: Window, top: int, settings: Settings, observer: LogObserver | None
) -> dict[str, Any]:
    """Every section from the tables, and from the observer when the logs were read."""
    horizon = _horizon(db)
    tasks = _ended_tasks(db, window)
    patterns = _pattern_rows(db, window)
    tools = {} if observer is None else observer.pattern_tools
    failures, examples = _pattern_failures(patterns, tools)
    if observer is not None:
        failures.update(observer.failures)
        examples.update(observer.examples)
    failing, messages = _failing(failures, examples, top)
    incidents = (
        list(observer.incidents(_run_ends(db), horizon or 0))
        if observer
        else _recorded_stalls(db, horizon)
    )
    analysis: dict[str, Any] = {
        "analysis": _about(observer is not None, window, horizon, settings),
        "totals": {},
        "runs_by_day": _runs_by_day(db, window),
        "durations": [
            *_run_durations(db, window),
            *_task_durations(tasks),
            *_pattern_durations(patterns, tools),
            *(_tool_durations(observer.tool_ms) if observer else []),
        ],
        "slowest_tasks": _slowest_tasks(tasks, top),
        "failing": failing,
        "error_messages": messages,
        "stall_incidents": [i for i in incidents if _within(window, i["silent_from"])],
        "events_per_hour": [] if observer is None else _per_hour(observer.hours),
        "dead_letters": _dead_letters(db),
        "clock_skew": [] if observer is None else _skew_rows(observer.files),
        "service_levels": _service_levels(db, window, horizon, settings),
    }
    analysis["totals"] = _totals(db, window, analysis, tasks, patterns, observer)
    return analysis


def _about(
    from_logs: bool, window: Window, horizon: int | None, settings: Settings
) -> dict[str, Any]:
    return {
        "version": 1,
        "source": "logs" if from_logs else "database",
        "files": None,
        "bytes": None,
        "lines": None,
        "database": None,
        "since": format_time(window.since),
        "until": format_time(window.until),
        "horizon": format_time(horizon),
        "stall_after_s": settings.stall_after,
        "percentiles": "nearest-rank",
        "missing": {} if from_logs else dict(NEEDS_LOGS),
    }


def _service_levels(
    db: Connection, window: Window, horizon: int | None, settings: Settings
) -> list[Row]:
    """Each SLO judged at the end of the window (or of the logs), and how often it paged or
    opened a ticket inside the window (SLO_BURN in event time, as a replay records them)."""
    slos = settings.objectives
    if not slos or horizon is None:
        return []
    at = min(window.hi - 1, horizon)
    runs = finished_runs(db)
    burns, _ = transitions(slos, runs, at)
    rows = []
    for figures in evaluate(slos, runs, at):
        mine = [b for b in burns if b.data["slo"] == figures["name"] and b.time >= window.lo]
        rates = figures.pop("burn_rates")
        rows.append(
            {
                **{k: v for k, v in figures.items() if k != "window_s"},
                "slo": figures["name"],
                "at": format_time(at),
                **{f"burn_{w}": rates[w] for w in ("1h", "6h", "1d", "3d")},
                "alert": figures["alert"] or "ok",
                "pages": sum(b.type == "SLO_BURN" and b.data["level"] == "page" for b in mine),
                "tickets": sum(b.type == "SLO_BURN" and b.data["level"] == "ticket" for b in mine),
            }
        )
    return rows


def _horizon(db: Connection) -> int | None:
    """The replay's `now` (greatest event time) when recorded, else the latest run event."""
    recorded = reads.event_time_now(db)
    if recorded is not None and recorded > 0:
        return recorded
    latest = reads.latest_run_event(db)
    return None if latest is None else parse_time(latest)


def _within(window: Window, moment: str | None) -> bool:
    return moment is not None and window.lo <= parse_time(moment) < window.hi


def _runs_by_day(db: Connection, window: Window) -> list[Row]:
    days: dict[str, Counter[str]] = defaultdict(Counter)
    for day, status, count in reads.runs_by_day(db, window.bounds()):
        days[day][status] = count
    rows = []
    for day in sorted(days):
        counts = days[day]
        ended = sum(counts[s] for s in SUCCESS_DENOMINATOR)
        rows.append(
            {
                "day": day,
                "runs": sum(counts.values()),
                **{s: counts[s] for s in RUN_STATUSES},
                "success_rate": round(counts["succeeded"] / ended, 4) if ended else None,
            }
        )
    return rows


def _run_durations(db: Connection, window: Window) -> list[Row]:
    by_status: dict[str, list[float]] = defaultdict(list)
    for status, seconds in reads.run_durations(db, window.bounds()):
        by_status[status].append(round(seconds, 3))
    everything = [s for values in by_status.values() for s in values]
    return [
        _spread("run", "all", everything),
        *(_spread("run", status, by_status[status]) for status in sorted(by_status)),
    ]


TASK_COLUMNS: Final = (*reads.ENDED_TASK_COLUMNS, "duration_s")


def _ended_tasks(db: Connection, window: Window) -> list[tuple[Any, ...]]:
    """Ended tasks that started in the window (TASK_COLUMNS), with their duration."""
    return [(*row, _span_s(row[5], row[6])) for row in reads.ended_tasks(db, window.bounds())]


def _task_durations(tasks: list[tuple[Any, ...]]) -> list[Row]:
    by_workstream: dict[str, list[float]] = defaultdict(list)
    for task in tasks:
        by_workstream[task[2] or "(none)"].append(task[7])
    return [
        _spread("task", "all", [task[7] for task in tasks]),
        *(_spread("workstream", w, by_workstream[w]) for w in sorted(by_workstream)),
    ]


def _slowest_tasks(tasks: list[tuple[Any, ...]], top: int) -> list[Row]:
    slowest = heapq.nsmallest(top, tasks, key=lambda t: (-t[7], t[0], t[1]))
    return [dict(zip(TASK_COLUMNS, task, strict=True)) for task in slowest]


def _pattern_rows(db: Connection, window: Window) -> list[Row]:
    rows = reads.started_pattern_runs(db, window.bounds())
    for row in rows:
        if row["duration_s"] is None:
            row["duration_s"] = _span_s(row["started_at"], row["finished_at"])
    return rows


def _span_s(start: str | None, end: str | None) -> float | None:
    if start is None or end is None:
        return None
    return round((parse_time(end) - parse_time(start)) / 1e6, 3)


def _pattern_durations(patterns: list[Row], tools: Mapping[str, str]) -> list[Row]:
    """Pattern runs by final phase, by pattern id, and by the tool the logs name."""
    rows = []
    for kind, name_of in (
        ("phase", lambda r: r["phase"]),
        ("pattern", lambda r: r["pattern_id"]),
        ("pattern_tool", lambda r: tools.get(r["pattern_run_id"], "")),
    ):
        groups: dict[str, list[float]] = defaultdict(list)
        for row in patterns:
            if row["duration_s"] is not None and (kind != "pattern_tool" or name_of(row)):
                groups[name_of(row) or "(none)"].append(row["duration_s"])
        rows += [_spread(kind, name, groups[name]) for name in sorted(groups)]
    return rows


def _tool_durations(tool_ms: Mapping[str, Mapping[int, int]]) -> list[Row]:
    return [
        _spread("tool", tool, [ms / 1000 for ms in Counter(tool_ms[tool]).elements()])
        for tool in sorted(tool_ms)
        if sum(tool_ms[tool].values()) > 0
    ]


def _spread(kind: str, name: str, values: list[float]) -> Row:
    """count, min, nearest-rank percentiles and max of some durations."""
    ordered = sorted(values)
    return {
        "kind": kind,
        "name": name,
        "count": len(ordered),
        "min": ordered[0] if ordered else None,
        **{f"p{p}": nearest_rank(ordered, p) for p in PERCENTILES},
        "max": ordered[-1] if ordered else None,
    }


def _pattern_failures(
    patterns: list[Row], tools: Mapping[str, str]
) -> tuple[Counter[FailureKey], dict[FailureKey, str]]:
    """Failed pattern runs by pattern id, and by tool when the logs named it, each with the
    error of its earliest-started run as the example."""
    counts: Counter[FailureKey] = Counter()
    examples: dict[FailureKey, str] = {}
    failed = (row for row in patterns if row["status"] == "failed")
    for row in sorted(failed, key=lambda r: (r["started_at"] or "", r["pattern_run_id"])):
        for key in _pattern_keys(row, tools):
            counts[key] += 1
            examples.setdefault(key, row["error_message"] or "")
    return counts, examples


def _pattern_keys(row: Row, tools: Mapping[str, str]) -> list[FailureKey]:
    normal = normalise(row["error_message"] or "")
    keys = [("pattern", row["pattern_id"] or "(none)", "", normal)]
    if (tool := tools.get(row["pattern_run_id"])) is not None:
        keys.append(("tool", tool, "", normal))
    return keys


def _failing(
    failures: Counter[FailureKey], examples: Mapping[FailureKey, str], top: int
) -> tuple[list[Row], list[Row]]:
    """The `top` names of each scope by failures, and their most common messages."""
    names: dict[tuple[str, str, str], Counter[str]] = defaultdict(Counter)
    for (scope, name, run_id, normal), count in failures.items():
        if count > 0:
            names[(scope, name, run_id)][normal] += count
    failing: list[Row] = []
    messages: list[Row] = []
    for scope in ("task", "tool", "pattern", "type"):
        ranked = sorted(
            (key for key in names if key[0] == scope), key=lambda k: (-names[k].total(), k[1], k[2])
        )[:top]
        for key in ranked:
            common = sorted(names[key].items(), key=lambda item: (-item[1], item[0]))
            failing.append(
                {
                    "scope": scope,
                    "name": key[1],
                    "run_id": key[2] or None,
                    "failures": names[key].total(),
                    "messages": len(common),
                    "top_message": common[0][0],
                    "top_count": common[0][1],
                }
            )
            messages += [
                {
                    "scope": scope,
                    "name": key[1],
                    "run_id": key[2] or None,
                    "message": normal,
                    "count": count,
                    "example": examples.get((*key, normal), ""),
                }
                for normal, count in common[:MESSAGES_PER_NAME]
            ]
    return failing, messages


def _run_ends(db: Connection) -> dict[str, tuple[int | None, bool]]:
    return {
        run_id: (None if ended is None else parse_time(ended), status in RUN_TERMINAL)
        for run_id, status, ended in reads.run_ends(db)
    }


def _recorded_stalls(db: Connection, horizon: int | None) -> list[Row]:
    """RUN_STALLED records, each resumed by its run's next RUN_RECOVERED."""
    incidents: list[Row] = []
    open_by_run: dict[str, Row] = {}
    for kind, run_id, data in reads.stall_records(db):
        quiet_from = orjson.loads(data).get("last_event_at")
        if kind == "RUN_STALLED" and run_id not in open_by_run and quiet_from:
            open_by_run[run_id] = incident(
                run_id, parse_time(quiet_from), None, horizon or parse_time(quiet_from)
            )
            incidents.append(open_by_run[run_id])
        elif kind == "RUN_RECOVERED" and (stalled := open_by_run.pop(run_id, None)) and quiet_from:
            stalled.update(
                incident(
                    run_id,
                    parse_time(stalled["silent_from"]),
                    parse_time(quiet_from),
                    parse_time(quiet_from),
                )
            )
    return sorted(incidents, key=lambda i: (i["run_id"], i["silent_from"]))


def _per_hour(hours: Mapping[int, int]) -> list[Row]:
    return [
        {"hour": (format_time(hour * HOUR_US) or "")[:13] + ":00Z", "events": count}
        for hour, count in sorted(hours.items())
        if count > 0
    ]


def _dead_letters(db: Connection) -> list[Row]:
    """Rejected lines by reason, each with its first place (by file, then offset)."""
    return [
        {"reason": reason, "count": count, "first": f"{source}:{line}"}
        for reason, count, source, line in reads.dead_letter_reasons(db)
    ]


def _skew_rows(files: Mapping[str, FileStats]) -> list[Row]:
    return [
        {
            "source": source,
            "backwards": file.backwards,
            "future": file.future,
            "worst_backwards_s": round(file.worst_us / 1e6, 3),
        }
        for source, file in sorted(files.items())
        if file.backwards or file.future
    ]


def _totals(
    db: Connection,
    window: Window,
    analysis: Mapping[str, Any],
    tasks: list[tuple[Any, ...]],
    patterns: list[Row],
    observer: LogObserver | None,
) -> dict[str, Any]:
    counters = reads.counters(db)
    days = analysis["runs_by_day"]
    by_status = {s: sum(d[s] for d in days) for s in RUN_STATUSES}
    ended = sum(by_status[s] for s in SUCCESS_DENOMINATOR)
    stalled = reads.stalled_runs(db, window.bounds())
    totals: dict[str, Any] = {
        "events_accepted": counters.get("events_accepted", 0),
        "events_duplicate": counters.get("events_duplicate", 0),
        "events_rejected": sum(v for k, v in counters.items() if k.startswith("rejected.")),
        "lines_blank": counters.get("lines_blank", 0),
        "runs": sum(by_status.values()),
        **{f"runs_{s}": n for s, n in by_status.items()},
        "runs_stalled": stalled,
        "success_rate": round(by_status["succeeded"] / ended, 4) if ended else None,
        "tasks_ended": len(tasks),
        "tasks_failed": sum(t[3] == "failed" for t in tasks),
        "pattern_runs": len(patterns),
        "pattern_runs_failed": sum(p["status"] == "failed" for p in patterns),
        "stall_incidents": len(analysis["stall_incidents"]),
    }
    if observer is not None:
        totals["events_in_window"] = sum(row["events"] for row in analysis["events_per_hour"])
        totals["clock_skew_backwards"] = sum(f.backwards for f in observer.files.values())
        totals["clock_skew_future"] = sum(f.future for f in observer.files.values())
    return totals
