// One run: header, timeline (attempts, waits, zoom), events of the selected task (paged),
// failures, pattern runs, workstreams, reports, archive and alerts; refreshed when the live
// feed says the run changed.
import {
  Live, api, badge, clear, el, humanDuration, humanTime, runLink, showError, table, taskLink,
} from "./common.js";
import { Timeline } from "./timeline.js";

const runId = decodeURIComponent(location.pathname.slice("/runs/".length));
const PAGE = 100;
let selected = new URLSearchParams(location.search).get("task");
let offset = 0;
let pending = null;
const timeline = new Timeline(document.getElementById("timeline"), { onSelect: select });

document.title = `${runId} · runwatch`;

function detailPath() {
  const params = new URLSearchParams({ offset: String(offset), limit: String(PAGE) });
  if (selected) params.set("task", selected);
  return `/api/runs/${encodeURIComponent(runId)}?${params}`;
}

async function refresh() {
  const detail = await api(detailPath());
  draw(detail.body);
  return detail.seq;
}

function select(taskId) {
  selected = selected === taskId ? null : taskId;
  offset = 0;
  const url = new URL(location.href);
  if (selected) url.searchParams.set("task", selected); else url.searchParams.delete("task");
  history.replaceState(null, "", url);
  reloadSoon(0);
}

function reloadSoon(delay = 1000) {
  if (pending) return;
  pending = setTimeout(async () => {
    pending = null;
    try { draw((await api(detailPath())).body); } catch (error) { showError(document.getElementById("events"), error); }
  }, delay);
}

function draw(data) {
  const { run, derived } = data;
  drawHeader(run, derived);
  timeline.show(derived.timeline, selected);
  drawEvents(data.events);
  drawFailures(derived.failures);
  drawPatterns(data.pattern_runs);
  drawWorkstreams(data.workstreams);
  drawArtifacts(derived);
}

function drawHeader(run, derived) {
  const fact = (label, value) => el("div", { class: "fact" }, el("span", { class: "label" }, label), el("span", {}, value));
  clear(document.getElementById("run-header"),
    el("h1", {}, el("span", { id: "run-id" }, run.run_id), " ", badge(run.status),
      run.stalled ? el("span", { class: "badge s-warning" }, "stalled") : null),
    el("div", { class: "facts" },
      fact("tasks", `${run.tasks_succeeded} succeeded, ${run.tasks_failed} failed, ${run.tasks_running} running, ${run.tasks_pending} pending of ${run.tasks_total}`),
      fact("duration", run.duration_s === null ? `${humanDuration(sinceStart(run))} so far` : humanDuration(run.duration_s)),
      fact("started", humanTime(run.started_at || run.created_at)),
      fact("ended", humanTime(run.ended_at)),
      fact("last event", humanTime(run.last_event_at)),
      fact("events", `${run.events_total} (${run.error_events} errors)` +
        (derived.events_missing ? `, ${derived.events_missing} no longer readable in the logs` : ""))));
}

function sinceStart(run) {
  const start = run.started_at || run.created_at;
  const end = run.last_event_at;
  return start && end ? (Date.parse(end) - Date.parse(start)) / 1000 : null;
}

function drawEvents(events) {
  clear(document.getElementById("events-title"), "Events",
    events.task ? [" of task ", el("span", { class: "mono" }, events.task), " ",
      el("button", { type: "button", onclick: () => select(events.task) }, "show all")] : null);
  const rows = events.items.map((e) => el("tr", { class: e.severity === "error" || e.severity === "critical" ? "error-row" : "" },
    el("td", { class: "mono" }, humanTime(e.time) + e.time.slice(19, 23)),
    el("td", {}, e.type), el("td", {}, e.severity),
    el("td", {}, e.task_id ? el("a", { href: "#", class: "pick", onclick: (ev) => { ev.preventDefault(); select(e.task_id); } }, e.task_id) : "-"),
    el("td", { class: "payload" }, JSON.stringify(e.payload))));
  const last = Math.min(events.offset + events.limit, events.total);
  clear(document.getElementById("events"),
    events.total ? table(["time", "type", "severity", "task", "payload"], rows, { id: "event-table" }) : el("p", { class: "empty" }, "no events"),
    el("div", { class: "pager" },
      el("button", { type: "button", disabled: events.offset === 0, onclick: () => { offset = Math.max(0, offset - PAGE); reloadSoon(0); } }, "newer ←"),
      ` ${events.total ? events.offset + 1 : 0}–${last} of ${events.total} `,
      el("button", { type: "button", disabled: last >= events.total, onclick: () => { offset += PAGE; reloadSoon(0); } }, "→ later")));
}

function drawFailures(failures) {
  clear(document.getElementById("failures"), failures.length
    ? table(["task", "workstream", "attempts", "ended", "error"],
      failures.map((f) => el("tr", {},
        el("td", {}, taskLink(f.task_id)), el("td", {}, f.workstream_id ?? "-"), el("td", { class: "num" }, f.attempts),
        el("td", {}, humanTime(f.ended_at)), el("td", { class: "msg" }, f.error ?? "(no message)"))), { id: "failures-table" })
    : el("p", { class: "empty" }, "no failed tasks"));
}

function drawPatterns(patterns) {
  clear(document.getElementById("patterns"), patterns.length
    ? table(["pattern run", "pattern", "step", "status", "phase", "started", "duration", "error"],
      patterns.map((p) => el("tr", {},
        el("td", { class: "mono" }, p.pattern_run_id), el("td", {}, p.pattern_id ?? "-"), el("td", {}, p.step_id ?? "-"),
        el("td", {}, badge(p.status)), el("td", {}, p.phase ?? "-"), el("td", {}, humanTime(p.started_at)),
        el("td", {}, humanDuration(p.duration_s)), el("td", { class: "msg" }, p.error_message ?? ""))))
    : el("p", { class: "empty" }, "none"));
}

function drawWorkstreams(workstreams) {
  clear(document.getElementById("workstreams"), workstreams.length
    ? table(["workstream", "status", "tasks", "succeeded", "failed", "running"],
      workstreams.map((w) => el("tr", {},
        el("td", {}, w.workstream_id), el("td", {}, badge(w.status)), el("td", { class: "num" }, w.tasks_total),
        el("td", { class: "num" }, w.tasks_succeeded), el("td", { class: "num" }, w.tasks_failed), el("td", { class: "num" }, w.tasks_running))))
    : el("p", { class: "empty" }, "none"));
}

function drawArtifacts(derived) {
  const reports = derived.reports.length
    ? el("ul", {}, derived.reports.map((r) => el("li", {}, el("a", { href: r.url }, r.name))))
    : el("p", { class: "empty" }, "no report written yet (reports are written when a run ends)");
  const archives = derived.archives.length
    ? table(["archive", "size", "members", "sha256", "written"],
      derived.archives.map((a) => el("tr", {},
        el("td", { class: "mono" }, a.archive_path), el("td", { class: "num" }, a.size_bytes), el("td", { class: "num" }, a.members),
        el("td", { class: "mono" }, a.sha256.slice(0, 16) + "…"), el("td", {}, humanTime(a.archived_at)))))
    : el("p", { class: "empty" }, "not archived");
  const alerts = derived.alerts.length
    ? table(["decided", "rule", "channel", "state", "attempts", "last error"],
      derived.alerts.map((a) => el("tr", {},
        el("td", {}, humanTime(a.decided_at)), el("td", {}, a.rule ?? "-"), el("td", {}, a.channel),
        el("td", {}, badge(a.state)), el("td", { class: "num" }, a.attempts), el("td", { class: "msg" }, a.last_error ?? ""))))
    : el("p", { class: "empty" }, "no notifications");
  clear(document.getElementById("artifacts"), el("h3", {}, "Reports"), reports, el("h3", {}, "Archive"), archives,
    el("h3", {}, "Alerts"), alerts, el("p", {}, el("a", { href: "/" }, "all runs"), " · ", runLink(runId)));
}

const live = new Live({
  onRun: (run) => { if (run.run_id === runId) reloadSoon(); },
  refresh,
});
live.reload().catch((error) => showError(document.getElementById("run-header"), error));
