// Fish S2 Pro script tools for ComfyUI's frontend:
//  - highlights [tags] and speaker labels in the text of Fish S2 Tagged Text and Fish S2 Dialogue Assembler,
//  - completes common tags after typing "[" (Tab/Enter to accept, Esc to close),
//  - shows a warning on the Dialogue Assembler when the script names a speaker that has no connected voice
//    (and the backend's warnings, e.g. a connected voice the script never uses).
// The speaker rules mirror fishs2/script.py (parse_script + assign_slots).
import { app } from "../../scripts/app.js";
import { highlightHtml, missingVoiceWarnings, tagSuggestions, MAX_VOICES } from "./fishs2_script.js";

const SCRIPT_NODES = { FishS2TaggedText: "text", FishS2DialogueAssembler: "script" };

// ── highlighting ────────────────────────────────────────────────────────────────────────────────────────────
const STYLE = `
.fishs2-hl-backdrop { position:absolute; inset:0; overflow:hidden; pointer-events:none; z-index:-1; }
.fishs2-hl-content { white-space:pre-wrap; overflow-wrap:break-word; color:transparent; }
.fishs2-hl-content mark { color:transparent; border-radius:3px; }
.fishs2-hl-content mark.fishs2-tag { background:rgba(255,176,32,.35); }
.fishs2-hl-content mark.fishs2-speaker { background:rgba(80,160,255,.38); }
.fishs2-hl-content mark.fishs2-bad { background:rgba(255,64,64,.45); }
.fishs2-complete { position:fixed; z-index:10000; background:var(--comfy-menu-bg,#222); color:var(--fg-color,#ddd);
  border:1px solid var(--border-color,#555); border-radius:4px; font:12px sans-serif; max-height:180px; overflow:auto;
  box-shadow:0 2px 8px rgba(0,0,0,.4); }
.fishs2-complete div { padding:2px 8px; cursor:pointer; white-space:nowrap; }
.fishs2-complete div.active, .fishs2-complete div:hover { background:rgba(80,160,255,.35); }
`;

const COPIED_STYLES = ["fontFamily", "fontSize", "fontWeight", "lineHeight", "letterSpacing", "paddingTop", "paddingRight",
  "paddingBottom", "paddingLeft", "borderTopWidth", "borderRightWidth", "borderBottomWidth", "borderLeftWidth", "borderStyle",
  "boxSizing", "tabSize", "textIndent"];

function attachHighlighter(textarea, dialogue) {
  const parent = textarea.parentElement;
  if (!parent || textarea.fishs2Highlighter) return null;
  const backdrop = document.createElement("div");
  backdrop.className = "fishs2-hl-backdrop";
  const content = document.createElement("div");
  content.className = "fishs2-hl-content";
  backdrop.appendChild(content);
  parent.insertBefore(backdrop, textarea);
  // The marks are drawn behind the text: the textarea's own background moves to the backdrop.
  backdrop.style.background = getComputedStyle(textarea).backgroundColor;
  textarea.style.background = "transparent";
  const scrolled = () => {
    content.style.transform = `translate(${-textarea.scrollLeft}px, ${-textarea.scrollTop}px)`;
  };
  const sync = () => {
    // Every measurement first, then the writes: a read after the new marks are in would make the browser lay out
    // the whole backdrop again before the next frame (most of a keystroke's cost on long scripts).
    const cs = getComputedStyle(textarea);
    const styles = COPIED_STYLES.map((k) => cs[k]);
    const box = [textarea.offsetLeft, textarea.offsetTop, textarea.offsetWidth, textarea.offsetHeight];
    const scroll = [textarea.scrollLeft, textarea.scrollTop];
    COPIED_STYLES.forEach((k, i) => { backdrop.style[k] = styles[i]; });
    backdrop.style.borderColor = "transparent";
    backdrop.style.left = box[0] + "px";
    backdrop.style.top = box[1] + "px";
    backdrop.style.width = box[2] + "px";
    backdrop.style.height = box[3] + "px";
    backdrop.style.inset = "auto";
    content.innerHTML = highlightHtml(textarea.value, dialogue);
    content.style.transform = `translate(${-scroll[0]}px, ${-scroll[1]}px)`;
  };
  textarea.addEventListener("input", sync);
  textarea.addEventListener("scroll", scrolled); // the marks only move with the text
  if (typeof ResizeObserver !== "undefined") new ResizeObserver(sync).observe(textarea);
  textarea.fishs2Highlighter = { sync, backdrop, content };
  sync();
  return textarea.fishs2Highlighter;
}

// ── tag completion ──────────────────────────────────────────────────────────────────────────────────────────
let popup = null;

function closePopup() {
  if (popup) { popup.el.remove(); popup = null; }
}

function openTagPrefix(textarea) {
  const before = textarea.value.slice(0, textarea.selectionStart);
  const m = /\[([^\[\]\n]{0,30})$/.exec(before);
  return m ? { start: before.length - m[1].length, prefix: m[1] } : null;
}

function caretRect(textarea) {
  const h = textarea.fishs2Highlighter;
  const r = textarea.getBoundingClientRect();
  if (!h) return { left: r.left + 8, bottom: r.top + 20 };
  const probe = document.createElement("div");
  probe.className = "fishs2-hl-content";
  probe.style.cssText = h.content.style.cssText;
  probe.style.position = "absolute";
  probe.style.visibility = "hidden";
  probe.textContent = textarea.value.slice(0, textarea.selectionStart);
  const caret = document.createElement("span");
  caret.textContent = "\u200b";
  probe.appendChild(caret);
  h.backdrop.appendChild(probe);
  const c = caret.getBoundingClientRect();
  probe.remove();
  return { left: c.left, bottom: c.bottom };
}

function accept(textarea, item) {
  const open = openTagPrefix(textarea);
  if (!open) return closePopup();
  let after = textarea.value.slice(textarea.selectionStart);
  // Inside an existing tag (`[wh|isper]`) the rest of its word goes too, so the tag is replaced, not split.
  const rest = /^[^\[\]\n]*\]/.exec(after);
  if (rest) after = after.slice(rest[0].length - 1);
  const close = after.startsWith("]") ? "" : "]";
  textarea.value = textarea.value.slice(0, open.start) + item + close + after;
  const caret = open.start + item.length + 1;
  textarea.setSelectionRange(caret, caret);
  textarea.dispatchEvent(new Event("input", { bubbles: true }));
  textarea.dispatchEvent(new Event("change", { bubbles: true }));
  closePopup();
}

function updatePopup(textarea) {
  const open = openTagPrefix(textarea);
  const items = open ? tagSuggestions(open.prefix) : [];
  if (!items.length || (items.length === 1 && items[0] === open.prefix)) return closePopup();
  if (!popup || popup.textarea !== textarea) {
    closePopup();
    const el = document.createElement("div");
    el.className = "fishs2-complete";
    document.body.appendChild(el);
    popup = { el, textarea, items: [], active: 0 };
  }
  popup.items = items;
  popup.prefix = open.prefix;
  popup.active = Math.min(popup.active, items.length - 1);
  popup.el.innerHTML = "";
  items.forEach((t, i) => {
    const row = document.createElement("div");
    row.textContent = t;
    if (i === popup.active) row.className = "active";
    row.addEventListener("mousedown", (e) => { e.preventDefault(); accept(textarea, t); });
    popup.el.appendChild(row);
  });
  const at = caretRect(textarea);
  popup.el.style.left = Math.round(at.left) + "px";
  popup.el.style.top = Math.round(at.bottom + 2) + "px";
}

function attachCompletion(textarea) {
  if (textarea.fishs2Completion) return;
  textarea.fishs2Completion = true;
  textarea.addEventListener("input", () => updatePopup(textarea));
  textarea.addEventListener("blur", () => setTimeout(closePopup, 100));
  textarea.addEventListener("keydown", (e) => {
    if (!popup || popup.textarea !== textarea) return;
    if (e.isComposing || e.keyCode === 229) return; // keys of an input method (CJK) composing text are its own
    if (e.key === "ArrowDown" || e.key === "ArrowUp") {
      popup.active = (popup.active + (e.key === "ArrowDown" ? 1 : popup.items.length - 1)) % popup.items.length;
      popup.chosen = true;
      updatePopup(textarea);
    } else if (e.key === "Tab" || (e.key === "Enter" && (popup.chosen || popup.prefix.length >= 2))) {
      // Enter after one letter (`[a`) is more likely a new line than a tag: it takes a tag once two letters or
      // an arrow key show that one is wanted; Tab always does.
      accept(textarea, popup.items[popup.active]);
    } else if (e.key === "Escape") {
      closePopup();
    } else return;
    e.preventDefault();
    e.stopPropagation();
  }, true);
}

// ── missing-voice warning on the Dialogue Assembler ─────────────────────────────────────────────────────────
function voiceNameOf(node, inputName) {
  const input = node.inputs?.find((i) => i.name === inputName);
  if (!input || input.link == null) return null;
  const link = node.graph?.links?.get ? node.graph.links.get(input.link) : node.graph?.links?.[input.link];
  const origin = link ? node.graph.getNodeById(link.origin_id) : null;
  if (!origin) return "";
  const w = origin.widgets?.find((x) => x.name === (origin.comfyClass === "FishS2LoadVoice" ? "voice" : "name"));
  return w && typeof w.value === "string" ? w.value : "";
}

function refreshWarnings(node) {
  const widget = node.widgets?.find((w) => w.name === "script");
  if (!widget) return;
  node.fishs2ServerWarnings = []; // the last run's notes describe a script or voices that have since changed
  const linked = node.inputs?.find((i) => i.name === "script")?.link != null;
  // A script fed in through a link is not this widget's text: nothing to check here until the run.
  const voices = Array.from({ length: MAX_VOICES }, (_, i) => voiceNameOf(node, `voice_${i + 1}`));
  node.fishs2Warnings = linked ? [] : missingVoiceWarnings(String(widget.value ?? ""), voices);
  node.setDirtyCanvas?.(true, true);
}

function drawWarnings(node, ctx) {
  const lines = [...(node.fishs2Warnings || []), ...(node.fishs2ServerWarnings || [])];
  if (!lines.length || node.flags?.collapsed) return;
  const titleHeight = globalThis.LiteGraph?.NODE_TITLE_HEIGHT ?? 30;
  ctx.save();
  ctx.font = "12px sans-serif";
  ctx.fillStyle = "#ffb020";
  const shown = lines.length > 4 ? [...lines.slice(0, 3), `… ${lines.length - 3} more (see the queue's log)`] : lines;
  shown.forEach((text, i) => ctx.fillText("\u26a0 " + text, 4, -titleHeight - 6 - 15 * (shown.length - 1 - i)));
  ctx.restore();
}

function setupNode(node) {
  const widgetName = SCRIPT_NODES[node.comfyClass];
  if (!widgetName) return;
  const dialogue = node.comfyClass === "FishS2DialogueAssembler";
  const widget = node.widgets?.find((w) => w.name === widgetName);
  const textarea = widget?.inputEl ?? widget?.element;
  if (textarea && textarea.tagName === "TEXTAREA") {
    const attach = () => {
      if (!textarea.isConnected || !textarea.parentElement) return false;
      attachHighlighter(textarea, dialogue);
      attachCompletion(textarea);
      return true;
    };
    if (!attach()) requestAnimationFrame(function retry() { if (!attach() && node.graph) setTimeout(() => requestAnimationFrame(retry), 250); });
  }
  if (!dialogue) return;
  const onDraw = node.onDrawForeground;
  node.onDrawForeground = function (ctx) {
    const r = onDraw?.apply(this, arguments);
    drawWarnings(this, ctx);
    return r;
  };
  const onConnections = node.onConnectionsChange;
  node.onConnectionsChange = function () {
    const r = onConnections?.apply(this, arguments);
    refreshWarnings(this);
    return r;
  };
  const onExecuted = node.onExecuted;
  node.onExecuted = function (output) {
    const r = onExecuted?.apply(this, arguments);
    this.fishs2ServerWarnings = output?.fishs2_warnings ?? [];
    this.setDirtyCanvas?.(true, true);
    return r;
  };
  const previous = widget?.callback;
  if (widget) widget.callback = function () { const r = previous?.apply(this, arguments); refreshWarnings(node); return r; };
  textarea?.addEventListener?.("input", () => refreshWarnings(node));
  refreshWarnings(node);
}

app.registerExtension({
  name: "fishs2.ScriptTools",
  setup() {
    const style = document.createElement("style");
    style.textContent = STYLE;
    document.head.appendChild(style);
  },
  nodeCreated(node) {
    setupNode(node);
  },
  loadedGraphNode(node) {
    if (node.comfyClass === "FishS2DialogueAssembler") refreshWarnings(node);
    const widget = node.widgets?.find((w) => w.name === SCRIPT_NODES[node.comfyClass]);
    (widget?.inputEl ?? widget?.element)?.fishs2Highlighter?.sync();
  },
});
