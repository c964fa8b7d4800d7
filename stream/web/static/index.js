// The front page: figures, the panels (active runs, recent completions, recent alerts) and
// the filtered list of all runs, kept current by the live feed without reloading.
import {
  ACTIVE, Live, ago, api, badge, clear, el, humanDuration, humanTime, progress, runLink,
  showError, table,
} from "./common.js";

const PAGE = 100;
const runs = new Map(); // run_id -> newest row seen, from the API or the feed
let overview = null;
let listed = []; // run ids the list shows, from the API, in its order
let stats = { events_per_s: null };
let drawing = false;

// Each panel is one entry: a title and a function from the state to its content (`wide`
// takes the whole row; `shown`, when given, says whether the panel applies at all).
export const PANELS = [
  { id: "slo", title: "Service levels", render: sloPanel, wide: true, shown: () => overview?.slo?.length },
  { id: "active", title: "Active runs", render: activePanel, wide: true },
  { id: "completed", title: "Recent completions", render: completedPanel },
  { id: "alerts", title: "Recent alerts", render: alertsPanel },
];

function filters() {
  const form = new FormData(document.getElementById("filter"));
  return { status: form.get("status") || "", q: (form.get("q") || "").trim() };
}

function matches(run, { status, q }) {
  if (status === "active" && !ACTIVE.has(run.status)) return false;
  if (status === "stalled" && !run.stalled) return false;
  if (status && status !== "active" && status !== "stalled" && run.status !== status) return false;
  return !q || run.run_id.toLowerCase().includes(q.toLowerCase());
}

function query(extra = {}) {
  const { status, q } = filters();
  const params = new URLSearchParams({ limit: String(PAGE), ...extra });
  if (status) params.set("status", status);
  if (q) params.set("q", q);
  return `/api/runs?${params}`;
}

async function refresh() {
  const [front, list] = await Promise.all([api("/api/overview"), api(query())]);
  overview = front.body;
  for (const run of [...overview.active, ...overview.completed, ...list.body]) {
    runs.set(run.run_id, run);
  }
  listed = list.body.map((r) => r.run_id);
  document.getElementById("more").hidden = list.body.length < PAGE;
  draw();
  return Math.min(front.seq, list.seq);
}

function onRun(run) {
  runs.set(run.run_id, run);
  if (matches(run, filters()) && !listed.includes(run.run_id)) listed.push(run.run_id);
  schedule();
  countsSoon();
}

// The figures count every run, not only those on the page: re-read them, at most every 2 s.
let counting = null;
function countsSoon() {
  if (counting) return;
  counting = setTimeout(async () => {
    try {
      overview = (await api("/api/overview")).body;
      // the stream already brought every change of a run it knows; only add the others
      for (const run of [...overview.active, ...overview.completed]) {
        if (!runs.has(run.run_id)) runs.set(run.run_id, run);
      }
      schedule();
    } catch { /* the next change tries again */ }
    counting = null;
  }, 2000);
}

function schedule() {
  if (drawing) return;
  drawing = true;
  requestAnimationFrame(() => { drawing = false; draw(); });
}

function draw() {
  drawFigures();
  const holder = document.getElementById("panels");
  for (const panel of PANELS) {
    if (panel.shown && !panel.shown()) continue;
    let section = document.getElementById(`panel-${panel.id}`);
    if (!section) {
      section = el("section", { class: panel.wide ? "panel wide" : "panel", id: `panel-${panel.id}` });
      holder.append(section);
    }
    clear(section, el("h2", {}, panel.title), panel.render());
  }
  drawList();
}

function allRuns() {
  return [...runs.values()];
}

function drawFigures() {
  const totals = overview ? overview.counts : {};
  const stalled = overview ? overview.stalled : 0;
  const service = overview?.service;
  const figure = (label, value, cls = "") =>
    el("div", { class: `figure ${cls}` }, el("span", { class: "value" }, value), el("span", { class: "label" }, label));
  clear(document.getElementById("figures"),
    figure("running", totals.running || 0, "s-running-text"),
    figure("pending", totals.pending || 0),
    figure("stalled", stalled, stalled ? "warn" : ""),
    figure("succeeded", totals.succeeded || 0),
    figure("failed", (totals.failed || 0) + (totals.partial || 0), "s-failed-text"),
    figure("events/s", stats.events_per_s ?? "-"),
    figure("ingest lag", service ? humanDuration(service.ingest_lag_seconds) : "n/a"));
}

function activePanel() {
  const active = allRuns()
    .filter((r) => ACTIVE.has(r.status))
    .sort((a, b) => (b.stalled - a.stalled) || cmp(b.last_event_at, a.last_event_at));
  if (!active.length) return el("p", { class: "empty" }, "no active runs");
  return table(["run", "status", "progress", "running for", "last event"],
    active.slice(0, 50).map((r) => el("tr", { class: r.stalled ? "stalled" : "", dataset: { run: r.run_id } },
      el("td", {}, runLink(r.run_id)),
      el("td", {}, badge(r.status), r.stalled ? el("span", { class: "badge s-warning" }, "stalled") : null),
      el("td", {}, progress(r)),
      el("td", {}, ago(r.started_at || r.created_at).replace(" ago", "")),
      el("td", { title: r.last_event_at || "" }, ago(r.last_event_at)))),
    { id: "active-runs" });
}

function completedPanel() {
  const done = allRuns()
    .filter((r) => !ACTIVE.has(r.status) && r.ended_at)
    .sort((a, b) => cmp(b.ended_at, a.ended_at))
    .slice(0, 15);
  if (!done.length) return el("p", { class: "empty" }, "none yet");
  return table(["run", "status", "tasks", "duration", "ended"],
    done.map((r) => el("tr", { dataset: { run: r.run_id } },
      el("td", {}, runLink(r.run_id)), el("td", {}, badge(r.status)),
      el("td", {}, `${r.tasks_succeeded}/${r.tasks_total}` + (r.tasks_failed ? `, ${r.tasks_failed} failed` : "")),
      el("td", {}, humanDuration(r.duration_s)),
      el("td", { title: r.ended_at }, ago(r.ended_at)))));
}

const percent = (value) => (value === null || value === undefined ? "-" : `${(value * 100).toFixed(2)}%`);
const rate = (value) => (value === null || value === undefined ? "-" : value.toFixed(2));

function sloPanel() {
  const windows = ["5m", "30m", "1h", "2h", "6h", "1d", "3d"];
  return table(["SLO", "objective", "runs", "bad", "good share", "budget left", ...windows.map((w) => `burn ${w}`), "alert"],
    overview.slo.map((s) => el("tr", { dataset: { slo: s.name } },
      el("td", {}, s.name), el("td", {}, percent(s.objective)), el("td", { class: "num" }, s.total),
      el("td", { class: "num" }, s.bad), el("td", {}, percent(s.ratio)),
      el("td", { class: s.budget_remaining !== null && s.budget_remaining < 0 ? "warn" : "" }, percent(s.budget_remaining)),
      ...windows.map((w) => el("td", { class: "num" }, rate(s.burn_rates[w]))),
      el("td", {}, s.alert ? el("span", { class: `badge ${s.alert === "page" ? "s-failed" : "s-warning"}` }, s.alert) : "ok"))));
}

function alertsPanel() {
  const alerts = overview?.alerts || [];
  if (!alerts.length) return el("p", { class: "empty" }, "no notifications");
  return el("div", {},
    table(["decided", "rule", "channel", "state", "run"],
      alerts.map((a) => el("tr", {},
        el("td", { title: a.decided_at }, ago(a.decided_at)), el("td", {}, a.rule ?? "-"),
        el("td", {}, a.channel), el("td", {}, badge(a.state)),
        el("td", {}, a.run_id ? runLink(a.run_id) : "-")))),
    el("a", { href: "/alerts" }, "all alerts"));
}

function drawList() {
  const wanted = filters();
  const rows = listed.map((id) => runs.get(id)).filter((r) => r && matches(r, wanted));
  rows.sort((a, b) => cmp(b.last_event_at, a.last_event_at) || cmp(a.run_id, b.run_id));
  const holder = document.getElementById("run-list");
  if (!rows.length) { clear(holder, el("p", { class: "empty" }, "no runs match")); return; }
  clear(holder, table(["run", "status", "progress", "errors", "duration", "last event"],
    rows.map((r) => el("tr", { class: r.stalled ? "stalled" : "", dataset: { run: r.run_id, status: r.status } },
      el("td", {}, runLink(r.run_id)),
      el("td", {}, badge(r.status), r.stalled ? el("span", { class: "badge s-warning" }, "stalled") : null),
      el("td", {}, progress(r)),
      el("td", { class: "num" }, r.error_events),
      el("td", {}, humanDuration(r.duration_s)),
      el("td", { title: r.last_event_at || "" }, humanTime(r.last_event_at)))),
    { id: "runs" }));
}

async function older() {
  const last = listed.map((id) => runs.get(id)).filter(Boolean)
    .reduce((low, r) => (!low || cmp(r.last_event_at, low) < 0 ? r.last_event_at : low), null);
  const { body } = await api(query(last ? { before: last } : {}));
  for (const run of body) { runs.set(run.run_id, run); if (!listed.includes(run.run_id)) listed.push(run.run_id); }
  document.getElementById("more").hidden = body.length < PAGE;
  draw();
}

function cmp(a, b) {
  return a === b ? 0 : (a ?? "") < (b ?? "") ? -1 : 1;
}

const live = new Live({
  onRun,
  onStats: (figures) => { stats = figures; schedule(); },
  refresh,
});

let typing = null;
document.getElementById("filter").addEventListener("input", () => {
  clearTimeout(typing);
  typing = setTimeout(() => live.reload(), 200);
});
document.getElementById("filter").addEventListener("submit", (event) => event.preventDefault());
document.getElementById("more").addEventListener("click", () => older().catch((e) => showError(document.getElementById("run-list"), e)));
live.reload().catch((error) => showError(document.getElementById("run-list"), error));
