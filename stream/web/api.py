"""The read-only JSON API: `/api/runs`, `/api/runs/<run_id>`, `/api/alerts`, `/api/overview`,
`/api/tasks/<task_id>`. Every read runs in a worker thread on a pooled read-only connection;
bad parameters are a 400 naming the parameter."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Final

import orjson
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from runwatch.projections.slo import Slo, evaluate, horizon_s
from runwatch.sinks.naming import safe_filename
from runwatch.sinks.reports import failed_tasks
from runwatch.sinks.store import Connection, reads, web_reads
from runwatch.sinks.store.slo_reads import finished_runs
from runwatch.sinks.timeline import build_timeline
from runwatch.stream.delivery.jobs import load_run
from runwatch.stream.web.readers import Readers

STATUSES: Final = frozenset(
    {
        "pending",
        "running",
        "succeeded",
        "failed",
        "partial",
        "quarantined",
        "canceled",
        "abandoned",
        "active",
        "stalled",
    }
)
ALERT_STATES: Final = frozenset({"pending", "delivered", "failed", "recorded", "skipped"})
SEQ_HEADER: Final = "X-Runwatch-Change-Seq"
"""On `/api/runs`, `/api/runs/<id>` and `/api/overview`: the change number the rows are at
least as new as; open `/api/events?after=` it to miss nothing."""


class BadRequest(Exception):
    """A parameter the API cannot use; the message names it."""


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(
        orjson.dumps(body, default=_jsonable),
        status_code=status,
        media_type="application/json",
        headers={"Cache-Control": "no-store", **(headers or {})},
    )


def _jsonable(value: object) -> Any:
    """Stored JSON blobs (alert payloads) are sent as the JSON they hold."""
    if isinstance(value, bytes | memoryview):
        return orjson.Fragment(bytes(value))
    raise TypeError(type(value).__name__)


def _int(request: Request, name: str, default: int, low: int, high: int) -> int:
    text = request.query_params.get(name)
    if text is None or text == "":
        return default
    if not text.isdigit() or not low <= int(text) <= high:
        raise BadRequest(f"{name} must be a whole number from {low} to {high}, not {text!r}")
    return int(text)


def _choice(request: Request, name: str, allowed: frozenset[str]) -> str | None:
    value = request.query_params.get(name) or None
    if value is not None and value not in allowed:
        raise BadRequest(f"{name} must be one of {', '.join(sorted(allowed))}, not {value!r}")
    return value


class Api:
    """The API's handlers over one projection; `reports` is where run reports are served
    from (`/reports/<file>`), when there is such a folder; `live` gives the running service's
    own figures for the overview."""

    def __init__(
        self,
        readers: Readers,
        reports: Path | None,
        live: Callable[[], dict[str, Any]] | None = None,
        slos: Sequence[Slo] = (),
    ) -> None:
        self.readers = readers
        self.reports = reports
        self.live = live
        self.slos = tuple(slos)

    async def _read(self, query: Callable[[Connection], Any]) -> Any:
        return await run_in_threadpool(self.readers.read, query)

    async def runs(self, request: Request) -> Response:
        status = _choice(request, "status", STATUSES)
        limit = _int(request, "limit", 100, 1, 1000)
        name = request.query_params.get("q") or None
        before = request.query_params.get("before") or None

        def query(db: Connection) -> tuple[int, list[dict[str, Any]]]:
            with web_reads.snapshot(db):
                seq = web_reads.change_seq(db)
                rows = web_reads.run_page(db, status=status, name=name, limit=limit, before=before)
            return seq, rows

        seq, rows = await self._read(query)
        return json_response(rows, headers={SEQ_HEADER: str(seq)})

    async def overview(self, request: Request) -> Response:
        def query(db: Connection) -> dict[str, Any]:
            with web_reads.snapshot(db):
                seq = web_reads.change_seq(db)
                return {"seq": seq, **web_reads.overview(db, active=50, recent=15)}

        body = await self._read(query)
        if self.live is not None:
            body["service"] = await run_in_threadpool(self.live)
        if self.slos:
            body["slo"] = await self._judge_slos()
        return json_response(body, headers={SEQ_HEADER: str(body["seq"])})

    async def slo(self, request: Request) -> Response:
        """Every configured SLO judged now, as `runwatch slo --json` gives it ([] if none)."""
        return json_response(await self._judge_slos() if self.slos else [])

    async def _judge_slos(self) -> list[dict[str, Any]]:
        now = time.time_ns() // 1000
        since = now - round(horizon_s(self.slos) * 1_000_000)
        runs = await self._read(lambda db: finished_runs(db, since))
        return evaluate(self.slos, runs, now)

    async def run(self, request: Request) -> Response:
        run_id = request.path_params["run_id"]
        task = request.query_params.get("task") or None
        offset = _int(request, "offset", 0, 0, 10**9)
        limit = _int(request, "limit", 100, 1, 1000)

        def query(db: Connection) -> tuple[int, dict[str, Any] | None]:
            with web_reads.snapshot(db):
                seq = web_reads.change_seq(db)
                data = load_run(db, run_id)
                archival = reads.archival(db, run_id) if data is not None else {}
                alerts = web_reads.alert_page(db, limit=50, run_id=run_id)
            if data is None:
                return seq, None
            shown = [e for e in data.events if task is None or e["task_id"] == task]
            return seq, {
                "run": data.run,
                "tasks": data.tasks,
                "workstreams": data.workstreams,
                "pattern_runs": data.pattern_runs,
                "events": {
                    "task": task,
                    "total": len(shown),
                    "offset": offset,
                    "limit": limit,
                    "items": shown[offset : offset + limit],
                },
                "derived": {
                    "timeline": build_timeline(data.run, data.tasks, data.events),
                    "failures": failed_tasks(data.tasks, data.events),
                    "events_missing": data.missing,
                    "archives": archival["archives"],
                    "late_events": archival["late_events"],
                    "reports": self._report_links(run_id),
                    "alerts": alerts,
                },
            }

        seq, body = await self._read(query)
        if body is None:
            return json_response({"error": f"no run {run_id!r}"}, 404)
        return json_response(body, headers={SEQ_HEADER: str(seq)})

    def _report_links(self, run_id: str) -> list[dict[str, str]]:
        if self.reports is None:
            return []
        stem = safe_filename(run_id)
        names = (f"{stem}.html", f"{stem}_summary.json", f"{stem}_metrics.json")
        return [
            {"name": name, "url": f"/reports/{name}"}
            for name in names
            if (self.reports / name).is_file()
        ]

    async def alerts(self, request: Request) -> Response:
        state = _choice(request, "state", ALERT_STATES)
        limit = _int(request, "limit", 200, 1, 1000)
        rows = await self._read(lambda db: web_reads.alert_page(db, limit=limit, state=state))
        return json_response(rows)

    async def task(self, request: Request) -> Response:
        task_id = request.path_params["task_id"]
        limit = _int(request, "limit", 200, 1, 1000)
        rows = await self._read(lambda db: web_reads.task_history(db, task_id, limit))
        return json_response(rows)
