// Shared by every page: DOM building that only ever sets text (never HTML), the API, human
// durations and times, and the live feed with its polling fallback.

export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (name === "class") node.className = value;
    else if (name === "dataset") Object.assign(node.dataset, value);
    else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value === true ? "" : String(value));
  }
  append(node, children);
  return node;
}

export function svg(tag, attrs = {}, ...children) {
  const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === null || value === undefined) continue;
    if (name === "dataset") Object.assign(node.dataset, value);
    else node.setAttribute(name, String(value));
  }
  append(node, children);
  return node;
}

function append(node, children) {
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

export function clear(node, ...children) {
  node.replaceChildren();
  append(node, children);
  return node;
}

export async function api(path) {
  const response = await fetch(path, { credentials: "same-origin", cache: "no-store" });
  if (!response.ok) {
    let detail = response.statusText;
    try { detail = (await response.json()).error || detail; } catch { /* not JSON */ }
    const error = new Error(`${response.status}: ${detail}`);
    error.status = response.status;
    throw error;
  }
  const seq = response.headers.get("X-Runwatch-Change-Seq");
  return { body: await response.json(), seq: seq === null ? null : Number(seq) };
}

export function humanDuration(seconds) {
  if (seconds === null || seconds === undefined) return "-";
  if (seconds < 1) return `${Math.round(seconds * 1000)}ms`;
  if (seconds < 10) return `${seconds.toFixed(1)}s`;
  const whole = Math.round(seconds);
  const days = Math.floor(whole / 86400);
  const hours = Math.floor((whole % 86400) / 3600);
  const minutes = Math.floor((whole % 3600) / 60);
  const secs = whole % 60;
  const two = (n) => String(n).padStart(2, "0");
  if (days) return `${days}d ${hours}h`;
  if (hours) return `${hours}h ${two(minutes)}m`;
  if (minutes) return secs ? `${minutes}m ${two(secs)}s` : `${minutes}m`;
  return `${secs}s`;
}

export function humanTime(iso) {
  return iso ? iso.slice(0, 19).replace("T", " ") : "-";
}

export function ago(iso) {
  if (!iso) return "-";
  return `${humanDuration(Math.max(0, (Date.now() - Date.parse(iso)) / 1000))} ago`;
}

export function micros(iso) {
  // Date keeps milliseconds only; the microseconds are added back from the text.
  const extra = /\.\d{3}(\d{0,3})/.exec(iso);
  const tail = extra ? Number(extra[1].padEnd(3, "0")) : 0;
  return Date.parse(iso) * 1000 + tail;
}

export function spanSeconds(start, end) {
  return start && end ? Math.max(0, (micros(end) - micros(start)) / 1e6) : null;
}

export const ACTIVE = new Set(["pending", "running"]);

export function badge(status) {
  return el("span", { class: `badge s-${safeClass(status)}` }, status ?? "-");
}

export function safeClass(status) {
  return /^[a-z]+$/.test(status || "") ? status : "other";
}

export function runLink(runId) {
  return el("a", { href: `/runs/${encodeURIComponent(runId)}`, class: "run-link" }, runId);
}

export function taskLink(taskId) {
  return el("a", { href: `/tasks/${encodeURIComponent(taskId)}` }, taskId);
}

export function progress(run) {
  const done = run.tasks_succeeded + run.tasks_failed + run.tasks_skipped + run.tasks_canceled;
  const total = Math.max(run.tasks_total, done + run.tasks_running + run.tasks_pending);
  const bar = el("progress", { max: total || 1, value: done });
  return el("span", { class: "progress" }, bar, ` ${done}/${total}`);
}

export function table(headers, rows, attrs = {}) {
  return el("table", attrs,
    el("thead", {}, el("tr", {}, headers.map((h) => el("th", {}, h)))),
    el("tbody", {}, rows));
}

export function showError(where, error) {
  clear(where, el("p", { class: "error" }, `could not load: ${error.message}`));
}

// The live feed: Server-Sent Events from `after` on; polling every `pollMs` when the
// browser cannot keep a stream; nothing at all while the tab is hidden (on return the page
// refreshes, then listens from the change number it got).
export class Live {
  constructor({ onRun, onStats, refresh, pollMs = 5000 }) {
    Object.assign(this, { onRun, onStats, refresh, pollMs });
    this.seq = null;
    this.source = null;
    this.timer = null;
    this.failures = 0;
    document.addEventListener("visibilitychange", () => this.visibility());
  }

  start(seq) {
    this.seq = seq;
    this.stop();
    if (document.hidden) return;
    if (typeof EventSource === "undefined" || this.failures >= 3) return this.poll();
    const after = this.seq === null ? "" : `?after=${this.seq}`;
    const source = new EventSource(`/api/events${after}`);
    this.source = source;
    source.addEventListener("open", () => { this.failures = 0; setState("live"); });
    source.addEventListener("run", (message) => {
      this.seq = Number(message.lastEventId);
      this.onRun(JSON.parse(message.data));
    });
    source.addEventListener("stats", (message) => this.onStats?.(JSON.parse(message.data)));
    source.addEventListener("reset", () => this.reload());
    source.addEventListener("error", () => {
      this.failures += 1;
      setState("reconnecting");
      if (this.failures >= 3) { this.stop(); this.poll(); }
    });
  }

  poll() {
    setState("polling");
    this.timer = setTimeout(() => this.reload(), this.pollMs);
  }

  async reload() {
    this.stop();
    if (document.hidden) return;
    try {
      this.start(await this.refresh());
    } catch {
      this.poll();
    }
  }

  stop() {
    if (this.source) { this.source.close(); this.source = null; }
    if (this.timer) { clearTimeout(this.timer); this.timer = null; }
  }

  visibility() {
    if (document.hidden) { this.stop(); setState("paused"); }
    else this.reload();
  }
}

function setState(state) {
  const node = document.getElementById("live-state");
  if (node) { node.textContent = state; node.dataset.state = state; }
}
