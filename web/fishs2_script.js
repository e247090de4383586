// Pure helpers of the Fish S2 web extension (no DOM, no ComfyUI imports), so they can be tested with node.
// The speaker rules mirror fishs2/script.py (parse_script + assign_slots); tests/test_web.py checks the parity.

export const MAX_VOICES = 8;

export const COMMON_TAGS = [
  "laughing", "laugh", "chuckle", "giggle", "sigh", "whisper", "soft voice", "low voice", "shouting", "excited",
  "happy", "sad", "angry", "surprised", "nervous", "calm", "serious", "sarcastic", "crying", "breathing",
  "inhale", "exhale", "clears throat", "cough", "pause", "short pause", "long pause", "emphasis", "slowly",
  "quickly", "pitch up", "pitch down", "singing", "professional broadcast tone", "storytelling", "friendly",
];

// ── script parsing (same rules as fishs2/script.py) ──────────────────────────────────────────────────────────
const INLINE_MARKER = /<\|speaker:(\d+)\|>|\[\s*[Ss]\s*(\d+)\s*\]|(?<!\S)@[Vv][Oo][Ii][Cc][Ee]\s?(\d+)(?![\p{L}\p{N}_])\s*:?/gu;
const AT_NAME = /^\s*@(\p{L}[\p{L}\p{N}_.'’\-]{0,39})(?:\s*:)?(?=\s|$)/u;
const NAME_LABEL = /^\s*(\p{L}[\p{L}\p{N}_.'’\-]*(?: [\p{L}\p{N}_.'’\-]+){0,3})\s*(?::(?=\s|$)|：)/u;
const NUMBERED_NAME = /^(?:s|speaker|voice)\s*(\d+)$/i;

function numberedSlot(name) {
  const m = NUMBERED_NAME.exec(name.trim());
  if (!m) return null;
  const n = parseInt(m[1], 10);
  return n >= 1 ? n - 1 : null;
}

// What two spellings of one name share (fishs2/script.py `fold_name`): letters and digits, case-folded (Python's
// casefold also turns ß into ss and a final ς into σ, which toLowerCase does not).
function fold(s) {
  const folded = s.normalize("NFKC").toLowerCase().replace(/ß/g, "ss").replace(/ς/g, "σ");
  return folded.replace(/[^\p{L}\p{N}]/gu, "") || folded.split(/\s+/).filter(Boolean).join(" ");
}

function canonical(name) {
  const clean = name.split(/\s+/).filter(Boolean).join(" ");
  const slot = numberedSlot(clean);
  return slot === null ? clean : `Voice${slot + 1}`;
}

/** Speakers of a dialogue script in order of first appearance, plus label spans for highlighting. */
// fishs2/script.py `normalize_text` as far as labels go: every line break is a line break and tabs are spaces
// (one character for one, so label offsets stay); full-width digits are digits, as Python's \d and int() read them.
function normalizeText(text) {
  return text.replace(/\r\n?/g, "\n").replace(/[\x85\u2028\u2029]/g, "\n").replace(/[\t\v\f\ufeff]/g, " ")
    .replace(/[０-９]/g, (d) => String.fromCharCode(d.charCodeAt(0) - 0xff10 + 48));
}

export function scriptSpeakers(text) {
  const lines = normalizeText(text).split("\n");
  const unambiguous = lines.some((l) => new RegExp(INLINE_MARKER.source, "u").test(l) || AT_NAME.test(l));
  const speakers = [];
  const spans = []; // [start, end] offsets of labels in `text`
  let unlabelled = false;
  let offset = 0;
  const add = (name) => { if (!speakers.some((s) => fold(s) === fold(name))) speakers.push(name); };
  for (const line of lines) {
    let restStart = 0;
    const label = (unambiguous ? AT_NAME : NAME_LABEL).exec(line);
    const startsWithMarker = new RegExp("^(?:" + INLINE_MARKER.source + ")", "u").test(line.trimStart());
    if (label && !startsWithMarker) {
      add(canonical(label[1]));
      spans.push([offset + line.indexOf(label[1]) - (unambiguous ? 1 : 0), offset + label[0].length]);
      restStart = label[0].length;
    }
    const rest = line.slice(restStart);
    let before = 0;
    for (const m of rest.matchAll(new RegExp(INLINE_MARKER.source, "gu"))) {
      if (!speakers.length && rest.slice(before, m.index).trim()) unlabelled = true;
      const n = m[1] !== undefined ? parseInt(m[1], 10) : parseInt(m[2] ?? m[3], 10) - 1;
      add(`Voice${n + 1}`);
      spans.push([offset + restStart + m.index, offset + restStart + m.index + m[0].length]);
      before = m.index + m[0].length;
    }
    if (!speakers.length && rest.slice(before).trim()) unlabelled = true;
    offset += line.length + 1;
  }
  return { speakers, spans, unlabelled };
}

/** Warnings for speakers without a voice; `voices[i]` is null (not connected) or the voice's name ("" if none). */
export function missingVoiceWarnings(text, voices) {
  const { speakers } = scriptSpeakers(text);
  const connected = voices.map((v) => v !== null);
  if (!text.trim()) return [];
  if (!connected.some(Boolean)) return ["no voice connected: connect voice_1"];
  const warnings = [];
  const claimed = new Set();
  const named = [];
  for (const name of speakers) {
    const slot = numberedSlot(name);
    if (slot === null) { named.push(name); continue; }
    if (slot >= voices.length || !connected[slot]) warnings.push(`'${name}' has no voice: connect voice_${slot + 1}`);
    else claimed.add(slot);
  }
  const byName = new Map();
  voices.forEach((v, i) => { if (v && !byName.has(fold(v))) byName.set(fold(v), i); });
  const unmatched = [];
  for (const name of named) {
    const slot = byName.get(fold(name));
    if (slot !== undefined && !claimed.has(slot)) claimed.add(slot);
    else unmatched.push(name);
  }
  const free = connected.map((c, i) => (c && !claimed.has(i) ? i : -1)).filter((i) => i >= 0);
  unmatched.slice(free.length).forEach((name) => warnings.push(`'${name}' has no voice: connect another voice`));
  return warnings;
}

function escapeHtml(s) {
  return s.replace(/[&<>"]/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;" })[c]);
}

/** HTML for the backdrop: tags, bad brackets and (for dialogue) speaker labels wrapped in <mark>. */
export function highlightHtml(text, dialogue) {
  const marks = []; // [start, end, class]
  if (dialogue) for (const [s, e] of scriptSpeakers(text).spans) marks.push([s, e, "fishs2-speaker"]);
  let open = -1;
  for (let i = 0; i < text.length; i++) {
    const c = text[i];
    if (c === "[") { if (open >= 0) marks.push([open, open + 1, "fishs2-bad"]); open = i; }
    else if (c === "]") {
      if (open < 0) marks.push([i, i + 1, "fishs2-bad"]);
      else {
        const inner = text.slice(open, i + 1);
        const speaker = dialogue && /^\[\s*[Ss]\s*\d+\s*\]$/.test(inner);
        if (!speaker) marks.push([open, i + 1, inner.slice(1, -1).trim() ? "fishs2-tag" : "fishs2-bad"]);
        open = -1;
      }
    } else if (c === "\n" && open >= 0) { marks.push([open, open + 1, "fishs2-bad"]); open = -1; }
  }
  if (open >= 0) marks.push([open, open + 1, "fishs2-bad"]);
  marks.sort((a, b) => a[0] - b[0]);
  let html = "", pos = 0;
  for (const [s, e, cls] of marks) {
    if (s < pos) continue;
    html += escapeHtml(text.slice(pos, s)) + `<mark class="${cls}">` + escapeHtml(text.slice(s, e)) + "</mark>";
    pos = e;
  }
  return html + escapeHtml(text.slice(pos)) + "\n";
}

export function tagSuggestions(prefix) {
  const p = prefix.trim().toLowerCase();
  return COMMON_TAGS.filter((t) => t.startsWith(p) || (p.length > 1 && t.includes(p))).slice(0, 12);
}

