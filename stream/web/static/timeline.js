// The run timeline (the same model as the HTML report's, from /api/runs/<id> derived.timeline):
// lanes grouped by workstream, one bar per attempt, a dashed line for each wait between two
// attempts. Zoom: drag across the plot to pick a range, the buttons, or double-click to fit.
import { clear, el, humanDuration, humanTime, micros, safeClass, svg } from "./common.js";

const LABEL = 260;
const ROW = 20;
const TOP = 28;

export class Timeline {
  constructor(holder, { onSelect }) {
    this.holder = holder;
    this.onSelect = onSelect;
    this.model = null;
    this.window = null; // [lo, hi] in µs, or null: the whole run
    this.selected = null;
  }

  show(model, selected) {
    this.model = model;
    this.selected = selected;
    this.draw();
  }

  bounds() {
    const lo = micros(this.model.start);
    const hi = Math.max(micros(this.model.end), lo + 1);
    return [lo, hi];
  }

  zoom(factor) {
    const [lo, hi] = this.window || this.bounds();
    const middle = (lo + hi) / 2;
    const half = Math.max(((hi - lo) * factor) / 2, 500);
    this.window = [middle - half, middle + half];
    this.draw();
  }

  fit() {
    this.window = null;
    this.draw();
  }

  draw() {
    const model = this.model;
    const tools = el("div", { class: "timeline-tools" },
      el("button", { type: "button", onclick: () => this.zoom(0.5) }, "zoom in"),
      el("button", { type: "button", onclick: () => this.zoom(2) }, "zoom out"),
      el("button", { type: "button", onclick: () => this.fit() }, "fit"),
      el("span", { class: "hint" }, "drag across the bars to zoom into a range; click a task to see its events"));
    if (!model || !model.start || !model.workstreams.length) {
      clear(this.holder, el("p", { class: "empty" }, "no task has started yet"));
      return;
    }
    const [lo, hi] = this.window || this.bounds();
    const rows = [];
    for (const lane of model.workstreams) {
      rows.push({ lane: lane.workstream_id });
      for (const task of lane.tasks) rows.push({ task });
    }
    const width = Math.max(this.holder.clientWidth || 900, 600);
    const plot = width - LABEL - 16;
    const height = TOP + rows.length * ROW + 6;
    const x = (us) => LABEL + ((us - lo) * plot) / (hi - lo);
    const chart = svg("svg", { class: "gantt", width, height, viewBox: `0 0 ${width} ${height}` });
    const origin = micros(model.start);
    const axis = svg("g", { class: "axis" });
    for (let k = 0; k <= 4; k += 1) {
      const at = lo + ((hi - lo) * k) / 4;
      axis.append(
        svg("line", { x1: x(at), y1: TOP - 6, x2: x(at), y2: height }),
        svg("text", { x: x(at), y: TOP - 10, "text-anchor": k === 0 ? "start" : k === 4 ? "end" : "middle" },
          at <= origin ? "start" : `+${humanDuration((at - origin) / 1e6)}`));
    }
    chart.append(axis, svg("clipPath", { id: "plot-area" }, svg("rect", { x: LABEL, y: 0, width: plot, height })));
    const bars = svg("g", { "clip-path": "url(#plot-area)" });
    rows.forEach((row, index) => {
      const y = TOP + index * ROW;
      if (row.lane !== undefined) {
        chart.append(svg("text", { x: 4, y: y + 14, class: "lane" }, row.lane ?? "(no workstream)"));
        chart.append(svg("line", { x1: 0, x2: width, y1: y + 1, y2: y + 1, class: "lane-rule" }));
        return;
      }
      const task = row.task;
      const shown = task.name || task.task_id;
      const label = shown.length > 32 ? `${shown.slice(0, 31)}…` : shown;
      const name = svg("text", {
        x: LABEL - 6, y: y + 14, "text-anchor": "end",
        class: `task-label${task.task_id === this.selected ? " selected" : ""}`,
        dataset: { task: task.task_id },
      }, label, svg("title", {}, task.name ? `${task.name} (${task.task_id})` : task.task_id));
      name.addEventListener("click", () => this.onSelect(task.task_id));
      chart.append(name);
      let previous = null;
      for (const attempt of task.attempts) {
        const start = micros(attempt.start);
        const end = micros(attempt.end);
        if (previous !== null && start > previous) {
          bars.append(svg("line", {
            class: "wait", x1: x(previous), x2: x(start), y1: y + 10, y2: y + 10,
            dataset: { task: task.task_id },
          }, svg("title", {}, `${task.task_id}: waited ${humanDuration(attempt.wait_s)} before attempt ${attempt.attempt}`)));
        }
        const left = x(start);
        const bar = svg("rect", {
          class: `bar attempt s-${safeClass(attempt.status)}${attempt.open ? " open" : ""}${task.task_id === this.selected ? " selected" : ""}`,
          x: left, y: y + 3, width: Math.max(x(end) - left, 2), height: ROW - 6, rx: 2,
          dataset: { task: task.task_id, attempt: attempt.attempt, status: attempt.status },
        }, svg("title", {},
          `${task.task_id} attempt ${attempt.attempt}: ${attempt.status}, ${humanDuration(attempt.duration_s)}` +
          ` (${humanTime(attempt.start)} → ${attempt.open ? "still running" : humanTime(attempt.end)})`));
        bar.addEventListener("click", () => this.onSelect(task.task_id));
        bars.append(bar);
        previous = end;
      }
    });
    chart.append(bars);
    this.brush(chart, x, lo, hi, plot, height);
    clear(this.holder, tools, el("div", { class: "timeline-scroll" }, chart));
  }

  brush(chart, x, lo, hi, plot, height) {
    const toTime = (px) => lo + ((px - LABEL) * (hi - lo)) / plot;
    const band = svg("rect", { class: "brush", x: 0, y: 0, width: 0, height, visibility: "hidden" });
    chart.append(band);
    let from = null;
    const local = (event) => event.clientX - chart.getBoundingClientRect().left;
    chart.addEventListener("mousedown", (event) => {
      if (local(event) < LABEL) return;
      from = local(event);
      band.setAttribute("visibility", "visible");
      band.setAttribute("x", from);
      band.setAttribute("width", 0);
    });
    chart.addEventListener("mousemove", (event) => {
      if (from === null) return;
      const to = local(event);
      band.setAttribute("x", Math.min(from, to));
      band.setAttribute("width", Math.abs(to - from));
    });
    chart.addEventListener("mouseup", (event) => {
      if (from === null) return;
      const to = local(event);
      const [a, b] = [Math.min(from, to), Math.max(from, to)];
      from = null;
      band.setAttribute("visibility", "hidden");
      if (b - a >= 5) {
        this.window = [toTime(a), toTime(b)];
        this.draw();
      }
    });
    chart.addEventListener("dblclick", () => this.fit());
  }
}
