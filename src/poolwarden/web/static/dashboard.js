// poolwarden watch dashboard: polls /api/state and /api/series, draws inline SVG charts.
// No framework, no build step; every value from the API goes into the page as text.
"use strict";

const SERIES = {
  apps: "database_application_state:client_connections:sum",
  usable: "database:usable_connections",
  poolCount: "target_pool:db_client_connection_count:sum",
  poolPending: "target_pool:db_client_connection_pending_requests:sum",
  poolWait: "target_pool:db_client_connection_wait_time_seconds:p95",
};
const WINDOW_S = 300;
const PALETTE = ["#3b6fd8", "#e0803a", "#3aa676", "#c4486c", "#8a63c8", "#c9a227",
                 "#3fa7c4", "#7b8794", "#d2553f", "#5c9e3f"];
const SVG_NS = "http://www.w3.org/2000/svg";

function el(tag, attrs = {}, text = "") {
  const node = tag.startsWith("svg:")
    ? document.createElementNS(SVG_NS, tag.slice(4)) : document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (text) node.textContent = text;
  return node;
}

async function api(path) {
  const response = await fetch(path, { cache: "no-store" });
  if (!response.ok) throw new Error(`${path}: HTTP ${response.status}`);
  return response.json();
}

function series(name, labels) {
  const query = new URLSearchParams({ name, seconds: String(WINDOW_S) });
  if (labels) query.set("labels", Object.entries(labels).map(([k, v]) => `${k}=${v}`).join(","));
  return api(`/api/series?${query}`).then((body) => body.series);
}

// --- charts -------------------------------------------------------------------------------

function frame(lines, stacked) {
  const times = [...new Set(lines.flatMap((s) => s.points.map((p) => p[0])))].sort((a, b) => a - b);
  const values = lines.map((s) => new Map(s.points.map(([t, v]) => [t, v])));
  let top = 0;
  const tops = times.map((t) => {
    const at = values.map((m) => m.get(t) ?? 0);
    return stacked ? at.reduce((a, b) => a + b, 0) : Math.max(0, ...at);
  });
  for (const v of tops) top = Math.max(top, v);
  return { times, values, top: top || 1 };
}

function chart(lines, { stacked = false, limit = null, unit = "" } = {}) {
  const W = 600, H = 180, L = 36, B = 16;
  const svg = el("svg:svg", { class: "chart", viewBox: `0 0 ${W} ${H}`, preserveAspectRatio: "none" });
  const { times, values, top: peak } = frame(lines, stacked);
  const top = Math.max(peak, limit ?? 0) * 1.1;
  const t0 = times[0] ?? 0, t1 = times[times.length - 1] ?? 1;
  const x = (t) => L + (W - L - 4) * (t1 > t0 ? (t - t0) / (t1 - t0) : 1);
  const y = (v) => H - B - (H - B - 6) * (v / top);
  svg.append(el("svg:line", { class: "axis", x1: L, y1: H - B, x2: W, y2: H - B }));
  svg.append(el("svg:text", { x: 2, y: 12 }, `${+top.toFixed(3)}${unit}`));
  svg.append(el("svg:text", { x: 2, y: H - B }, "0"));
  const base = times.map(() => 0);
  lines.forEach((line, i) => {
    const ys = times.map((t, j) => (stacked ? base[j] : 0) + (values[i].get(t) ?? 0));
    const upper = times.map((t, j) => `${x(t).toFixed(1)},${y(ys[j]).toFixed(1)}`);
    const color = PALETTE[i % PALETTE.length];
    let d = `M${upper.join("L")}`;
    if (stacked) {
      const lower = times.map((t, j) => `${x(t).toFixed(1)},${y(base[j]).toFixed(1)}`).reverse();
      d += `L${lower.join("L")}Z`;
      ys.forEach((v, j) => { base[j] = v; });
    }
    const attrs = stacked ? { fill: color, "fill-opacity": "0.75", stroke: color }
                          : { fill: "none", stroke: color, "stroke-width": "2" };
    if (times.length) svg.append(el("svg:path", { d, "data-series": line.name, ...attrs }));
  });
  if (limit !== null && times.length) {
    svg.append(el("svg:line", { x1: L, x2: W, y1: y(limit), y2: y(limit), stroke: "#c62828",
                                 "stroke-dasharray": "4 3", "data-series": "usable" }));
  }
  const legend = el("ul", { class: "legend" });
  lines.forEach((line, i) => {
    const item = el("li", { "data-series": line.name });
    const swatch = el("i");
    swatch.style.background = PALETTE[i % PALETTE.length];  // CSSOM: allowed by the page's CSP
    item.append(swatch, line.name);
    legend.append(item);
  });
  const box = el("div", { class: "chart-box" });
  box.append(svg, legend);
  return box;
}

// --- panels -------------------------------------------------------------------------------

async function drawDatabases(state) {
  const box = el("div");
  for (const db of state.databases) {
    box.append(el("h3", {}, db.up
      ? `${db.name}: ${db.used} used of ${db.usable} usable (max_connections ${db.max_connections})`
      : `${db.name}: down — ${db.error}`));
    const found = (await series(SERIES.apps, { database: db.name }))
      .filter((s) => s.labels.state !== "total" && s.points.some((p) => p[1] > 0));
    const lines = found.map((s) => ({ name: `${s.labels.application_name} · ${s.labels.state}`, points: s.points }));
    const usable = await series(SERIES.usable, { database: db.name });
    const limit = usable.length && usable[0].points.length ? usable[0].points.at(-1)[1] : null;
    const wrapper = chart(lines, { stacked: true, limit });
    wrapper.id = `chart-connections-${db.name}`;
    wrapper.classList.add("connections");
    box.append(wrapper);
  }
  document.getElementById("databases").replaceChildren(box);
}

async function drawPools(state) {
  if (!state.pools.length) return;
  const [counts, pending, waits] = await Promise.all(
    [SERIES.poolCount, SERIES.poolPending, SERIES.poolWait].map((name) => series(name)));
  const pools = document.createDocumentFragment(), waitBox = document.createDocumentFragment();
  for (const pool of state.pools) {
    const mine = (s) => s.labels.target === pool.target && s.labels.pool === pool.pool;
    const lines = [
      ...counts.filter(mine).map((s) => ({ name: s.labels.state, points: s.points })),
      ...pending.filter(mine).map((s) => ({ name: "pending", points: s.points })),
    ];
    pools.append(el("h3", {}, `${pool.target} / ${pool.pool}: ${pool.used} used, ${pool.idle} idle, ${pool.pending} pending, limit ${pool.limit}`));
    pools.append(chart(lines, { limit: pool.limit || null }));
    waitBox.append(el("h3", {}, `${pool.target} / ${pool.pool}`));
    waitBox.append(chart(waits.filter(mine).map((s) => ({ name: "wait p95", points: s.points })), { unit: "s" }));
  }
  document.getElementById("pools").replaceChildren(pools);
  document.getElementById("waits").replaceChildren(waitBox);
}

function drawPgbouncers(state) {
  if (!state.pgbouncers.length) return;
  const table = el("table");
  const head = el("tr");
  for (const h of ["pgbouncer", "database", "user", "waiting", "active", "maxwait (s)"]) head.append(el("th", {}, h));
  table.append(head);
  for (const b of state.pgbouncers) {
    if (!b.up) { const row = el("tr"); row.append(el("td", {}, b.name), el("td", { colspan: "5" }, b.error)); table.append(row); }
    for (const p of b.pools) {
      const row = el("tr");
      for (const v of [b.name, p.database, p.user, p.waiting, p.active, p.maxwait_s]) row.append(el("td", {}, String(v)));
      table.append(row);
    }
  }
  document.getElementById("pgbouncers").replaceChildren(table);
}

function drawAlerts(state) {
  const list = document.getElementById("alerts");
  if (!state.alerts.length) { list.replaceChildren(el("li", { class: "none" }, "No alert.")); return; }
  list.replaceChildren(...state.alerts.map((a) => {
    const item = el("li", { class: `${a.severity} ${a.state}`, "data-alertname": a.alertname });
    item.append(el("b", {}, `${a.state.toUpperCase()} ${a.severity}`), el("strong", {}, a.alertname), ` — ${a.summary}`);
    return item;
  }));
}

function drawIncidents(state) {
  const all = [...state.incidents.open, ...state.incidents.recent];
  const box = document.getElementById("incidents");
  if (!all.length) { box.replaceChildren(el("p", { class: "none" }, "No incident.")); return; }
  box.replaceChildren(...all.map((inc) => {
    const div = el("div", { class: "incident", "data-incident": inc.id });
    const title = el("div");
    title.append(el("span", { class: `badge ${inc.status}` }, inc.status), ` ${inc.severity} · ${inc.title} · opened ${inc.opened_at}`);
    div.append(title);
    if (inc.root_cause) {
      const rc = inc.root_cause, cause = el("div", { class: "cause" });
      cause.append(el("b", {}, `Root cause: ${rc.cause}`), ` (${Math.round(rc.confidence * 100)}%) — culprit `,
                   el("code", {}, rc.culprit), el("br"), `Remedy: ${rc.remedy}`);
      div.append(cause);
    }
    const timeline = el("ol", { class: "timeline" });
    for (const e of inc.timeline) timeline.append(el("li", {}, `${e.at} ${e.kind}: ${e.text}`));
    div.append(timeline);
    return div;
  }));
}

async function refresh() {
  const status = document.getElementById("status");
  try {
    const state = await api("/api/state");
    drawAlerts(state);
    drawIncidents(state);
    drawPgbouncers(state);
    await drawDatabases(state);
    await drawPools(state);
    status.textContent = `tick ${state.ticks} · every ${state.interval}s · updated ${new Date().toLocaleTimeString()}`;
    document.body.dataset.ticks = String(state.ticks);
    return state.interval;
  } catch (error) {
    status.textContent = `error: ${error.message}`;
    return null;
  }
}

async function loop() {
  const interval = await refresh();
  setTimeout(loop, 1000 * Math.max(1, interval ?? 5));
}

loop();
