"""Text normalisation for scoring, and character / word error rates.

Scoring compares ``normalize_text(reference)`` with ``normalize_text(hypothesis)``: punctuation
(ASCII and full-width, e.g. “”《》（）…、；：！？) and spaces removed, traditional Chinese converted
to simplified, Latin letters lower-cased. CER counts characters (spaces ignored); WER counts
whitespace-separated words. Both are corpus-level: total edits / total reference units.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass

import zhconv
from rapidfuzz.distance import Levenshtein

METRICS = ("cer", "wer")


def to_simplified(text: str) -> str:
    """Convert traditional Chinese characters to simplified (other text unchanged)."""
    return zhconv.convert(text, "zh-cn")


def remove_punctuation(text: str) -> str:
    """Replace every punctuation character (Unicode category P*, ASCII and full-width) by a space."""
    return "".join(" " if unicodedata.category(ch).startswith("P") else ch for ch in text)


def normalize_text(text: str, *, to_simple: bool = True, remove_pun: bool = True, lowercase: bool = True) -> str:
    """Normalise a transcript for scoring.

    NFKC folds full-width Latin letters and digits to ASCII; punctuation becomes spaces; runs of
    white space collapse to one space (kept, so WER can still split words).
    """
    text = unicodedata.normalize("NFKC", text)
    if to_simple:
        text = to_simplified(text)
    if remove_pun:
        text = remove_punctuation(text)
    if lowercase:
        text = text.lower()
    return " ".join(text.split())


@dataclass(frozen=True)
class ErrorCounts:
    """Edit operations between references and hypotheses, in units (characters or words)."""

    substitutions: int
    deletions: int
    insertions: int
    reference_length: int

    @property
    def errors(self) -> int:
        return self.substitutions + self.deletions + self.insertions

    @property
    def rate(self) -> float:
        """errors / reference units; 0 if both are empty, inf if only the reference is empty."""
        if self.reference_length == 0:
            return 0.0 if self.errors == 0 else float("inf")
        return self.errors / self.reference_length

    def __add__(self, other: ErrorCounts) -> ErrorCounts:
        return ErrorCounts(
            self.substitutions + other.substitutions,
            self.deletions + other.deletions,
            self.insertions + other.insertions,
            self.reference_length + other.reference_length,
        )


def units(text: str, metric: str) -> list[str]:
    """Split normalised text into scoring units: characters (no spaces) for cer, words for wer."""
    if metric == "cer":
        return [ch for ch in text if not ch.isspace()]
    if metric == "wer":
        return text.split()
    raise ValueError(f"unknown metric {metric!r}; choose one of {METRICS}")


def count_errors(reference: str, hypothesis: str, metric: str = "cer", *, normalize: bool = True) -> ErrorCounts:
    """Edit counts for one utterance (Levenshtein alignment over characters or words)."""
    if normalize:
        reference, hypothesis = normalize_text(reference), normalize_text(hypothesis)
    ref, hyp = units(reference, metric), units(hypothesis, metric)
    subs = dels = ins = 0
    for op in Levenshtein.editops(ref, hyp):
        if op.tag == "replace":
            subs += 1
        elif op.tag == "delete":
            dels += 1
        else:
            ins += 1
    return ErrorCounts(subs, dels, ins, len(ref))


def error_rate(references: Sequence[str], hypotheses: Sequence[str], metric: str = "cer") -> float:
    """Corpus-level CER or WER after normalisation."""
    if len(references) != len(hypotheses):
        raise ValueError(f"{len(references)} references but {len(hypotheses)} hypotheses")
    total = ErrorCounts(0, 0, 0, 0)
    for ref, hyp in zip(references, hypotheses):
        total = total + count_errors(ref, hyp, metric)
    return total.rate


def cer(references: Sequence[str], hypotheses: Sequence[str]) -> float:
    """Character error rate over a corpus."""
    return error_rate(references, hypotheses, "cer")


def wer(references: Sequence[str], hypotheses: Sequence[str]) -> float:
    """Word error rate over a corpus."""
    return error_rate(references, hypotheses, "wer")
