"""Live preview messages: `fishs2.preview.PreviewChunk`s → ComfyUI websocket messages for the web player.

The engine side (`fishs2.preview`) decodes the audio while Dual-AR Generate runs (chunks of the current line, and each
finished line); this module only turns each chunk into a JSON message and sends it with
`PromptServer.instance.send_sync` (thread-safe), like core's progress messages, to the browser that queued the
prompt (every browser when the prompt came without a client_id). The web extension listens with `api.addEventListener("fishs2.preview", ...)`,
matches `node` against the node id and plays `wav` (base64 of a 16-bit mono WAV) at `start / sample_rate`
seconds. No torch import here.
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Callable

log = logging.getLogger("fishs2")

EVENT = "fishs2.preview"


def chunk_message(node_id: str, chunk, prompt_id: str | None = None) -> dict:
    """The websocket payload of one chunk (plain JSON types only)."""
    return {
        "node": str(node_id),
        "prompt_id": prompt_id,
        "take": int(chunk.take),
        "segment": int(chunk.segment),
        "start": int(chunk.start),
        "samples": int(chunk.audio.shape[-1]),
        "sample_rate": int(chunk.sample_rate),
        "line_done": bool(chunk.segment_done),
        "wav": base64.b64encode(chunk.wav_bytes()).decode("ascii"),
    }


def current_prompt_id() -> str | None:
    """The id of the prompt being executed (ComfyUI's executing context), or None outside an execution."""
    try:
        from comfy_execution.utils import get_executing_context

        context = get_executing_context()
    except Exception:
        return None
    return getattr(context, "prompt_id", None) if context is not None else None


def make_sender(node_id: str, prompt_id: str | None = None, send_sync: Callable | None = None) -> Callable:
    """A callback for `generate_with_preview(on_chunk=...)` that sends each chunk as an `EVENT` message.

    `send_sync` defaults to ComfyUI's `PromptServer.instance.send_sync`, addressed like core's progress messages
    to the browser that queued the prompt (`client_id`; every browser when the prompt came without one). Without
    a running server (headless scripts, tests) the chunks are dropped with one debug log line, and generation is
    unaffected either way.
    """
    if send_sync is None:
        try:
            from server import PromptServer

            server = PromptServer.instance

            def send_sync(event, data, _server=server):
                _server.send_sync(event, data, getattr(_server, "client_id", None))
        except Exception as exc:  # no server: nothing to send to
            log.debug("fishs2: live preview off (no ComfyUI server: %s)", exc)
            return lambda chunk: None

    def send(chunk) -> None:
        try:
            send_sync(EVENT, chunk_message(node_id, chunk, prompt_id))
        except Exception as exc:  # a preview must never break generation
            log.warning("fishs2: live preview message not sent: %s", exc)

    return send
