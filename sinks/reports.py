"""Run reports: `<stem>_summary.json`, `<stem>_metrics.json` and `<stem>.html` per run, plus an
`index.html` of all runs, where stem = `safe_filename(run_id)` (never `index`, whatever the
run id). Files are written with FILE_MODE (0o640).

Delivery contract: the builders are pure (rows and events in, bytes out, no clock), so the
same inputs always give the same bytes and regenerating a report is harmless. `write_reports`
replaces each file atomically and leaves files whose bytes are already right untouched.
Every string that came from the logs is HTML-escaped; the pages load nothing from outside.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from html import escape
from pathlib import Path
from typing import Any, Final, NamedTuple

import orjson
from pydantic import BaseModel, ConfigDict, Field

from runwatch.projections import to_micros
from runwatch.sinks.atomic import write_atomically
from runwatch.sinks.naming import safe_filename
from runwatch.sinks.timeline import (
    axis_label,
    build_timeline,
    human_duration,
    human_time,
    timeline_svg,
)

Row = Mapping[str, Any]

TASK_STATUSES: Final = ("succeeded", "failed", "running", "pending", "skipped", "canceled")
ERROR_FIELDS: Final = ("error_message", "error", "message", "reason")
"""Payload fields that hold an error text, most specific first."""
PERCENTILES: Final = (50, 90, 99)
_COLOURS: Final = {
    "succeeded": "#2e9e55",
    "failed": "#d64545",
    "running": "#3b7dd8",
    "pending": "#9aa3ad",
    "skipped": "#c5cbd3",
    "canceled": "#e08a2c",
    "partial": "#d9a400",
    "warning": "#d9a400",
    "quarantined": "#8e5bd0",
    "other": "#5f6b7a",
}
_JSON: Final = orjson.OPT_SORT_KEYS | orjson.OPT_INDENT_2
_MAX_MESSAGE: Final = 2000
_MAX_DEPTH: Final = 32
_LABEL_W, _PLOT_W, _ROW_H, _TOP = 250, 700, 18, 26
_CSS: Final = (
    "body{font:14px system-ui,sans-serif;margin:24px;color:#1d232b}"
    "table{border-collapse:collapse;margin:8px 0}td,th{border:1px solid #d5dae0;padding:3px 8px;"
    "text-align:left;vertical-align:top}th{background:#f1f3f5}.num{text-align:right}"
    ".badge{color:#fff;border-radius:3px;padding:1px 6px}svg text{font-size:11px;fill:#1d232b}"
    ".axis line{stroke:#d5dae0}.bar.open{opacity:.6}.legend span{margin-right:10px}"
    ".msg{white-space:pre-wrap;font-family:monospace}.lane{font-weight:600;fill:#5f6b7a}"
    ".wait{stroke:#5f6b7a;stroke-width:1.5;stroke-dasharray:3 3}"
    + "".join(f".s-{k}{{fill:{c};background:{c}}}" for k, c in _COLOURS.items())
)
_CSP: Final = "default-src 'none'; style-src 'unsafe-inline'"


FILE_MODE: Final = 0o640
"""Reports quote error texts from the pipeline: readable by the owner and its group (say, a
web server's), never by every local user."""


class ReportsConfig(BaseModel):
    """Where reports land; frozen so a sink's settings cannot drift after start-up."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    directory: Path = Path("reports")
    index_limit: int = Field(default=1000, ge=1)
    """index.html lists this many runs, the newest; the others are only counted."""


class _Html(str):
    """Markup built here from escaped parts, so table cells do not escape it twice."""


class _Bar(NamedTuple):
    key: str
    status: str
    start: int
    end: int
    is_open: bool
    title: str


def build_run_reports(
    run: Row,
    tasks: Sequence[Row],
    workstreams: Sequence[Row],
    pattern_runs: Sequence[Row],
    events: Sequence[Row],
) -> dict[str, bytes]:
    """The three report files of one run, keyed by file name; same inputs, same bytes."""
    stem = safe_filename(run["run_id"])
    tasks = sorted(
        tasks, key=lambda t: (t["started_at"] is None, t["started_at"] or "", t["task_id"])
    )
    workstreams = sorted(workstreams, key=lambda w: w["workstream_id"])
    pattern_runs = sorted(pattern_runs, key=lambda p: (p["started_at"] or "", p["pattern_run_id"]))
    failed = failed_tasks(tasks, events)
    summary = _summary(run, tasks, workstreams, pattern_runs, events, failed)
    return {
        f"{stem}_summary.json": orjson.dumps(summary, option=_JSON) + b"\n",
        f"{stem}_metrics.json": orjson.dumps(
            _metrics(run, tasks, pattern_runs, events), option=_JSON
        )
        + b"\n",
        f"{stem}.html": _page(run, tasks, workstreams, pattern_runs, events, failed),
    }


def nearest_rank(values: Sequence[float], percent: int) -> float | None:
    """Nearest-rank percentile: the smallest value with at least `percent`% of the values at
    or below it (rank ⌈percent/100 · n⌉ of the sorted values); None for no values. Always
    one of the inputs, so it never invents a duration that did not happen."""
    if not values:
        return None
    rank = -(-percent * len(values) // 100)
    return sorted(values)[max(rank, 1) - 1]


def build_index(runs: Iterable[Row], counts: Mapping[str, int] | None = None) -> bytes:
    """`index.html`: the given runs, newest first (last_event_at, then run_id), each linked
    to its page. With `counts` (runs by status, all of them), the page says how many runs
    there are and how many it leaves out, so it stays small however many runs there are."""
    ordered = sorted(
        sorted(runs, key=lambda r: r["run_id"]),
        key=lambda r: r["last_event_at"] or "",
        reverse=True,
    )
    rows = [
        (
            _Html(f'<a href="./{_e(safe_filename(r["run_id"]))}.html">{_e(r["run_id"])}</a>'),
            _badge(r["status"]),
            "yes" if r["stalled"] else "",
            r["tasks_total"],
            r["tasks_failed"],
            human_time(r["last_event_at"]),
            human_duration(r["duration_s"]),
        )
        for r in ordered
    ]
    body = _table(("run", "status", "stalled", "tasks", "failed", "last event", "duration"), rows)
    total = len(rows) if counts is None else sum(counts.values())
    summary = ""
    if counts is not None:
        by_status = ", ".join(f"{_e(k)}: {n}" for k, n in sorted(counts.items()))
        shown = f"the newest {len(rows)} shown, " if total > len(rows) else ""
        summary = f"<p>{shown}by status: {by_status or 'none'}</p>\n"
    return (
        _head("runwatch runs") + f"<h1>Runs ({total})</h1>\n{summary}{body}</body></html>\n"
    ).encode()


def write_reports(directory: Path, files: Mapping[str, bytes]) -> list[Path]:
    """Write each file atomically inside `directory` (never elsewhere) unless its bytes are
    already there; returns the paths actually written."""
    for name in files:
        if not name or name != Path(name).name or name.startswith(".") or "\\" in name:
            raise ValueError(f"report name {name!r} is not a plain file name")
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name in sorted(files):
        target = directory / name
        if not (target.is_file() and target.read_bytes() == files[name]):
            write_atomically(target, files[name], mode=FILE_MODE)
            written.append(target)
    return written


# -- contents --------------------------------------------------------------------------


def _summary(
    run: Row,
    tasks: Sequence[Row],
    workstreams: Sequence[Row],
    pattern_runs: Sequence[Row],
    events: Sequence[Row],
    failed: list[dict[str, Any]],
) -> dict[str, Any]:
    """The run at a glance; counts come from the rows, error texts from the events."""
    by_status = Counter(t["status"] for t in tasks)
    errors = [e for e in events if _is_error(e)]
    return {
        "run_id": run["run_id"],
        "status": run["status"],
        "stalled": bool(run["stalled"]),
        "counts": {
            "tasks": {
                "total": run["tasks_total"],
                **{s: by_status.get(s, 0) for s in TASK_STATUSES},
            },
            "events": run["events_total"],
            "error_events": run["error_events"],
        },
        "timings": {
            **{k: run[k] for k in ("created_at", "started_at", "ended_at", "last_event_at")},
            "duration_s": _ms(run["duration_s"]),
        },
        "errors": {
            "failed_tasks": failed,
            "error_events_by_type": dict(Counter(e["type"] for e in errors)),
            "error_events_by_severity": dict(Counter(e["severity"] for e in errors)),
        },
        "workstreams": [{k: v for k, v in w.items() if k != "run_id"} for w in workstreams],
        "pattern_runs": [dict(p) | {"duration_s": _pattern_s(p)} for p in pattern_runs],
    }


def _metrics(
    run: Row, tasks: Sequence[Row], pattern_runs: Sequence[Row], events: Sequence[Row]
) -> dict[str, Any]:
    """Durations (seconds, to the millisecond) with nearest-rank percentiles; event counts."""
    task_items = [
        {
            "task_id": t["task_id"],
            "status": t["status"],
            "duration_s": _span_s(t["started_at"], t["ended_at"]),
        }
        for t in tasks
    ]
    pattern_items = [
        {
            "pattern_run_id": p["pattern_run_id"],
            "pattern_id": p["pattern_id"],
            "status": p["status"],
            "duration_s": _pattern_s(p),
        }
        for p in pattern_runs
    ]
    errors = [
        {
            "id": e["id"],
            "type": e["type"],
            "time": e["time"],
            "severity": e["severity"],
            "task_id": e["task_id"],
            "message": _message(e["payload"]),
        }
        for e in events
        if _is_error(e)
    ]
    return {
        "run_id": run["run_id"],
        "percentile_method": "nearest-rank",
        "task_durations": _stats(task_items),
        "pattern_run_durations": _stats(pattern_items),
        "events_total": len(events),
        "events_by_type": dict(Counter(e["type"] for e in events)),
        "events_by_severity": dict(Counter(e["severity"] for e in events)),
        "error_events": {"count": len(errors), "events": errors},
    }


def _stats(items: list[dict[str, Any]]) -> dict[str, Any]:
    values = [i["duration_s"] for i in items if i["duration_s"] is not None]
    percentiles = {f"p{p}": nearest_rank(values, p) for p in PERCENTILES}
    return {
        "count": len(values),
        "min": min(values, default=None),
        "max": max(values, default=None),
        **percentiles,
        "items": items,
    }


def failed_tasks(tasks: Sequence[Row], events: Sequence[Row]) -> list[dict[str, Any]]:
    """Failed tasks with the text of their latest error event that carries one."""
    texts = {
        e["task_id"]: text
        for e in events
        if e["task_id"] is not None
        and _is_error(e)
        and (text := _message(e["payload"])) is not None
    }
    return [
        {
            "task_id": t["task_id"],
            "workstream_id": t["workstream_id"],
            "attempts": t["attempts"],
            "ended_at": t["ended_at"],
            "error": texts.get(t["task_id"]),
        }
        for t in sorted(tasks, key=lambda t: t["task_id"])
        if t["status"] == "failed"
    ]


def _is_error(event: Row) -> bool:
    """The contract's error event (runs.error_events): error severity or a `*_failed` type."""
    return event["severity"] in ("error", "critical") or event["type"].endswith("_failed")


def _message(payload: Mapping[str, Any]) -> str | None:
    """The error text of a payload, bounded so that one huge payload cannot bloat a report."""
    for field in ERROR_FIELDS:
        value = payload.get(field)
        if isinstance(value, Mapping) and isinstance(value.get("message"), str):
            value = value["message"]
        if value is not None and value != "":
            return (value if isinstance(value, str) else _json_text(value))[:_MAX_MESSAGE]
    return None


def _json_text(value: object) -> str:
    """`value` as compact JSON; levels beyond _MAX_DEPTH (orjson refuses over 255) are "…"."""
    try:
        return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()
    except orjson.JSONEncodeError:
        return orjson.dumps(_cut(value, _MAX_DEPTH), option=orjson.OPT_SORT_KEYS).decode()


def _cut(value: object, depth: int) -> object:
    """A copy of a decoded JSON value whose containers below `depth` levels are "…"."""
    if isinstance(value, dict | list) and depth == 0:
        return "…"
    if isinstance(value, dict):
        return {str(k): _cut(v, depth - 1) for k, v in value.items()}
    if isinstance(value, list):
        return [_cut(v, depth - 1) for v in value]
    return value


def _us(moment: str) -> int:
    return to_micros(datetime.fromisoformat(moment))


def _ms(seconds: float | None) -> float | None:
    """Durations to the millisecond, so float noise never changes a report's bytes."""
    return None if seconds is None else round(float(seconds), 3)


def _span_s(start: str | None, end: str | None) -> float | None:
    return None if start is None or end is None else _ms((_us(end) - _us(start)) / 1e6)


def _pattern_s(row: Row) -> float | None:
    """The executor's own duration when it reported one, else the span of the events."""
    if row["duration_s"] is not None:
        return _ms(row["duration_s"])
    return _span_s(row["started_at"], row["finished_at"])


# -- HTML ------------------------------------------------------------------------------


def _page(
    run: Row,
    tasks: Sequence[Row],
    workstreams: Sequence[Row],
    pattern_runs: Sequence[Row],
    events: Sequence[Row],
    failed: list[dict[str, Any]],
) -> bytes:
    """The run's single self-contained page: header, timelines and tables."""
    times = [
        _us(t)
        for r in (run, *tasks, *pattern_runs)
        for k in ("created_at", "started_at", "ended_at", "last_event_at", "finished_at")
        if (t := r.get(k)) is not None
    ]
    lo, hi = min(times, default=0), max(times, default=0)
    parts = [
        _head(f"Run {run['run_id']}"),
        _header(run, tasks),
        "<h2>Task timeline</h2>\n",
        _legend(t["status"] for t in tasks),
        timeline_svg(build_timeline(run, tasks, events), lo, hi, _status_class),
        f"<h2>Failed tasks ({len(failed)})</h2>\n",
        _table(
            ("task", "workstream", "attempts", "ended", "error"),
            [
                (
                    f["task_id"],
                    f["workstream_id"],
                    f["attempts"],
                    human_time(f["ended_at"]),
                    _Html(f'<span class="msg">{_e(f["error"])}</span>'),
                )
                for f in failed
            ],
        ),
        "<h2>Workstreams</h2>\n",
        _table(
            ("workstream", "status", "tasks", "succeeded", "failed", "running"),
            [
                (
                    w["workstream_id"],
                    _badge(w["status"]),
                    w["tasks_total"],
                    w["tasks_succeeded"],
                    w["tasks_failed"],
                    w["tasks_running"],
                )
                for w in workstreams
            ],
        ),
        f"<h2>Pattern runs ({len(pattern_runs)})</h2>\n",
        _patterns(pattern_runs, lo, hi),
        "</body></html>\n",
    ]
    return "".join(parts).encode()


def _header(run: Row, tasks: Sequence[Row]) -> str:
    by_status = Counter(t["status"] for t in tasks)
    counts = ", ".join(f"{by_status[s]} {s}" for s in TASK_STATUSES if by_status[s])
    stalled = ' <span class="badge s-warning">stalled</span>' if run["stalled"] else ""
    facts = _table(
        (
            "tasks",
            "events",
            "error events",
            "created",
            "started",
            "ended",
            "last event",
            "duration",
        ),
        [
            (
                f"{run['tasks_total']} ({counts or 'none seen'})",
                run["events_total"],
                run["error_events"],
                human_time(run["created_at"]),
                human_time(run["started_at"]),
                human_time(run["ended_at"]),
                human_time(run["last_event_at"]),
                human_duration(run["duration_s"]),
            )
        ],
    )
    return f"<h1>Run {_e(run['run_id'])} {_badge(run['status'])}{stalled}</h1>\n{facts}"


def _patterns(pattern_runs: Sequence[Row], lo: int, hi: int) -> str:
    """Pattern activity on the run's time axis, then one row per pattern run."""
    if not pattern_runs:
        return "<p>none</p>\n"
    return _gantt([_pattern_bar(p, hi) for p in pattern_runs], lo, hi, "data-pattern-run") + (
        _table(
            ("pattern run", "pattern", "step", "status", "phase", "started", "duration", "error"),
            [
                (
                    p["pattern_run_id"],
                    p["pattern_id"],
                    p["step_id"],
                    _badge(p["status"]),
                    p["phase"],
                    human_time(p["started_at"]),
                    human_duration(_pattern_s(p)),
                    p["error_message"],
                )
                for p in pattern_runs
            ],
        )
    )


def _pattern_bar(row: Row, hi: int) -> _Bar:
    begin = _us(row["started_at"]) if row["started_at"] else hi
    finished = row["finished_at"]
    title = f"{row['pattern_run_id']} {row['pattern_id']}: {row['status']} in {row['phase']}" + (
        f": {row['error_message']}" if row["error_message"] else ""
    )
    return _Bar(
        row["pattern_run_id"],
        row["status"],
        begin,
        _us(finished) if finished else hi,
        finished is None,
        title,
    )


def _gantt(bars: Sequence[_Bar], lo: int, hi: int, key_attr: str) -> str:
    """An inline SVG timeline, one `rect.bar` per row, on the run's shared time axis."""
    if not bars:
        return "<p>none</p>\n"
    span = max(hi - lo, 1)
    height = _TOP + len(bars) * _ROW_H + 4
    width = _LABEL_W + _PLOT_W + 40

    def x(us: int) -> float:
        return _LABEL_W + (us - lo) * _PLOT_W / span

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="gantt" width="{width}" '
        f'height="{height}" viewBox="0 0 {width} {height}"><g class="axis">'
    ]
    for k in range(5):
        tick = x(lo + span * k // 4)
        out.append(
            f'<line x1="{tick:.1f}" y1="{_TOP - 6}" x2="{tick:.1f}" y2="{height}"/>'
            f'<text x="{tick:.1f}" y="{_TOP - 10}" text-anchor="middle">'
            f"{axis_label(span * k // 4)}</text>"
        )
    out.append("</g>")
    for row, bar in enumerate(bars):
        y = _TOP + row * _ROW_H
        left = x(bar.start)
        right = max(x(bar.end), left + 2)
        label = bar.key if len(bar.key) <= 36 else bar.key[:35] + "…"
        out.append(
            f'<text x="{_LABEL_W - 6}" y="{y + 12}" text-anchor="end">{_e(label)}</text>'
            f'<rect class="bar {_status_class(bar.status)}{" open" if bar.is_open else ""}"'
            f' {key_attr}="{_e(bar.key)}" x="{left:.1f}" y="{y + 2}"'
            f' width="{right - left:.1f}" height="{_ROW_H - 4}"><title>{_e(bar.title)}'
            "</title></rect>"
        )
    out.append("</svg>\n")
    return "".join(out)


def _legend(statuses: Iterable[str]) -> str:
    seen = sorted(set(statuses))
    items = "".join(f"<span>{_badge(s)}</span>" for s in seen)
    return (
        f'<p class="legend">{items} time since the first event; one bar per attempt, a dashed '
        "line for the wait between two; faded bars are still running</p>\n"
    )


def _head(title: str) -> str:
    """No script, nothing fetched: the policy makes any injected markup inert as well."""
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><meta '
        f'http-equiv="Content-Security-Policy" content="{_CSP}"><title>{_e(title)}</title>'
        f"<style>{_CSS}</style></head><body>\n"
    )


def _table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    body = "".join("<tr>" + "".join(_cell(v) for v in row) + "</tr>\n" for row in rows)
    if not body:
        return "<p>none</p>\n"
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    return f"<table><thead><tr>{head}</tr></thead><tbody>\n{body}</tbody></table>\n"


def _cell(value: object) -> str:
    if isinstance(value, _Html):
        return f"<td>{value}</td>"
    if isinstance(value, int | float) and not isinstance(value, bool):
        return f'<td class="num">{value}</td>'
    return f"<td>{_e(value)}</td>"


def _badge(status: str | None) -> _Html:
    return _Html(f'<span class="badge {_status_class(status)}">{_e(status)}</span>')


def _status_class(status: str | None) -> str:
    return f"s-{status}" if status in _COLOURS else "s-other"


def _e(value: object) -> str:
    """Escape for text and attribute values alike: log strings never become markup."""
    return escape("–" if value is None else str(value), quote=True)
