"""A run's timeline as people read it, shared by the HTML report and the web dashboard: one
segment per attempt of each task (a start event opens an attempt, the next terminal event
closes it), the wait between two attempts, lanes grouped by workstream; and durations and
times for people (`29m 30s`, `2026-12-07 05:50:46`). Pure: rows and events in, values out."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from html import escape
from typing import Any

from runwatch.projections import to_micros
from runwatch.projections.lifecycle import STEP_STATUS, TASK_LIFECYCLE, TASK_START
from runwatch.projections.tasks import TASK_TERMINAL

Row = Mapping[str, Any]


def micros(moment: str) -> int:
    return to_micros(datetime.fromisoformat(moment))


def human_duration(seconds: float | None) -> str:
    """`850ms`, `42s`, `29m 30s`, `3h 05m`, `2d 4h`; `-` for none."""
    if seconds is None:
        return "-"
    if seconds < 1:
        return f"{round(seconds * 1000)}ms"
    if seconds < 10:
        return f"{seconds:.1f}s"
    whole = round(seconds)
    days, rest = divmod(whole, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes:02d}m"
    if minutes:
        return f"{minutes}m {secs:02d}s" if secs else f"{minutes}m"
    return f"{secs}s"


def human_time(moment: str | None) -> str:
    """An ISO UTC time to the second, as `2026-12-07 05:50:46`; `-` for none."""
    return "-" if not moment else moment[:19].replace("T", " ")


def _terminal_status(event: Row) -> str | None:
    lifecycle = TASK_LIFECYCLE.get(event["type"])
    if lifecycle is None or lifecycle[0] != 3:
        return None
    if lifecycle[1] is not None:
        return lifecycle[1]
    return STEP_STATUS.get(str(event["payload"].get("status")), "failed")


def attempts(task: Row, events: Sequence[Row], end_of_view: str | None) -> list[dict[str, Any]]:
    """The task's attempts in time order: each start event opens one, the next terminal event
    closes it with its status; an attempt still open runs to `end_of_view`. A task that
    ended without a start event is one instant; a task whose events were not read back
    (logs rotated away) is one segment from its row."""
    own = sorted(
        (e for e in events if e.get("task_id") == task["task_id"]),
        key=lambda e: (e["time"], e["id"]),
    )
    segments: list[dict[str, Any]] = []
    current: dict[str, Any] | None = None
    for event in own:
        if event["type"] in TASK_START:
            if current is not None:  # restarted without an end: the earlier try was cut
                current.update(end=event["time"], status="canceled", open=False)
            current = {"start": event["time"], "end": None, "status": "running", "open": True}
            segments.append(current)
        elif (status := _terminal_status(event)) is not None:
            if current is None:
                current = {"start": event["time"], "end": None, "status": status, "open": True}
                segments.append(current)
            current.update(end=event["time"], status=status, open=False)
            current = None
    if not segments and (task["started_at"] or task["ended_at"]):
        segments.append(
            {
                "start": task["started_at"] or task["ended_at"],
                "end": task["ended_at"],
                "status": task["status"],
                "open": task["ended_at"] is None,
            }
        )
    previous_end: str | None = None
    for number, segment in enumerate(segments, 1):
        if segment["open"]:
            segment["end"] = max(end_of_view or segment["start"], segment["start"])
        segment["attempt"] = number
        segment["wait_s"] = (
            None if previous_end is None else _seconds(previous_end, segment["start"])
        )
        segment["duration_s"] = _seconds(segment["start"], segment["end"])
        previous_end = segment["end"]
    return segments


def _seconds(start: str, end: str) -> float:
    return round(max(micros(end) - micros(start), 0) / 1e6, 3)


def build_timeline(run: Row, tasks: Sequence[Row], events: Sequence[Row]) -> dict[str, Any]:
    """The run's timeline: its time window and, per workstream (sorted, the tasks without one
    last), its tasks in start order with their attempts and the name `task_created` gave
    them (None without one)."""
    end_of_view = run.get("ended_at") or run.get("last_event_at")
    lanes: dict[str | None, list[dict[str, Any]]] = {}
    times: list[str] = [t for k in ("created_at", "started_at") if (t := run.get(k))]
    by_task: dict[str, list[Row]] = {}  # once, not a pass over the run's events per task
    names: dict[str, str] = {}
    for event in events:
        task_id = event.get("task_id")
        if task_id is not None:
            by_task.setdefault(task_id, []).append(event)
            payload = event["payload"]
            if event["type"] == "task_created" and isinstance(payload, dict):
                name = payload.get("name")
                if isinstance(name, str) and name:
                    names[task_id] = name
    for task in tasks:
        segments = attempts(task, by_task.get(task["task_id"], []), end_of_view)
        times += [s["start"] for s in segments] + [s["end"] for s in segments]
        lanes.setdefault(task["workstream_id"], []).append(
            {
                "task_id": task["task_id"],
                "name": names.get(task["task_id"]),
                "status": task["status"],
                "attempts": segments,
                "terminal": task["status"] in TASK_TERMINAL,
            }
        )
    if end_of_view:
        times.append(end_of_view)
    for rows in lanes.values():
        rows.sort(key=_start_order)
    order = sorted(lanes, key=lambda w: (w is None, w or ""))
    return {
        "start": min(times, default=None),
        "end": max(times, default=None),
        "workstreams": [{"workstream_id": w, "tasks": lanes[w]} for w in order],
    }


def _start_order(task: Row) -> tuple[bool, str, str]:
    """Tasks that started first come first; tasks that never did come last."""
    first = task["attempts"][0]["start"] if task["attempts"] else ""
    return (not task["attempts"], first, task["task_id"])


LABEL_W, PLOT_W, ROW_H, TOP = 250, 700, 18, 26


def axis_label(elapsed_us: int) -> str:
    return "start" if elapsed_us <= 0 else "+" + human_duration(elapsed_us / 1e6)


def timeline_svg(
    timeline: Mapping[str, Any], lo: int, hi: int, status_class: Callable[[str | None], str]
) -> str:
    """The timeline as inline SVG for a page without script (the HTML report): a lane per
    workstream, a `rect.bar` per attempt, a dashed `line.wait` between two attempts, and a
    marker at the right edge for a task that never started. Every text is escaped."""
    rows: list[tuple[str | None, Mapping[str, Any] | None]] = []
    for lane in timeline["workstreams"]:
        rows.append((lane["workstream_id"] or "(no workstream)", None))
        rows += [(None, task) for task in lane["tasks"]]
    if not rows:
        return "<p>none</p>\n"
    span = max(hi - lo, 1)
    height = TOP + len(rows) * ROW_H + 4
    width = LABEL_W + PLOT_W + 40

    def x(us: int) -> float:
        return LABEL_W + (us - lo) * PLOT_W / span

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="gantt" width="{width}" '
        f'height="{height}" viewBox="0 0 {width} {height}"><g class="axis">'
    ]
    for k in range(5):
        tick = x(lo + span * k // 4)
        out.append(
            f'<line x1="{tick:.1f}" y1="{TOP - 6}" x2="{tick:.1f}" y2="{height}"/>'
            f'<text x="{tick:.1f}" y="{TOP - 10}" text-anchor="middle">'
            f"{axis_label(span * k // 4)}</text>"
        )
    out.append("</g>")
    for index, (lane, task) in enumerate(rows):
        y = TOP + index * ROW_H
        if task is None:
            out.append(f'<text class="lane" x="4" y="{y + 12}">{_e(lane)}</text>')
            continue
        out.append(_task_row(task, y, hi, x, status_class))
    out.append("</svg>\n")
    return "".join(out)


def _task_row(
    task: Mapping[str, Any],
    y: int,
    hi: int,
    x: Callable[[int], float],
    status_class: Callable[[str | None], str],
) -> str:
    key = task["task_id"]
    shown = task.get("name") or key
    label = shown if len(shown) <= 36 else shown[:35] + "…"
    out = [
        f'<text x="{LABEL_W - 6}" y="{y + 12}" text-anchor="end">{_e(label)}'
        f"<title>{_e(key)}</title></text>"
    ]
    attempts_ = task["attempts"] or [
        {"attempt": 0, "status": task["status"], "start": None, "open": True}
    ]
    previous: float | None = None
    for attempt in attempts_:
        if attempt["start"] is None:  # never started: a marker at the right edge
            left = right = x(hi)
            title = f"{key}: {task['status']}, not started"
        else:
            left, right = x(micros(attempt["start"])), x(micros(attempt["end"]))
            if previous is not None and left > previous:
                out.append(
                    f'<line class="wait" x1="{previous:.1f}" x2="{left:.1f}" y1="{y + 9}" '
                    f'y2="{y + 9}"><title>{_e(key)}: waited '
                    f"{human_duration(attempt['wait_s'])}</title></line>"
                )
            title = (
                f"{key} attempt {attempt['attempt']}: {attempt['status']}, "
                f"{human_duration(attempt['duration_s'])} ({human_time(attempt['start'])} → "
                f"{'still running' if attempt['open'] else human_time(attempt['end'])})"
            )
        previous = right
        width = max(right - left, 2)
        out.append(
            f'<rect class="bar {status_class(attempt["status"])}'
            f'{" open" if attempt["open"] else ""}" data-task="{_e(key)}" '
            f'data-attempt="{attempt["attempt"]}" x="{left:.1f}" y="{y + 2}" '
            f'width="{width:.1f}" height="{ROW_H - 4}"><title>{_e(title)}</title></rect>'
        )
    return "".join(out)


def _e(value: object) -> str:
    return escape(str(value), quote=True)
