"""Does a model still use hotwords? CER on a test set without and with per-clip hotwords.

    python tools/bench_prompt.py --model_path=openai/whisper-base --model_path=models/whisper-base-finetune

Every clip is decoded three times: plain; with 1–3 hotwords, whole words drawn (seeded) from its own reference;
and with a list that also holds 1–2 words of another clip that this one lacks — what a user who types the names
and terms of a whole recording gives (most of a real list is absent from any one clip). The gain (plain CER −
hotword CER) shows whether the model reads the previous-text prompt; the mixed list shows whether it writes
words it did not hear. ``runaway`` counts outputs caught in a repetition loop (utils.text.has_repetition).
The hotwords come from the reference, so the gain is an upper bound of what real hotword lists give.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from utils.cli import make_parser  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    p = make_parser("CER without and with per-clip hotwords drawn from the reference.")
    p.add_argument("--model_path", action="append", required=True, help="repeat for several models")
    p.add_argument("--test_data", default="dataset/demo/test.json")
    p.add_argument("--language", default="Chinese")
    p.add_argument("--backend", default="transformers", choices=["transformers", "ct2"])
    p.add_argument("--seed", type=int, default=0)
    return p


def main(argv: list[str] | None = None) -> int:
    from tqdm import tqdm

    from utils.audio import load_audio
    from utils.data import load_manifest
    from utils.text import error_rate, has_repetition
    from utils.train_data import sample_hotwords
    from utils.transcribe import DecodeOptions, load_transcriber

    args = build_parser().parse_args(argv)
    records = [r for r in load_manifest(args.test_data) if r.sentence.strip()]
    rng = np.random.default_rng(args.seed)
    hotwords = [sample_hotwords(r.sentence, rng) for r in records]
    others = [records[(i + int(rng.integers(1, len(records)))) % len(records)].sentence for i in range(len(records))]
    mixed = [sample_hotwords(r.sentence, rng, other=o) for r, o in zip(records, others)]
    audios = [load_audio(r.audio_path, start_time=r.start_time, end_time=r.end_time) for r in records]
    refs = [r.sentence for r in records]
    report = {"test_data": args.test_data, "clips": len(records), "models": {}}
    for model in args.model_path:
        engine = load_transcriber(model, args.backend)
        plain = engine.transcribe_batch(audios, DecodeOptions(language=args.language, temperatures=(0.0,)))
        row = {"cer": round(error_rate(refs, [t.text for t in plain], "cer"), 4),
               "runaway": sum(has_repetition(t.text) for t in plain)}
        for name, lists in (("hotwords", hotwords), ("mixed_list", mixed)):
            texts = [engine.transcribe_batch([a], DecodeOptions(language=args.language, temperatures=(0.0,),
                                                                hotwords=h or None))[0].text
                     for a, h in tqdm(list(zip(audios, lists)), desc=f"{model} {name}", unit="clip")]
            cer = error_rate(refs, texts, "cer")
            row.update({f"cer_{name}": round(cer, 4), f"gain_{name}": round(row["cer"] - cer, 4),
                        f"runaway_{name}": sum(has_repetition(t) for t in texts)})
        report["models"][model] = row
    print(json.dumps(report, indent=2, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
