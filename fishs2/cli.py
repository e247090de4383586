"""Command line: `python -m fishs2 say …` and `python -m fishs2 encode-voice …`."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from .errors import FishS2Error
from .hub import DEFAULT_REPO


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m fishs2", description="Fish Audio S2 Pro text-to-speech.")
    sub = parser.add_subparsers(dest="command", required=True)

    def model_options(p: argparse.ArgumentParser) -> None:
        source = p.add_mutually_exclusive_group()
        source.add_argument("--checkpoint", type=Path, help="checkpoint directory in the official layout")
        source.add_argument("--model", default=DEFAULT_REPO, help=f"hub id, downloaded when absent (default {DEFAULT_REPO})")
        p.add_argument("--models-dir", type=Path, help="where hub models are kept (default ~/.cache/fishs2)")
        p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, mps")
        p.add_argument("--dtype", default="auto", choices=["auto", "bf16", "fp16", "fp32", "int8", "fp8"],
                       help="weights of the LLM; int8 and fp8 (GPUs with fp8 matmuls) keep activations as auto")
        p.add_argument("--compile", action="store_true", help="torch.compile the transformer blocks (GPUs)")

    say = sub.add_parser("say", help="synthesise speech to a WAV file")
    say.add_argument("--text", help="text to speak; [tags] and <|speaker:N|> labels are allowed")
    say.add_argument("--script", type=Path, help="a text file with the script (dialogue lines)")
    say.add_argument("--voice", action="append", default=[], type=Path,
                     help="reference voice: an audio file (needs --voice-text) or a saved .safetensors voice; "
                          "repeat for speakers 0, 1, …")
    say.add_argument("--voice-text", action="append", default=[], help="transcript of each audio --voice, in order")
    say.add_argument("--seed", type=int, default=None)
    say.add_argument("--max-frames", type=int, default=2048, help="frame limit per batch (21.5 frames = 1 s)")
    say.add_argument("--temperature", type=float, default=0.8)
    say.add_argument("--top-p", type=float, default=0.8)
    say.add_argument("--top-k", type=int, default=30)
    say.add_argument("--chunk-length", type=int, default=200, help="UTF-8 bytes of dialogue per batch")
    say.add_argument("--out", type=Path, required=True, help="output WAV path")
    model_options(say)

    enc = sub.add_parser("encode-voice", help="encode a reference clip once and save it for reuse")
    enc.add_argument("audio", type=Path)
    enc.add_argument("--text", required=True, help="transcript of the clip")
    enc.add_argument("--name", default="", help="voice name (default: the file name)")
    enc.add_argument("--out", type=Path, required=True, help="output .safetensors path")
    model_options(enc)
    return parser


def load(args):
    from .pipeline import FishS2

    quantized = args.dtype in ("int8", "fp8")
    return FishS2.from_pretrained(args.checkpoint or args.model, device=args.device,
                                  dtype="auto" if quantized else args.dtype, models_dir=args.models_dir,
                                  int8=args.dtype == "int8", fp8=args.dtype == "fp8", compile=args.compile)


def voices_from_args(tts, args):
    from .voice import Voice

    voices, texts = [], list(args.voice_text)
    for path in args.voice:
        if path.suffix == ".safetensors":
            voices.append(Voice.load(path))
        elif not texts:
            raise SystemExit(f"error: --voice {path}: an audio reference needs its transcript in --voice-text")
        else:
            voices.append(tts.encode_voice(path, texts.pop(0), name=path.stem))
    if texts:
        raise SystemExit("error: more --voice-text than audio --voice files")
    return voices


def say(args) -> None:
    import soundfile as sf
    from tqdm import tqdm

    if (args.text is None) == (args.script is None):
        raise SystemExit("error: give exactly one of --text or --script")
    text = args.text if args.text is not None else args.script.read_text(encoding="utf-8")
    tts = load(args)
    voices = voices_from_args(tts, args)
    with tqdm(desc="generating", unit="frame") as bar:
        result = tts.generate(text, voices, seed=args.seed, max_frames=args.max_frames, temperature=args.temperature,
                              top_p=args.top_p, top_k=args.top_k, chunk_length=args.chunk_length,
                              on_frame=lambda done: bar.update(done - bar.n))
    audio = tts.decode(result.codes)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(args.out), audio[0].numpy(), tts.sample_rate, subtype="PCM_16")
    limited = sum(s.hit_frame_limit for s in result.segments)
    print(f"wrote {args.out}: {result.num_frames} frames, {audio.shape[-1] / tts.sample_rate:.2f} s, seed {result.seed}"
          + (f"; {limited} batch(es) hit --max-frames" if limited else ""))


def encode_voice(args) -> None:
    tts = load(args)
    voice = tts.encode_voice(args.audio, args.text, name=args.name or args.audio.stem)
    path = voice.save(args.out)
    print(f"wrote {path}: {voice.num_frames} frames of {voice.name!r}")


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    args = build_parser().parse_args(argv)
    try:
        {"say": say, "encode-voice": encode_voice}[args.command](args)
    except FishS2Error as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0
