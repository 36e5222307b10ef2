// The coordinator's dashboard: a public view (totals, throughput, leaderboard; no token) and an
// operator view (queues, throughput, campaigns, workers with their trust and actions, pipeline
// jobs with their curves). Everything shown is set as text (never as HTML): names come from
// volunteers. Charts are uPlot, served from /static/uplot/ like this file (no CDN).
"use strict";

const REFRESH_MS = 10000;
const TOKEN_KEY = "flywheel-token";
const COLORS = ["#3b5bdb", "#e8590c", "#2b8a3e", "#ae3ec9", "#0c8599"];
const charts = new Map();
let boardWindow = "all_time";
let lastBoard = null;

// ------------------------------------------------------------------ helpers

function el(tag, props, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props || {})) {
    if (key === "class") node.className = value;
    else if (key === "on") for (const [event, fn] of Object.entries(value)) node.addEventListener(event, fn);
    else node.setAttribute(key, value);
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function compact(value) {
  const n = Number(value) || 0;
  const units = [[1e12, "T"], [1e9, "G"], [1e6, "M"], [1e3, "k"]];
  for (const [size, unit] of units) if (Math.abs(n) >= size) return (n / size).toFixed(n / size >= 100 ? 0 : 1) + unit;
  return Number.isInteger(n) ? String(n) : n.toFixed(2);
}

// Credit is in TFLOPs: a small model's traces earn fractions, so small values keep their digits.
function credit(value) {
  const n = Number(value) || 0;
  if (n === 0) return "0";
  if (Math.abs(n) >= 1000) return compact(n);
  if (Math.abs(n) >= 1) return n.toFixed(2);
  return n.toPrecision(3);
}

function percent(fraction) { return (100 * fraction).toFixed(1) + "%"; }

function ago(iso) {
  if (!iso) return "never";
  const s = Math.max(0, (Date.now() - Date.parse(iso)) / 1000);
  if (s < 90) return Math.round(s) + " s ago";
  if (s < 5400) return Math.round(s / 60) + " min ago";
  if (s < 129600) return Math.round(s / 3600) + " h ago";
  return Math.round(s / 86400) + " d ago";
}

function card(label, value, title) {
  return el("div", {class: "card", title: title || ""}, el("div", {class: "value"}, value), el("div", {class: "label"}, label));
}

function table(node, headers, rows, empty) {
  const head = el("tr", {}, ...headers.map(([text, cls]) => el("th", {class: cls || ""}, text)));
  const body = rows.length ? rows : [el("tr", {}, el("td", {class: "empty", colspan: String(headers.length)}, empty))];
  node.replaceChildren(el("thead", {}, head), el("tbody", {}, ...body));
}

function cell(value, cls) { return el("td", {class: cls || ""}, value); }
function num(value) { return cell(value, "num"); }
function badge(text) { return el("span", {class: "badge " + text}, text); }
function bar(fraction) {
  const fill = el("span");
  fill.style.width = Math.min(100, 100 * fraction).toFixed(1) + "%";  // CSSOM: allowed by the page's CSP
  return el("div", {class: "bar", title: percent(fraction)}, fill);
}

async function getJSON(path, token) {
  const headers = token ? {"Authorization": "Bearer " + token} : {};
  const response = await fetch("/v1" + path, {headers});
  const body = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(body.error ? `${path}: ${body.error.message}` : `${path}: ${response.status}`);
  return body;
}

// ------------------------------------------------------------------ charts

// A line chart of `series` ([{label, values, right}]) over `xs` (unix seconds, or plain numbers
// when `time` is false), replacing the chart drawn in `node` before; a `right` series has its own
// scale, on the right-hand axis.
function lineChart(node, xs, series, {time = true, height = 220, xLabel = ""} = {}) {
  const old = charts.get(node);
  if (old) old.destroy();
  node.replaceChildren();
  if (!xs.length) { node.append(el("p", {class: "muted"}, "no data yet")); return; }
  const width = Math.max(300, node.clientWidth || node.parentElement.clientWidth || 600);
  const options = {
    width, height,
    scales: {x: {time}},
    axes: [
      {label: xLabel, stroke: "#6b7487", grid: {stroke: "#eef1f6"}},
      {stroke: "#6b7487", grid: {stroke: "#eef1f6"}, size: 60},
      ...(series.some((s) => s.right) ? [{scale: "right", side: 1, stroke: COLORS[1], grid: {show: false}, size: 60}] : []),
    ],
    series: [{}, ...series.map((s, i) => ({label: s.label, scale: s.right ? "right" : "y", stroke: COLORS[i % COLORS.length], width: 2,
      fill: series.length === 1 ? COLORS[i] + "22" : undefined, spanGaps: true, points: {show: xs.length < 40}}))],
    legend: {show: true},
  };
  charts.set(node, new uPlot(options, [xs, ...series.map((s) => s.values)], node));
}

function throughputChart(node, throughput, which) {
  const xs = throughput.points.map((p) => Date.parse(p.at) / 1000);
  const series = which.map(([label, key], i) => ({label, right: i > 0, values: throughput.points.map((p) => p[key])}));
  lineChart(node, xs, series);
}

// ------------------------------------------------------------------ public view

async function refreshPublic() {
  const [summary, board] = await Promise.all([getJSON("/credit/summary?hours=24"), getJSON("/credit/leaderboard")]);
  const points = summary.throughput.points;
  const recent = points.slice(-4).reduce((sum, p) => sum + p.tokens_per_s, 0) / Math.max(1, Math.min(4, points.length));
  document.getElementById("totals").replaceChildren(
    card("volunteers", compact(summary.volunteers)),
    card("teams", compact(summary.teams)),
    card("credited traces", compact(summary.traces)),
    card("credited tokens", compact(summary.completion_tokens)),
    card("credit (TFLOP)", credit(summary.credit)),
    card("tokens/s now", compact(recent), "mean over the last hour"),
  );
  throughputChart(document.getElementById("chart-public"), summary.throughput, [["tokens/s", "tokens_per_s"]]);
  lastBoard = board;
  renderBoard();
}

function renderBoard() {
  if (!lastBoard) return;
  const board = lastBoard[boardWindow];
  const rankRow = (row, ...cells) => el("tr", {class: row.rank <= 3 ? "top" + row.rank : ""}, cell(row.rank, "rank"), ...cells);
  table(document.getElementById("board-workers"),
    [["#", "rank"], ["volunteer"], ["credit", "num"], ["tokens", "num"]],
    board.workers.map((w) => rankRow(w, cell(el("span", {}, w.name, w.team ? el("span", {class: "team"}, "  " + w.team) : null)),
      num(credit(w.credit)), num(compact(w.tokens)))),
    "no credit granted yet");
  table(document.getElementById("board-teams"),
    [["#", "rank"], ["team"], ["members", "num"], ["credit", "num"]],
    board.teams.map((t) => rankRow(t, cell(t.name), num(t.members), num(credit(t.credit)))),
    "no team has credit yet");
}

// ------------------------------------------------------------------ operator view

function token() { return localStorage.getItem(TOKEN_KEY) || ""; }

async function refreshOperator() {
  const t = token();
  const error = document.getElementById("op-error");
  const content = document.getElementById("op-content");
  if (!t) { content.hidden = true; return; }
  try {
    const [stats, campaigns, trust, workers, jobs, summary] = await Promise.all([
      getJSON("/stats", t), getJSON("/campaigns", t), getJSON("/trust/workers?limit=500", t),
      getJSON("/workers?limit=1000", t), getJSON("/pipeline/jobs", t), getJSON("/credit/summary?hours=6", t),
    ]);
    error.hidden = true;
    content.hidden = false;
    renderQueues(stats);
    throughputChart(document.getElementById("chart-throughput"), summary.throughput,
      [["tokens/s", "tokens_per_s"], ["traces/s", "traces_per_s"]]);
    renderCampaigns(campaigns);
    renderWorkers(trust, workers);
    renderPipeline(jobs);
  } catch (e) {
    error.textContent = e.message;
    error.hidden = false;
  }
}

function renderQueues(s) {
  document.getElementById("queues").replaceChildren(
    card("jobs queued", compact(s.jobs_queued), "jobs waiting for a lease"),
    card("jobs leased", compact(s.jobs_leased), "jobs held by workers now"),
    card("awaiting verdict", compact(s.traces_pending), "traces the verifiers have not graded yet"),
    card("accepted", compact(s.traces_accepted)),
    card("rejected", compact(s.traces_rejected)),
    card("volunteers", compact(s.workers)),
  );
}

function renderCampaigns(campaigns) {
  table(document.getElementById("campaigns"),
    [["campaign"], ["model"], ["status"], ["progress"], ["done", "num"], ["accuracy", "num"], ["tokens", "num"]],
    campaigns.map((c) => {
      const p = c.progress, done = p.accepted + p.rejected;
      const accuracy = done ? percent(p.accepted / done) : "–";
      return el("tr", {}, cell(c.name), cell(c.model.name), cell(badge(c.status)), cell(bar(p.jobs ? done / p.jobs : 0)),
        num(`${compact(done)} / ${compact(p.jobs)}`), num(accuracy), num(compact(p.completion_tokens)));
    }),
    "no campaigns");
}

function renderWorkers(trust, workers) {
  const byId = new Map(workers.map((w) => [w.id, w]));
  table(document.getElementById("workers"),
    [["worker"], ["state"], ["trust", "num"], ["checked", "num"], ["passed / failed", "num"], ["withdrawn", "num"],
      ["in flight", "num"], ["last seen"], ["actions"]],
    trust.map((r) => {
      const w = byId.get(r.worker_id) || {};
      return el("tr", {}, cell(r.name), cell(badge(r.state)), num(r.trust), num(percent(r.check_probability)),
        num(`${r.passed} / ${r.failed}`), num(r.withdrawn), num(`${w.in_flight ?? "–"} / ${w.in_flight_limit ?? "–"}`),
        cell(ago(w.last_seen_at)), cell(actions(r)));
    }),
    "no volunteers registered");
}

function actions(record) {
  const act = (label, path, question, cls) => el("button", {type: "button", class: cls || "", "data-action": path, on: {click: async () => {
    if (!confirm(question)) return;
    try {
      const response = await fetch(`/v1/workers/${record.worker_id}/trust/${path}`, {method: "POST", headers: {"Authorization": "Bearer " + token()}});
      if (!response.ok) throw new Error(`${path}: ${response.status}`);
      await refreshOperator();
    } catch (e) { alert(e.message); }
  }}}, label);
  const buttons = [];
  if (record.state === "active") buttons.push(act("Ban", "ban", `Ban ${record.name}? Its token stops working.`, "danger"));
  else buttons.push(act(record.state === "quarantined" ? "Lift quarantine" : "Restore", "restore", `Let ${record.name} work again?`));
  buttons.push(act("Re-validate", "revalidate", `Withdraw every trace of ${record.name} until each passes a re-check?`));
  return el("div", {class: "actions"}, ...buttons);
}

// The curves of a pipeline job: an RL run's per-version history (reward, KL, loss), or a
// fine-tuning run's train and eval loss by step.
function curves(job) {
  const m = job.metrics || {};
  if (Array.isArray(m.history) && m.history.length) {
    const xs = m.history.map((h, i) => h.version ?? i + 1);
    const keys = [["reward", "reward"], ["KL", "kl"], ["loss", "loss"]].filter(([, k]) => m.history.some((h) => typeof h[k] === "number"));
    return {xs, xLabel: "policy version", series: keys.map(([label, k]) => ({label, values: m.history.map((h) => h[k] ?? null)}))};
  }
  if (m.curve && (m.curve.train || []).length) {
    const steps = [...new Set([...(m.curve.train || []), ...(m.curve.eval || [])].map(([s]) => s))].sort((a, b) => a - b);
    const at = (points) => { const map = new Map(points.map(([s, v]) => [s, v])); return steps.map((s) => map.get(s) ?? null); };
    return {xs: steps, xLabel: "step", series: [{label: "train loss", values: at(m.curve.train || [])}, {label: "eval loss", values: at(m.curve.eval || [])}]};
  }
  return null;
}

function renderPipeline(jobs) {
  const node = document.getElementById("pipeline");
  for (const chart of [...charts.keys()].filter((n) => node.contains(n))) { charts.get(chart).destroy(); charts.delete(chart); }
  if (!jobs.length) { node.replaceChildren(el("p", {class: "muted"}, "no pipeline jobs")); return; }
  const boxes = jobs.map((job) => {
    const chart = el("div", {class: "chart"});
    const box = el("div", {class: "job"},
      el("h3", {}, job.name + "  ", badge(job.status)),
      el("div", {class: "meta"}, `${job.kind} · ${job.stage || "–"} · ${percent(job.progress)}`), bar(job.progress), chart);
    return [box, chart, curves(job)];
  });
  node.replaceChildren(el("div", {class: "jobs"}, ...boxes.map(([box]) => box)));
  for (const [, chart, curve] of boxes) {
    if (curve) lineChart(chart, curve.xs, curve.series, {time: false, height: 180, xLabel: curve.xLabel});
    else chart.replaceChildren(el("p", {class: "muted"}, "no curves yet"));
  }
}

// ------------------------------------------------------------------ navigation

function view() {
  const operator = location.hash === "#operator" && location.pathname !== "/leaderboard";
  document.getElementById("public-view").hidden = operator;
  document.getElementById("operator-view").hidden = !operator;
  document.getElementById("tab-public").classList.toggle("on", !operator);
  document.getElementById("tab-operator").classList.toggle("on", operator);
  return operator;
}

async function refresh() {
  try {
    if (view()) await refreshOperator();
    else await refreshPublic();
  } catch (e) {
    console.error(e);
  }
}

function start() {
  const input = document.getElementById("token");
  input.value = token();
  document.getElementById("login").addEventListener("submit", (event) => {
    event.preventDefault();
    localStorage.setItem(TOKEN_KEY, input.value.trim());
    refresh();
  });
  document.getElementById("forget").addEventListener("click", () => {
    localStorage.removeItem(TOKEN_KEY);
    input.value = "";
    refresh();
  });
  for (const button of document.querySelectorAll(".toggle button")) {
    button.addEventListener("click", () => {
      boardWindow = button.dataset.window;
      for (const b of document.querySelectorAll(".toggle button")) b.classList.toggle("on", b === button);
      renderBoard();
    });
  }
  window.addEventListener("hashchange", refresh);
  refresh();
  setInterval(refresh, REFRESH_MS);
}

document.addEventListener("DOMContentLoaded", start);
