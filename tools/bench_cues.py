"""How well subtitle cues (segments) sit on the speech they carry: real recordings joined with known pauses.

    python tools/bench_cues.py                                   (whisper-base, ct2, English, pauses 2-5 s)
    python tools/bench_cues.py --pauses=0.4,3,0.8,6,1.5,0.3,10,2,0.6,4,1
    python tools/bench_cues.py --word_timestamps=True --backend=transformers

The real recordings of ``dataset/real/`` (``--recordings``, a glob) are trimmed of their leading and trailing
silence and joined, ``--repeats`` times over, with the pauses of ``--pauses`` between them (taken in turn), plus a
quiet noise floor (-60 dBFS). The speech is where the 20 ms frames are within 45 dB of the loudest (gaps under
0.25 s filled): a measure independent of the VAD the engine uses. For every cue it reports the silence between the
cue's start and its first speech frame (lead) and between its last speech frame and its end (tail), the share of
speech frames inside some cue (speech covered; a cue that starts late loses some) and of silence frames inside one
(silence covered). A breath or a click loud enough counts as speech here, so speech covered is a little low for every
engine. infer.py's subtitles are these cues (``--output_format=srt``).
"""

from __future__ import annotations

import glob
import sys
import time
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from utils.cli import add_bool, make_parser  # noqa: E402

SAMPLE_RATE = 16000
FRAME_S = 0.02


def trimmed(path: str, threshold: float = 0.01) -> np.ndarray:
    """A recording at 16 kHz mono without the samples before the first / after the last one above ``threshold``
    of its peak."""
    from utils.audio import load_audio

    audio = load_audio(path)
    loud = np.flatnonzero(np.abs(audio) > threshold * np.abs(audio).max())
    return audio[loud[0]: loud[-1] + 1] if len(loud) else audio


def build(paths: list[str], pauses: list[float], repeats: int) -> np.ndarray:
    """The recordings joined ``repeats`` times, pause k after recording k (in turn, shifted by 3 each repeat), with a
    seeded noise floor at -60 dBFS; float32, shape (samples,)."""
    parts = []
    for rep in range(repeats):
        for k, path in enumerate(paths):
            parts += [trimmed(path), np.zeros(int(pauses[(k + 3 * rep) % len(pauses)] * SAMPLE_RATE), np.float32)]
    audio = np.concatenate(parts)
    return (audio + np.random.default_rng(0).normal(0, 10 ** (-60 / 20), len(audio))).astype(np.float32)


def speech_frames(audio: np.ndarray, floor_db: float = -45.0, fill_s: float = 0.25) -> np.ndarray:
    """Per 20 ms frame: speech (within ``floor_db`` of the loudest frame), gaps shorter than ``fill_s`` filled."""
    hop = int(FRAME_S * SAMPLE_RATE)
    rms = np.sqrt(np.mean(audio[: len(audio) // hop * hop].reshape(-1, hop) ** 2, axis=1)) + 1e-9
    speech = 20 * np.log10(rms / rms.max()) > floor_db
    changes = np.flatnonzero(np.diff(speech.astype(np.int8))) + 1
    bounds = [0, *changes.tolist(), len(speech)]
    for a, b in zip(bounds, bounds[1:]):
        if not speech[a] and a > 0 and b < len(speech) and (b - a) * FRAME_S < fill_s:
            speech[a:b] = True
    return speech


def cue_edges(speech: np.ndarray, start: float, end: float) -> tuple[float, float]:
    """(lead, tail): seconds of silence at a cue's start and end; a cue with no speech in it is all lead."""
    inside = speech[int(start / FRAME_S): int(end / FRAME_S)]
    if not inside.any():
        return end - start, 0.0
    first = int(np.argmax(inside))
    last = len(inside) - 1 - int(np.argmax(inside[::-1]))
    return first * FRAME_S, (len(inside) - 1 - last) * FRAME_S


def main(argv: list[str] | None = None) -> int:
    parser = make_parser(__doc__)
    parser.add_argument("--model_path", default="openai/whisper-base")
    parser.add_argument("--backend", default="ct2", choices=["ct2", "transformers"])
    parser.add_argument("--language", default="en")
    parser.add_argument("--recordings", default=str(REPO_ROOT / "dataset/real/en_*.flac"), help="a glob")
    parser.add_argument("--pauses", default="2.5,4,3,5,2,3.5", help="seconds between recordings, taken in turn")
    parser.add_argument("--repeats", type=int, default=2, help="times the recordings are joined over")
    add_bool(parser, "word_timestamps", False, "cues from the aligned words, as infer.py --word_timestamps=True")
    add_bool(parser, "list", False, "print every cue with its lead and tail")
    args = parser.parse_args(argv)
    paths = sorted(glob.glob(args.recordings))
    if not paths:
        parser.error(f"--recordings={args.recordings}: no file matches")
    try:
        pauses = [float(p) for p in args.pauses.split(",")]
    except ValueError:
        parser.error(f"--pauses={args.pauses}: give seconds separated by commas, e.g. 2.5,4,3")

    from utils.transcribe import DecodeOptions, load_transcriber

    audio = build(paths, pauses, args.repeats)
    speech = speech_frames(audio)
    engine = load_transcriber(args.model_path, args.backend)
    t0 = time.perf_counter()
    transcript = engine.transcribe(audio, DecodeOptions(language=args.language, timestamps=True,
                                                        word_timestamps=args.word_timestamps))
    seconds = time.perf_counter() - t0
    covered = np.zeros(len(speech), bool)
    edges = []
    for cue in transcript.segments:
        covered[int(cue.start / FRAME_S): int(cue.end / FRAME_S)] = True
        edges.append(cue_edges(speech, cue.start, cue.end))
        if args.list:
            print(f"{cue.start:8.2f} {cue.end:8.2f}  lead {edges[-1][0]:4.2f} tail {edges[-1][1]:4.2f}  {cue.text}")
    leads, tails = np.array([e[0] for e in edges]), np.array([e[1] for e in edges])
    print(f"{args.model_path} ({args.backend}{', word timestamps' if args.word_timestamps else ''}): "
          f"{len(audio) / SAMPLE_RATE:.1f} s, {len(paths)} recordings x {args.repeats}, pauses {args.pauses} s; "
          f"{len(edges)} cues in {seconds:.1f} s")
    if len(edges):
        print(f"lead silence: mean {leads.mean():.2f} s, max {leads.max():.2f} s, {(leads > 0.5).sum()} over 0.5 s; "
              f"tail silence: mean {tails.mean():.2f} s, max {tails.max():.2f} s, {(tails > 0.5).sum()} over 0.5 s")
    print(f"speech covered {covered[speech].mean():.3f}, silence covered {covered[~speech].mean():.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
