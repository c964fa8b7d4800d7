"""An offline analysis rendered as a text table, JSON, CSV or one self-contained HTML page.

Pure formatting: the computed analysis (a dict: `analysis` and `totals` objects, then one list
of rows per section, as `runwatch analyze` builds it) in, bytes out, no clock. Formats:
- `table`: plain text for a terminal, one titled table per section; long cells are cut.
- `json`: the analysis as it is, keys in a fixed order, indented.
- `csv`: one block per section, blocks separated by an empty line; each block starts with
  its header row and every row's first cell is the section name (`section,...`), so
  `grep '^durations,'` or a csv reader that splits on empty rows takes one section out.
  `analysis` and `totals` are `key,value` blocks (nested keys joined with a dot).
- `html`: one page with inline CSS and inline SVG charts (runs per day stacked by status,
  events per hour, duration percentiles), no script and nothing fetched (a strict
  Content-Security-Policy); every string from the logs is HTML-escaped.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime
from html import escape
from typing import Any, Final, NamedTuple

import orjson

from runwatch.sinks.terminal import terminal_safe


class Section(NamedTuple):
    key: str
    title: str
    columns: tuple[str, ...]


FORMATS: Final = ("table", "json", "csv", "html")
_FORMULA_START: Final = frozenset("=+-@\t\r")
RUN_STATUSES: Final = (
    "succeeded",
    "partial",
    "failed",
    "quarantined",
    "canceled",
    "running",
    "pending",
    "abandoned",
)
SECTIONS: Final = (
    Section(
        "runs_by_day",
        "Runs by day (created_at) and status",
        ("day", "runs", *RUN_STATUSES, "success_rate"),
    ),
    Section(
        "durations",
        "Durations in seconds (nearest-rank percentiles)",
        ("kind", "name", "count", "min", "p50", "p90", "p99", "max"),
    ),
    Section(
        "slowest_tasks",
        "Slowest tasks",
        ("run_id", "task_id", "workstream_id", "status", "attempts", "started_at", "duration_s"),
    ),
    Section(
        "failing",
        "Top failing tasks, tools, patterns and event types",
        ("scope", "name", "run_id", "failures", "messages", "top_message", "top_count"),
    ),
    Section(
        "error_messages",
        "Most common error messages (normalised)",
        ("scope", "name", "run_id", "message", "count", "example"),
    ),
    Section(
        "stall_incidents",
        "Stall incidents",
        ("run_id", "silent_from", "resumed_at", "silent_s", "open"),
    ),
    Section("events_per_hour", "Events per hour", ("hour", "events")),
    Section("dead_letters", "Dead letters by reason", ("reason", "count", "first")),
    Section(
        "clock_skew", "Clock skew by file", ("source", "backwards", "future", "worst_backwards_s")
    ),
    Section(
        "service_levels",
        "Service levels (SLOs judged at the end of the window; pages and tickets inside it)",
        (
            "slo",
            "sli",
            "objective",
            "at",
            "total",
            "bad",
            "ratio",
            "budget_remaining",
            "burn_1h",
            "burn_6h",
            "burn_1d",
            "burn_3d",
            "alert",
            "pages",
            "tickets",
        ),
    ),
)
COLOURS: Final = {
    "succeeded": "#2e9e55",
    "failed": "#d64545",
    "running": "#3b7dd8",
    "pending": "#9aa3ad",
    "canceled": "#e08a2c",
    "partial": "#d9a400",
    "quarantined": "#8e5bd0",
    "abandoned": "#5f6b77",
}
MAX_CELL: Final = 60
_CSS: Final = (
    "body{font:14px system-ui,sans-serif;margin:24px;color:#1d232b;max-width:1200px}"
    "table{border-collapse:collapse;margin:8px 0}td,th{border:1px solid #d5dae0;padding:3px 8px;"
    "text-align:left;vertical-align:top}th{background:#f1f3f5}.num{text-align:right}"
    "svg{display:block;margin:8px 0}svg text{font-size:11px;fill:#1d232b}"
    ".axis line{stroke:#d5dae0}.legend span{margin-right:12px}.swatch{display:inline-block;"
    "width:10px;height:10px;margin-right:4px}.msg{font-family:monospace;white-space:pre-wrap}"
)
_CSP: Final = "default-src 'none'; style-src 'unsafe-inline'"
_PLOT_W, _PLOT_H, _LABEL_W, _BAR_H = 900, 180, 220, 6
_PERCENTILE_COLOURS: Final = (("p50", "#2e9e55"), ("p90", "#d9a400"), ("p99", "#d64545"))


def render(analysis: Mapping[str, Any], fmt: str) -> bytes:
    """The analysis as bytes in one of FORMATS."""
    renderers: dict[str, Callable[[Mapping[str, Any]], bytes]] = {
        "table": _text,
        "json": _json,
        "csv": _csv,
        "html": _html,
    }
    return renderers[fmt](analysis)


def _json(analysis: Mapping[str, Any]) -> bytes:
    return orjson.dumps(analysis, option=orjson.OPT_INDENT_2 | orjson.OPT_APPEND_NEWLINE)


def _pairs(mapping: Mapping[str, Any], prefix: str = "") -> Iterable[tuple[str, Any]]:
    """Nested keys flattened with dots, for the key/value blocks."""
    for key, value in mapping.items():
        if isinstance(value, Mapping):
            yield from _pairs(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


# --- csv ----------------------------------------------------------------------------------


def _csv(analysis: Mapping[str, Any]) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    for block in ("analysis", "totals"):
        writer.writerow(["section", "key", "value"])
        writer.writerows([block, key, _csv_cell(value)] for key, value in _pairs(analysis[block]))
        writer.writerow([])
    for section in SECTIONS:
        writer.writerow(["section", *section.columns])
        writer.writerows(
            [section.key, *(_csv_cell(row.get(c)) for c in section.columns)]
            for row in analysis[section.key]
        )
        writer.writerow([])
    return out.getvalue().encode()


def _csv_cell(value: object) -> object:
    """Text from the logs that a spreadsheet would run as a formula (=, +, -, @, tab, CR)
    gets a leading apostrophe, the usual guard; numbers stay numbers."""
    if value is None:
        return ""
    if isinstance(value, str) and value[:1] in _FORMULA_START:
        return "'" + value
    return value


# --- table --------------------------------------------------------------------------------


def _text(analysis: Mapping[str, Any]) -> bytes:
    about = analysis["analysis"]
    parts = [f"runwatch analysis of {_source(about)}", _window_text(about)]
    parts += [f"without the logs: {key}: {why}" for key, why in about["missing"].items()]
    parts.append("\nTotals\n" + _text_table(("key", "value"), list(_pairs(analysis["totals"]))))
    for section in SECTIONS:
        rows = [[row.get(c) for c in section.columns] for row in analysis[section.key]]
        body = _text_table(section.columns, rows) if rows else "(none)"
        parts.append(f"\n{section.title}\n{body}")
    return ("\n".join(parts) + "\n").encode()


def _source(about: Mapping[str, Any]) -> str:
    if about["source"] == "database":
        return f"the database {about['database']}"
    return (
        f"{about['files']:,} log file(s), {about['lines']:,} lines ({about['bytes'] / 1e6:,.1f} MB)"
    )


def _window_text(about: Mapping[str, Any]) -> str:
    return (
        f"window {about['since'] or 'start'} .. {about['until'] or 'end'}; horizon "
        f"{about['horizon'] or '-'}; stall_after {about['stall_after_s']:g} s; "
        "percentiles nearest-rank"
    )


def _text_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Numbers right-aligned, text left; None is '-'; long text is cut."""
    cells = [[_text_cell(v) for v in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    numeric = [all(_is_number(r[i]) or r[i] is None for r in rows) for i in range(len(headers))]

    def line(values: Sequence[str]) -> str:
        return "  ".join(
            v.rjust(w) if numeric[i] else v.ljust(w)
            for i, (v, w) in enumerate(zip(values, widths, strict=True))
        ).rstrip()

    return "\n".join([line(headers), *(line(r) for r in cells)])


def _text_cell(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:,.3f}"
    if isinstance(value, int):
        return f"{value:,}"
    text = terminal_safe(" ".join(str(value).split()))
    return text if len(text) <= MAX_CELL else text[: MAX_CELL - 1] + "…"


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


# --- html ---------------------------------------------------------------------------------


def _html(analysis: Mapping[str, Any]) -> bytes:
    about = analysis["analysis"]
    missing = "".join(f"<li>{_e(key)}: {_e(why)}</li>" for key, why in about["missing"].items())
    parts = [
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><meta '
        f'http-equiv="Content-Security-Policy" content="{_CSP}"><title>runwatch analysis'
        f"</title><style>{_CSS}</style></head><body>\n<h1>runwatch analysis</h1>\n",
        f"<p>{_e(_source(about))}; {_e(_window_text(about))}</p>\n",
        f"<p>Without the logs:</p><ul>{missing}</ul>\n" if missing else "",
        "<h2>Totals</h2>\n",
        _table(("key", "value"), list(_pairs(analysis["totals"]))),
    ]
    charts = {
        "runs_by_day": _runs_chart,
        "events_per_hour": _hours_chart,
        "durations": _durations_chart,
    }
    for section in SECTIONS:
        rows = analysis[section.key]
        parts.append(f"<h2>{_e(section.title)}</h2>\n")
        if section.key in charts and rows:
            parts.append(charts[section.key](rows))
        parts.append(_table(section.columns, [[r.get(c) for c in section.columns] for r in rows]))
    parts.append("</body></html>\n")
    return "".join(parts).encode()


def _table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    if not rows:
        return "<p>none</p>\n"
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(_html_cell(v) for v in row) + "</tr>\n" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>\n{body}</tbody></table>\n"


def _html_cell(value: object) -> str:
    if _is_number(value):
        return f'<td class="num">{_text_cell(value)}</td>'
    shown = _text_cell(value) if value is None or isinstance(value, bool) else value
    return f"<td>{_e(shown)}</td>"


def _svg(width: int, height: int, body: Iterable[str], label: str) -> str:
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="{_e(label)}">'
        + "".join(body)
        + "</svg>\n"
    )


def _runs_chart(days: Sequence[Mapping[str, Any]]) -> str:
    """One column per day, stacked by run status."""
    most = max(max(d["runs"] for d in days), 1)
    step = _PLOT_W / len(days)
    body = [_axis_label(most, "runs")]
    for i, day in enumerate(days):
        bottom = float(_PLOT_H)
        for status in RUN_STATUSES:
            if day.get(status):
                height = day[status] * _PLOT_H / most
                bottom -= height
                body.append(
                    f'<rect x="{40 + i * step:.1f}" y="{bottom + 20:.1f}" '
                    f'width="{max(step - 2, 1):.1f}" height="{height:.1f}" '
                    f'fill="{COLOURS[status]}"><title>{_e(day["day"])}: {day[status]} '
                    f"{status}</title></rect>"
                )
        if len(days) <= 31 or i % (len(days) // 15 + 1) == 0:
            body.append(
                f'<text x="{40 + i * step:.1f}" y="{_PLOT_H + 34}">{_e(day["day"][5:])}</text>'
            )
    legend = "".join(
        f'<span><i class="swatch" style="background:{COLOURS[s]}"></i>{s}</span>'
        for s in RUN_STATUSES
    )
    return (
        _svg(_PLOT_W + 60, _PLOT_H + 40, body, "runs per day by status")
        + f'<p class="legend">{legend}</p>\n'
    )


def _hours_chart(hours: Sequence[Mapping[str, Any]]) -> str:
    """Events per hour as columns; hours without events are gaps on a continuous axis."""
    first, last = _hour_index(hours[0]["hour"]), _hour_index(hours[-1]["hour"])
    span = last - first + 1
    most = max(max(h["events"] for h in hours), 1)
    step = _PLOT_W / span
    body = [_axis_label(most, "events")]
    for h in hours:
        x = 40 + (_hour_index(h["hour"]) - first) * step
        height = h["events"] * _PLOT_H / most
        body.append(
            f'<rect x="{x:.1f}" y="{_PLOT_H + 20 - height:.1f}" '
            f'width="{max(step - 1, 0.5):.1f}" height="{height:.1f}" fill="#3b7dd8">'
            f"<title>{_e(h['hour'])}: {h['events']} events</title></rect>"
        )
    body.append(
        f'<text x="40" y="{_PLOT_H + 34}">{_e(hours[0]["hour"])}</text>'
        f'<text x="{_PLOT_W + 40}" y="{_PLOT_H + 34}" text-anchor="end">'
        f"{_e(hours[-1]['hour'])}</text>"
    )
    return _svg(_PLOT_W + 60, _PLOT_H + 40, body, "events per hour")


def _hour_index(hour: str) -> int:
    """`YYYY-MM-DDTHH:00Z` → hours since the epoch, for a continuous axis."""
    return int(datetime.fromisoformat(hour).timestamp()) // 3600


def _axis_label(most: int, unit: str) -> str:
    return (
        f'<g class="axis"><line x1="38" y1="20" x2="38" y2="{_PLOT_H + 20}"/></g>'
        f'<text x="2" y="28">{most:,}</text><text x="2" y="{_PLOT_H + 20}">0</text>'
        f'<text x="2" y="14">{unit}</text>'
    )


def _durations_chart(rows: Sequence[Mapping[str, Any]]) -> str:
    """p50, p90 and p99 of each name as three thin bars; one scale per kind."""
    out = []
    for kind in dict.fromkeys(r["kind"] for r in rows):
        group = [r for r in rows if r["kind"] == kind and r["count"]]
        if not group:
            continue
        most = max(r["p99"] for r in group) or 1.0
        scale = (_PLOT_W - _LABEL_W - 80) / most
        body = []
        for i, row in enumerate(group):
            y = 6 + i * (_BAR_H * 3 + 8)
            label = row["name"] if len(row["name"]) <= 32 else row["name"][:31] + "…"
            body.append(
                f'<text x="{_LABEL_W - 6}" y="{y + _BAR_H * 2}" text-anchor="end">'
                f"{_e(label)}</text>"
            )
            for j, (p, colour) in enumerate(_PERCENTILE_COLOURS):
                width = max(row[p] * scale, 1)
                body.append(
                    f'<rect x="{_LABEL_W}" y="{y + j * _BAR_H}" width="{width:.1f}" '
                    f'height="{_BAR_H - 1}" fill="{colour}"><title>{_e(row["name"])} '
                    f"{p}: {row[p]:,.3f} s</title></rect>"
                )
            body.append(
                f'<text x="{_LABEL_W + row["p99"] * scale + 4:.1f}" '
                f'y="{y + _BAR_H * 3 - 1}">{row["p99"]:,.1f} s</text>'
            )
        height = 12 + len(group) * (_BAR_H * 3 + 8)
        out.append(f"<h3>{_e(kind)}</h3>\n" + _svg(_PLOT_W, height, body, f"{kind} durations"))
    legend = "".join(
        f'<span><i class="swatch" style="background:{c}"></i>{p}</span>'
        for p, c in _PERCENTILE_COLOURS
    )
    return f'<p class="legend">{legend}</p>\n' + "".join(out)


def _e(value: object) -> str:
    """Escape for text and attributes alike: strings from the logs never become markup."""
    return escape(str(value), quote=True)
