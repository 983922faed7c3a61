// mendmq status page: polls api/v1/overview (and the parked conflicts)
// and renders them. No library, no network access beyond this node.
// Every value from the API is inserted as text, never as HTML.
"use strict";

// ?poll=MS changes the polling interval (250 ms to 60 s; default 2 s).
const POLL_MS = Math.min(60000, Math.max(250, Number(new URLSearchParams(location.search).get("poll")) || 2000));
const HISTORY = 90; // samples in the rate chart
const samples = []; // {t, in, out} message rates
let last = null;     // previous overview, for rates

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") e.className = v; else if (k.startsWith("data-")) e.setAttribute(k, v); else e[k] = v;
  }
  for (const c of children) e.append(c instanceof Node ? c : document.createTextNode(c == null ? "" : String(c)));
  return e;
}

function fill(tbody, rows) {
  tbody.replaceChildren(...rows);
}

function bytes(n) {
  const u = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; }
  return (i ? n.toFixed(1) : n) + " " + u[i];
}

function num(n) { return Number(n || 0).toLocaleString("en-US"); }

function ago(iso) {
  if (!iso) return "";
  const s = Math.max(0, Math.round((Date.now() - Date.parse(iso)) / 1000));
  if (s < 90) return s + " s ago";
  if (s < 5400) return Math.round(s / 60) + " min ago";
  return new Date(iso).toLocaleString();
}

function duration(s) {
  const d = Math.floor(s / 86400), h = Math.floor(s % 86400 / 3600), m = Math.floor(s % 3600 / 60);
  return (d ? d + "d " : "") + (d || h ? h + "h " : "") + m + "m " + (s % 60) + "s";
}

async function getJSON(path) {
  const r = await fetch(path, { headers: { Accept: "application/json" }, cache: "no-store" });
  const body = await r.json().catch(() => ({}));
  if (!r.ok) throw new Error(r.status + " " + (body.error || r.statusText));
  return body;
}

function showError(msg) {
  const e = document.getElementById("error");
  e.hidden = !msg;
  e.textContent = msg || "";
}

function renderMembers(o) {
  const tbody = document.querySelector("#members tbody");
  const summary = document.getElementById("cluster-summary");
  if (!o.cluster) {
    fill(tbody, [el("tr", { "data-member": o.node },
      el("td", {}, o.node), el("td", { class: "state-alive" }, "alive"), el("td", {}, "(self)"),
      el("td", {}), el("td", {}), el("td", {}), el("td", {}), el("td", {}), el("td", {}))]);
    summary.textContent = "Clustering is disabled on this node.";
    return;
  }
  const c = o.cluster;
  fill(tbody, (c.members || []).map(m => el("tr", { "data-member": m.name, "data-state": m.state },
    el("td", {}, m.name + (m.self ? " (this node)" : "")),
    el("td", { class: "state-" + m.state }, m.state),
    el("td", { class: m.self ? "" : (m.reachable ? "yes" : "no") }, m.self ? "self" : (m.reachable ? "yes" : "no")),
    el("td", { class: "num" }, bytes(m.bytes_sent || 0)),
    el("td", { class: "num" }, bytes(m.bytes_received || 0)),
    el("td", { class: "num" }, num(m.forwarded)),
    el("td", { class: "num" }, num(m.received)),
    el("td", { class: "num" }, num(m.queue_frames)),
    el("td", { title: m.last_error || "" }, m.data_addr || ""))));
  const subs = Object.entries(c.subscriptions || {}).map(([n, k]) => n + " " + k).join(", ");
  summary.textContent = `Replicated: ${num(c.sessions)} sessions, ${num(c.retained)} retained. ` +
    `Routes per node: ${subs || "none"}. Last replication lag ${c.replication_lag_ms || 0} ms.`;
}

function renderNetsplit(o) {
  // overview.netsplit: null without clustering.
  const ns = o.netsplit, banner = document.getElementById("netsplit"), heal = document.getElementById("heal");
  banner.hidden = !(ns && ns.active);
  if (ns && ns.active) {
    const who = (ns.unreachable || []).join(", ") || "some members";
    let t = `— unreachable: ${who}` + (ns.gated ? " (this node refuses what the netsplit switches do not allow)" : " (this node keeps serving)");
    if (ns.since) t += `, since ${ago(ns.since)}`;
    if (ns.window_ms != null) t += `, window of uncertainty ${ns.window_ms} ms`;
    if (ns.held) t += `, ${num(ns.held)} publishes held for them`;
    document.getElementById("netsplit-text").textContent = t;
  }
  const mg = ns && ns.merge, mp = document.getElementById("merge-progress");
  mp.hidden = !(mg && mg.total);
  if (mg && mg.total) {
    document.getElementById("merge-bar").value = mg.done / mg.total;
    document.getElementById("merge-text").textContent = `merging ${num(mg.done)} / ${num(mg.total)}`;
  }
  const lh = ns && ns.last_heal;
  heal.hidden = !(lh && !ns.active);
  if (lh && !ns.active) heal.textContent = `Last heal ${ago(lh.at)}` + (lh.convergence_ms != null ? `, converged in ${lh.convergence_ms} ms` : "");
}

function renderMaps(o) {
  // overview.maps: one row per map; null without clustering.
  const card = document.getElementById("maps-card");
  const maps = Array.isArray(o.maps) ? o.maps : null;
  card.hidden = !maps;
  if (!maps) return;
  const cols = [...new Set(maps.flatMap(m => Object.keys(m)))];
  document.querySelector("#maps thead").replaceChildren(el("tr", {}, ...cols.map(c => el("th", {}, c))));
  fill(document.querySelector("#maps tbody"), maps.map(m => el("tr", {},
    ...cols.map(c => el("td", {}, typeof m[c] === "object" ? JSON.stringify(m[c]) : m[c])))));
}

function renderNode(o) {
  document.getElementById("node").textContent = o.node;
  document.title = "mendmq " + o.node;
  document.getElementById("meta").textContent =
    `version ${o.version} · up ${duration(o.uptime_seconds)} · ` + (o.ready ? "ready" : "not ready: " + o.ready_reason);
  const q = o.mqtt, dl = document.getElementById("mqtt");
  const rows = [["clients connected", num(q.clients_connected)], ["sessions", num(q.sessions)],
    ["subscriptions", num(q.subscriptions)], ["retained (with $SYS)", num(q.retained)],
    ["messages in / out", num(q.messages_in) + " / " + num(q.messages_out)],
    ["bytes in / out", bytes(q.bytes_in) + " / " + bytes(q.bytes_out)], ["dropped", num(q.dropped)]];
  dl.replaceChildren(...rows.flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, v)]));
}

function renderPolicies(o) {
  fill(document.querySelector("#policies tbody"), (o.policies || []).filter(p => p.loaded).map(p => el("tr", { "data-policy": p.name },
    el("td", { title: p.source }, p.name),
    el("td", {}, (p.maps || []).join(", ")),
    el("td", { title: p.sha256 || "" }, (p.sha256 || "").slice(0, 12)),
    el("td", { title: p.loaded_at || "" }, ago(p.loaded_at)),
    el("td", { class: "num" }, num(p.calls)),
    el("td", { class: "num" + (p.failures ? " no" : "") }, num(p.failures)))));
}

// A conflict's address on any node: its node, then its id there.
function conflictURL(c) {
  return "api/v1/policies/conflicts/" + encodeURIComponent(c.node) + "/" + encodeURIComponent(c.id);
}

async function dropConflict(c) {
  if (!confirm(`Drop parked conflict ${c.ref}? Its merging entry is discarded.`)) return;
  try {
    const r = await fetch(conflictURL(c), { method: "DELETE" });
    if (!r.ok) throw new Error((await r.json().catch(() => ({}))).error || r.statusText);
    poll();
  } catch (e) { showError("drop conflict " + c.ref + ": " + e.message); }
}

async function resolveConflict(c, action) {
  const what = action === "take_merging" ? "write its merging entry over the existing one" : "run it through the map's current policy again";
  if (!confirm(`Resolve parked conflict ${c.ref}: ${what}?`)) return;
  try {
    const r = await fetch(conflictURL(c), {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ action }),
    });
    if (!r.ok) throw new Error((await r.json().catch(() => ({}))).error || r.statusText);
    poll();
  } catch (e) { showError("resolve conflict " + c.ref + ": " + e.message); }
}

// The conflicts of every node (this node asks the others); the nodes it
// could not ask are named under the table.
async function renderConflicts() {
  const l = await getJSON("api/v1/policies/conflicts?limit=100");
  const total = Object.values(l.parked || {}).reduce((a, b) => a + b, 0);
  document.getElementById("conflict-count").textContent = total ? "(" + total + ")" : "";
  document.getElementById("no-conflicts").hidden = total > 0;
  const partial = document.getElementById("conflicts-partial");
  partial.hidden = !(l.unreachable || []).length;
  partial.textContent = partial.hidden ? "" : "Not listed: the conflicts of " + l.unreachable.map(u => u.node).join(", ") + " (could not be asked).";
  fill(document.querySelector("#conflicts tbody"), (l.conflicts || []).slice(0, 100).map(c => el("tr", { "data-conflict": c.ref },
    el("td", {}, c.ref), el("td", {}, c.map), el("td", {}, c.policy), el("td", {}, c.kind),
    el("td", { title: c.reason }, String(c.reason || "").slice(0, 80)), el("td", {}, ago(c.time)),
    el("td", {},
      el("button", { onclick: () => resolveConflict(c, "take_merging"), "data-action": "take_merging" }, "take merging"), " ",
      el("button", { onclick: () => resolveConflict(c, "rerun"), "data-action": "rerun" }, "rerun"), " ",
      el("button", { onclick: () => dropConflict(c), "data-action": "drop" }, "drop")))));
}

function sampleRates(o) {
  const t = Date.parse(o.time);
  if (last) {
    const dt = (t - Date.parse(last.time)) / 1000;
    if (dt > 0) {
      samples.push({ t, in: Math.max(0, (o.mqtt.messages_in - last.mqtt.messages_in) / dt),
        out: Math.max(0, (o.mqtt.messages_out - last.mqtt.messages_out) / dt) });
      while (samples.length > HISTORY) samples.shift();
    }
  }
  last = o;
  const h = samples[samples.length - 1];
  document.getElementById("rate-now").textContent = h ? `now ${h.in.toFixed(1)} in, ${h.out.toFixed(1)} out /s` : "";
}

function drawRates() {
  const cv = document.getElementById("rates");
  const dpr = window.devicePixelRatio || 1;
  const w = cv.clientWidth || 600, hgt = cv.clientHeight || 180;
  cv.width = w * dpr; cv.height = hgt * dpr;
  const g = cv.getContext("2d");
  g.scale(dpr, dpr);
  g.clearRect(0, 0, w, hgt);
  const max = Math.max(1, ...samples.map(p => Math.max(p.in, p.out)));
  const pad = 24;
  g.strokeStyle = "#dde1e6"; g.fillStyle = "#66707c"; g.font = "11px system-ui, sans-serif";
  for (const f of [0, 0.5, 1]) {
    const y = hgt - pad - f * (hgt - 2 * pad);
    g.beginPath(); g.moveTo(pad, y); g.lineTo(w, y); g.stroke();
    g.fillText((max * f).toFixed(max * f < 10 ? 1 : 0), 0, y - 2);
  }
  const x = i => pad + (w - pad) * i / Math.max(1, HISTORY - 1);
  for (const [key, color] of [["in", "#1f6feb"], ["out", "#e36209"]]) {
    g.strokeStyle = color; g.lineWidth = 2; g.beginPath();
    samples.forEach((p, i) => {
      const y = hgt - pad - p[key] / max * (hgt - 2 * pad);
      const xi = x(HISTORY - samples.length + i);
      i ? g.lineTo(xi, y) : g.moveTo(xi, y);
    });
    g.stroke();
  }
}

async function poll() {
  try {
    const o = await getJSON("api/v1/overview");
    showError("");
    renderNode(o); renderNetsplit(o); renderMembers(o); renderMaps(o); renderPolicies(o);
    sampleRates(o); drawRates();
    await renderConflicts();
    document.body.dataset.loaded = "true";
  } catch (e) {
    showError("cannot read this node's API: " + e.message);
  }
}

document.getElementById("poll-every").textContent = POLL_MS >= 1000 ? `${POLL_MS / 1000} s` : `${POLL_MS} ms`;
poll();
setInterval(poll, POLL_MS);
window.addEventListener("resize", drawRates);
