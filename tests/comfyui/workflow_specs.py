"""The shipped example workflows, written once in API (prompt) format; `build_workflows.py` derives the UI files.

Each entry: file stem → (title, API prompt). Links are `[node id, output index]`.
"""

from __future__ import annotations

REF_A = "fishs2_reference_a.wav"
REF_A_TEXT = "Hello, this is a short reference recording for the voice cloning example."
REF_B = "fishs2_reference_b.wav"
REF_B_TEXT = "And this is the second voice, speaking a little higher and a little faster."
FRAME = "fishs2_dub_frame.png"
LIBRARY_VOICE = "fishs2_example_voice"

GEN = {"seed": 42, "temperature": 0.8, "top_p": 0.8, "top_k": 30, "max_frames": 1024, "chunk_length": 200,
       "takes": 1, "live_preview": True}
DECODE = {"gain_db": 0.0, "peak_normalize": False}


def _model(i="1"):
    return {i: {"class_type": "FishS2LoadModel", "inputs": {"checkpoint": "s2-pro", "dtype": "auto", "attention": "fast", "compile": False}}}


def _encode(i, audio_node, transcript, name):
    return {i: {"class_type": "FishS2EncodeVoice", "inputs": {"model": ["1", 0], "audio": [audio_node, 0], "transcript": transcript, "name": name}}}


def _load_audio(i, file):
    return {i: {"class_type": "LoadAudio", "inputs": {"audio": file}}}


def _tail(gen_id, script_id, voice_id, decode_id, save_id, prefix):
    gen = {"model": ["1", 0], "script": [script_id, 0], **GEN}
    if voice_id:
        gen["voice"] = [voice_id, 0]
    out = {
        gen_id: {"class_type": "FishS2Generate", "inputs": gen},
        decode_id: {"class_type": "FishS2Decode", "inputs": {"model": ["1", 0], "codes": [gen_id, 0], **DECODE}},
    }
    if save_id:
        out[save_id] = {"class_type": "SaveAudio", "inputs": {"audio": [decode_id, 0], "filename_prefix": prefix}}
    return out


TTS = {
    **_model(),
    "2": {"class_type": "FishS2TaggedText", "inputs": {"text": "Welcome to Fish S2 Pro in ComfyUI. [excited] It speaks your text, [whisper] and it follows inline tags."}},
    **_tail("3", "2", None, "4", "5", "fishs2/tts"),
}

VOICE_CLONING = {
    **_model(),
    **_load_audio("2", REF_A),
    **_encode("3", "2", REF_A_TEXT, "Narrator"),
    "4": {"class_type": "FishS2TaggedText", "inputs": {"text": "This sentence is spoken in the voice of the reference clip. [calm] Swap the clip and its transcript to clone another voice."}},
    **_tail("5", "4", "3", "6", "7", "fishs2/cloned"),
}

DIALOGUE = {
    **_model(),
    **_load_audio("2", REF_A),
    **_load_audio("3", REF_B),
    **_encode("4", "2", REF_A_TEXT, "Alice"),
    **_encode("5", "3", REF_B_TEXT, "Bob"),
    "6": {
        "class_type": "FishS2DialogueAssembler",
        "inputs": {
            "script": "Alice: Did you hear that? [whisper] I think someone is outside.\n"
            "Bob: [laughing] Relax, it's just the wind.\n"
            "Alice: [nervous] The wind doesn't knock three times.",
            "voice_1": ["4", 0],
            "voice_2": ["5", 0],
        },
    },
    **_tail("7", "6", None, "8", "9", "fishs2/dialogue"),
}

VOICE_LIBRARY_SAVE = {
    **_model(),
    **_load_audio("2", REF_A),
    **_encode("3", "2", REF_A_TEXT, "Narrator"),
    "4": {"class_type": "FishS2SaveVoice", "inputs": {"voice": ["3", 0], "name": LIBRARY_VOICE, "overwrite": False}},
}

VOICE_LIBRARY_REUSE = {
    **_model(),
    "2": {"class_type": "FishS2LoadVoice", "inputs": {"voice": LIBRARY_VOICE}},
    "3": {"class_type": "FishS2TaggedText", "inputs": {"text": "This voice came from the library: [calm] no reference audio and no encoding this time."}},
    **_tail("4", "3", "2", "5", "6", "fishs2/library"),
}

DUBBING_FPS = 10.0
DUBBING_FRAMES = 60
DUBBING_VIDEO = {
    **_model(),
    **_load_audio("2", REF_A),
    **_encode("3", "2", REF_A_TEXT, "Narrator"),
    "4": {"class_type": "FishS2TaggedText", "inputs": {"text": "Here is a voice-over for a short title card, [excited] rendered straight into a video."}},
    **_tail("5", "4", "3", "6", None, ""),
    "7": {"class_type": "LoadImage", "inputs": {"image": FRAME}},
    "8": {"class_type": "RepeatImageBatch", "inputs": {"image": ["7", 0], "amount": DUBBING_FRAMES}},
    "9": {"class_type": "CreateVideo", "inputs": {"images": ["8", 0], "fps": DUBBING_FPS, "audio": ["6", 0]}},
    "10": {"class_type": "SaveVideo", "inputs": {"video": ["9", 0], "filename_prefix": "fishs2/dub", "format": "auto", "codec": "auto"}},
}

SUBTITLE_FPS = 10.0
SUBTITLE_FRAMES = 150  # a 15 s video: Fit Audio pads (or trims) the speech to it, and the subtitles follow
SUBTITLE_PREFIX = "fishs2/dialogue_video"
SUBTITLE_VIDEO = {
    **_model(),
    **_load_audio("2", REF_A),
    **_load_audio("3", REF_B),
    **_encode("4", "2", REF_A_TEXT, "Alice"),
    **_encode("5", "3", REF_B_TEXT, "Bob"),
    "6": {
        "class_type": "FishS2DialogueAssembler",
        "inputs": {
            "script": "Alice: Welcome back to the show. [excited] Today we test subtitles.\n"
            "Bob: [laughing] Every line gets its own cue.\n"
            "Alice: And the timing comes from the generated audio itself.",
            "voice_1": ["4", 0],
            "voice_2": ["5", 0],
        },
    },
    # chunk_length 1: one segment per turn, so every line has its own timing, cue and place in the stems.
    "7": {"class_type": "FishS2Generate",
          "inputs": {"model": ["1", 0], "script": ["6", 0], **{**GEN, "max_frames": 256, "chunk_length": 1}}},
    "8": {"class_type": "FishS2MixStems",
          "inputs": {"model": ["1", 0], "codes": ["7", 0], "gap_seconds": 0.3, "crossfade_seconds": 0.0,
                     "lead_in_seconds": 0.5}},
    "9": {"class_type": "LoadImage", "inputs": {"image": FRAME}},
    "10": {"class_type": "RepeatImageBatch", "inputs": {"image": ["9", 0], "amount": SUBTITLE_FRAMES}},
    "11": {"class_type": "FishS2FitAudio",
           "inputs": {"audio": ["8", 0], "sample_rate": "48000 (video)", "length": "images", "duration_seconds": 10.0,
                      "frame_count": SUBTITLE_FRAMES, "fps": SUBTITLE_FPS, "normalize_loudness": True,
                      "target_lufs": -16.0, "images": ["10", 0], "timeline": ["8", 3]}},
    "12": {"class_type": "CreateVideo", "inputs": {"images": ["10", 0], "fps": SUBTITLE_FPS, "audio": ["11", 0]}},
    "13": {"class_type": "FishS2SaveSubtitles",
           "inputs": {"timeline": ["11", 1], "filename_prefix": SUBTITLE_PREFIX, "fps": SUBTITLE_FPS,
                      "speaker_labels": True, "keep_tags": False, "audio": ["11", 0], "video": ["12", 0]}},
    # The stems (one track per speaker), fitted the same way with the mix's loudness gain: they add up to the mix.
    "14": {"class_type": "FishS2FitAudio",
           "inputs": {"audio": ["8", 1], "sample_rate": "48000 (video)", "length": "images", "duration_seconds": 10.0,
                      "frame_count": SUBTITLE_FRAMES, "fps": SUBTITLE_FPS, "normalize_loudness": True,
                      "target_lufs": -16.0, "images": ["10", 0], "loudness_reference": ["8", 0]}},
    "15": {"class_type": "SaveAudio", "inputs": {"audio": ["14", 0], "filename_prefix": "fishs2/dialogue_stems"}},
}

WORKFLOWS = {
    "fishs2_text_to_speech": ("Fish S2: text to speech", TTS),
    "fishs2_voice_cloning": ("Fish S2: voice cloning from a reference clip", VOICE_CLONING),
    "fishs2_dialogue": ("Fish S2: two-speaker dialogue", DIALOGUE),
    "fishs2_voice_library_save": ("Fish S2: save a voice to the library", VOICE_LIBRARY_SAVE),
    "fishs2_voice_library_reuse": ("Fish S2: reuse a saved voice", VOICE_LIBRARY_REUSE),
    "fishs2_dubbing_video": ("Fish S2: voice-over into a video", DUBBING_VIDEO),
    "fishs2_dialogue_video_subtitles": ("Fish S2: two-speaker dialogue video with subtitles and stems", SUBTITLE_VIDEO),
}
