// One task id across runs: how long it took each time, as bars and a table.
import { api, badge, clear, el, humanDuration, humanTime, runLink, safeClass, showError, spanSeconds, svg, table } from "./common.js";

const taskId = decodeURIComponent(location.pathname.slice("/tasks/".length));
document.title = `${taskId} · runwatch`;
clear(document.getElementById("task-title"), "Task ", el("span", { class: "mono" }, taskId), " across runs");

async function load() {
  const { body } = await api(`/api/tasks/${encodeURIComponent(taskId)}`);
  const rows = body.map((t) => ({ ...t, seconds: spanSeconds(t.started_at, t.ended_at) }));
  const timed = rows.filter((t) => t.seconds !== null).reverse();
  const most = Math.max(1, ...timed.map((t) => t.seconds));
  const width = 900;
  const step = timed.length ? Math.max(3, Math.min(24, Math.floor((width - 60) / timed.length))) : 0;
  const chart = svg("svg", { class: "history", width, height: 160, viewBox: `0 0 ${width} 160` },
    svg("text", { x: 4, y: 12 }, `longest ${humanDuration(most)}`),
    timed.map((t, i) => svg("rect", {
      class: `bar s-${safeClass(t.status)}`, x: 50 + i * step, width: Math.max(step - 2, 1),
      y: 150 - (130 * t.seconds) / most, height: Math.max((130 * t.seconds) / most, 1),
    }, svg("title", {}, `${t.run_id}: ${humanDuration(t.seconds)} (${t.status})`))));
  clear(document.getElementById("chart"), timed.length ? chart : el("p", { class: "empty" }, "no finished attempt yet"));
  clear(document.getElementById("history"), table(["run", "run status", "task status", "attempts", "started", "duration"],
    rows.map((t) => el("tr", {}, el("td", {}, runLink(t.run_id)), el("td", {}, badge(t.run_status)), el("td", {}, badge(t.status)),
      el("td", { class: "num" }, t.attempts), el("td", {}, humanTime(t.started_at)), el("td", {}, humanDuration(t.seconds))))));
}

load().catch((error) => showError(document.getElementById("history"), error));
