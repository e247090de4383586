// Pure helpers of the Fish S2 live-preview player (no DOM, no WebAudio, no ComfyUI imports), so they can be tested
// with node (tests/test_web.py). The messages come from nodes/live_preview.py (`fishs2.preview`):
//   { node, prompt_id, take, segment, start, samples, sample_rate, line_done, wav }   (wav: base64 16-bit PCM WAV)
// Chunks of one take are contiguous: chunk k starts where chunk k-1 ended (`start` in samples of the take).

export const PREVIEW_EVENT = "fishs2.preview";

/** base64 → bytes (atob exists in browsers and in node ≥ 16). */
export function decodeBase64(text) {
  const binary = atob(text);
  const bytes = new Uint8Array(binary.length);
  for (let i = 0; i < binary.length; i++) bytes[i] = binary.charCodeAt(i);
  return bytes;
}

/** A PCM WAV file (8/16/24/32-bit integer or 32-bit float) → { sampleRate, channels, samples } with `samples` the
 *  first channel as a Float32Array in [-1, 1]. Throws an Error naming what is wrong. */
export function wavToFloat32(bytes) {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const tag = (at) => String.fromCharCode(bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]);
  if (bytes.length < 12 || tag(0) !== "RIFF" || tag(8) !== "WAVE") throw new Error("not a WAV file");
  let fmt = null;
  let data = null;
  for (let at = 12; at + 8 <= bytes.length; ) {
    const id = tag(at);
    const size = view.getUint32(at + 4, true);
    if (id === "fmt ") {
      fmt = { format: view.getUint16(at + 8, true), channels: view.getUint16(at + 10, true),
              sampleRate: view.getUint32(at + 12, true), bits: view.getUint16(at + 22, true) };
    } else if (id === "data") {
      data = { offset: at + 8, size: Math.min(size, bytes.length - at - 8) };
    }
    at += 8 + size + (size & 1);
  }
  if (!fmt || !data) throw new Error("WAV file without fmt or data chunk");
  const width = fmt.bits / 8;
  const float = fmt.format === 3;
  if (!(fmt.format === 1 || fmt.format === 3) || ![1, 2, 3, 4].includes(width) || (float && width !== 4)) {
    throw new Error(`unsupported WAV encoding (format ${fmt.format}, ${fmt.bits} bit)`);
  }
  const frame = width * fmt.channels;
  const n = Math.floor(data.size / frame);
  const samples = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    const p = data.offset + i * frame;
    let v;
    if (float) v = view.getFloat32(p, true);
    else if (width === 1) v = (bytes[p] - 128) / 128;
    else if (width === 2) v = view.getInt16(p, true) / 32768;
    else if (width === 3) v = ((bytes[p] | (bytes[p + 1] << 8) | (bytes[p + 2] << 16)) << 8 >> 8) / 8388608;
    else v = view.getInt32(p, true) / 2147483648;
    samples[i] = v;
  }
  return { sampleRate: fmt.sampleRate, channels: fmt.channels, samples };
}

/** Orders the chunks of one node's preview: one run (prompt) at a time, one take (0), in sample order.
 *  `accept(message, now)` → { reset, ready }: `reset` when the message starts a new run (drop what was playing),
 *  `ready` the chunks that can be played now, in order (a chunk that arrives early waits for the gap to fill). */
export class ChunkQueue {
  constructor(take = 0) {
    this.take = take;
    this.clear(undefined);
  }

  clear(promptId) {
    this.promptId = promptId;
    this.expected = 0; // next sample position to play
    this.pending = new Map(); // start → message that arrived before its predecessor
    this.chunks = 0;
    this.receivedSamples = 0;
    this.sampleRate = 0;
    this.linesDone = 0;
    this.segment = -1; // segment (line) of the latest chunk
    this.firstAt = null;
    this.lastAt = null;
  }

  accept(message, now = Date.now()) {
    const valid = message && typeof message === "object" && Number.isInteger(message.start) && message.start >= 0 &&
      Number.isInteger(message.samples) && message.samples >= 0 && typeof message.wav === "string";
    if (!valid || (message.take ?? 0) !== this.take) return { reset: false, ready: [] };
    let reset = false;
    const prompt = message.prompt_id ?? null;
    if (this.promptId === undefined || prompt !== this.promptId || message.start < this.expected) {
      // A new run (another prompt, or the same node generating again from the start).
      reset = this.promptId !== undefined;
      this.clear(prompt);
      if (message.start !== 0) this.expected = message.start; // joined mid-run (e.g. page reloaded): play from here
    }
    this.chunks += 1;
    this.receivedSamples += message.samples;
    this.sampleRate = message.sample_rate || this.sampleRate;
    if (message.line_done) this.linesDone += 1;
    if (Number.isInteger(message.segment)) this.segment = Math.max(this.segment, message.segment);
    if (this.firstAt === null) this.firstAt = now;
    this.lastAt = now;
    this.pending.set(message.start, message);
    const ready = [];
    while (this.pending.has(this.expected)) {
      const next = this.pending.get(this.expected);
      this.pending.delete(this.expected);
      ready.push(next);
      if (next.samples === 0) break;
      this.expected += next.samples;
    }
    return { reset, ready };
  }

  get receivedSeconds() {
    return this.sampleRate ? this.receivedSamples / this.sampleRate : 0;
  }
}

export function formatSeconds(seconds) {
  const s = Math.max(0, seconds || 0);
  if (s < 60) return `${s.toFixed(1)} s`;
  const m = Math.floor(s / 60);
  return `${m}:${(s - 60 * m).toFixed(1).padStart(4, "0")}`;
}

/** The player's one-line status. `phase`: idle | off | generating | done | cancelled | error; `line`: the line
 *  (segment, from 1) being received while generating; `lines`: finished lines. */
export function statusText({ phase, played = 0, received = 0, lines = 0, line = 0, suspended = false }) {
  if (phase === "off") return "live preview off";
  if (phase === "idle") return "live preview: plays here while generating";
  const heard = `${formatSeconds(played)} / ${formatSeconds(received)}`;
  const lineText = phase === "generating" && line > 0 ? `line ${line}` : lines === 1 ? "1 line" : `${lines} lines`;
  const hint = suspended ? " · click ▶ to listen" : "";
  const label = { generating: "generating", done: "generated", cancelled: "cancelled", error: "failed" }[phase] ?? phase;
  return `${label} · ${heard} · ${lineText}${hint}`;
}
