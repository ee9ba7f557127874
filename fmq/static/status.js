// fmq's status page: polls status.json once a second and draws it.
// Plain DOM and SVG, no library. Text from the server is only ever set as
// textContent, never parsed as HTML.
"use strict";

const SVG = "http://www.w3.org/2000/svg";
const $ = (selector) => document.querySelector(selector);

function el(tag, attrs, text) {
  const node = tag.startsWith("svg:")
    ? document.createElementNS(SVG, tag.slice(4))
    : document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) node.setAttribute(name, value);
  if (text !== undefined) node.textContent = text;
  return node;
}

function number(value) {
  return value === null || value === undefined ? "–" : value.toLocaleString("en-US");
}

function duration(seconds) {
  if (seconds < 60) return seconds.toFixed(seconds < 10 ? 1 : 0) + " s";
  if (seconds < 3600) return Math.floor(seconds / 60) + " min " + Math.floor(seconds % 60) + " s";
  if (seconds < 86400) return Math.floor(seconds / 3600) + " h " + Math.floor((seconds % 3600) / 60) + " min";
  return Math.floor(seconds / 86400) + " d " + Math.floor((seconds % 86400) / 3600) + " h";
}

function clock(epoch) {
  return new Date(epoch * 1000).toLocaleTimeString("en-GB");
}

function bytes(value) {
  return (value / 1048576).toFixed(1) + " MB";
}

function niceMax(max) {
  if (!(max > 0)) return 1;
  const step = Math.pow(10, Math.floor(Math.log10(max)));
  for (const m of [1, 2, 2.5, 5, 10]) if (m * step >= max) return m * step;
  return 10 * step;
}

// One chart: series is a list of value arrays (null where there is no value),
// drawn against times; the svg gets data-points, the points drawn.
function chart(svg, times, series, scale) {
  while (svg.firstChild) svg.removeChild(svg.firstChild);
  const width = svg.getBoundingClientRect().width || 400;
  const height = svg.getBoundingClientRect().height || 120;
  const left = 4, right = width - 4, top = 12, bottom = height - 14;
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  let max = 0, points = 0;
  for (const values of series)
    for (const v of values) if (v !== null && v * scale > max) max = v * scale;
  max = niceMax(max);
  const t0 = times.length ? times[0] : 0;
  const t1 = times.length ? Math.max(times[times.length - 1], t0 + 1) : 1;
  const x = (t) => left + ((t - t0) / (t1 - t0)) * (right - left);
  const y = (v) => bottom - (v * scale / max) * (bottom - top);
  for (const f of [0, 0.5, 1])
    svg.appendChild(el("svg:line", { class: "grid", x1: left, x2: right, y1: y(f * max / scale), y2: y(f * max / scale) }));
  svg.appendChild(el("svg:text", { x: left, y: top - 2 }, number(+max.toPrecision(3))));
  if (times.length)
    svg.appendChild(el("svg:text", { x: left, y: height - 2 }, "−" + duration(t1 - t0)));
  svg.appendChild(el("svg:text", { x: right, y: height - 2, "text-anchor": "end" }, "now"));
  series.forEach((values, i) => {
    let run = [];
    const flush = () => {
      if (run.length > 1) svg.appendChild(el("svg:polyline", { class: "s" + (i % 6), points: run.join(" ") }));
      if (run.length === 1) {
        // a polyline of one vertex is invisible: draw a dot
        const [cx, cy] = run[0].split(",");
        svg.appendChild(el("svg:circle", { class: "s" + (i % 6), cx, cy, r: 1.5 }));
      }
      run = [];
    };
    values.forEach((v, j) => {
      if (v === null) return flush();
      run.push(x(times[j]).toFixed(1) + "," + y(v).toFixed(1));
      points += 1;
    });
    flush();
  });
  svg.setAttribute("data-points", points);
}

function render(s) {
  document.body.setAttribute("data-time", s.time);
  $("#version").textContent = s.version;
  $("#mode").textContent = s.mode;
  $("#uptime").textContent = duration(s.uptime);
  $("#broker-type").textContent = s.broker.type;
  const state = $("#broker-state");
  state.textContent = s.broker.available ? "available" : s.broker.blocked ? "blocked" : "unavailable";
  state.setAttribute("data-available", s.broker.available);
  $("#broker-since").textContent = clock(s.broker.since) + " (" + duration(s.time - s.broker.since) + ")";

  const values = {
    fmq_requests_total: s.totals.requests,
    fmq_broker_requests_total: s.totals.broker_requests,
    fmq_collapsed_total: s.totals.collapsed,
    fmq_caller_timeouts_total: s.totals.caller_timeouts,
    fmq_callers_waiting: s.gauges.callers_waiting,
    fmq_broker_requests_in_flight: s.gauges.in_flight,
    fmq_threads: s.gauges.threads,
    process_resident_memory_bytes: s.gauges.rss,
    process_open_fds: s.gauges.fds,
  };
  for (const node of document.querySelectorAll("#numbers dd[data-metric]")) {
    const value = values[node.getAttribute("data-metric")];
    if (value === undefined) continue;
    node.setAttribute("data-value", value);
    node.textContent = node.getAttribute("data-unit") === "bytes" ? bytes(value) : number(value);
  }
  const errors = $("#errors");
  while (errors.firstChild) errors.removeChild(errors.firstChild);
  for (const [kind, count] of Object.entries(s.totals.errors)) {
    const item = el("div");
    item.appendChild(el("dt", {}, "errors: " + kind));
    item.appendChild(el("dd", { "data-metric": "fmq_errors_total", "data-kind": kind, "data-value": count }, number(count)));
    errors.appendChild(item);
  }

  const c = s.samples;
  chart($("#chart-requests"), c.time, [c.requests], 1);
  chart($("#chart-callers_waiting"), c.time, [c.callers_waiting], 1);
  chart($("#chart-in_flight"), c.time, [c.in_flight], 1);
  chart($("#chart-collapse"), c.time, [c.collapse], 1);
  chart($("#chart-wait"), c.time, [c.wait_p50, c.wait_p99], 1000);
  const kinds = Object.keys(c.errors);
  chart($("#chart-errors"), c.time, kinds.length ? kinds.map((k) => c.errors[k]) : [c.time.map(() => 0)], 1);
  const legend = $("#error-kinds");
  while (legend.firstChild) legend.removeChild(legend.firstChild);
  kinds.forEach((k, i) => legend.appendChild(el("i", { class: "s" + (i % 6) }, " ━ " + k)));
  chart($("#chart-threads"), c.time, [c.threads], 1);
  chart($("#chart-rss"), c.time, [c.rss], 1 / 1048576);
  chart($("#chart-fds"), c.time, [c.fds], 1);

  const oldest = $("#oldest tbody");
  while (oldest.firstChild) oldest.removeChild(oldest.firstChild);
  for (const r of s.oldest) {
    const row = el("tr", { "data-key": r.key, "data-callers": r.callers });
    row.appendChild(el("td", { class: "key" }, r.key));
    row.appendChild(el("td", {}, r.method));
    row.appendChild(el("td", { class: "path" }, r.path));
    row.appendChild(el("td", { class: "callers" }, number(r.callers)));
    row.appendChild(el("td", {}, duration(r.age)));
    oldest.appendChild(row);
  }
  if (!s.oldest.length) oldest.appendChild(el("tr")).appendChild(el("td", { colspan: 5 }, "none"));

  const events = $("#events tbody");
  while (events.firstChild) events.removeChild(events.firstChild);
  for (const e of s.events) {
    const row = el("tr", { "data-kind": e.kind, "data-key": e.key || "" });
    row.appendChild(el("td", {}, clock(e.time)));
    row.appendChild(el("td", {}, e.kind));
    row.appendChild(el("td", { class: "key" }, e.key || ""));
    row.appendChild(el("td", { class: "message" }, e.message));
    events.appendChild(row);
  }

  const settings = $("#settings tbody");
  if (!settings.firstChild)
    for (const [section, keys] of Object.entries(s.settings))
      for (const [key, value] of Object.entries(keys)) {
        const row = el("tr");
        row.appendChild(el("th", {}, `[${section}] ${key}`));
        row.appendChild(el("td", {}, String(value)));
        settings.appendChild(row);
      }
}

async function poll() {
  try {
    const response = await fetch("status.json", { cache: "no-store" });
    if (!response.ok) throw new Error(response.status);
    render(await response.json());
    $("#stale").hidden = true;
  } catch (e) {
    $("#stale").hidden = false;
  }
  setTimeout(poll, 1000);
}

poll();
