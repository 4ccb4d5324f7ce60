// EmoVoice supervisor wallboard. No build step, no dependencies.
// The API token comes from the URL fragment (#token=...; never sent to the server in a URL) or the
// form; it goes to /supervisor/ws as the first message and to the API as an Authorization header.
"use strict";

const SPARK_S = 180, ENDED_KEEP_S = 30, TALK_OVER = "agent_talk_over_upset_customer";
const RANK = { "": 0, watch: 1, alert: 2 };
const COLOURS = { customer: "#c2410c", agent: "#1d4ed8", mixed: "#7c3aed" };
const BANDS = { watch: "#fdeeb0", alert: "#fbc2c2" };
const calls = new Map();  // call_id -> the board's state of the call (the same shape as hello's calls)
const rows = new Map();  // call_id -> <tr>
const lags = [];
let token = "", canListen = false, openCall = null, archived = null, health = {}, retryMs = 1000, timer = null;

const $ = (id) => document.getElementById(id);
const api = (path, init = {}) => fetch(path, { ...init, headers: { ...init.headers, Authorization: "Bearer " + token } });

function apply(ev) {
  let call = calls.get(ev.call_id);
  if (!call) calls.set(ev.call_id, call = { call_id: ev.call_id, started: ev.ts, meta: {}, legs: {}, marks: [], ended: null });
  if (ev.site) call.meta.site = ev.site;
  if (ev.type === "cue") { call.marks.push(ev); return; }
  if (ev.type === "call.agent") { call.meta.agent = ev.agent; return; }
  const leg = call.legs[ev.role] ||= { points: [], label: "", onHold: false, ended: false };
  const open = (reason) => call.marks.filter((m) => m.type === "escalation.raised" && m.role === ev.role &&
                                           m.cleared_at === undefined && (reason == null || m.reason === reason));
  switch (ev.type) {
    case "call.started":
      Object.assign(call.meta, ev.meta);
      call.started = Math.min(call.started, ev.ts); call.ended = null; leg.ended = false;
      break;
    case "score":
      leg.points.push([ev.window.end, ev.negative_smoothed]);
      leg.label = ev.label;
      lags.push(ev.lag_ms); if (lags.length > 50) lags.shift();
      break;
    case "call.hold": leg.onHold = ev.on_hold; break;
    case "escalation.raised": call.marks.push(ev); break;
    case "escalation.cleared": open(ev.reason).forEach((m) => { m.cleared_at = ev.at; }); break;
    case "call.ended":
      leg.ended = true;
      open(null).forEach((m) => { m.cleared_at = leg.points.length ? leg.points.at(-1)[0] : m.at; });
      if (Object.values(call.legs).every((l) => l.ended)) call.ended = ev.ts;
      break;
  }
}

function legState(call, role) {
  const leg = call.legs[role];
  if (!leg) return "";
  if (leg.ended) return "ended";
  const severity = call.marks.filter((m) => m.type === "escalation.raised" && m.role === role && m.cleared_at === undefined)
    .reduce((s, m) => RANK[m.severity] > RANK[s] ? m.severity : s, "");
  if (severity) return severity;
  return leg.onHold ? "hold" : "calm";
}

function severity(call) {
  if (call.ended) return "";
  return Object.keys(call.legs).map((r) => legState(call, r)).reduce((s, x) => RANK[x] > RANK[s] ? x : s, "");
}

const negative = (call) => Math.max(0, ...Object.values(call.legs).map((l) => l.points.length ? l.points.at(-1)[1] : 0));
const duration = (s) => { s = Math.max(0, Math.floor(s)); return Math.floor(s / 60) + ":" + String(s % 60).padStart(2, "0"); };
const stateText = { calm: "calm", watch: "watch", alert: "alert", hold: "on hold", ended: "ended" };

function pill(call, role) {
  const st = legState(call, role);
  return st ? `<span class="state ${st}">${stateText[st]}</span>` : "-";
}

function cues(call) {
  const n = (f) => call.marks.filter(f).length;
  const talk = n((m) => m.cue === "talk_over" || m.reason === TALK_OVER), quiet = n((m) => m.cue === "long_silence");
  return (talk ? `T×${talk} ` : "") + (quiet ? `S×${quiet}` : "");
}

// One picture for the sparkline and the timeline: a line per leg, escalation bands, cue ticks.
function plot(canvas, call, fromT, toT, axes) {
  const ctx = canvas.getContext("2d"), w = canvas.width, h = canvas.height, pad = axes ? 28 : 1;
  const x = (t) => pad + (t - fromT) / Math.max(toT - fromT, 1) * (w - 2 * pad), y = (v) => h - pad - v * (h - 2 * pad);
  const last = Math.max(0, ...Object.values(call.legs).flatMap((l) => l.points.map((p) => p[0])));
  ctx.clearRect(0, 0, w, h);
  for (const m of call.marks.filter((m) => m.type === "escalation.raised")) {  // a later band covers an earlier one
    ctx.fillStyle = BANDS[m.severity] || BANDS.watch;
    ctx.fillRect(x(Math.max(m.at, fromT)), pad, Math.max(2, x(m.cleared_at ?? last) - x(Math.max(m.at, fromT))), h - 2 * pad);
  }
  if (axes) {
    ctx.strokeStyle = "#ccc"; ctx.fillStyle = "#555"; ctx.font = "11px sans-serif";
    for (const v of [0, .5, 1]) { ctx.beginPath(); ctx.moveTo(pad, y(v)); ctx.lineTo(w - pad, y(v)); ctx.stroke(); ctx.fillText(v, 2, y(v) + 4); }
    for (let t = 0; t <= toT; t += Math.max(10, Math.ceil((toT - fromT) / 10 / 10) * 10)) ctx.fillText(duration(t), x(t) - 10, h - 8);
    for (const m of call.marks.filter((m) => m.cue || m.reason === TALK_OVER)) ctx.fillText(m.cue === "long_silence" ? "S" : "T", x(m.at) - 3, pad - 6);
  }
  for (const [role, leg] of Object.entries(call.legs)) {
    ctx.strokeStyle = COLOURS[role] || "#333"; ctx.lineWidth = axes ? 2 : 1.5; ctx.beginPath();
    leg.points.filter(([t]) => t >= fromT).forEach(([t, v], i) => i ? ctx.lineTo(x(t), y(v)) : ctx.moveTo(x(t), y(v)));
    ctx.stroke();
  }
}

function row(call) {
  let tr = rows.get(call.call_id);
  if (!tr) {
    tr = document.createElement("tr");
    tr.innerHTML = "<td class=name></td><td class=queue></td><td class=agent></td><td class=cust></td><td class=ag></td>" +
      "<td><canvas width=240 height=28></canvas></td><td class=cues></td><td class=time></td><td class=actions></td>" +
      "<td class=verdict></td>";
    tr.onclick = (e) => { if (e.target.tagName !== "BUTTON") showTimeline(call.call_id); };
    tr.querySelector(".actions").innerHTML = '<button data-mode="listen">listen</button> <button data-mode="whisper">whisper</button>';
    tr.querySelectorAll("button").forEach((b) => { b.onclick = () => listen(call.call_id, b.dataset.mode); });
    rows.set(call.call_id, tr);
  }
  const m = call.meta, roles = Object.keys(call.legs), end = call.ended || Date.now() / 1000;
  tr.className = [call.ended ? "ended" : severity(call), call.call_id === openCall ? "open" : ""].join(" ");
  tr.dataset.callId = call.call_id;
  tr.querySelector(".name").innerHTML = "";
  tr.querySelector(".name").append(m.name || m.call_name || call.call_id.slice(0, 12));
  if (m.site) tr.querySelector(".name").insertAdjacentHTML("beforeend", ' <span class="site"></span>');
  if (m.site) tr.querySelector(".site").textContent = m.site;
  tr.querySelector(".queue").textContent = m.queue || "";
  tr.querySelector(".agent").textContent = m.agent || "";
  tr.querySelector(".cust").innerHTML = pill(call, roles.includes("mixed") ? "mixed" : "customer");
  tr.querySelector(".ag").innerHTML = pill(call, "agent");
  tr.querySelector(".cues").textContent = cues(call);
  tr.querySelector(".time").textContent = duration(end - call.started);
  tr.querySelector(".actions").hidden = !canListen || !!call.ended;
  verdictButtons(tr.querySelector(".verdict"), call);
  const last = Math.max(0, ...Object.values(call.legs).map((l) => l.points.length ? l.points.at(-1)[0] : 0));
  plot(tr.querySelector("canvas"), call, Math.max(0, last - SPARK_S), Math.max(last, SPARK_S), false);
  return tr;
}

function render() {
  timer = null;
  const now = Date.now() / 1000;
  for (const [id, call] of calls) if (call.ended && now - call.ended > ENDED_KEEP_S) { calls.delete(id); rows.get(id)?.remove(); rows.delete(id); }
  const list = [...calls.values()].sort((a, b) => (!!a.ended - !!b.ended) || (RANK[severity(b)] - RANK[severity(a)]) ||
                                                  (negative(b) - negative(a)));
  const body = $("rows");
  list.forEach((c) => body.appendChild(row(c)));
  $("empty").hidden = list.length > 0;
  const live = list.filter((c) => !c.ended), states = live.flatMap((c) => Object.keys(c.legs).map((r) => legState(c, r)));
  const lag = [...lags].sort((a, b) => a - b)[lags.length >> 1] || 0;
  $("counts").textContent = [`calls ${live.length}${list.length > live.length ? ` (+${list.length - live.length} ended)` : ""}`,
    `legs ${states.filter((s) => s !== "ended").length}`, `alert ${live.filter((c) => severity(c) === "alert").length}`,
    `watch ${live.filter((c) => severity(c) === "watch").length}`, `on hold ${states.filter((s) => s === "hold").length}`,
    `lag p50 ${Math.round(lag)} ms`, `device ${health.device || "-"}`, `load ${health.cpu_load ?? "-"}/${health.cpus ?? "-"} CPU`,
    `model ${health.model?.name || "-"}`, ...(health.sites ? ["sites " + health.sites.join(", ")] : [])].join("  ·  ");
  drawTimeline();
}

const soon = () => { timer ||= setTimeout(render, 100); };

function showTimeline(callId) {
  openCall = callId; archived = null;
  if (!calls.has(callId) || calls.get(callId).ended) loadHistory(callId);
  render();
}

async function loadHistory(callId) {
  const resp = await api("/calls/" + encodeURIComponent(callId));
  if (!resp.ok) { $("message").textContent = `no history for call ${callId} (${resp.status})`; return; }
  const h = await resp.json(), call = { call_id: callId, meta: h.meta, legs: {}, marks: [], ended: h.ended };
  for (const leg of h.legs) {
    const s = leg.summary || {};
    call.legs[leg.role] = { points: (s.timeline || []).map((p) => [p.t, p.smoothed]) };
    (s.escalation_log || []).forEach((e) => call.marks.push({ ...e, type: "escalation.raised", role: leg.role }));
  }
  if (openCall === callId) { archived = call; drawTimeline(); }
}

function drawTimeline() {
  const call = archived || calls.get(openCall);
  $("timeline").hidden = !call;
  if (!call) return;
  const end = Math.max(30, ...Object.values(call.legs).flatMap((l) => l.points.map((p) => p[0])));
  $("tl-title").textContent = "Call " + (call.meta.name || call.call_id) + (call.meta.agent ? " - agent " + call.meta.agent : "");
  $("tl-source").textContent = archived ? "from history" : call.ended ? "ended" : "live";
  plot($("tl-canvas"), call, 0, end, true);
}

// Verdicts: confirm / dismiss the call's latest escalation, mark the call upset / calm (POST .../feedback).
function verdictButtons(cell, call) {
  const esc = call.marks.filter((m) => m.type === "escalation.raised" && m.escalation_id).at(-1);
  const key = esc ? esc.escalation_id : "-";
  if (cell.dataset.key === key) return;
  cell.dataset.key = key;
  cell.innerHTML = "";
  const add = (label, verdict, path) => {
    const b = document.createElement("button");
    b.textContent = label; b.dataset.verdict = verdict;
    b.onclick = () => giveVerdict(path, verdict, label);
    cell.append(b, " ");
  };
  if (esc) {
    const path = "/escalations/" + encodeURIComponent(esc.escalation_id) + "/feedback";
    add("confirm", "confirmed", path); add("dismiss", "dismissed", path);
  }
  const path = "/calls/" + encodeURIComponent(call.call_id) + "/feedback";
  add("upset", "upset", path); add("calm", "calm", path);
}

async function giveVerdict(path, verdict, label) {
  const resp = await api(path, { method: "POST", headers: { "Content-Type": "application/json" },
                                 body: JSON.stringify({ verdict }) });
  const body = await resp.json().catch(() => ({}));
  $("message").textContent = resp.ok ? `${label}: noted (${body.call_id})` : `${label} not noted (${resp.status}): ${body.error || ""}`;
}

async function listen(callId, mode) {
  const supervisor = $("supervisor").value.trim();
  if (!supervisor) { $("message").textContent = "enter your name in the daemon's ami.supervisors first"; return; }
  localStorage.setItem("emovoice.supervisor", supervisor);
  $("message").textContent = `${mode}: ringing ${supervisor}'s phone for call ${callId}...`;
  const resp = await api(`/calls/${encodeURIComponent(callId)}/listen`, { method: "POST",
    headers: { "Content-Type": "application/json" }, body: JSON.stringify({ supervisor, mode }) });
  const body = await resp.json().catch(() => ({}));
  $("message").textContent = resp.ok ? `${mode}: ${supervisor}'s phone rings, connected to ${body.channel}`
                                     : `${mode} failed (${resp.status}): ${body.error || ""}`;
}

async function refresh() {
  const h = await api("/health").catch(() => null);
  if (h?.ok) health = await h.json();
  const r = await api("/calls?live=0&limit=10").catch(() => null);
  const ended = r?.ok ? (await r.json()).calls : [];
  $("recent-box").hidden = !ended.length;
  $("recent").replaceChildren(...ended.map((c) => {
    const li = document.createElement("li");
    li.textContent = `${c.meta.name || c.call_id}  ${c.meta.agent ? "agent " + c.meta.agent + "  " : ""}` +
                     `${new Date(c.started * 1000).toLocaleTimeString()}  peak ${c.peak_negative.toFixed(2)}, ${c.escalations} escalations`;
    li.onclick = () => showTimeline(c.call_id);
    return li;
  }));
}

function handle(ev) {
  if (ev.type === "hello") {
    canListen = ev.listen; $("me").hidden = !canListen;
    calls.clear(); rows.forEach((tr) => tr.remove()); rows.clear();
    ev.calls.forEach((c) => calls.set(c.call_id, c));
    refresh();
  } else {
    apply(ev);
    if (ev.type === "call.ended" && calls.get(ev.call_id)?.ended) {
      setTimeout(refresh, 1500);
      if (openCall === ev.call_id) setTimeout(() => loadHistory(ev.call_id), 1500);  // the history has written it
    }
  }
  soon();
}

function setStatus(text, online) { $("status").textContent = text; $("status").className = "status " + (online ? "online" : "offline"); }

function connect() {
  const ws = new WebSocket((location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/supervisor/ws");
  ws.onopen = () => ws.send(JSON.stringify({ type: "auth", token }));
  ws.onmessage = (msg) => { retryMs = 1000; setStatus("connected", true); handle(JSON.parse(msg.data)); };
  ws.onclose = (e) => {
    if (e.code === 4401) {
      setStatus("wrong token", false); sessionStorage.removeItem("emovoice.api-token"); $("login").hidden = false;
      return;
    }
    setStatus("reconnecting...", false);
    setTimeout(connect, retryMs); retryMs = Math.min(retryMs * 2, 15000);
  };
}

function begin(t) {
  token = t; sessionStorage.setItem("emovoice.api-token", t);
  connect();
}

const hash = new URLSearchParams(location.hash.slice(1));
if (hash.has("token")) history.replaceState(null, "", location.pathname);
$("supervisor").value = hash.get("supervisor") || localStorage.getItem("emovoice.supervisor") || "";
const saved = hash.get("token") || sessionStorage.getItem("emovoice.api-token");
$("login").onsubmit = (e) => { e.preventDefault(); $("login").hidden = true; begin($("token").value); };
$("login").hidden = !!saved;
if (saved) begin(saved);
setInterval(() => { if (token) { soon(); } }, 1000);
setInterval(() => { if (token) { refresh(); } }, 10000);
