"""The dashboard's HTTP contract, against the app served by uvicorn on 127.0.0.1: the JSON
API, the security headers, read-only methods, the bearer token, and the live event stream
(delivery within a second of the commit, Last-Event-ID resumption, reset, heartbeats)."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import requests

from runwatch.projections.slo import Slo
from runwatch.sinks.store import Store
from runwatch.stream.web.app import Dashboard
from runwatch.stream.web.server import WebServer
from webcorpus import HOSTILE_ERROR, HOSTILE_RUN, RETRIED, Stream, commit_runs, run_row


def get(server: WebServer, path: str, **kwargs: Any) -> requests.Response:
    return requests.get(server.url + path, timeout=10, **kwargs)


def test_run_list_filters_pages_and_names_its_change_number(served: WebServer) -> None:
    """The list a page draws must say which change it is at, so the feed resumes after it."""
    everything = get(served, "/api/runs")
    assert everything.status_code == 200
    ids = [r["run_id"] for r in everything.json()]
    assert set(ids) >= {RETRIED, HOSTILE_RUN, "R-ok", "R-run"}
    assert int(everything.headers["X-Runwatch-Change-Seq"]) >= 4
    assert [r["run_id"] for r in get(served, "/api/runs?status=failed").json()] == [HOSTILE_RUN]
    assert {r["run_id"] for r in get(served, "/api/runs?status=active").json()} >= {"R-run"}
    assert [r["run_id"] for r in get(served, "/api/runs?q=RETR").json()] == [RETRIED]
    assert get(served, "/api/runs?q=%25").json() == [], "% is a character, not a wildcard"
    first = get(served, "/api/runs?limit=1").json()
    older = get(served, f"/api/runs?before={quote(first[0]['last_event_at'])}").json()
    assert first[0]["run_id"] not in {r["run_id"] for r in older} and older
    bad = get(served, "/api/runs?limit=0")
    assert bad.status_code == 400 and "limit" in bad.json()["error"]
    assert get(served, "/api/runs?status=bogus").status_code == 400


def test_run_detail_has_attempts_waits_failures_and_paged_events(served: WebServer) -> None:
    """One segment per attempt with the wait between them: what a retry cost is visible."""
    body = get(served, f"/api/runs/{RETRIED}?task=T1&limit=2").json()
    assert set(body) == {"run", "tasks", "workstreams", "pattern_runs", "events", "derived"}
    lanes = {w["workstream_id"]: w["tasks"] for w in body["derived"]["timeline"]["workstreams"]}
    assert list(lanes) == ["WS-A", "WS-B"]
    (t1,) = lanes["WS-A"]
    assert [(a["attempt"], a["status"], a["wait_s"]) for a in t1["attempts"]] == [
        (1, "failed", None),
        (2, "succeeded", 1770.0),
    ]
    events = body["events"]
    assert events["total"] == 4 and len(events["items"]) == 2
    assert {e["task_id"] for e in events["items"]} == {"T1"}
    hostile = get(served, f"/api/runs/{quote(HOSTILE_RUN, safe='')}").json()
    assert hostile["run"]["run_id"] == HOSTILE_RUN
    assert hostile["derived"]["failures"][0]["error"] == HOSTILE_ERROR
    assert get(served, "/api/runs/nope").status_code == 404


def test_alerts_and_overview(served: WebServer) -> None:
    overview = get(served, "/api/overview").json()
    assert overview["counts"]["failed"] == 1 and {r["run_id"] for r in overview["active"]} >= {
        "R-run"
    }
    alerts = get(served, "/api/alerts").json()
    assert alerts and {"rule", "channel", "state", "payload"} <= set(alerts[0])
    assert all(a["state"] == "recorded" for a in get(served, "/api/alerts?state=recorded").json())


def test_read_only_with_security_headers(served: WebServer) -> None:
    """Only GET and HEAD; every answer forbids inline script and sniffing."""
    for method in ("POST", "PUT", "DELETE", "PATCH"):
        refused = requests.request(method, served.url + "/api/runs", timeout=10)
        assert refused.status_code == 405 and refused.headers["Allow"] == "GET, HEAD"
    for path in ("/", f"/runs/{RETRIED}", "/alerts", "/api/runs", "/static/common.js"):
        response = get(served, path)
        assert response.status_code == 200, path
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        csp = response.headers["Content-Security-Policy"]
        assert "script-src 'self'" in csp and "unsafe-inline" not in csp
    assert requests.head(served.url + "/", timeout=10).status_code == 200
    for page in ("index.html", "run.html", "alerts.html", "task.html"):
        text = (Path(__file__).parents[2] / "stream/web/static" / page).read_text()
        assert "<script>" not in text and " on" + "load=" not in text, page
    assert get(served, "/nope").status_code == 404
    assert get(served, "/metrics").status_code == 404, "serve has no service metrics"


def test_the_token_guards_every_page_and_call(projection: Path) -> None:
    """With a token, nothing but the health checks answers without it."""
    token = "s3cret-token-0123456789"
    server = WebServer(
        "127.0.0.1", 0, Dashboard(projection, token=token, health=lambda _: (True, {}))
    )
    server.start()
    try:
        for path in ("/", "/api/runs", "/api/events", "/static/app.css"):
            assert get(server, path).status_code == 401, path
        assert get(server, "/healthz").status_code == 200
        wrong = {"Authorization": "Bearer nope"}
        assert get(server, "/api/runs", headers=wrong).status_code == 401
        right = {"Authorization": f"Bearer {token}"}
        assert get(server, "/api/runs", headers=right).status_code == 200
        browser = requests.Session()
        login = browser.get(f"{server.url}/?token={token}", timeout=10)
        assert login.status_code == 200 and "token" not in login.url
        assert browser.get(server.url + "/api/runs", timeout=10).status_code == 200
    finally:
        server.stop()


def test_a_commit_reaches_the_stream_within_a_second(served: WebServer, writer: Store) -> None:
    """The dashboard is live: every committed change of a run is pushed, in commit order."""
    head = int(get(served, "/api/runs?limit=1").headers["X-Runwatch-Change-Seq"])
    stream = Stream(f"{served.url}/api/events?after={head}")
    try:
        stream.next(name="stats")  # subscribed
        committed = time.monotonic()
        commit_runs(writer, run_row("R-live", status="running"))
        _, first_id, row = stream.next()
        assert time.monotonic() - committed < 1.0
        assert row["run_id"] == "R-live" and int(first_id or 0) == head + 1
        commit_runs(writer, run_row("R-live", status="failed", ended_at="2026-12-01T10:00:00Z"))
        commit_runs(writer, run_row("R-other"))
        seen = [stream.next()[2] for _ in range(2)]
        assert [(r["run_id"], r["status"]) for r in seen] == [
            ("R-live", "failed"),
            ("R-other", "running"),
        ]
        stream.next(deadline_s=3, name="stats")
        assert stream.comments >= 1, "heartbeats keep proxies from closing an idle stream"
    finally:
        stream.close()
    resumed = Stream(f"{served.url}/api/events", headers={"Last-Event-ID": first_id or ""})
    try:
        later = {resumed.next()[2]["run_id"] for _ in range(2)}
        assert later == {"R-live", "R-other"}, "what was committed after the id, nothing lost"
    finally:
        resumed.close()
    rebuilt = Stream(f"{served.url}/api/events?after=999999")
    try:
        _, _, reset = rebuilt.next(name="reset")
        assert reset["seq"] < 999999, "an id from before a rebuild asks the page to reload"
    finally:
        rebuilt.close()


@pytest.mark.parametrize("store_target", ["postgres"], indirect=True)
def test_the_feed_follows_a_postgresql_projection(store_target: str, store: Store) -> None:
    """`runwatch serve` over the scale-out projection: changes other processes commit."""
    commit_runs(store, run_row("P-1"))
    server = WebServer("127.0.0.1", 0, Dashboard(store_target, poll_s=0.05))
    server.start()
    try:
        assert [r["run_id"] for r in get(server, "/api/runs").json()] == ["P-1"]
        stream = Stream(f"{server.url}/api/events?after=1")
        try:
            stream.next(name="stats")
            commit_runs(store, run_row("P-2"), stalled=[(1, "P-1")])
            seen = [stream.next()[2] for _ in range(2)]
            assert [(r["run_id"], r["stalled"]) for r in seen] == [("P-2", 0), ("P-1", 1)]
        finally:
            stream.close()
    finally:
        server.stop()


DECADE_S = 10 * 365 * 86400.0
SLOS = (
    Slo("runs_succeed", "success", 0.9, DECADE_S, min_events=1),
    Slo("runs_quick", "duration", 0.5, DECADE_S, threshold_s=3600.0, min_events=1),
)


def test_slos_are_judged_now_over_the_finished_runs(projection: Path, served: WebServer) -> None:
    """/api/slo answers as `runwatch slo --json` does, and the overview carries the same
    judgement for the front page's panel; without SLOs configured the list is empty."""
    assert get(served, "/api/slo").json() == []
    assert "slo" not in get(served, "/api/overview").json()
    server = WebServer("127.0.0.1", 0, Dashboard(projection, slos=SLOS))
    server.start()
    try:
        judged = get(server, "/api/slo").json()
        overview = get(server, "/api/overview").json()
    finally:
        server.stop()
    connection = sqlite3.connect(f"file:{projection}?mode=ro", uri=True)
    try:
        counted, bad = connection.execute(
            "SELECT count(*), count(*) FILTER (WHERE status != 'succeeded') FROM runs "
            "WHERE status IN ('succeeded', 'failed', 'partial', 'quarantined') "
            "AND ended_at IS NOT NULL"
        ).fetchone()
    finally:
        connection.close()
    assert counted >= 2 and bad >= 1
    assert [s["name"] for s in judged] == ["runs_succeed", "runs_quick"]
    success = judged[0]
    assert set(success) == {
        "name", "sli", "objective", "window_s", "total", "good", "bad", "ratio",
        "budget_remaining", "burn_rates", "alert",
    }  # fmt: skip
    assert (success["total"], success["good"], success["bad"]) == (counted, counted - bad, bad)
    assert success["budget_remaining"] == pytest.approx(1 - bad / (0.1 * counted))
    assert [(s["name"], s["total"], s["bad"]) for s in overview["slo"]] == [
        (s["name"], s["total"], s["bad"]) for s in judged
    ]
