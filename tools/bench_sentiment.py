"""Accuracy of the offline Chinese sentiment on a labelled set: positive/negative accuracy and a confusion matrix.

    python tools/bench_sentiment.py                                   # the held-out set, snownlp vs the default
    python tools/bench_sentiment.py --data=tests/data/sentiment_zh_dev.tsv --models snownlp lexicon auto

The sets are ``label<TAB>text`` lines (``#`` comments): tests/data/sentiment_zh_heldout.tsv is never used to
choose a word or a weight of utils/sentiment_lexicon.py; sentiment_zh_dev.tsv is.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from utils.cli import add_bool  # noqa: E402
from utils.sentiment import LABELS, load_sentiment_model  # noqa: E402

DEFAULT_DATA = Path(__file__).resolve().parent.parent / "tests" / "data" / "sentiment_zh_heldout.tsv"


def read_labelled(path: str | Path) -> list[tuple[str, str]]:
    """(label, text) pairs of a ``label<TAB>text`` file."""
    pairs = []
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        label, _, text = line.partition("\t")
        if label not in LABELS or not text.strip():
            raise ValueError(f"{path}:{number}: expected 'label<TAB>text' with a label in {LABELS}")
        pairs.append((label, text.strip()))
    return pairs


def score(model_name: str, pairs: list[tuple[str, str]]) -> dict:
    """Accuracy on the positive/negative items (neutral predictions count as wrong there), the accuracy over all
    three classes, the confusion matrix and the errors."""
    model = load_sentiment_model(model_name, language="zh")
    start = time.perf_counter()
    results = model.predict([text for _, text in pairs])
    seconds = time.perf_counter() - start
    confusion = Counter((gold, r.label) for (gold, _), r in zip(pairs, results))
    polar = [(gold, r.label) for (gold, _), r in zip(pairs, results) if gold != "neutral"]
    return {
        "model": model_name,
        "polar_accuracy": sum(g == p for g, p in polar) / max(1, len(polar)),
        "accuracy": sum(n for (g, p), n in confusion.items() if g == p) / len(pairs),
        "confusion": confusion,
        "errors": [(gold, r.label, round(r.score, 2), text) for (gold, text), r in zip(pairs, results)
                   if gold != r.label],
        "seconds": seconds,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="label<TAB>text file")
    parser.add_argument("--models", nargs="+", default=["snownlp", "auto"], help="models to compare")
    add_bool(parser, "show_errors", False, "print every wrong prediction")
    args = parser.parse_args(argv)
    pairs = read_labelled(args.data)
    counts = Counter(label for label, _ in pairs)
    print(f"{args.data}: {len(pairs)} sentences ({', '.join(f'{k} {v}' for k, v in sorted(counts.items()))})")
    for name in args.models:
        r = score(name, pairs)
        print(f"\n{name}: positive/negative accuracy {r['polar_accuracy']:.3f}, 3-class accuracy {r['accuracy']:.3f}"
              f" ({r['seconds']:.2f} s)")
        print("gold \\ predicted  " + "  ".join(f"{p:>8}" for p in LABELS))
        for gold in LABELS:
            print(f"{gold:>16}  " + "  ".join(f"{r['confusion'][(gold, p)]:>8}" for p in LABELS))
        if args.show_errors:
            for gold, pred, s, text in r["errors"]:
                print(f"  {gold:>8} → {pred:<8} {s:.2f}  {text}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
