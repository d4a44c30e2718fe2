"""The forgetting report: what a fine-tuned model lost next to its base, in one table.

Both models are scored on the target test set, on a general set (other languages, numbers, punctuation),
and on no-speech clips; from the per-utterance results come: error rates, the share of no-speech clips that
got text (hallucination), the share of outputs with a repetition loop, the insertion rate, and the share of
outputs that kept punctuation where the reference has some.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from utils.audio import SAMPLE_RATE
from utils.text import has_punctuation, has_repetition, normalize_text


def no_speech_clips(seconds: float = 3.0) -> list[tuple[str, np.ndarray]]:
    """Deterministic clips without speech, (name, float32 waveform at 16 kHz): silence, faint and loud
    white noise, brown noise, mains hum, and clicks — where fine-tuned models hallucinate text."""
    n = int(seconds * SAMPLE_RATE)
    rng = np.random.default_rng(0)
    t = np.arange(n) / SAMPLE_RATE
    white = rng.standard_normal(n).astype(np.float32)
    brown = np.cumsum(rng.standard_normal(n)).astype(np.float32)
    brown = brown - np.convolve(brown, np.ones(801) / 801, mode="same")  # keep it from drifting away
    brown /= np.abs(brown).max()
    clicks = np.zeros(n, np.float32)
    clicks[:: SAMPLE_RATE // 3] = 0.5
    clips = [("silence", np.zeros(n, np.float32)), ("white noise -50 dB", 0.003 * white),
             ("white noise -30 dB", 0.03 * white), ("brown noise", 0.05 * brown),
             ("50 Hz hum", (0.05 * np.sin(2 * np.pi * 50 * t)).astype(np.float32)), ("clicks", clicks)]
    return [(name, np.asarray(audio, dtype=np.float32)) for name, audio in clips]


def speech_metrics(utterances: Sequence[dict[str, Any]], metric: str) -> dict[str, Any]:
    """From evaluation utterances (reference, hypothesis, insertions, reference_length): error counts for the
    clips with speech, and how many clips without speech (empty reference) got text."""
    speech = [u for u in utterances if normalize_text(u["reference"])]
    silent = [u for u in utterances if not normalize_text(u["reference"])]
    ref_len = sum(u["reference_length"] for u in speech)
    errors = sum(u["errors"] for u in speech)
    punctuated = [u for u in speech if has_punctuation(u["reference"])]
    return {
        "utterances": len(speech),
        metric: round(errors / ref_len, 4) if ref_len else None,
        "insertion_rate": round(sum(u["insertions"] for u in speech) / ref_len, 4) if ref_len else None,
        "repetition": sum(has_repetition(u["hypothesis"], u["reference"], metric) for u in speech),
        "punctuation_kept": sum(has_punctuation(u["hypothesis"]) for u in punctuated),
        "punctuated_references": len(punctuated),
        "no_speech_clips": len(silent),
        "no_speech_with_text": sum(bool(normalize_text(u["hypothesis"])) for u in silent),
    }


def model_summary(target: dict[str, Any], general: dict[str, Any] | None, no_speech_texts: Sequence[str]
                  ) -> dict[str, Any]:
    """One model's row: the target and general set metrics plus the generated no-speech clips."""
    silent = target["no_speech_clips"] + (general["no_speech_clips"] if general else 0) + len(no_speech_texts)
    with_text = (target["no_speech_with_text"] + (general["no_speech_with_text"] if general else 0)
                 + sum(bool(normalize_text(t)) for t in no_speech_texts))
    sets = [s for s in (target, general) if s]
    outputs = sum(s["utterances"] for s in sets)
    return {"target": target, "general": general, "no_speech": {"clips": silent, "with_text": with_text},
            "repetition": {"outputs": outputs, "with_repetition": sum(s["repetition"] for s in sets)},
            "punctuation": {"references": sum(s["punctuated_references"] for s in sets),
                            "kept": sum(s["punctuation_kept"] for s in sets)}}


def _rate(value: float | None) -> str:
    """A rate with 3 decimals; "n/a" where there was no reference text to score against (no-speech clips only)."""
    return "n/a" if value is None else f"{value:.3f}"


def _fraction(part: int, whole: int) -> str:
    return f"{part}/{whole} ({part / whole:.0%})" if whole else "–"


def markdown_table(rows: dict[str, dict[str, Any]], *, metric: str, general_metric: str, target_name: str,
                   general_name: str | None) -> str:
    """The report as a markdown table, one column per model."""
    names = list(rows)
    lines = ["| | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]

    def line(label: str, cells: list[str]) -> None:
        lines.append(f"| {label} | " + " | ".join(cells) + " |")

    line(f"target {metric.upper()} ({target_name})", [_rate(r["target"][metric]) for r in rows.values()])
    if general_name:
        line(f"general {general_metric.upper()} ({general_name})",
             [_rate(r["general"][general_metric]) for r in rows.values()])
    line("insertion rate (target" + (" / general)" if general_name else ")"),
         [_rate(r["target"]["insertion_rate"]) + (f" / {_rate(r['general']['insertion_rate'])}" if general_name
                                                  else "") for r in rows.values()])
    line("no-speech clips that got text", [_fraction(r["no_speech"]["with_text"], r["no_speech"]["clips"])
                                           for r in rows.values()])
    line("outputs with a repetition loop", [_fraction(r["repetition"]["with_repetition"],
                                                      r["repetition"]["outputs"]) for r in rows.values()])
    line("punctuation kept (where the reference has some)",
         [_fraction(r["punctuation"]["kept"], r["punctuation"]["references"]) for r in rows.values()])
    return "\n".join(lines) + "\n"
