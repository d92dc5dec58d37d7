// Interlock operator console: sign in with a token, watch escalations live (SSE over fetch), answer them.
// Everything the server sends is inserted as text (textContent), never as HTML.
"use strict";

const $ = (sel, root = document) => root.querySelector(sel);
const state = {
  token: sessionStorage.getItem("interlock.token") || "",
  skew: 0, // server clock minus ours, in seconds
  cards: new Map(), // escalation id -> card element
  history: new Map(), // escalation id -> row element
  stream: null, // AbortController of the live stream
};

function now() { return Date.now() / 1000 + state.skew; }

function fmt(v) {
  if (typeof v === "number") {
    if (Number.isInteger(v)) return String(v);
    return String(Number(v.toPrecision(6)));
  }
  return String(v);
}

function tensorText(t) {
  if (!t) return "—";
  if (t.shape.length === 0) return fmt(t.values[0]);
  return "[" + t.values.map(fmt).join(", ") + "]";
}

function indexLabel(i, shape) {
  if (shape.length <= 1) return String(i);
  const idx = [];
  for (let d = shape.length - 1; d >= 0; d--) { idx.unshift(i % shape[d]); i = Math.floor(i / shape[d]); }
  return idx.join(", ");
}

async function api(path, options = {}) {
  const headers = Object.assign({ Authorization: "Bearer " + state.token }, options.headers || {});
  const res = await fetch(path, Object.assign({}, options, { headers }));
  let body = null;
  try { body = await res.json(); } catch (e) { body = null; }
  if (!res.ok) {
    const err = new Error((body && body.error) || res.status + " " + res.statusText);
    err.status = res.status;
    throw err;
  }
  return body;
}

// ------------------------------------------------------------------ sign in / out

async function signIn(token) {
  state.token = token;
  const me = await api("/api/whoami");
  sessionStorage.setItem("interlock.token", token);
  $("#whoami").textContent = me.name;
  if (!$("#operator-name").value) $("#operator-name").value = localStorage.getItem("interlock.operator") || me.name;
  $("#login-view").hidden = true;
  $("#app-view").hidden = false;
  $("#session").hidden = false;
  await loadHistory();
  startStream();
}

function signOut(message) {
  if (state.stream) state.stream.abort();
  state.stream = null;
  state.token = "";
  sessionStorage.removeItem("interlock.token");
  for (const card of state.cards.values()) card.remove();
  state.cards.clear();
  for (const row of state.history.values()) row.remove();
  state.history.clear();
  updateCounts();
  $("#app-view").hidden = true;
  $("#session").hidden = true;
  $("#login-view").hidden = false;
  $("#login-error").textContent = message || "";
}

// ------------------------------------------------------------------ live stream

function setLive(on) {
  const el = $("#live");
  el.textContent = on ? "live" : "reconnecting…";
  el.className = "live " + (on ? "on" : "off");
}

async function startStream() {
  if (state.stream) state.stream.abort();
  const ctrl = new AbortController();
  state.stream = ctrl;
  while (state.stream === ctrl) {
    try {
      const res = await fetch("/api/events", {
        headers: { Authorization: "Bearer " + state.token, Accept: "text/event-stream" },
        signal: ctrl.signal,
      });
      if (res.status === 401 || res.status === 403) {
        let msg = "signed out";
        try { msg = (await res.json()).error; } catch (e) { /* keep default */ }
        signOut(msg);
        return;
      }
      if (!res.ok || !res.body) throw new Error("events: " + res.status);
      setLive(true);
      const reader = res.body.getReader();
      const decoder = new TextDecoder();
      let buf = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buf += decoder.decode(value, { stream: true });
        let cut;
        while ((cut = buf.indexOf("\n\n")) >= 0) {
          const frame = buf.slice(0, cut);
          buf = buf.slice(cut + 2);
          handleFrame(frame);
        }
      }
    } catch (e) {
      if (ctrl.signal.aborted) return;
    }
    setLive(false);
    await new Promise((r) => setTimeout(r, 1000));
  }
}

function handleFrame(frame) {
  let event = "message";
  const data = [];
  for (const line of frame.split("\n")) {
    if (line.startsWith("event:")) event = line.slice(6).trim();
    else if (line.startsWith("data:")) data.push(line.slice(5).trimStart());
  }
  if (!data.length) return;
  const msg = JSON.parse(data.join("\n"));
  if (typeof msg.server_time === "number") state.skew = msg.server_time - Date.now() / 1000;
  if (event === "escalation") upsert(msg);
}

// ------------------------------------------------------------------ escalations

function upsert(esc) {
  if (esc.state === "pending") {
    if (!state.cards.has(esc.id) && !state.history.has(esc.id)) addCard(esc);
  } else {
    const card = state.cards.get(esc.id);
    if (card) { card.remove(); state.cards.delete(esc.id); }
    addHistory(esc);
  }
  updateCounts();
}

function updateCounts() {
  $("#pending-count").textContent = String(state.cards.size);
  $("#no-pending").hidden = state.cards.size > 0;
}

function row(cells, cls) {
  const tr = document.createElement("tr");
  if (cls) tr.className = cls;
  for (const [text, tdClass] of cells) {
    const td = document.createElement("td");
    td.textContent = text;
    if (tdClass) td.className = tdClass;
    tr.appendChild(td);
  }
  return tr;
}

function substituteInput(space) {
  if (space && space.type === "discrete") {
    const sel = document.createElement("select");
    sel.className = "substitute-action";
    for (let i = 0; i < space.n; i++) {
      const opt = document.createElement("option");
      opt.value = String(i);
      opt.textContent = "action " + i;
      sel.appendChild(opt);
    }
    return sel;
  }
  const input = document.createElement("input");
  input.className = "substitute-action";
  input.type = "text";
  input.placeholder = space ? "[" + space.low.map(fmt).join(", ") + "] … [" + space.high.map(fmt).join(", ") + "]" : "action (JSON)";
  return input;
}

function addCard(esc) {
  const card = $("#card-template").content.firstElementChild.cloneNode(true);
  card.dataset.escalationId = esc.id;
  card.dataset.deadline = String(esc.deadline_time);
  $(".agent", card).textContent = esc.agent_id;
  $(".rule", card).textContent = esc.rule || "(default)";
  $(".eid", card).textContent = esc.id;
  $(".episode", card).textContent = esc.episode_id || "—";
  $(".step", card).textContent = String(esc.step);
  $(".mode", card).textContent = esc.mode + " mode";
  for (const r of esc.reasons) {
    const li = document.createElement("li");
    li.textContent = r;
    $(".reasons", card).appendChild(li);
  }
  if (esc.frame_png_base64 && /^[A-Za-z0-9+/=\s]+$/.test(esc.frame_png_base64)) {
    $(".frame img", card).src = "data:image/png;base64," + esc.frame_png_base64.replace(/\s/g, "");
    $(".frame", card).hidden = false;
  }
  const obs = esc.observation;
  if (obs) {
    obs.values.forEach((v, i) => {
      $(".observation tbody", card).appendChild(row([[indexLabel(i, obs.shape)], [fmt(v), "num"]]));
    });
  }
  for (const s of esc.signals) {
    $(".signals tbody", card).appendChild(
      row([[s.name], [fmt(s.value), "num"], [fmt(s.threshold), "num"], [s.tripped ? "tripped" : ""]],
        s.tripped ? "tripped" : ""));
  }
  $(".proposed", card).textContent = tensorText(esc.proposed_action);
  $(".fallback", card).textContent = tensorText(esc.fallback_action) + "  (" + esc.fallback + ")";
  const labels = Object.entries(esc.labels).map(([k, v]) => k + "=" + v).join(", ");
  $(".labels", card).textContent = labels || "—";
  $(".substitute-input", card).appendChild(substituteInput(esc.action_space));

  $(".approve", card).addEventListener("click", () => resolve(card, esc, "approve"));
  $(".reject", card).addEventListener("click", () => resolve(card, esc, "reject"));
  $(".substitute", card).addEventListener("click", () => resolve(card, esc, "substitute"));
  state.cards.set(esc.id, card);
  // Oldest deadline first.
  const list = $("#pending-list");
  const before = [...list.children].find((c) => Number(c.dataset.deadline) > esc.deadline_time);
  list.insertBefore(card, before || null);
  tick();
}

async function resolve(card, esc, resolution) {
  const err = $(".card-error", card);
  err.textContent = "";
  const body = {
    resolution,
    operator: $("#operator-name").value.trim(),
    comment: $(".comment", card).value.trim(),
  };
  if (resolution === "substitute") {
    const raw = $(".substitute-action", card).value.trim();
    try { body.action = JSON.parse(raw); } catch (e) {
      err.textContent = "the substitute action must be JSON: a number or a list like [0.5, -0.2]";
      return;
    }
  }
  for (const b of card.querySelectorAll("button")) b.disabled = true;
  try {
    upsert(await api("/api/escalations/" + encodeURIComponent(esc.id) + "/resolve", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body),
    }));
  } catch (e) {
    err.textContent = e.message;
    if (e.status === 401 || e.status === 403) signOut(e.message);
    for (const b of card.querySelectorAll("button")) b.disabled = false;
  }
}

function addHistory(esc) {
  const old = state.history.get(esc.id);
  if (old) old.remove();
  const when = new Date((esc.resolved_time || esc.deadline_time) * 1000).toLocaleTimeString();
  const tr = row([
    [when],
    [esc.id, "eid"],
    [esc.agent_id],
    [esc.rule],
    [esc.state, "outcome outcome-" + esc.state],
    [tensorText(esc.resolved_action), "num"],
    [esc.operator || (esc.state === "expired" ? "(deadline)" : "")],
    [esc.comment],
  ]);
  tr.dataset.escalationId = esc.id;
  const body = $("#history tbody");
  body.insertBefore(tr, body.firstChild);
  state.history.set(esc.id, tr);
}

async function loadHistory() {
  const data = await api("/api/escalations?state=resolved&limit=100");
  state.skew = data.server_time - Date.now() / 1000;
  for (const esc of data.escalations.reverse()) addHistory(esc);
}

// ------------------------------------------------------------------ countdowns

function tick() {
  const t = now();
  for (const card of state.cards.values()) {
    const left = Number(card.dataset.deadline) - t;
    const el = $(".countdown", card);
    if (left > 0) {
      el.textContent = left >= 60 ? Math.floor(left / 60) + " min " + Math.floor(left % 60) + " s" : left.toFixed(1) + " s";
      el.className = "countdown" + (left < 10 ? " urgent" : "");
    } else {
      el.textContent = "deadline passed: the fail-safe applies";
      el.className = "countdown over";
      for (const b of card.querySelectorAll("button")) b.disabled = true;
    }
  }
}

// ------------------------------------------------------------------ wiring

document.addEventListener("DOMContentLoaded", () => {
  $("#login").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    $("#login-error").textContent = "";
    const name = $("#operator-name").value.trim();
    if (name) localStorage.setItem("interlock.operator", name);
    try {
      await signIn($("#token").value.trim());
      $("#token").value = "";
    } catch (e) {
      state.token = "";
      $("#login-error").textContent = e.message;
    }
  });
  $("#logout").addEventListener("click", () => signOut(""));
  $("#operator-name").addEventListener("change", () => {
    localStorage.setItem("interlock.operator", $("#operator-name").value.trim());
  });
  for (const tab of document.querySelectorAll(".tab")) {
    tab.addEventListener("click", () => {
      for (const t of document.querySelectorAll(".tab")) t.classList.toggle("active", t === tab);
      $("#pending-view").hidden = tab.dataset.tab !== "pending";
      $("#history-view").hidden = tab.dataset.tab !== "history";
    });
  }
  setInterval(tick, 200);
  if (state.token) signIn(state.token).catch((e) => signOut(e.message));
});
