// streamst live captions page: microphone -> AudioWorklet (mono int16) -> WebSocket (protocol v1) -> captions.
// Stable words are appended and never change; the partial tail is replaced by each `partial` message.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { ws: null, ctx: null, stream: null, node: null, words: [], partial: "", done: null, errors: [],
                lagMs: null, maxLagMs: 0 };
window.streamst = state; // for tests and curious users

function defaultUrl() {
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  return location.host ? `${scheme}//${location.host}/` : "ws://127.0.0.1:8765/";
}

function setStatus(text, isError = false) {
  $("status").textContent = text;
  $("status").className = isError ? "error" : "";
}

function render() {
  $("stable").textContent = state.words.map((w) => w.text).join(" ");
  $("partial").textContent = state.partial;
  $("srt").disabled = $("vtt").disabled = state.words.length === 0;
  $("lag").textContent = state.lagMs === null ? "" : `server lag ${(state.lagMs / 1000).toFixed(1)} s`;
  $("lag").className = state.lagMs !== null && state.lagMs >= 2000 ? "behind" : "";
}

function streamConfig(sampleRate) {
  const config = { type: "config", sample_rate: sampleRate, encoding: "pcm_s16le", channels: 1 };
  for (const key of ["task", "source_lang", "target_lang", "policy"]) {
    const value = $(key).value.trim();
    if (value) config[key] = value;
  }
  return config;
}

function onMessage(msg) {
  if (typeof msg.lag_ms === "number") {  // every server event says how far behind the received audio it is
    state.lagMs = msg.lag_ms;
    state.maxLagMs = Math.max(state.maxLagMs, msg.lag_ms);
  }
  switch (msg.type) {
    case "ready":
      setStatus(`streaming: model ${msg.model}, policy ${msg.policy}, ${msg.sample_rate} Hz`);
      break;
    case "stable":
      state.words.push(...msg.words);
      state.partial = "";  // the old partial held these words; the partial that follows replaces it
      break;
    case "partial":
      state.partial = msg.text;
      break;
    case "done":
      state.done = msg;
      state.partial = "";
      setStatus(`done: ${msg.stats.audio_s.toFixed(1)} s of audio, real-time factor ${msg.stats.rtf.toFixed(2)}`);
      break;
    case "error":
      if (!msg.fatal && msg.error === "lagging") {  // a warning: the stream goes on
        setStatus(`the server is behind: ${msg.message}`, true);
        break;
      }
      state.errors.push(msg);
      setStatus(`${msg.error}: ${msg.message}` + (msg.retry_after_s ? ` (retry in ${msg.retry_after_s} s)` : ""), true);
      break;
  }
  render();
}

async function start() {
  $("start").disabled = true;
  state.words = []; state.partial = ""; state.done = null; state.errors = []; state.lagMs = null; state.maxLagMs = 0;
  render();
  try {
    state.stream = await navigator.mediaDevices.getUserMedia({
      audio: { echoCancellation: false, noiseSuppression: false, autoGainControl: false },
    });
  } catch (e) {
    setStatus(`no microphone: ${e.message} (remote pages need https://, see README)`, true);
    $("start").disabled = false;
    return;
  }
  let ctx;
  try { ctx = new AudioContext({ sampleRate: 16000 }); } catch (e) { ctx = new AudioContext(); }
  state.ctx = ctx;
  await ctx.audioWorklet.addModule("worklet.js");
  const source = ctx.createMediaStreamSource(state.stream);
  const node = new AudioWorkletNode(ctx, "streamst-capture", { processorOptions: { frameMs: 40 } });
  state.node = node;

  let url = $("url").value.trim() || defaultUrl();
  const token = $("token").value.trim();
  if (token) url += (url.includes("?") ? "&" : "?") + "token=" + encodeURIComponent(token);
  const ws = new WebSocket(url);
  ws.binaryType = "arraybuffer";
  state.ws = ws;
  let ready = false;
  ws.onopen = () => ws.send(JSON.stringify(streamConfig(ctx.sampleRate)));
  let pinger = null;
  ws.onmessage = (e) => {
    const msg = JSON.parse(e.data);
    if (msg.type === "ready") {
      ready = true;
      // a pong carries the server's lag at once, so the figure stays fresh while no words come
      pinger = setInterval(() => { if (ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify({ type: "ping" })); }, 1000);
    }
    onMessage(msg);
  };
  ws.onclose = (e) => {
    if (pinger) clearInterval(pinger);
    if (!state.done && !state.errors.length) setStatus(`connection closed (${e.code} ${e.reason})`, e.code !== 1000);
    teardownAudio();
    $("start").disabled = false;
    $("stop").disabled = true;
  };
  node.port.onmessage = (e) => { if (ready && ws.readyState === WebSocket.OPEN) ws.send(e.data); };
  source.connect(node);
  $("stop").disabled = false;
}

function teardownAudio() {
  if (state.stream) state.stream.getTracks().forEach((t) => t.stop());
  if (state.ctx && state.ctx.state !== "closed") state.ctx.close();
  state.stream = null; state.ctx = null; state.node = null;
}

function stop() {
  $("stop").disabled = true;
  if (state.node) state.node.port.postMessage("flush");
  // let the flushed frame reach the socket, then ask the server for every remaining word
  setTimeout(() => {
    teardownAudio();
    if (state.ws && state.ws.readyState === WebSocket.OPEN) state.ws.send(JSON.stringify({ type: "eos" }));
    setStatus("finishing...");
  }, 100);
}

// ---- captions (same grouping as streamst/captions.py) ----

function span(w) {
  const start = w.start_ms ?? w.emitted_ms ?? 0;
  const end = w.end_ms ?? Math.max(start, w.emitted_ms ?? start);
  return [start, Math.max(start, end)];
}

function cues(words, maxChars = 42, maxMs = 5000, minMs = 500) {
  const groups = [];
  for (const w of words) {
    const text = String(w.text).trim();
    if (!text) continue;
    const [s, e] = span(w);
    const cur = groups[groups.length - 1];
    if (cur) {
      const length = cur.reduce((n, x) => n + x.text.length + 1, 0) + text.length;
      if (length <= maxChars && e - cur[0].s <= maxMs) { cur.push({ text, s, e }); continue; }
    }
    groups.push([{ text, s, e }]);
  }
  const out = [];
  groups.forEach((g, i) => {
    const start = Math.max(g[0].s, out.length ? out[out.length - 1].end : 0);
    let end = Math.max(Math.max(...g.map((x) => x.e)), start + minMs);
    const next = i + 1 < groups.length ? groups[i + 1][0].s : null;
    if (next !== null && next > start) end = Math.min(end, next);
    out.push({ start, end, text: g.map((x) => x.text).join(" ") });
  });
  return out;
}

function stamp(ms, sep) {
  ms = Math.max(0, Math.round(ms));
  const pad = (n, k = 2) => String(n).padStart(k, "0");
  return `${pad(Math.floor(ms / 3600000))}:${pad(Math.floor(ms / 60000) % 60)}:${pad(Math.floor(ms / 1000) % 60)}${sep}${pad(ms % 1000, 3)}`;
}

function toSrt(words) {
  return cues(words).map((c, i) => `${i + 1}\n${stamp(c.start, ",")} --> ${stamp(c.end, ",")}\n${c.text}\n`).join("\n");
}

function toVtt(words) {
  return "WEBVTT\n\n" + cues(words).map((c) => `${stamp(c.start, ".")} --> ${stamp(c.end, ".")}\n${c.text}\n`).join("\n");
}

function download(name, text, type) {
  const a = document.createElement("a");
  a.href = URL.createObjectURL(new Blob([text], { type }));
  a.download = name;
  a.click();
  setTimeout(() => URL.revokeObjectURL(a.href), 1000);
}

state.toSrt = () => toSrt(state.words);
state.toVtt = () => toVtt(state.words);
$("url").value = defaultUrl();
$("start").onclick = start;
$("stop").onclick = stop;
$("srt").onclick = () => download("captions.srt", toSrt(state.words), "application/x-subrip");
$("vtt").onclick = () => download("captions.vtt", toVtt(state.words), "text/vtt");
render();
