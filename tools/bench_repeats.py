"""Benchmark long-form decoding of speech that repeats itself: before and after cutting repeated chunks.

    python tools/bench_repeats.py                       # both backends, every recording
    python tools/bench_repeats.py --backends=ct2 --recordings=en_0,zh_teacher
    python tools/bench_repeats.py --backends=ct2 --ct2_encoder=onnx

A sentence said several times in one 30 s window makes Whisper lose count (a repetition dropped, or a loop to the
token limit); without timestamp tokens it often reads only the first take. utils/transcribe.py aligns a reading that
repeats itself or is slow for its speech to the audio; where it ran away or left speech unread
(``MAX_UNREAD_SPEECH_S``), a chunk whose text repeats is cut into pieces about one repetition long
(``MAX_REPEAT_SPLITS``) and another is decoded again with timestamp tokens. This runs each recording with both off
(before) and on (after) and prints the time (inside the engine: model loading not counted) and the error rate of
each. Recordings (espeak-ng, built here, seconds of silence between sentences): ``en_0``/``en_1`` = an English
sentence said 8 times (``--en_model``); ``zh_repeated`` = one Mandarin sentence said 8 times, one voice;
``zh_voices`` = the same in 8 voices and speeds; ``zh_teacher`` = 24 sentences of ``--test_data`` with every sixth
said 3 times (``--zh_model``, default the demo model that ``make demo`` trains). Real recordings (dataset/real/, see
its README): ``zh_real`` = two AISHELL-1 test sentences, each said 3 times (the same take repeated, 1 s pauses);
``zh_real3``/``zh_real8`` = one of them 3 times (15.6 s: one chunk, cut at its pauses only if misread) / 8 times;
``en_jfk`` = the JFK clip 4 times. The CPU flags are printed.

``--windows=None,15`` decodes "after" once per encoder window (``DecodeOptions.encoder_window_s``: None = 30 s; 15 =
at least 15 s, the chunk + 5 s: what ``--encoder_window_seconds=auto`` gives on a CPU), one column each.
``--reverb=50`` puts every recording in a reverberant room (``tools/bench_infer.py``'s ``add_reverb``): a teacher
repeating sentences in a classroom.
"""

from __future__ import annotations

import argparse
import atexit
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tools.bench_infer import REPEATED_SENTENCE, add_reverb, cpu_report  # noqa: E402
from utils.audio import SAMPLE_RATE, load_audio  # noqa: E402
from utils.data import load_manifest  # noqa: E402
from utils.text import count_errors  # noqa: E402

EN_SENTENCES = ("Repeat after me: the quick brown fox jumps over the lazy dog.",
                "Please open your books to page twenty and read the first line aloud.")
RECORDINGS = ("en_0", "en_1", "zh_repeated", "zh_voices", "zh_teacher", "zh_real", "zh_real3", "zh_real8", "en_jfk")
REAL = Path(__file__).resolve().parent.parent / "dataset" / "real"


def _gap(seconds: float = 1.0) -> np.ndarray:
    return np.zeros(int(seconds * SAMPLE_RATE), np.float32)


def _speak(text: str, voice: str, speed: int, pitch: int, work: Path) -> np.ndarray:
    """espeak-ng speech (Mandarin through pypinyin) as a float32 waveform at 16 kHz."""
    from tools.make_demo_data import Voice, synthesize_speech, to_pinyin

    spoken = to_pinyin(text) if voice.startswith("cmn") else text
    return synthesize_speech(spoken, Voice(name=voice, speed=speed, pitch=pitch, amplitude=100), work) / 32768.0


def build(name: str, work: Path, test_data: str) -> tuple[np.ndarray, str, str, str]:
    """(waveform, reference, language, metric) of recording ``name``."""
    if name in ("zh_real", "zh_real3", "zh_real8", "en_jfk"):
        manifest = load_manifest(str(REAL / ("real_en.json" if name == "en_jfk" else "real_zh.json")))
        takes = {"zh_real": [(0, 3), (1, 3)], "zh_real3": [(0, 3)], "zh_real8": [(0, 8)], "en_jfk": [(0, 4)]}[name]
        parts, texts = [], []
        for index, times in takes:
            record = manifest[index]
            one = load_audio(record.audio_path)
            for _ in range(times):
                parts += [one, _gap()]
                texts.append(record.sentence)
        language, metric = ("en", "wer") if name == "en_jfk" else ("zh", "cer")
        return np.concatenate(parts), (" " if language == "en" else "").join(texts), language, metric
    if name.startswith("en_"):
        sentence = EN_SENTENCES[int(name[3:])]
        one = _speak(sentence, "en-us", 150, 50, work)
        return np.concatenate([p for _ in range(8) for p in (one, _gap())]), sentence * 8, "en", "wer"
    if name == "zh_repeated":
        one = _speak(REPEATED_SENTENCE, "cmn-latn-pinyin", 165, 50, work)
        return np.concatenate([p for _ in range(8) for p in (one, _gap())]), REPEATED_SENTENCE * 8, "zh", "cer"
    if name == "zh_voices":
        voices = [("", 165, 50), ("+f3", 150, 60), ("+m3", 180, 40), ("", 140, 55), ("+f2", 170, 65), ("+m1", 155, 45),
                  ("", 175, 50), ("+f3", 160, 50)]
        rng = np.random.default_rng(0)
        parts = [p for v, speed, pitch in voices for p in (_speak(REPEATED_SENTENCE, "cmn-latn-pinyin" + v, speed,
                                                                   pitch, work), _gap(rng.uniform(0.7, 1.3)))]
        return np.concatenate(parts).astype(np.float32), REPEATED_SENTENCE * 8, "zh", "cer"
    manifest = load_manifest(test_data)
    records = [manifest[i] for i in range(len(manifest)) if manifest[i].sentence][:24]
    rng = np.random.default_rng(1)
    parts, reference = [], ""
    for k, record in enumerate(records):
        audio = load_audio(record.audio_path)
        for _ in range(3 if k % 6 == 2 else 1):
            parts += [audio, _gap(rng.uniform(0.5, 1.2))]
            reference += record.sentence
    return np.concatenate(parts), reference, "zh", "cer"


def in_room(audio: np.ndarray, name: str, work: Path, reverberance: float) -> np.ndarray:
    """``audio`` (float32 16 kHz) in a reverberant room (:func:`tools.bench_infer.add_reverb`)."""
    import soundfile as sf

    dry = work / f"{name}_dry.wav"
    sf.write(str(dry), audio, SAMPLE_RATE, subtype="PCM_16")
    return load_audio(add_reverb(dry, reverberance))


def timed(run: Callable[[], str]) -> tuple[float, str]:
    t0 = time.perf_counter()
    text = run()
    return time.perf_counter() - t0, text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backends", default="ct2,transformers", help="comma-separated: ct2, transformers")
    parser.add_argument("--recordings", default=",".join(RECORDINGS), help=f"comma-separated subset of {RECORDINGS}")
    parser.add_argument("--en_model", default="openai/whisper-base", help="model of the English recordings")
    parser.add_argument("--zh_model", default="models/whisper-base-finetune",
                        help="transformers model of the Mandarin recordings (its '-ct2' copy for the ct2 backend)")
    parser.add_argument("--test_data", default="dataset/demo/test.json", help="manifest of zh_teacher's sentences")
    parser.add_argument("--ct2_encoder", default="auto", choices=("auto", "ct2", "onnx", "torch"),
                        help="the ct2 backend's audio encoder (infer.py's --ct2_encoder)")
    parser.add_argument("--windows", default="None", help="comma-separated encoder windows of 'after' (None = 30 s)")
    parser.add_argument("--reverb", type=float, default=None,
                        help="put every recording in a reverberant room: sox reverb's reverberance (%%), e.g. 50")
    args = parser.parse_args(argv)
    try:
        windows = [None if w == "None" else float(w) for w in args.windows.split(",")]
    except ValueError:
        parser.error(f"--windows: comma-separated numbers or None, got {args.windows!r}")
    names = args.recordings.split(",")
    unknown = sorted(set(names) - set(RECORDINGS))
    if unknown:
        parser.error(f"--recordings: unknown {unknown}; choose from {RECORDINGS}")
    if any(n.startswith("zh") for n in names) and not Path(args.zh_model).is_dir():
        parser.error(f"--zh_model {args.zh_model}: no such folder (make demo trains it; or give another model)")

    import utils.transcribe as engine_module

    default_unread = engine_module.MAX_UNREAD_SPEECH_S
    print(f"CPU flags: {cpu_report()}")
    work = Path(tempfile.mkdtemp(prefix="bench_repeats_"))
    atexit.register(shutil.rmtree, work, True)
    recordings = {n: build(n, work, args.test_data) for n in names}
    if args.reverb is not None:
        recordings = {n: (in_room(audio, n, work, args.reverb), *rest) for n, (audio, *rest) in recordings.items()}
    afters = "".join(f"  {'after' if w is None else f'after {w:g} s':>15}" for w in windows)
    print(f"{'backend':<13} {'recording':<12} {'seconds':>7}  {'before':>15}{afters}")
    for backend in args.backends.split(","):
        engines = {}
        for name, (audio, reference, language, metric) in recordings.items():
            model = args.en_model if language == "en" else args.zh_model
            if backend == "ct2" and language == "zh":
                model = f"{model.rstrip('/')}-ct2"
            if model not in engines:
                encoder = {"ct2_encoder": args.ct2_encoder} if backend == "ct2" else {}
                engines[model] = engine_module.load_transcriber(model, backend, device="cpu", **encoder)
            options = engine_module.DecodeOptions(language=language, beam_size=3 if backend == "ct2" else 1)
            cells = []
            runs = [(0, float("inf"), None)] + [(1, default_unread, w) for w in windows]
            for splits, unread, window in runs:
                engine_module.MAX_REPEAT_SPLITS, engine_module.MAX_UNREAD_SPEECH_S = splits, unread
                run_options = replace(options, encoder_window_s=window)
                seconds, text = timed(lambda: engines[model].transcribe(audio, run_options).text)
                cells.append(f"{seconds:6.2f} s {count_errors(reference, text, metric, language=language).rate:.3f}")
            print(f"{backend:<13} {name:<12} {len(audio) / SAMPLE_RATE:>7.1f}  " + "  ".join(f"{c:>15}" for c in cells),
                  flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
