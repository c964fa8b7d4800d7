// Notifications, one row per channel, with their delivery state; refreshed as runs change.
import { Live, api, badge, clear, el, humanTime, runLink, showError, table } from "./common.js";

let pending = null;

async function refresh() {
  const state = document.getElementById("state-filter").value;
  const [alerts, list] = await Promise.all([
    api(`/api/alerts?limit=500${state ? `&state=${encodeURIComponent(state)}` : ""}`),
    api("/api/runs?limit=1"),
  ]);
  const rows = alerts.body.map((a) => el("tr", { dataset: { state: a.state } },
    el("td", { title: a.decided_at }, humanTime(a.decided_at)),
    el("td", {}, a.rule ?? "-"), el("td", {}, a.payload?.severity ?? "-"), el("td", {}, a.channel),
    el("td", {}, badge(a.state)), el("td", { class: "num" }, a.attempts),
    el("td", {}, a.run_id ? runLink(a.run_id) : "-"),
    el("td", { class: "msg" }, a.payload?.summary ?? ""),
    el("td", { class: "msg" }, a.last_error ?? ""),
    el("td", {}, humanTime(a.done_at))));
  clear(document.getElementById("alerts"), rows.length
    ? table(["decided", "rule", "severity", "channel", "state", "attempts", "run", "summary", "last error", "done"], rows, { id: "alert-table" })
    : el("p", { class: "empty" }, "no notifications"));
  return list.seq;
}

function soon() {
  if (pending) return;
  pending = setTimeout(() => { pending = null; refresh().catch((e) => showError(document.getElementById("alerts"), e)); }, 1000);
}

const live = new Live({ onRun: soon, refresh });
document.getElementById("state-filter").addEventListener("change", () => live.reload());
live.reload();
