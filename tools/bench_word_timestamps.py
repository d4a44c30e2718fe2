"""Accuracy of word-level timestamps on recordings whose word boundaries are known.

    python tools/bench_word_timestamps.py                       (whisper-base, both backends, English + Mandarin)
    python tools/bench_word_timestamps.py --model_path=models/whisper-base-finetune --languages=zh

Each word (Mandarin: each character) is spoken alone by espeak-ng, its silence trimmed, and the pieces are joined
with known pauses, so every word's true start and end are known. The recording is transcribed with
``--word_timestamps``; recognised words are matched to the true ones in order (difflib), and the mean and median
absolute start/end errors over the matched words are reported, next to faster-whisper's own word timestamps on the
same CTranslate2 model (``WhisperModel.transcribe(word_timestamps=True)``). espeak speech is clean and evenly paced:
real recordings (fast, noisy, overlapping speech) will be less accurate.
"""

from __future__ import annotations

import argparse
import difflib
import json
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from tools.bench_infer import cpu_report  # noqa: E402
from utils.cli import make_parser  # noqa: E402

EN_WORDS = ("Yesterday the committee finally approved the new budget for seven schools and two hospitals "
            "after a long debate").split()
ZH_TEXT = "今天下午我们在图书馆讨论新的研究计划"
SAMPLE_RATE = 16000


@dataclass(frozen=True)
class TrueWord:
    word: str
    start: float
    end: float


def _speak(text: str, path: Path, voice: str) -> np.ndarray:
    """One word by espeak-ng, 16 kHz mono, leading and trailing silence trimmed."""
    raw = path.with_suffix(".raw.wav")
    subprocess.run(["espeak-ng", "-v", voice, "-s", "150", "-w", str(raw), text], check=True)
    subprocess.run(["sox", "-R", str(raw), "-r", str(SAMPLE_RATE), "-c", "1", "-b", "16", str(path),
                    "silence", "1", "0.01", "1%", "reverse", "silence", "1", "0.01", "1%", "reverse"], check=True)
    raw.unlink()
    samples, _ = sf.read(path, dtype="float32")
    return samples


def make_word_fixture(words: list[str], path: Path, *, language: str = "en", gap_s: float = 0.25,
                      lead_s: float = 0.5) -> list[TrueWord]:
    """Write a recording of ``words`` spoken one at a time with ``gap_s`` pauses; return their true times."""
    if shutil.which("espeak-ng") is None or shutil.which("sox") is None:
        raise SystemExit("espeak-ng and sox are needed to build the fixture")
    voice = "en-us" if language == "en" else "cmn-latn-pinyin"
    pieces = [np.zeros(int(lead_s * SAMPLE_RATE), np.float32)]
    truth, t = [], lead_s
    with tempfile.TemporaryDirectory() as tmp:
        for i, word in enumerate(words):
            spoken = word
            if language == "zh":
                from pypinyin import Style, lazy_pinyin

                spoken = " ".join(lazy_pinyin(word, style=Style.TONE3, neutral_tone_with_five=True))
            audio = _speak(spoken, Path(tmp) / f"w{i}.wav", voice)
            truth.append(TrueWord(word, round(t, 3), round(t + len(audio) / SAMPLE_RATE, 3)))
            pieces += [audio, np.zeros(int(gap_s * SAMPLE_RATE), np.float32)]
            t += len(audio) / SAMPLE_RATE + gap_s
    pieces.append(np.zeros(int(lead_s * SAMPLE_RATE), np.float32))
    sf.write(path, np.concatenate(pieces), SAMPLE_RATE, subtype="PCM_16")
    return truth


def _norm(word: str) -> str:
    return "".join(ch for ch in word.lower() if ch.isalnum())


def timing_errors(truth: list[TrueWord], words: list[tuple[str, float, float]]) -> dict:
    """Match recognised (word, start, end) to the true words in order; errors in seconds over the matches."""
    a, b = [_norm(w.word) for w in truth], [_norm(w[0]) for w in words]
    starts, ends = [], []
    for block in difflib.SequenceMatcher(a=a, b=b, autojunk=False).get_matching_blocks():
        for k in range(block.size):
            true, got = truth[block.a + k], words[block.b + k]
            starts.append(abs(got[1] - true.start))
            ends.append(abs(got[2] - true.end))
    if not starts:
        return {"matched": 0, "of": len(truth)}
    return {"matched": len(starts), "of": len(truth),
            "start_mean_s": round(float(np.mean(starts)), 3), "start_median_s": round(float(np.median(starts)), 3),
            "end_mean_s": round(float(np.mean(ends)), 3), "end_median_s": round(float(np.median(ends)), 3),
            "mean_s": round(float(np.mean(starts + ends)), 3)}


def _ct2_path(model_path: str) -> str:
    """A merged transformers model's CTranslate2 copy (merge_lora.py --ct2 puts it at ``<model>-ct2``), where there
    is one; else ``model_path`` (a CTranslate2 folder, a packaged or hub name)."""
    ct2_copy = Path(f"{model_path.rstrip('/')}-ct2")
    if not (Path(model_path) / "model.bin").is_file() and (ct2_copy / "model.bin").is_file():
        return str(ct2_copy)
    return model_path


def _ours(model_path: str, backend: str, wav: Path, language: str) -> list[tuple[str, float, float]]:
    from utils.transcribe import DecodeOptions, load_transcriber

    transcriber = load_transcriber(_ct2_path(model_path) if backend == "ct2" else model_path, backend)
    transcript = transcriber.transcribe(str(wav), DecodeOptions(language=language, word_timestamps=True))
    return [(w.word, w.start, w.end) for s in transcript.segments for w in s.words]


def _split_chars(words: list[tuple[str, float, float]]) -> list[tuple[str, float, float]]:
    """Mandarin words of several characters → one entry per character, the word's time shared evenly."""
    out = []
    for word, start, end in words:
        chars = [ch for ch in word if ch.isalnum()]
        step = (end - start) / max(1, len(chars))
        out += [(ch, start + k * step, start + (k + 1) * step) for k, ch in enumerate(chars)]
    return out


def _faster_whisper(model_path: str, wav: Path, language: str) -> list[tuple[str, float, float]]:
    from faster_whisper import WhisperModel

    from utils.models import ct2_model_dir

    model = WhisperModel(ct2_model_dir(_ct2_path(model_path)), device="cpu", compute_type="int8")
    segments, _ = model.transcribe(str(wav), language=language, word_timestamps=True, beam_size=1)
    return [(w.word.strip(), w.start, w.end) for s in segments for w in s.words]


def build_parser() -> argparse.ArgumentParser:
    p = make_parser("Word-timestamp accuracy on a recording with known word boundaries.")
    p.add_argument("--model_path", default="openai/whisper-base")
    p.add_argument("--backends", default="transformers,ct2")
    p.add_argument("--languages", default="en,zh")
    p.add_argument("--faster_whisper", default="true", choices=["true", "false"],
                   help="also measure faster-whisper's word timestamps (needs a CTranslate2 model)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    report = {"cpu_flags": cpu_report(), "model_path": args.model_path}
    with tempfile.TemporaryDirectory() as tmp:
        for language in args.languages.split(","):
            words = EN_WORDS if language == "en" else list(ZH_TEXT)
            wav = Path(tmp) / f"{language}.wav"
            truth = make_word_fixture(words, wav, language=language)
            runs = {f"ours ({b})": (lambda b=b: _ours(args.model_path, b, wav, language))
                    for b in args.backends.split(",")}
            if args.faster_whisper == "true":
                runs["faster-whisper"] = lambda: _faster_whisper(args.model_path, wav, language)
            for name, run in runs.items():
                t0 = time.perf_counter()
                got = run()
                if language == "zh":
                    got = _split_chars(got)
                report[f"{language} {name}"] = {**timing_errors(truth, got), "seconds": round(time.perf_counter() - t0, 1),
                                                "text": "".join(w[0] for w in got) if language == "zh"
                                                else " ".join(w[0] for w in got)}
    print(json.dumps(report, indent=2, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
