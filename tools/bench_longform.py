"""Benchmark long-form accuracy: a manifest's clips shuffled and joined into recordings of about 100 s, transcribed.

    python tools/bench_longform.py                                    # both sets, 30 recordings each, ct2 backend
    python tools/bench_longform.py --sets=zh --recordings=10 --backend=transformers

One recording changes a chunk's cut and reads a word or two differently by chance; this gives a change to how long
audio is cut and decoded (utils/vad.py, utils/transcribe.py) many recordings to be measured on. Recording k takes the
clips of its set in an order shuffled with seed k, a pause of 0.3-1.5 s (drawn with the same seed) after each, until it
is over ``--seconds`` long; it is decoded by the engine infer.py uses, greedy, in the set's language, and scored
against the clips' sentences joined. Sets: ``en`` = dataset/general/general_en.json and dataset/real/real_en.json
(espeak-ng and real English, ``--en_model``, WER), ``zh`` = the demo test set (``--zh_model``, default the demo model
that ``make demo`` trains, CER). Printed per set: the error rate over all recordings (errors / reference units) and
each recording's; with the CPU flags.
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tools.bench_infer import cpu_report  # noqa: E402
from utils.audio import SAMPLE_RATE, load_audio  # noqa: E402
from utils.data import load_manifest  # noqa: E402
from utils.text import count_errors  # noqa: E402

SETS = {"en": (("dataset/general/general_en.json", "dataset/real/real_en.json"), "en", "wer", " "),
        "zh": (("dataset/demo/test.json",), "zh", "cer", "")}
PAUSE_S = (0.3, 1.5)  # the pause after each clip is drawn from this range


def joined_recording(clips: list[tuple[np.ndarray, str]], seed: int, seconds: float,
                     sep: str) -> tuple[np.ndarray, str]:
    """Clips (samples at SAMPLE_RATE, sentence) in the order seed ``seed`` shuffles them, each followed by a pause
    (``PAUSE_S``), until the recording is over ``seconds`` long (or the clips run out): (samples, reference)."""
    rng = random.Random(seed)
    order = list(range(len(clips)))
    rng.shuffle(order)
    parts, said, total = [], [], 0.0
    for i in order:
        audio, sentence = clips[i]
        pause = rng.uniform(*PAUSE_S)
        parts += [audio, np.zeros(round(pause * SAMPLE_RATE), np.float32)]
        said.append(sentence)
        total += len(audio) / SAMPLE_RATE + pause
        if total > seconds:
            break
    return np.concatenate(parts).astype(np.float32), sep.join(said)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sets", default="en,zh", help="comma-separated: en, zh")
    parser.add_argument("--recordings", type=int, default=30, help="recordings per set (seeds 0 .. N-1)")
    parser.add_argument("--seconds", type=float, default=100.0, help="length of each recording, about")
    parser.add_argument("--backend", default="ct2", choices=("ct2", "transformers"))
    parser.add_argument("--en_model", default="openai/whisper-base",
                        help="English model (a name or folder, as infer.py takes it)")
    parser.add_argument("--zh_model", default="models/whisper-base-finetune",
                        help="Mandarin transformers folder (its '-ct2' copy for the ct2 backend)")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from tqdm import tqdm

    from utils.transcribe import DecodeOptions, load_transcriber

    names = [s.strip() for s in args.sets.split(",") if s.strip()]
    if unknown := [n for n in names if n not in SETS]:
        raise SystemExit(f"--sets: unknown {unknown}; choose from {sorted(SETS)}")
    if "zh" in names and not Path(args.zh_model).is_dir():
        raise SystemExit(f"--zh_model {args.zh_model}: no such folder (make demo trains it; or give another model)")
    print(cpu_report(), flush=True)
    for name in names:
        manifests, language, metric, sep = SETS[name]
        clips = [(load_audio(r.audio_path), r.sentence) for m in manifests for r in load_manifest(m)
                 if r.sentence.strip()]
        model = args.en_model if name == "en" else args.zh_model
        if args.backend == "ct2" and name == "zh":  # the demo model's CTranslate2 copy beside it
            model = f"{model.rstrip('/')}-ct2"
        engine = load_transcriber(model, args.backend, device="cpu", cpu_threads=args.threads)
        errors = units = 0
        rates = []
        for seed in tqdm(range(args.recordings), desc=name):
            audio, reference = joined_recording(clips, seed, args.seconds, sep)
            counts = count_errors(reference, engine.transcribe(audio, DecodeOptions(language=language)).text, metric,
                                  language=language)
            errors, units = errors + counts.errors, units + counts.reference_length
            rates.append(round(counts.errors / max(1, counts.reference_length), 4))
        print(f"{name} {model} ({args.backend}): {metric.upper()} {errors / max(1, units):.4f} over {args.recordings} "
              f"recordings of about {args.seconds:g} s; each: {rates}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
