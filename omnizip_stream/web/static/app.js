// OmniZip-Stream live assistant: plain JS, no build step, nothing from a CDN.
// Streams: GET /v1/streams. Camera: getUserMedia -> RTCPeerConnection -> POST /v1/webrtc/offer.
// Questions: POST /v1/chat/completions {stream: true} read as SSE through fetch. Live panel: the SSE of
// GET /v1/streams/{id}/events. Chart: GET /v1/streams/{id}/windows. Snapshot: GET /v1/streams/{id}/snapshot.jpg.
// A server with an API key: every /v1/ call sends "Authorization: Bearer KEY" (typed once, kept in
// localStorage), which is why event streams and snapshots are read with fetch, not EventSource/<img src>.
"use strict";

const state = {
  streams: [],
  current: null,       // selected stream id
  ownStream: null,     // the stream of this page's camera
  pc: null,
  events: null,
  points: [],          // [{index, t0_s, t1_s, audio_retention, video_keep_ratio}]
  lastIndex: -1,
  backfilled: false,   // the chart's series was fetched once for the selected stream
  answers: 0,
};
window.omnizip = state; // read by the browser tests

const $ = (id) => document.getElementById(id);
const fmt = (x, digits = 1) => (x === null || x === undefined || Number.isNaN(x)) ? "-" : Number(x).toFixed(digits);

function api(url, options = {}) {
  const key = localStorage.getItem("omnizip_api_key");
  const headers = { ...(options.headers || {}) };
  if (key) headers.Authorization = `Bearer ${key}`;
  return fetch(url, { cache: "no-store", ...options, headers }).then((r) => {
    if (r.status === 401) $("key-form").hidden = false;
    return r;
  });
}

async function getJSON(url) {
  const r = await api(url);
  if (!r.ok) throw new Error(`${url}: HTTP ${r.status}`);
  return r.json();
}

// Server-sent events read through fetch: calls onEvent(name, data) per event; resolves at the end.
async function readSSE(response, onEvent) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buf = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buf += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buf.indexOf("\n\n")) >= 0) {
      const lines = buf.slice(0, cut).split("\n");
      buf = buf.slice(cut + 2);
      const name = (lines.find((l) => l.startsWith("event:")) || "event: message").slice(6).trim();
      const data = lines.filter((l) => l.startsWith("data:")).map((l) => l.slice(5).trim()).join("\n");
      if (data) onEvent(name, data);
    }
  }
}

function errorText(body, status) {
  const e = body && body.error;
  if (e && typeof e === "object") return `${e.code || status}: ${e.message || ""}`;
  return typeof e === "string" ? e : `HTTP ${status}`;
}

// ------------------------------------------------------------------ streams
function streamList(body) {
  const list = Array.isArray(body) ? body : (body.data || body.streams || []);
  return list.map((s) => (typeof s === "string" ? { id: s } : s));
}

async function refreshStreams() {
  try {
    state.streams = streamList(await getJSON("/v1/streams"));
  } catch (err) {
    $("conn").textContent = `server unreachable (${err.message})`;
    return;
  }
  $("conn").textContent = `${state.streams.length} stream(s)`;
  const ul = $("streams");
  ul.replaceChildren();
  for (const s of state.streams) {
    const li = document.createElement("li");
    li.dataset.id = s.id;
    li.textContent = s.id + (s.id === state.ownStream ? " (my camera)" : "");
    const small = document.createElement("small");
    small.textContent = [s.source, s.state].filter(Boolean).join(" · ");
    li.appendChild(small);
    if (s.id === state.current) li.classList.add("selected");
    li.onclick = () => select(s.id);
    ul.appendChild(li);
  }
  if (state.current && !state.streams.some((s) => s.id === state.current)) {
    state.current = null; // removed (its page left, or DELETE): show another one
    $("current").textContent = "(none selected)";
    if (state.events) state.events.abort();
  }
  if (!state.current && state.streams.length) select(state.streams[0].id);
}

function select(id) {
  if (state.current === id) return;
  state.current = id;
  state.points = [];
  state.lastIndex = -1;
  state.backfilled = false;
  $("current").textContent = id;
  const none = document.createElement("li");
  none.className = "muted";
  none.textContent = "none yet";
  $("alerts").replaceChildren(none);
  for (const li of $("streams").children) li.classList.toggle("selected", li.dataset.id === id);
  drawChart();
  openEvents(id);
  refreshWindows();
  refreshSnapshot();
}

// ------------------------------------------------------------------ live panel (SSE)
function openEvents(id) {
  if (state.events) state.events.abort();
  const ctl = new AbortController();
  state.events = ctl;
  api(`/v1/streams/${encodeURIComponent(id)}/events`, { signal: ctl.signal, headers: { Accept: "text/event-stream" } })
    .then((r) => (r.ok ? readSSE(r, (name, data) => {
      if (name === "removed") { $("state").textContent = "removed"; return; }
      if (name === "alert") { try { showAlert(JSON.parse(data)); } catch { /* not JSON */ } return; }
      try { showStatus(JSON.parse(data)); } catch { /* not JSON */ }
    }) : null))
    .catch(() => { /* aborted, or the server went away */ });
}

// An alert of the stream's standing questions ("tell me when ..."), newest first, at most 20 shown.
function showAlert(a) {
  const list = $("alerts");
  if (list.firstElementChild && list.firstElementChild.classList.contains("muted")) list.replaceChildren();
  const li = document.createElement("li");
  const range = Array.isArray(a.window_time_range_s) ? ` at ${fmt(a.window_time_range_s[0], 1)}-${fmt(a.window_time_range_s[1], 1)} s` : "";
  li.textContent = `${a.question} (p=${fmt(a.probability, 2)}${range})` + (a.description ? `: ${a.description}` : "");
  list.prepend(li);
  while (list.children.length > 20) list.lastElementChild.remove();
}

function showStatus(msg) {
  const s = msg.stats || msg.status || msg;
  const src = s.source && typeof s.source === "object" ? s.source : {};
  $("lag").textContent = s.window_lag_s === null || s.window_lag_s === undefined ? "-" : `${fmt(s.window_lag_s, 2)} s`;
  $("windows").textContent = s.windows_ingested ?? "-";
  $("kv-tokens").textContent = s.kv_tokens ?? "-";
  $("kv-mb").textContent = s.kv_bytes === undefined ? "-" : fmt(s.kv_bytes / 1e6, 2);
  $("dropped").textContent = s.video_dropped ?? src.video_dropped ?? "-";
  $("state").textContent = s.source_state || s.state || "-";
  if (s.last_window) addPoints([s.last_window]);
}

// ------------------------------------------------------------------ chart (canvas, no library)
function addPoints(windows) {
  const byIndex = new Map(state.points.map((w) => [w.index, w]));
  let added = false;
  for (const w of windows) {
    if (byIndex.has(w.index)) continue;
    byIndex.set(w.index, w);
    added = true;
  }
  if (!added) return;
  state.points = [...byIndex.values()].sort((a, b) => a.index - b.index).slice(-300);
  state.lastIndex = state.points[state.points.length - 1].index;
  drawChart();
}

async function refreshWindows() {
  const id = state.current;
  if (!id) return;
  const after = state.backfilled ? state.lastIndex : -1; // the first call backfills the whole series
  try {
    const body = await getJSON(`/v1/streams/${encodeURIComponent(id)}/windows?after=${after}`);
    if (id !== state.current) return; // another stream was selected meanwhile
    state.backfilled = true;
    addPoints(body.windows || []);
  } catch { /* the stream may have gone */ }
}

function drawChart() {
  const c = $("chart");
  const g = c.getContext("2d");
  const W = c.width, H = c.height, L = 36, R = 8, T = 8, B = 22;
  g.clearRect(0, 0, W, H);
  g.font = "11px system-ui, sans-serif";
  g.fillStyle = "#666";
  g.strokeStyle = "#e3e6ec";
  for (const y of [0, 0.25, 0.5, 0.75, 1]) {
    const py = T + (1 - y) * (H - T - B);
    g.beginPath(); g.moveTo(L, py); g.lineTo(W - R, py); g.stroke();
    g.fillText(y.toFixed(2), 4, py + 4);
  }
  const pts = state.points;
  c.dataset.points = String(pts.length);
  $("chart-count").textContent = pts.length ? `${pts.length} window(s), last at ${fmt(pts[pts.length - 1].t1_s)} s` : "";
  if (!pts.length) return;
  const i0 = pts[0].index, span = Math.max(1, pts[pts.length - 1].index - i0);
  const px = (w) => L + ((w.index - i0) / span) * (W - L - R);
  const py = (v) => T + (1 - Math.max(0, Math.min(1, v))) * (H - T - B);
  g.fillText(`t=${fmt(pts[0].t0_s)} s`, L, H - 6);
  g.fillText(`t=${fmt(pts[pts.length - 1].t1_s)} s`, W - R - 60, H - 6);
  for (const [key, colour] of [["audio_retention", "#e8590c"], ["video_keep_ratio", "#1c7ed6"]]) {
    g.strokeStyle = colour; g.fillStyle = colour; g.lineWidth = 2;
    g.beginPath();
    let started = false;
    for (const w of pts) {
      const v = w[key];
      if (v === null || v === undefined) { started = false; continue; }
      if (started) g.lineTo(px(w), py(v)); else g.moveTo(px(w), py(v));
      started = true;
    }
    g.stroke();
    for (const w of pts) {
      if (w[key] === null || w[key] === undefined) continue;
      g.beginPath(); g.arc(px(w), py(w[key]), 2.5, 0, 2 * Math.PI); g.fill();
    }
  }
  g.lineWidth = 1;
}

// ------------------------------------------------------------------ snapshot
function refreshSnapshot() {
  if (!state.current || state.current === state.ownStream) { $("snapshot").hidden = true; return; }
  api(`/v1/streams/${encodeURIComponent(state.current)}/snapshot.jpg`)
    .then((r) => (r.ok ? r.blob() : null))
    .then((blob) => {
      const img = $("snapshot");
      if (!blob) { img.hidden = true; return; }
      if (img.src.startsWith("blob:")) URL.revokeObjectURL(img.src);
      img.src = URL.createObjectURL(blob);
      img.hidden = false;
    })
    .catch(() => { $("snapshot").hidden = true; });
}

// ------------------------------------------------------------------ camera over WebRTC
async function useCamera() {
  const status = $("camera-status");
  $("use-camera").disabled = true;
  try {
    if (!navigator.mediaDevices || !window.RTCPeerConnection) {
      throw new Error("this page is not a secure context: open it as http://localhost:PORT/ on the server's "
        + "machine, or through HTTPS (a reverse proxy) from another one");
    }
    status.textContent = "asking for the camera and microphone...";
    const media = await navigator.mediaDevices.getUserMedia({ video: { width: 640, height: 480 }, audio: true });
    $("local").srcObject = media;
    $("local").hidden = false;
    const pc = new RTCPeerConnection();
    state.pc = pc;
    for (const track of media.getTracks()) pc.addTrack(track, media);
    await pc.setLocalDescription(await pc.createOffer());
    await iceGathered(pc);
    status.textContent = "connecting...";
    const r = await api("/v1/webrtc/offer", {
      method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ sdp: pc.localDescription.sdp, type: pc.localDescription.type }),
    });
    const body = await r.json();
    if (!r.ok) throw new Error(errorText(body, r.status));
    await pc.setRemoteDescription({ sdp: body.sdp, type: body.type });
    state.ownStream = body.id;
    pc.onconnectionstatechange = () => { status.textContent = `${body.id}: ${pc.connectionState}`; };
    status.textContent = `${body.id}: ${pc.connectionState} (${(body.kinds || []).join("+")})`;
    await refreshStreams();
    select(body.id);
  } catch (err) {
    status.textContent = `camera failed: ${err.message}`;
    status.classList.add("error");
    $("use-camera").disabled = false;
  }
}

function iceGathered(pc) {
  if (pc.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => { if (pc.iceGatheringState === "complete") resolve(); };
    pc.addEventListener("icegatheringstatechange", done);
    setTimeout(resolve, 3000); // host candidates are enough on a LAN
  });
}

function leave() {
  // keepalive: the request outlives the page (a beacon that can carry the API key)
  if (state.ownStream) api(`/v1/webrtc/${encodeURIComponent(state.ownStream)}/close`, { method: "POST", keepalive: true });
  if (state.pc) state.pc.close();
}

// ------------------------------------------------------------------ questions (SSE over fetch)
function findKey(obj, key, depth = 3) {
  if (!obj || typeof obj !== "object" || depth < 0) return undefined;
  if (key in obj) return obj[key];
  for (const v of Object.values(obj)) {
    const found = findKey(v, key, depth - 1);
    if (found !== undefined) return found;
  }
  return undefined;
}

async function ask(ev) {
  ev.preventDefault();
  const question = $("question").value.trim();
  if (!question || !state.current) return;
  const out = $("answer"), meta = $("answer-meta");
  out.textContent = ""; out.classList.remove("error");
  meta.textContent = "waiting for the first token...";
  $("ask-button").disabled = true;
  const t0 = performance.now();
  let ttftMs = null, serverTtft, range, pieces = 0;
  try {
    const r = await api("/v1/chat/completions", {
      method: "POST", headers: { "Content-Type": "application/json", Accept: "text/event-stream" },
      body: JSON.stringify({ model: state.current, stream: true, messages: [{ role: "user", content: question }] }),
    });
    if (!r.ok) {
      let body = null;
      try { body = await r.json(); } catch { /* not JSON */ }
      throw new Error(errorText(body, r.status));
    }
    await readSSE(r, (name, data) => {
      if (data === "[DONE]") return;
      const chunk = JSON.parse(data);
      if (chunk.error) throw new Error(errorText(chunk, "stream"));
      const delta = chunk.choices && chunk.choices[0] && chunk.choices[0].delta;
      if (delta && delta.content) {
        if (ttftMs === null) ttftMs = performance.now() - t0;
        out.textContent += delta.content;
        pieces += 1;
        out.dataset.pieces = String(pieces);
      }
      serverTtft = findKey(chunk, "ttft_ms") ?? serverTtft;
      range = findKey(chunk, "time_range_s") ?? range;
    });
    const parts = [`TTFT ${fmt(ttftMs, 0)} ms in the browser`];
    if (serverTtft !== undefined) parts.push(`${fmt(serverTtft, 0)} ms on the server`);
    if (Array.isArray(range)) parts.push(`saw ${fmt(range[0])}-${fmt(range[1])} s of the stream`);
    parts.push(`${fmt((performance.now() - t0) / 1000, 2)} s total, ${pieces} chunk(s)`);
    meta.textContent = parts.join(" · ");
    state.answers += 1;
  } catch (err) {
    out.textContent = err.message;
    out.classList.add("error");
    meta.textContent = "";
  } finally {
    $("ask-button").disabled = false;
  }
}

// ------------------------------------------------------------------ start
$("key-form").onsubmit = (ev) => {
  ev.preventDefault();
  localStorage.setItem("omnizip_api_key", $("key").value.trim());
  $("key-form").hidden = true;
  refreshStreams();
};
$("use-camera").onclick = useCamera;
$("ask").onsubmit = ask;
window.addEventListener("pagehide", leave);
refreshStreams();
setInterval(refreshStreams, 3000);
setInterval(refreshWindows, 1500);
setInterval(refreshSnapshot, 2000);
