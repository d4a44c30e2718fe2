"""Generate the Mandarin demo corpus in ``dataset/demo/`` (and the demo wavs in ``dataset/``) with espeak-ng and sox.

    python tools/make_demo_data.py --output_dir dataset

The sentences (``tools/demo_sentences.txt``) are original text written for this project. Each one is
converted to tone-numbered pinyin (pypinyin TONE3) and spoken by espeak-ng's ``cmn-latn-pinyin`` voice
at a speed, pitch and loudness drawn from a seeded RNG; sox resamples it to 16 kHz mono 16-bit and
trims the synthesiser's edge silence. The label keeps the sentence as written, punctuation included.

Written into the output folder (manifest paths are relative to the manifest's folder, so the
manifests work from any working directory; the corpus lies in ``demo/`` because ``dataset/train.json``,
``dev.json`` and ``test.json`` are where aishell.py writes AISHELL-1's manifests):

    demo/audio/{train,test}_NNNN.flac   FLAC, 16 kHz mono 16-bit
    demo/train.json, demo/test.json     jsonlines manifests: single sentences, two-sentence clips with
                                        ``sentences`` timestamps, and no-speech clips (empty ``sentence``)
    test.wav, test.txt             one clean Mandarin sentence (not in train) and its text
    test_en.wav, test_en.txt       one clean English sentence (espeak-ng en-us) and its text

Every random choice comes from one RNG seeded by ``--seed`` and drawn in a fixed order, so two runs
with the same arguments write identical manifests and audio. The outputs are built in a staging
folder and moved into place only when everything succeeded.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
from pypinyin import Style, lazy_pinyin
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from utils.audio import SAMPLE_RATE  # noqa: E402
from utils.io import write_jsonlines_atomic, write_text_atomic  # noqa: E402

logger = logging.getLogger(__name__)

DEFAULT_SENTENCES = Path(__file__).with_name("demo_sentences.txt")
LANGUAGE = "Chinese"
DEMO_DIR = "demo"  # under --output_dir: the manifests and their audio/
ZH_VOICE = "cmn-latn-pinyin"
EN_VOICE = "en-us"
MIN_HANZI, MAX_HANZI = 5, 20
CLAUSE_BREAKS = "，、；："  # spoken as a short pause (", " in the espeak-ng input)
SENTENCE_ENDS = "。？！"
SPEED_RANGE = (145, 190)  # espeak-ng words per minute: about 0.27-0.38 s per Hanzi
PITCH_RANGE = (30, 70)  # espeak-ng pitch, 0-99
AMPLITUDE_RANGE = (60, 100)  # espeak-ng amplitude, 100 = its default loudness
EDGE_PAD_S = 0.1  # silence before and after the speech in every clip, seconds
PAIR_GAP_RANGE_S = (0.3, 0.8)  # pause between the two sentences of a two-sentence clip, seconds
NOSPEECH_DURATION_RANGE_S = (1.0, 3.0)
# (sox synth type or "silence", amplitude 0-1): digital silence, then faint noises of three colours.
NOSPEECH_KINDS = (("silence", 0.0), ("whitenoise", 0.003), ("pinknoise", 0.01), ("brownnoise", 0.03))
ZH_DEMO_SENTENCE = "今天天气很好，我们一起去公园散步吧。"
EN_DEMO_SENTENCE = "The weather is nice today, so we are going for a walk in the park."

_HANZI = re.compile(r"[\u4e00-\u9fff]")
_PUNCTUATION = re.compile(f"[{CLAUSE_BREAKS}{SENTENCE_ENDS}]")
_PINYIN_SYLLABLE = re.compile(r"[a-z]+[1-5]")


class DemoDataError(RuntimeError):
    """A tool is missing, the sentence file is invalid, or a synthesis command failed."""


@dataclass(frozen=True)
class Sentence:
    """One line of the sentence file."""

    text: str
    topic: str
    line: int  # 1-based line number in the sentence file


@dataclass(frozen=True)
class Voice:
    """espeak-ng settings for one spoken sentence."""

    name: str
    speed: int  # words per minute
    pitch: int  # 0-99
    amplitude: int  # 100 = default loudness


@dataclass(frozen=True)
class ClipPlan:
    """Everything needed to render one clip, decided before any audio is made.

    ``texts`` is empty for a no-speech clip, holds one sentence for a plain clip and two for a
    clip with ``sentences`` timestamps.
    """

    name: str
    texts: tuple[str, ...]
    voices: tuple[Voice, ...] = ()
    gap_s: float = 0.0  # pause between the sentences of a two-sentence clip
    noise: str = ""  # no-speech clips: "silence" or a sox synth noise type
    noise_amplitude: float = 0.0
    noise_duration_s: float = 0.0
    file_format: str = "FLAC"


def check_tools() -> None:
    """Fail with an install hint unless espeak-ng (with the pinyin voice) and sox are on PATH."""
    for tool, package in (("espeak-ng", "espeak-ng"), ("sox", "sox")):
        if shutil.which(tool) is None:
            raise DemoDataError(f"'{tool}' not found on PATH; install it (Debian/Ubuntu: apt-get install {package})")
    voices = _run(["espeak-ng", f"--voices={ZH_VOICE.split('-')[0]}"])
    if ZH_VOICE not in voices:
        raise DemoDataError(f"espeak-ng has no '{ZH_VOICE}' voice; install a newer espeak-ng (>= 1.50)")


def load_sentences(path: str | os.PathLike) -> list[Sentence]:
    """Read and validate the sentence file (format described at its top).

    Raises:
        DemoDataError: naming the file and line of the first invalid or duplicate sentence.
    """
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise DemoDataError(f"{path}: cannot read the sentence file ({e})") from e
    sentences: list[Sentence] = []
    first_seen: dict[str, int] = {}
    topic = ""
    for number, raw in enumerate(lines, start=1):
        line = raw.strip()
        if line.startswith("##"):
            topic = line.lstrip("#").strip()
            continue
        if not line or line.startswith("#"):
            continue
        where = f"{path}:{number}"
        if not topic:
            raise DemoDataError(f"{where}: sentence before the first '## topic' line; add a topic header above it")
        bad = sorted({c for c in line if not _HANZI.fullmatch(c) and not _PUNCTUATION.fullmatch(c)})
        if bad:
            raise DemoDataError(
                f"{where}: characters {''.join(bad)!r} are neither Hanzi nor {CLAUSE_BREAKS}{SENTENCE_ENDS}; "
                "write numbers in Hanzi and use Chinese punctuation"
            )
        hanzi = len(_HANZI.findall(line))
        if not MIN_HANZI <= hanzi <= MAX_HANZI:
            raise DemoDataError(f"{where}: {hanzi} Hanzi in {line!r}; sentences need {MIN_HANZI}-{MAX_HANZI}")
        if line in first_seen:
            raise DemoDataError(f"{where}: {line!r} repeats line {first_seen[line]}; remove one of them")
        first_seen[line] = number
        sentences.append(Sentence(text=line, topic=topic, line=number))
    if not sentences:
        raise DemoDataError(f"{path}: no sentences found")
    return sentences


def to_pinyin(text: str) -> str:
    """Hanzi sentence → espeak-ng input: TONE3 pinyin syllables, clauses split by ", ".

    Example: "你好，我是学生。" → "ni3 hao3, wo3 shi4 xue2 sheng1." (neutral tone is written as 5).
    """
    clauses = []
    for clause in _PUNCTUATION.split(text):
        if not clause:
            continue
        syllables = lazy_pinyin(clause, style=Style.TONE3, neutral_tone_with_five=True)
        odd = [s for s in syllables if not _PINYIN_SYLLABLE.fullmatch(s)]
        if odd:
            raise DemoDataError(f"{text!r}: pypinyin returned {odd} which is not tone-numbered pinyin")
        clauses.append(" ".join(syllables))
    return ", ".join(clauses) + "."


def split_sentences(
    sentences: Sequence[Sentence], test_fraction: float, rng: random.Random
) -> tuple[list[str], list[str]]:
    """Split into (train, test) texts: ``test_fraction`` of every topic goes to test, both shuffled."""
    topics: dict[str, list[str]] = {}
    for sentence in sentences:
        topics.setdefault(sentence.topic, []).append(sentence.text)
    train: list[str] = []
    test: list[str] = []
    for texts in topics.values():
        texts = texts.copy()
        rng.shuffle(texts)
        n_test = round(len(texts) * test_fraction)
        test.extend(texts[:n_test])
        train.extend(texts[n_test:])
    rng.shuffle(train)
    rng.shuffle(test)
    return train, test


def _draw_voice(rng: random.Random) -> Voice:
    return Voice(
        name=ZH_VOICE,
        speed=rng.randint(*SPEED_RANGE),
        pitch=rng.randint(*PITCH_RANGE),
        amplitude=rng.randint(*AMPLITUDE_RANGE),
    )


def plan_split(
    split: str, texts: Sequence[str], num_pairs: int, num_nospeech: int, rng: random.Random
) -> list[ClipPlan]:
    """Plan the clips of one split, named ``{split}_0001``... in a shuffled order.

    The first ``2 * num_pairs`` texts become two-sentence clips (fewer when there are under
    ``4 * num_pairs`` texts, so that single-sentence clips remain); the rest are spoken alone.
    """
    num_pairs = min(num_pairs, len(texts) // 4)
    groups = [tuple(texts[2 * i : 2 * i + 2]) for i in range(num_pairs)]
    groups += [(text,) for text in texts[2 * num_pairs :]]
    plans = []
    for group in groups:
        voices = tuple(_draw_voice(rng) for _ in group)
        gap = round(rng.uniform(*PAIR_GAP_RANGE_S), 2) if len(group) == 2 else 0.0
        plans.append(ClipPlan(name="", texts=group, voices=voices, gap_s=gap))
    for i in range(num_nospeech):
        noise, amplitude = NOSPEECH_KINDS[i % len(NOSPEECH_KINDS)]
        duration = round(rng.uniform(*NOSPEECH_DURATION_RANGE_S), 2)
        plans.append(
            ClipPlan(name="", texts=(), noise=noise, noise_amplitude=amplitude, noise_duration_s=duration)
        )
    rng.shuffle(plans)
    return [dataclasses.replace(plan, name=f"{split}_{i:04d}") for i, plan in enumerate(plans, start=1)]


def _run(cmd: Sequence[str | os.PathLike]) -> str:
    """Run a command; returns its stdout, raises DemoDataError with its stderr when it fails."""
    cmd = [os.fspath(c) for c in cmd]
    try:
        proc = subprocess.run(cmd, check=True, capture_output=True, text=True)
    except subprocess.CalledProcessError as e:
        raise DemoDataError(f"command failed (exit {e.returncode}): {' '.join(cmd)}\n{e.stderr.strip()}") from e
    except OSError as e:
        raise DemoDataError(f"cannot run {cmd[0]} ({e})") from e
    return proc.stdout


def synthesize_speech(text: str, voice: Voice, work_dir: Path) -> np.ndarray:
    """Speak ``text`` (espeak-ng input) → int16 samples, shape (n,), 16 kHz, edge silence trimmed."""
    raw, out = work_dir / "espeak.wav", work_dir / "speech.wav"
    espeak = ["espeak-ng", "-v", voice.name, "-s", str(voice.speed), "-p", str(voice.pitch)]
    _run([*espeak, "-a", str(voice.amplitude), "-w", raw, text])
    # -D: no dither, so every run writes the same samples; "silence 1 ... reverse" twice trims both ends.
    trim = ["silence", "1", "0.01", "0.1%", "reverse"]
    _run(["sox", "-D", raw, "-r", str(SAMPLE_RATE), "-c", "1", "-b", "16", out, *trim, *trim])
    samples, _ = sf.read(out, dtype="int16")
    if samples.size < SAMPLE_RATE // 10:
        raise DemoDataError(f"espeak-ng produced under 0.1 s of sound for {text!r} (voice {voice})")
    return samples


def synthesize_nospeech(kind: str, amplitude: float, duration_s: float, work_dir: Path) -> np.ndarray:
    """Digital silence or faint sox noise → int16 samples, shape (n,), 16 kHz."""
    out = work_dir / "nospeech.wav"
    # -R: sox seeds its noise generator the same way on every run.
    cmd = ["sox", "-R", "-D", "-n", "-r", str(SAMPLE_RATE), "-c", "1", "-b", "16", out]
    if kind == "silence":
        cmd += ["trim", "0", f"{duration_s:.2f}"]
    else:
        cmd += ["synth", f"{duration_s:.2f}", kind, "vol", str(amplitude)]
    _run(cmd)
    samples, _ = sf.read(out, dtype="int16")
    return samples


def _seconds(frames: int) -> float:
    return round(frames / SAMPLE_RATE, 2)


def render_clip(plan: ClipPlan, out_path: Path, work_root: Path) -> dict[str, Any]:
    """Render one planned clip to ``out_path``.

    Returns:
        The manifest fields that depend on the audio: ``sentence``, ``sentences`` (two-sentence and
        no-speech clips only) and ``duration`` (seconds), plus ``speech_seconds``.
    """
    with tempfile.TemporaryDirectory(dir=work_root, prefix=f"{plan.name}-") as tmp:
        work_dir = Path(tmp)
        pad = np.zeros(round(EDGE_PAD_S * SAMPLE_RATE), dtype=np.int16)
        if not plan.texts:
            samples = synthesize_nospeech(plan.noise, plan.noise_amplitude, plan.noise_duration_s, work_dir)
            parts, segments = [samples], []
        else:
            parts, segments = [pad], []
            offset = len(pad)
            for i, (text, voice) in enumerate(zip(plan.texts, plan.voices, strict=True)):
                if i:
                    gap = np.zeros(round(plan.gap_s * SAMPLE_RATE), dtype=np.int16)
                    parts.append(gap)
                    offset += len(gap)
                speech = synthesize_speech(to_pinyin(text) if voice.name == ZH_VOICE else text, voice, work_dir)
                parts.append(speech)
                segments.append({"start": _seconds(offset), "end": _seconds(offset + len(speech)), "text": text})
                offset += len(speech)
            parts.append(pad)
        audio = np.concatenate(parts)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    if plan.file_format == "FLAC":
        sf.write(out_path, audio, SAMPLE_RATE, format="FLAC", subtype="PCM_16", compression_level=1.0)
    else:
        sf.write(out_path, audio, SAMPLE_RATE, format=plan.file_format, subtype="PCM_16")
    fields: dict[str, Any] = {"sentence": "".join(plan.texts)}
    if len(plan.texts) != 1:
        fields["sentences"] = segments
    fields["duration"] = _seconds(len(audio))
    fields["speech_seconds"] = sum(s["end"] - s["start"] for s in segments)
    return fields


def _manifest_record(plan: ClipPlan, fields: dict[str, Any], path_prefix: str) -> dict[str, Any]:
    record: dict[str, Any] = {"audio": {"path": f"{path_prefix}/{plan.name}.flac"}, "sentence": fields["sentence"]}
    record["language"] = LANGUAGE
    if "sentences" in fields:
        record["sentences"] = fields["sentences"]
    record["duration"] = fields["duration"]
    return record


def render_all(jobs: Sequence[tuple[ClipPlan, Path]], work_root: Path, workers: int) -> list[dict[str, Any]]:
    """Render (plan, output path) jobs on ``workers`` threads (the work is in subprocesses); keeps order."""
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = pool.map(lambda job: render_clip(job[0], job[1], work_root), jobs)
        return list(tqdm(results, total=len(jobs), desc="synthesising", unit="clip"))


def _install(staging: Path, output_dir: Path, file_names: Sequence[str]) -> None:
    """Move the staged outputs into ``output_dir``: ``demo/audio/`` swapped as a whole, files by os.replace."""
    audio_dir = output_dir / DEMO_DIR / "audio"
    audio_dir.parent.mkdir(parents=True, exist_ok=True)
    if audio_dir.exists():
        os.replace(audio_dir, staging / "audio.old")
    os.replace(staging / DEMO_DIR / "audio", audio_dir)
    for name in file_names:
        os.replace(staging / name, output_dir / name)


def _split_summary(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    return {
        "clips": len(records),
        "two_sentence_clips": sum(len(r.get("sentences", [])) == 2 for r in records),
        "nospeech_clips": sum(not r["sentence"] for r in records),
        "minutes": round(sum(r["duration"] for r in records) / 60, 2),
    }


def generate(
    output_dir: Path,
    sentences: Sequence[Sentence],
    *,
    seed: int,
    test_fraction: float,
    num_pairs: tuple[int, int],
    num_nospeech: tuple[int, int],
    limit: int | None,
    workers: int,
) -> dict[str, Any]:
    """Write the whole corpus into ``output_dir`` (see the module docstring); returns a summary.

    ``num_pairs`` and ``num_nospeech`` are (train, test) clip counts; ``limit`` caps the number of
    sentences per split.
    """
    # 1. Decide everything up front from one RNG, in a fixed order.
    rng = random.Random(seed)
    train_texts, test_texts = split_sentences(sentences, test_fraction, rng)
    if ZH_DEMO_SENTENCE in train_texts:
        raise DemoDataError(f"the test.wav sentence {ZH_DEMO_SENTENCE!r} is in the training split; remove it")
    if limit is not None:
        train_texts, test_texts = train_texts[:limit], test_texts[:limit]
    plans = {
        "train": plan_split("train", train_texts, num_pairs[0], num_nospeech[0], rng),
        "test": plan_split("test", test_texts, num_pairs[1], num_nospeech[1], rng),
    }
    clean_zh = Voice(ZH_VOICE, speed=165, pitch=50, amplitude=100)
    clean_en = Voice(EN_VOICE, speed=165, pitch=50, amplitude=100)
    demos = {
        "test": ClipPlan("test", (ZH_DEMO_SENTENCE,), (clean_zh,), file_format="WAV"),
        "test_en": ClipPlan("test_en", (EN_DEMO_SENTENCE,), (clean_en,), file_format="WAV"),
    }

    # 2. Render into a staging folder next to the outputs.
    output_dir.mkdir(parents=True, exist_ok=True)
    path_prefix = "audio"  # relative to the manifest's folder, as utils.data resolves it
    staging = Path(tempfile.mkdtemp(dir=output_dir, prefix=".staging-"))
    try:
        (staging / DEMO_DIR / "audio").mkdir(parents=True)
        audio = staging / DEMO_DIR / "audio"
        jobs = [(plan, audio / f"{plan.name}.flac") for split in plans.values() for plan in split]
        jobs += [(plan, staging / f"{plan.name}.wav") for plan in demos.values()]
        fields = render_all(jobs, staging, workers)
        by_name = {plan.name: f for (plan, _), f in zip(jobs, fields, strict=True)}

        # 3. Manifests and texts, then move everything into place.
        summary: dict[str, Any] = {}
        for split, split_plans in plans.items():
            records = [_manifest_record(p, by_name[p.name], path_prefix) for p in split_plans]
            write_jsonlines_atomic(staging / DEMO_DIR / f"{split}.json", records)
            summary[split] = _split_summary(records)
        write_text_atomic(staging / "test.txt", ZH_DEMO_SENTENCE + "\n")
        write_text_atomic(staging / "test_en.txt", EN_DEMO_SENTENCE + "\n")
        files = [f"{DEMO_DIR}/train.json", f"{DEMO_DIR}/test.json", "test.wav", "test.txt", "test_en.wav",
                 "test_en.txt"]
        _install(staging, output_dir, files)
    finally:
        shutil.rmtree(staging, ignore_errors=True)

    split_plans = [plan for split in plans.values() for plan in split]
    speech_seconds = sum(by_name[plan.name]["speech_seconds"] for plan in split_plans)
    hanzi = sum(len(_HANZI.findall("".join(plan.texts))) for plan in split_plans)
    audio_bytes = sum(f.stat().st_size for f in (output_dir / DEMO_DIR / "audio").glob("*.flac"))
    summary["audio_megabytes"] = round(audio_bytes / 1e6, 2)
    summary["seconds_per_hanzi"] = round(speech_seconds / max(hanzi, 1), 3)
    return summary


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Show defaults and keep the module docstring's layout."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=_HelpFormatter)
    parser.add_argument("--output_dir", type=Path, default=Path("dataset"), help="folder to write")
    parser.add_argument("--sentences", type=Path, default=DEFAULT_SENTENCES, help="sentence file")
    parser.add_argument("--seed", type=int, default=2024, help="RNG seed for the split, voices and clip order")
    parser.add_argument("--test_fraction", type=float, default=0.13, help="share of every topic put in test")
    parser.add_argument("--num_pairs_train", type=int, default=20, help="two-sentence clips (timestamps) in train")
    parser.add_argument("--num_pairs_test", type=int, default=2, help="two-sentence clips (timestamps) in test")
    parser.add_argument("--num_nospeech_train", type=int, default=6, help="silence/noise clips in train")
    parser.add_argument("--num_nospeech_test", type=int, default=2, help="silence/noise clips in test")
    parser.add_argument("--limit", type=int, default=None, help="use at most N sentences per split (quick runs)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="parallel synthesis threads")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not 0.0 < args.test_fraction < 1.0:
        parser.error("--test_fraction must be between 0 and 1 (exclusive)")
    if args.limit is not None and args.limit < 1:
        parser.error("--limit must be at least 1")
    counts = (args.num_pairs_train, args.num_pairs_test, args.num_nospeech_train, args.num_nospeech_test)
    if min(counts) < 0 or args.workers < 1:
        parser.error("clip counts must be >= 0 and --workers >= 1")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    start = time.monotonic()
    try:
        check_tools()
        sentences = load_sentences(args.sentences)
        summary = generate(
            args.output_dir,
            sentences,
            seed=args.seed,
            test_fraction=args.test_fraction,
            num_pairs=(args.num_pairs_train, args.num_pairs_test),
            num_nospeech=(args.num_nospeech_train, args.num_nospeech_test),
            limit=args.limit,
            workers=args.workers,
        )
    except DemoDataError as e:
        logger.error("%s", e)
        return 1
    summary["generation_seconds"] = round(time.monotonic() - start, 1)
    print(json.dumps(summary, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
