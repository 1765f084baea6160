// The dashboard page: reads the JSON API every REFRESH_MS and redraws. No framework, no build.
// Every value from the cluster goes into the page as text (textContent), never as HTML: actor
// names and task names are the user's strings.
"use strict";

const REFRESH_MS = 2000;
const POST_HEADERS = {"X-PyActor-Dashboard": "1"};
let selectedRun = null;

async function getJSON(path) {
  const response = await fetch(path, {credentials: "same-origin"});
  if (!response.ok) throw new Error(`${path}: ${response.status} ${await response.text()}`);
  return response.json();
}

async function post(path) {
  const response = await fetch(path, {method: "POST", credentials: "same-origin",
                                      headers: POST_HEADERS});
  if (!response.ok) alert(`${path}: ${response.status} ${await response.text()}`);
  refresh();
}

function text(id, value) { document.getElementById(id).textContent = value; }

function bytes(n) {
  if (n === undefined || n === null) return "";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return `${n.toFixed(i ? 1 : 0)} ${units[i]}`;
}

function cellText(value) {
  if (value === null || value === undefined) return "";
  if (typeof value === "number") return Number.isInteger(value) ? String(value) : value.toFixed(4);
  if (typeof value === "object") return JSON.stringify(value);
  return String(value);
}

// columns: [[header, row => value], ...]; actions: row => [[label, callback], ...]
function fillTable(id, columns, rows, actions, onClick) {
  const table = document.getElementById(id);
  const head = document.createElement("tr");
  for (const [header] of columns) {
    const th = document.createElement("th"); th.textContent = header; head.appendChild(th);
  }
  if (actions) head.appendChild(document.createElement("th"));
  table.tHead.replaceChildren(head);
  const body = [];
  for (const row of rows) {
    const tr = document.createElement("tr");
    for (const [, get] of columns) {
      const td = document.createElement("td");
      const value = cellText(get(row));
      td.textContent = value; td.title = value;
      td.className = "state-" + value;
      tr.appendChild(td);
    }
    if (actions) {
      const td = document.createElement("td");
      for (const [label, callback] of actions(row)) {
        const button = document.createElement("button");
        button.textContent = label;
        button.addEventListener("click", (event) => { event.stopPropagation(); callback(); });
        td.appendChild(button);
      }
      tr.appendChild(td);
    }
    if (onClick) { tr.className = "clickable"; tr.addEventListener("click", () => onClick(row)); }
    body.push(tr);
  }
  table.tBodies[0].replaceChildren(...body);
}

// The columns of state rows: the preferred ones present in the rows, in this order.
function columnsOf(rows, preferred) {
  const present = new Set(rows.flatMap((r) => Object.keys(r)));
  const keys = preferred.filter((k) => present.has(k));
  return (keys.length ? keys : [...present].slice(0, 8)).map((k) => [k, (r) => r[k]]);
}

function drawLine(canvasId, points, yLabel) {
  const canvas = document.getElementById(canvasId);
  const ctx = canvas.getContext("2d");
  const w = canvas.width, h = canvas.height, pad = 36;
  ctx.clearRect(0, 0, w, h);
  ctx.fillStyle = "#6b7385"; ctx.font = "12px system-ui";
  if (points.length < 2) { ctx.fillText("no data yet", pad, h / 2); return; }
  const xs = points.map((p) => p[0]), ys = points.map((p) => p[1]);
  const x0 = Math.min(...xs), x1 = Math.max(...xs);
  const y0 = Math.min(0, ...ys), y1 = Math.max(...ys, 1e-9);
  const px = (x) => pad + (w - 2 * pad) * (x - x0) / ((x1 - x0) || 1);
  const py = (y) => h - pad + (2 * pad - h) * (y - y0) / ((y1 - y0) || 1);
  ctx.strokeStyle = "#d0d5dd"; ctx.beginPath();
  ctx.moveTo(pad, h - pad); ctx.lineTo(w - pad, h - pad); ctx.moveTo(pad, pad);
  ctx.lineTo(pad, h - pad); ctx.stroke();
  ctx.fillText(cellText(y1), 2, pad); ctx.fillText(cellText(y0), 2, h - pad);
  if (yLabel) ctx.fillText(yLabel, pad + 4, 14);
  ctx.strokeStyle = "#2e6be6"; ctx.lineWidth = 2; ctx.beginPath();
  points.forEach(([x, y], i) => (i ? ctx.lineTo(px(x), py(y)) : ctx.moveTo(px(x), py(y))));
  ctx.stroke();
}

async function refreshCluster() {
  const c = await getJSON("/api/cluster");
  text("cluster-address", c.address);
  text("nodes-alive", `${c.nodes_alive} / ${c.nodes}`);
  text("actor-count", c.actors);
  text("worker-count", c.workers);
  text("tasks-finished", c.tasks.FINISHED ?? 0);
  text("tasks-running", c.tasks.RUNNING ?? 0);
  text("tasks-failed", c.tasks.FAILED ?? 0);
  text("store-used", bytes(c.store_used_bytes));
  text("store-summary", `${bytes(c.store_used_bytes)} of ${bytes(c.store_capacity_bytes)} ` +
       `used by ${c.store_objects} objects`);
}

async function refreshNodes() {
  const nodes = await getJSON("/api/nodes");
  const usage = (n) => Object.entries(n.Resources).map(
    ([k, v]) => `${k} ${+(v - (n.Available[k] ?? 0)).toFixed(2)}/${v}`).join(", ");
  fillTable("nodes-table", [
    ["node", (n) => n.NodeID.slice(0, 12)],
    ["address", (n) => `${n.NodeManagerAddress}:${n.NodeManagerPort}`],
    ["state", (n) => (n.Alive ? "alive" : "dead")],
    ["head", (n) => (n.IsHead ? "yes" : "")],
    ["resources used", usage],
    ["store", (n) => `${bytes(n.ObjectStore?.used_bytes)} / ${bytes(n.ObjectStore?.capacity_bytes)}`],
    ["objects", (n) => n.ObjectStore?.object_count],
    ["workers", (n) => n.Workers], ["actors", (n) => n.Actors],
    ["metrics", (n) => n.MetricsExportURL || ""],
  ], nodes);
}

async function refreshState(kind, preferred, actions, newestFirst) {
  const error = document.getElementById(`${kind}-error`);
  try {
    const rows = await getJSON(`/api/${kind}?limit=100`);
    if (newestFirst) rows.reverse();  // the state API lists tasks oldest first
    fillTable(`${kind}-table`, columnsOf(rows, preferred), rows, actions);
    error.textContent = "";
  } catch (e) {
    error.textContent = e.message;
  }
}

async function refreshThroughput() {
  drawLine("throughput", await getJSON("/api/throughput"), "calls/s");
}

async function refreshRuns() {
  const runs = await getJSON("/api/runs");
  fillTable("runs-table", [
    ["kind", (r) => r.kind], ["name", (r) => r.name], ["results", (r) => r.results],
    ["trials", (r) => r.trials ?? ""], ["folder", (r) => r.path],
  ], runs, null, (r) => { selectedRun = r.id; refreshRun(); });
  if (selectedRun) await refreshRun();
}

async function refreshRun() {
  const run = await getJSON(`/api/runs/${encodeURIComponent(selectedRun)}`);
  document.getElementById("run-detail").hidden = false;
  text("run-title", `${run.kind === "rl" ? "RL run" : "Tune experiment"} ${run.name}`);
  if (run.kind === "rl") {
    drawLine("run-curve", run.curve.points, `${run.curve.y} vs ${run.curve.x}`);
    fillTable("trials-table", [["metric", (r) => r[0]], ["last value", (r) => r[1]]],
              Object.entries(run.last));
    return;
  }
  const best = run.trials.find((t) => t.curve.points.length) ?? {curve: {points: []}};
  drawLine("run-curve", best.curve.points, best.curve.y ? `${best.curve.y} (${best.name})` : "");
  const metric = best.curve.y;
  fillTable("trials-table", [
    ["trial", (t) => t.name], ["iterations", (t) => t.iterations],
    ["config", (t) => t.config], [metric ?? "last", (t) => (metric ? t.last[metric] : "")],
  ], run.trials);
}

async function refresh() {
  const parts = [
    refreshCluster(), refreshNodes(), refreshThroughput(), refreshRuns(),
    refreshState("actors", ["actor_id", "class_name", "name", "state", "node_id", "pid",
                            "restarts", "error"],
                 (a) => (a.state === "DEAD" ? [] : [["kill", () => post(
                   `/api/actors/${a.actor_id}/kill`)]])),
    refreshState("tasks", ["task_id", "func_or_class_name", "state", "type", "node_id", "pid",
                           "duration_s", "error"],
                 (t) => (["FINISHED", "FAILED", "CANCELLED"].includes(t.state) ? [] :
                         [["cancel", () => post(`/api/tasks/${t.task_id}/cancel`)]]), true),
    refreshState("objects", ["object_id", "state", "size_bytes", "location", "node_id",
                             "owner_pid", "task_id"]),
  ];
  const results = await Promise.allSettled(parts);
  const failed = results.filter((r) => r.status === "rejected");
  text("updated", failed.length ? `error: ${failed[0].reason.message}` :
       `updated ${new Date().toLocaleTimeString()}`);
  document.body.dataset.loaded = "1";
}

refresh();
setInterval(refresh, REFRESH_MS);
