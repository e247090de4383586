"""Command line: `python -m fishs2 say …` and `python -m fishs2 encode-voice …`."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
from pathlib import Path

from .errors import FishS2Error
from .hub import DEFAULT_REPO

AUDIO_FORMATS = {".wav": "WAV", ".flac": "FLAC"}  # what `say` writes, as 16-bit PCM


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
    say.add_argument("--out", type=Path, required=True, help="output audio path (.wav or .flac)")
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


def is_saved_voice(path: Path) -> bool:
    """Whether a --voice names a saved voice (with or without its .safetensors) rather than an audio file."""
    from .voice import voice_file

    return path.suffix.lower() == ".safetensors" or (not path.is_file() and voice_file(path).is_file())


def check_voices(args) -> None:
    """Refuse --voice / --voice-text that cannot pair up, before any model is loaded."""
    audio = [path for path in args.voice if not is_saved_voice(path)]
    for path in audio:
        if not path.is_file():
            raise SystemExit(f"error: --voice {path}: no such audio file or saved voice")
    if len(audio) != len(args.voice_text):
        raise SystemExit(f"error: {len(audio)} audio --voice file(s) but {len(args.voice_text)} --voice-text "
                         "transcript(s); give one transcript per audio file, in order (saved voices need none)")


def check_output(path: Path, option: str, suffixes: tuple[str, ...] | None = None) -> None:
    """Refuse an output path that cannot be written, before minutes of work are spent on it."""
    if suffixes is not None and path.suffix.lower() not in suffixes:
        raise SystemExit(f"error: {option} {path}: write {' or '.join(suffixes)} (the file type follows the suffix)")
    if path.is_dir():
        raise SystemExit(f"error: {option} {path}: is a folder; give a file name")
    folder = path.parent
    while not folder.exists() and folder != folder.parent:  # the folders that will be created
        folder = folder.parent
    if not folder.is_dir() or not os.access(folder, os.W_OK | os.X_OK):
        raise SystemExit(f"error: {option} {path}: cannot write into {folder}")


def write_audio(path: Path, samples, sample_rate: int) -> None:
    """16-bit PCM in the format the suffix names, written to a temporary file first: an interrupted write never
    leaves a truncated file, or destroys the one that was there."""
    import soundfile as sf

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        sf.write(tmp, samples, sample_rate, subtype="PCM_16", format=AUDIO_FORMATS[path.suffix.lower()])
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def voices_from_args(tts, args):
    from .voice import Voice

    voices, texts = [], list(args.voice_text)
    for path in args.voice:
        if is_saved_voice(path):
            voices.append(Voice.load(path))
        else:  # check_voices paired every audio file with a transcript
            voices.append(tts.encode_voice(path, texts.pop(0), name=path.stem))
    return voices


def say(args) -> None:
    from tqdm import tqdm

    if (args.text is None) == (args.script is None):
        raise SystemExit("error: give exactly one of --text or --script")
    check_output(args.out, "--out", tuple(AUDIO_FORMATS))
    check_voices(args)
    text = args.text if args.text is not None else read_script(args.script)
    tts = load(args)
    voices = voices_from_args(tts, args)
    with tqdm(desc="generating", unit="frame") as bar:
        result = tts.generate(text, voices, seed=args.seed, max_frames=args.max_frames, temperature=args.temperature,
                              top_p=args.top_p, top_k=args.top_k, chunk_length=args.chunk_length,
                              on_frame=lambda done: bar.update(done - bar.n))
    audio = tts.decode(result.codes)
    write_audio(args.out, audio[0].numpy(), tts.sample_rate)
    limited = sum(s.hit_frame_limit for s in result.segments)
    print(f"wrote {args.out}: {result.num_frames} frames, {audio.shape[-1] / tts.sample_rate:.2f} s, seed {result.seed}"
          + (f"; {limited} batch(es) hit --max-frames" if limited else ""))


def read_script(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise SystemExit(f"error: --script {path}: not UTF-8 text ({exc.reason} at byte {exc.start}); save it as "
                         "UTF-8") from None
    except OSError as exc:
        raise SystemExit(f"error: --script {path}: cannot read it ({exc.strerror or exc})") from None


def encode_voice(args) -> None:
    from .voice import voice_file

    check_output(voice_file(args.out), "--out")
    if not args.audio.is_file():
        raise SystemExit(f"error: {args.audio}: no such audio file")
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
