// Fish S2 live preview: a small player on Fish S2 Dual-AR Generate that plays the audio while it is generated.
// The backend (nodes/live_preview.py) sends `fishs2.preview` websocket messages with WAV chunks of take 0; this
// extension queues them in order (fishs2_player.js), plays them gaplessly with WebAudio and shows what was heard
// and received. Nothing here changes what is generated or saved; the player is view-only (never serialised).
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";
import { ChunkQueue, PREVIEW_EVENT, decodeBase64, statusText, wavToFloat32 } from "./fishs2_player.js";

const NODE_CLASS = "FishS2Generate";
const WIDGET_NAME = "fishs2_live_preview";
const HEIGHT = 46;
const MAX_REPLAY_SECONDS = 30 * 60; // older audio is dropped from the replay buffer beyond this

const STYLE = `
.fishs2-player { display:flex; align-items:center; gap:6px; box-sizing:border-box; width:100%; height:${HEIGHT}px;
  padding:4px 6px; font:11px sans-serif; color:var(--input-text,#ddd); background:var(--comfy-input-bg,#222);
  border-radius:6px; overflow:hidden; }
.fishs2-player button { flex:none; width:28px; height:28px; border-radius:50%; border:1px solid var(--border-color,#555);
  background:var(--comfy-menu-bg,#333); color:inherit; cursor:pointer; font-size:12px; line-height:1; padding:0; }
.fishs2-player button:disabled { opacity:.4; cursor:default; }
.fishs2-player-main { flex:1; min-width:0; display:flex; flex-direction:column; gap:4px; }
.fishs2-player-bar { position:relative; height:6px; border-radius:3px; background:rgba(127,127,127,.25); overflow:hidden; }
.fishs2-player-bar > div { position:absolute; left:0; top:0; bottom:0; width:0; }
.fishs2-player-received { background:rgba(80,160,255,.35); }
.fishs2-player-played { background:rgba(80,160,255,.95); }
.fishs2-player-status { white-space:nowrap; overflow:hidden; text-overflow:ellipsis; opacity:.85; }
`;

let audioContext = null;

function context() {
  if (!audioContext) {
    const Ctx = window.AudioContext || window.webkitAudioContext;
    if (!Ctx) return null;
    audioContext = new Ctx();
  }
  return audioContext;
}

/** The node a message's `node` (ComfyUI's unique id; "outer:inner" inside subgraphs) refers to. */
function findNode(id) {
  let graph = app.rootGraph ?? app.graph;
  let node = null;
  const parts = String(id).split(":");
  for (let i = 0; i < parts.length; i++) {
    node = graph?.getNodeById?.(parts[i]) ?? graph?.getNodeById?.(Number(parts[i])) ?? null;
    if (!node) return null;
    if (i < parts.length - 1) graph = node.subgraph;
  }
  return node;
}

const players = new Set();

class Player {
  constructor(node) {
    this.node = node;
    this.queue = new ChunkQueue(0);
    this.buffers = []; // AudioBuffers of the current run, in order
    this.droppedSeconds = 0;
    this.sources = [];
    this.scheduled = []; // { t0, duration } of what is scheduled in this playback
    this.playedBefore = 0; // seconds of the run before the first scheduled buffer
    this.nextTime = 0;
    this.playing = false;
    this.ticking = false;
    this.autoplay = true;
    this.phase = "idle";
    this.log = []; // { receivedAt, start, samples, segment, lineDone, prompt } per chunk (for tests and debugging)
    this.errors = [];
    this.build();
    players.add(this);
  }

  build() {
    const el = document.createElement("div");
    el.className = "fishs2-player";
    this.button = document.createElement("button");
    this.button.type = "button";
    this.button.title = "Play the preview from the start / stop";
    this.button.addEventListener("click", (e) => { e.stopPropagation(); this.toggle(); });
    this.button.addEventListener("pointerdown", (e) => e.stopPropagation());
    const main = document.createElement("div");
    main.className = "fishs2-player-main";
    const bar = document.createElement("div");
    bar.className = "fishs2-player-bar";
    this.receivedBar = document.createElement("div");
    this.receivedBar.className = "fishs2-player-received";
    this.playedBar = document.createElement("div");
    this.playedBar.className = "fishs2-player-played";
    bar.append(this.receivedBar, this.playedBar);
    this.statusEl = document.createElement("div");
    this.statusEl.className = "fishs2-player-status";
    main.append(bar, this.statusEl);
    el.append(this.button, main);
    this.element = el;
    this.render();
  }

  get previewOn() {
    const w = this.node.widgets?.find((x) => x.name === "live_preview");
    return w ? w.value !== false : true;
  }

  // ── run lifecycle ─────────────────────────────────────────────────────────────────────────────────────────
  start() {
    this.stopPlayback();
    this.queue.clear(undefined);
    this.buffers = [];
    this.droppedSeconds = 0;
    this.playedBefore = 0;
    this.autoplay = true;
    this.phase = this.previewOn ? "generating" : "off";
    this.render();
  }

  finish(phase) {
    if (this.phase === "generating") this.phase = phase;
    this.render();
  }

  onChunk(message) {
    const { reset, ready } = this.queue.accept(message, performance.now());
    if (reset) {
      const autoplay = this.autoplay;
      this.start();
      this.autoplay = autoplay;
      this.queue.accept(message, performance.now());
    }
    if (this.phase !== "generating") this.phase = "generating";
    this.log.push({ receivedAt: performance.now(), start: message.start, samples: message.samples,
                    segment: message.segment, lineDone: !!message.line_done, prompt: message.prompt_id ?? null });
    const ctx = context();
    for (const chunk of ready) {
      try {
        const wav = wavToFloat32(decodeBase64(chunk.wav));
        if (!ctx || !wav.samples.length) continue;
        const buffer = ctx.createBuffer(1, wav.samples.length, wav.sampleRate);
        buffer.copyToChannel(wav.samples, 0);
        this.buffers.push(buffer);
        if (this.playing) this.schedule(buffer);
        else if (this.autoplay) this.play(this.buffers.length - 1);
      } catch (err) {
        this.errors.push(String(err?.message ?? err));
        console.warn("fishs2: live preview chunk skipped:", err);
      }
    }
    this.trim();
    this.render();
  }

  trim() {
    let total = this.buffers.reduce((s, b) => s + b.duration, 0);
    while (this.buffers.length > 1 && total > MAX_REPLAY_SECONDS && !this.playing) {
      const b = this.buffers.shift();
      total -= b.duration;
      this.droppedSeconds += b.duration;
    }
  }

  // ── playback ──────────────────────────────────────────────────────────────────────────────────────────────
  play(fromIndex = 0) {
    const ctx = context();
    if (!ctx) return;
    this.stopPlayback();
    if (ctx.state === "suspended") ctx.resume().catch(() => {});
    this.playing = true;
    this.playedBefore = this.droppedSeconds + this.buffers.slice(0, fromIndex).reduce((s, b) => s + b.duration, 0);
    this.nextTime = ctx.currentTime + 0.05;
    for (const buffer of this.buffers.slice(fromIndex)) this.schedule(buffer);
    this.tick();
  }

  schedule(buffer) {
    const ctx = context();
    const source = ctx.createBufferSource();
    source.buffer = buffer;
    source.connect(ctx.destination);
    const t0 = Math.max(this.nextTime, ctx.currentTime + 0.02); // after an underrun: as soon as possible
    source.start(t0);
    this.nextTime = t0 + buffer.duration;
    this.sources.push(source);
    this.scheduled.push({ t0, duration: buffer.duration });
  }

  stopPlayback() {
    for (const s of this.sources) {
      try { s.stop(); } catch { /* not started */ }
      s.disconnect();
    }
    this.sources = [];
    this.scheduled = [];
    this.playing = false;
  }

  toggle() {
    if (this.playing && audioContext?.state === "suspended") {
      audioContext.resume().then(() => this.render(), () => {}); // the browser waited for a click to allow sound
    } else if (this.playing) {
      this.stopPlayback();
      this.autoplay = false;
    } else if (this.buffers.length) {
      this.autoplay = true;
      this.play(0);
    }
    this.render();
  }

  playedSeconds() {
    if (!this.playing || !audioContext) return this.playedBefore;
    const now = audioContext.currentTime;
    return this.playedBefore + this.scheduled.reduce((s, e) => s + Math.min(Math.max(now - e.t0, 0), e.duration), 0);
  }

  tick() {
    if (this.ticking) return;
    this.ticking = true;
    const step = () => {
      if (!this.playing || !players.has(this)) { this.ticking = false; this.render(); return; }
      if (audioContext && audioContext.state === "running" && audioContext.currentTime >= this.nextTime &&
          this.phase !== "generating") {
        this.playing = false; // played to the end of a finished run
        this.playedBefore = this.droppedSeconds + this.buffers.reduce((s, b) => s + b.duration, 0);
        this.scheduled = [];
        this.sources = [];
      }
      this.render();
      requestAnimationFrame(step);
    };
    requestAnimationFrame(step);
  }

  render() {
    const received = this.queue.receivedSeconds;
    const played = Math.min(this.playedSeconds(), received);
    const phase = this.phase === "idle" && !this.previewOn ? "off" : this.phase;
    const suspended = this.playing && audioContext?.state === "suspended";
    this.statusEl.textContent = statusText({ phase, played, received, lines: this.queue.linesDone,
                                             line: this.queue.segment + 1, suspended });
    this.receivedBar.style.width = received > 0 ? "100%" : "0";
    this.playedBar.style.width = received > 0 ? `${(100 * played / received).toFixed(2)}%` : "0";
    this.button.textContent = this.playing && !suspended ? "\u25a0" : "\u25b6";
    this.button.disabled = !this.buffers.length;
  }

  remove() {
    this.stopPlayback();
    players.delete(this);
  }
}

function execId(detail) {
  if (detail == null) return null;
  if (typeof detail === "object") return detail.display_node ?? detail.node ?? null;
  return String(detail);
}

function setupNode(node) {
  if (node.comfyClass !== NODE_CLASS || node.fishs2Preview) return;
  const player = new Player(node);
  node.fishs2Preview = player;
  const widget = node.addDOMWidget(WIDGET_NAME, "fishs2_player", player.element, {
    serialize: false,
    hideOnZoom: false,
    getMinHeight: () => HEIGHT,
    getMaxHeight: () => HEIGHT,
  });
  widget.serialize = false; // view-only: not in widgets_values, not in the prompt
  const onRemoved = node.onRemoved;
  node.onRemoved = function () {
    player.remove();
    return onRemoved?.apply(this, arguments);
  };
  const live = node.widgets?.find((w) => w.name === "live_preview");
  if (live) {
    const previous = live.callback;
    live.callback = function () { const r = previous?.apply(this, arguments); player.render(); return r; };
  }
}

function fitPlayer(node) {
  if (node.comfyClass !== NODE_CLASS) return;
  const min = node.computeSize?.();
  if (min && node.size[1] < min[1]) node.setSize([Math.max(node.size[0], min[0]), min[1]]);
  node.fishs2Preview?.render();
}

app.registerExtension({
  name: "fishs2.LivePreview",
  setup() {
    const style = document.createElement("style");
    style.textContent = STYLE;
    document.head.appendChild(style);
    api.addEventListener(PREVIEW_EVENT, (event) => {
      const message = event.detail;
      const node = message ? findNode(message.node) : null;
      if (!node || node.comfyClass !== NODE_CLASS) return;
      if (!node.fishs2Preview) setupNode(node);
      node.fishs2Preview?.onChunk(message);
    });
    api.addEventListener("executing", (event) => {
      const id = execId(event.detail);
      for (const player of players) {
        if (player.phase === "generating" && player.execId !== id) player.finish("done");
      }
      if (id == null) return;
      const node = findNode(id);
      if (node?.comfyClass === NODE_CLASS && node.fishs2Preview) {
        node.fishs2Preview.execId = id;
        node.fishs2Preview.start();
      }
    });
    const finishAll = (phase) => () => { for (const player of players) player.finish(phase); };
    api.addEventListener("execution_success", finishAll("done"));
    api.addEventListener("execution_error", finishAll("error"));
    api.addEventListener("execution_interrupted", finishAll("cancelled"));
  },
  nodeCreated(node) {
    setupNode(node);
  },
  loadedGraphNode(node) {
    fitPlayer(node);
  },
});
