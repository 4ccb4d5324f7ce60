// EmoVoice agent page: shows this agent's escalation prompts. No build step, no dependencies.
// Credentials come from the URL fragment (#agent=1001&token=...; never sent to the server
// in a URL) or the form, and are sent as the WebSocket's first message.
"use strict";

const CLEARED_VISIBLE_MS = 8000;
const prompts = new Map();  // call_id + role -> element
const liveCalls = new Set();
const names = new Map();  // call_id -> its name (meta.name), shown instead of the id
const onHold = new Set();  // calls whose caller's leg carries only music or tones (call.hold)
let retryMs = 1000;
let me = null;  // {agent, token}: also sent with each verdict

// A verdict (POST .../feedback with the agent's own token); the element's buttons give way to what happened.
async function verdict(path, body, el) {
  try {
    const resp = await fetch(path, { method: "POST", headers: { "Authorization": "Bearer " + me.token,
      "Content-Type": "application/json" }, body: JSON.stringify({ ...body, agent: me.agent }) });
    el.textContent = resp.ok ? "Thanks - noted." : "Not noted (" + resp.status + ")";
  } catch (e) {
    el.textContent = "Not noted (offline)";
  }
}

function verdictButtons(escalationId) {
  const div = document.createElement("div");
  div.className = "verdict";
  for (const [label, v] of [["Right", "confirmed"], ["Not upset", "dismissed"]]) {
    const b = document.createElement("button");
    b.textContent = label;
    b.dataset.verdict = v;
    b.onclick = () => verdict("/escalations/" + encodeURIComponent(escalationId) + "/feedback", { verdict: v }, div);
    div.append(b);
  }
  return div;
}

function credentials() {
  const hash = new URLSearchParams(location.hash.slice(1));
  const agent = hash.get("agent") || sessionStorage.getItem("emovoice.agent");
  const token = hash.get("token") || sessionStorage.getItem("emovoice.token");
  if (hash.has("token")) history.replaceState(null, "", location.pathname);
  return agent && token ? { agent, token } : null;
}

function setStatus(text, online) {
  const el = document.getElementById("status");
  el.textContent = text;
  el.className = "status " + (online ? "online" : "offline");
}

function callName(callId) {
  return (names.get(callId) || callId) + (onHold.has(callId) ? " (on hold)" : "");
}

function renderCalls() {
  document.getElementById("calls").textContent = liveCalls.size ? [...liveCalls].map(callName).join(", ") : "none";
  document.getElementById("idle").hidden = prompts.size > 0;
  renderUpset();
}

// "Caller is upset": for each live call no prompt is shown for (nothing fired).
function renderUpset() {
  const box = document.getElementById("upset");
  const prompted = new Set([...prompts.values()].map((el) => el.dataset.callId));
  const want = [...liveCalls].filter((c) => !prompted.has(c));
  for (const el of [...box.children]) if (!want.includes(el.dataset.callId)) el.remove();
  for (const c of want) {
    if (box.querySelector('[data-call-id="' + CSS.escape(c) + '"]')) continue;
    const div = document.createElement("div");
    div.dataset.callId = c;
    const b = document.createElement("button");
    b.textContent = "Caller is upset (" + callName(c) + ")";
    b.onclick = () => verdict("/calls/" + encodeURIComponent(c) + "/feedback", { verdict: "upset" }, div);
    div.append(b);
    box.append(div);
  }
}

function showPrompt(ev) {
  const key = ev.call_id + ":" + ev.role;
  let el = prompts.get(key);
  if (!el) {
    el = document.createElement("article");
    el.innerHTML = '<div class="severity"></div><div class="phrase"></div><div class="meta"></div>';
    document.getElementById("prompts").prepend(el);
    prompts.set(key, el);
  }
  clearTimeout(el.dataset.timer);
  el.className = "prompt " + ev.severity;
  el.dataset.callId = ev.call_id;
  if (ev.escalation_id && el.dataset.escalationId !== ev.escalation_id) {
    el.dataset.escalationId = ev.escalation_id;
    el.querySelector(".verdict")?.remove();
    el.append(verdictButtons(ev.escalation_id));
  }
  el.querySelector(".severity").textContent = ev.severity === "alert" ? "Alert" : "Watch";
  el.querySelector(".phrase").textContent = ev.phrase || ev.reason;
  el.querySelector(".meta").textContent =
    ev.reason + " - call " + callName(ev.call_id) + " - since " + new Date(ev.ts * 1000).toLocaleTimeString();
  renderCalls();
}

// A prompt goes when the caller calms down (escalation.cleared) or the call ends (call.ended: no word on
// how the caller sounded then). The page says which.
function clearPrompt(ev, ended) {
  const key = ev.call_id + ":" + ev.role;
  const el = prompts.get(key);
  if (!el) return;
  clearTimeout(el.dataset.timer);
  el.className = "prompt " + (ended ? "ended" : "cleared");
  el.querySelector(".severity").textContent = ended ? "Call ended" : "Calmer";
  el.querySelector(".phrase").textContent = ended ? "The call ended." : "The caller sounds calmer.";
  el.dataset.timer = setTimeout(() => { el.remove(); prompts.delete(key); renderCalls(); }, CLEARED_VISIBLE_MS);
}

function handle(ev) {
  switch (ev.type) {
    case "hello":
      Object.entries(ev.names || {}).forEach(([c, name]) => names.set(c, name));
      ev.calls.forEach((c) => liveCalls.add(c));
      ev.active.forEach(showPrompt);
      break;
    case "call.started":
      if (ev.meta && ev.meta.name) names.set(ev.call_id, ev.meta.name);
      liveCalls.add(ev.call_id);
      break;
    case "call.hold": if (ev.on_hold) onHold.add(ev.call_id); else onHold.delete(ev.call_id); break;
    case "escalation.raised": showPrompt(ev); break;
    case "escalation.cleared": clearPrompt(ev, false); break;
    case "call.ended":
      liveCalls.delete(ev.call_id);
      clearPrompt(ev, true);
      names.delete(ev.call_id);
      onHold.delete(ev.call_id);
      break;
  }
  renderCalls();
}

function connect(cred) {
  const ws = new WebSocket((location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/agent/ws");
  ws.onopen = () => ws.send(JSON.stringify({ type: "auth", agent: cred.agent, token: cred.token }));
  ws.onmessage = (msg) => {
    retryMs = 1000;
    setStatus("agent " + cred.agent, true);
    handle(JSON.parse(msg.data));
  };
  ws.onclose = (e) => {
    if (e.code === 4401) {
      setStatus("wrong agent or token", false);
      sessionStorage.clear();
      document.getElementById("login").hidden = false;
      return;
    }
    setStatus("reconnecting...", false);
    setTimeout(() => connect(cred), retryMs);
    retryMs = Math.min(retryMs * 2, 15000);
  };
}

function begin(cred) {
  me = cred;
  sessionStorage.setItem("emovoice.agent", cred.agent);
  sessionStorage.setItem("emovoice.token", cred.token);
  connect(cred);
}

const saved = credentials();
if (saved) {
  begin(saved);
} else {
  const form = document.getElementById("login");
  form.hidden = false;
  form.onsubmit = (e) => {
    e.preventDefault();
    form.hidden = true;
    begin({ agent: form.agent.value, token: form.token.value });
  };
}
