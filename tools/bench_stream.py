"""Benchmark streaming: realtime_transcribe.py on a file as fast as the CPU allows, per encoder window.

    python tools/bench_stream.py --recording=en --windows=auto,15
    python tools/bench_stream.py --recording=zh --model_path=models/whisper-base-finetune-ct2 --windows=auto,15

Recordings (sox/espeak-ng, see tools/bench_infer.py): ``en`` = the English general set joined into ≥ 50 s (0.6 s
pauses); ``zh`` = the demo test clips joined into ≥ 50 s; ``en_real`` = the real English recordings of dataset/real/
joined (≥ 50 s: JFK, LibriSpeech, LibriVox, CMU, a fast spontaneous talk); ``zh_repeated`` = one Mandarin sentence
said 6 times with 1 s pauses; ``zh_real`` = the two real AISHELL-1 recordings of dataset/real/, each said 3 times
with 1 s pauses (31 s, read-back; give the demo model's CT2 folder); ``zh_fast`` = the demo test sentences said by
espeak-ng at about 8 characters per second, 0.6 s pauses, ≥ 50 s (dense speech; the demo model's CT2 folder). For
each ``--encoder_window_seconds`` value the stream runs with ``--simulate_realtime=False`` (the clock advances by
the audio read plus the compute spent, as a live microphone would see it) and the table gives mean/p90 latency (word
end → commit), the real-time factor (compute / audio), the streamed text's error rate against the reference and
against the offline transcript, and the offline error rate. CPU flags printed.

``--chunk_seconds=0.8,1.0,1.2`` runs each window at several ``--chunk_seconds`` (realtime_transcribe.py's default:
1.0) and adds their mean: where the decodes fall depends on how long each took, so one run's error rate moves by a
word or two from one machine (or hour) to the next; the spread over nearby chunk lengths shows how much.

``--snr_db=10`` adds white noise (seeded) at that signal-to-noise ratio to the whole recording, pauses included: the
VAD then hears no pause, and the policy has to commit by agreement alone. ``--reverb=50`` puts the recording in a
reverberant room first (sox ``reverb``, no dither): a microphone across a room, whose pauses the reverberation
shortens.

``--alone=True`` instead decodes every clip of the recording's manifest on its own (what a stream that hears one
utterance at a time has at best), in a 30 s and a 15 s encoder window, with and without 0.4 s of silence before it
(``zh_real``: its two recordings, each once):

    python tools/bench_stream.py --recording=en --alone=True
    python tools/bench_stream.py --recording=zh_real --alone=True --model_path=models/whisper-base-finetune-ct2
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import io
import json
import shutil
import sys
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

import realtime_transcribe  # noqa: E402
from tools.bench_infer import (REPEATED_SENTENCE, build_fast, build_recording, build_repeated,  # noqa: E402
                               cpu_report, room_and_noise)
from utils.text import count_errors  # noqa: E402

# recordings joined from a manifest's clips: manifest, language, metric, separator of the clips' sentences
CLIP_SETS = {"en": ("dataset/general/general_en.json", "en", "wer", " "),
             "zh": ("dataset/demo/test.json", "zh", "cer", ""),
             "en_real": ("dataset/real/real_en.json", "en", "wer", " ")}
REAL_ZH = ("dataset/real/real_zh.json", "zh", "cer", "")  # the clips of ``zh_real``


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recording", default="en", choices=(*CLIP_SETS, "zh_repeated", "zh_real", "zh_fast"))
    parser.add_argument("--model_path", default="openai/whisper-base", help="CTranslate2 folder or packaged model")
    parser.add_argument("--windows", default="auto,15", help="comma-separated --encoder_window_seconds values (auto: "
                        "realtime_transcribe.py's default, 10 s on a CPU)")
    parser.add_argument("--chunk_seconds", default="default",
                        help="comma-separated --chunk_seconds values (default: realtime_transcribe.py's)")
    parser.add_argument("--stream_args", default="", help="more realtime_transcribe.py flags")
    parser.add_argument("--snr_db", type=float, default=None, help="add white noise at this SNR (dB) to the recording")
    parser.add_argument("--reverb", type=float, default=None,
                        help="put the recording in a reverberant room: sox reverb's reverberance (%%), e.g. 50")
    parser.add_argument("--alone", default="False", choices=("True", "False"),
                        help="decode each clip of the manifest alone instead of streaming (en, zh, en_real, zh_real)")
    args = parser.parse_args(argv)

    print(f"CPU flags: {cpu_report()}")
    if args.alone == "True":
        return clips_alone(args.recording, args.model_path)
    tmp = Path(tempfile.mkdtemp(prefix="bench_stream_"))
    atexit.register(shutil.rmtree, tmp, True)
    if args.recording in CLIP_SETS:
        manifest, language, metric, sep = CLIP_SETS[args.recording]
        wav, reference, seconds = build_recording(str(REPO_ROOT / manifest), 50.0, tmp, sep=sep)
    elif args.recording == "zh_real":
        wav, reference, seconds = build_real_repeated(tmp)
        language, metric = "zh", "cer"
    elif args.recording == "zh_fast":
        wav, reference, seconds = build_fast(str(REPO_ROOT / "dataset" / "demo" / "test.json"), 50.0, tmp)
        language, metric = "zh", "cer"
    else:
        wav, reference, seconds = build_repeated(REPEATED_SENTENCE, 6, tmp)
        language, metric = "zh", "cer"
    wav, noise = room_and_noise(wav, args.reverb, args.snr_db)
    print(f"recording: {wav} ({seconds:.1f} s{noise}), model {args.model_path}")
    m = metric.upper()
    print(f"{'window':>7} {'chunk s':>7} {'latency s':>9} {'p90 s':>6} {'RTF':>6} {'decodes':>7} {m + ' stream':>11} "
          f"{m + ' offline':>12} {'stream vs offline':>17} {m + ' final':>10} {'final lag s':>11}")
    chunks = args.chunk_seconds.split(",")
    for window in args.windows.split(","):
        rows = []
        for chunk in chunks:
            report_path = tmp / f"report_{window}_{chunk}.json"
            flags = [f"--model_path={args.model_path}", "--backend=ct2", f"--audio_path={wav}",
                     "--simulate_realtime=False", f"--language={language}", f"--encoder_window_seconds={window}",
                     f"--report_path={report_path}", *([] if chunk == "default" else [f"--chunk_seconds={chunk}"]),
                     *args.stream_args.split()]
            with contextlib.redirect_stdout(io.StringIO()):
                rc = realtime_transcribe.main(flags)
            if rc != 0:
                raise SystemExit(f"realtime_transcribe.py {' '.join(flags)} failed ({rc})")
            r = json.loads(report_path.read_text(encoding="utf-8"))
            row = (r["mean_latency_s"], r["p90_latency_s"], r["real_time_factor"], r["decodes"],
                   count_errors(reference, r["text"], metric, language=language).rate,
                   count_errors(reference, r["offline_text"], metric, language=language).rate,
                   count_errors(r["offline_text"], r["text"], metric, language=language).rate,
                   count_errors(reference, r.get("final_text", r["text"]), metric, language=language).rate,
                   r.get("mean_revision_lag_s") or 0.0)
            rows.append(row)
            print(_row(window, chunk, row), flush=True)
        if len(rows) > 1:
            print(_row(window, "mean", tuple(sum(col) / len(rows) for col in zip(*rows))), flush=True)
    return 0


def _row(window: str, chunk: str, row: tuple) -> str:
    """One table line: latency, p90, RTF, decodes, stream / offline / stream-vs-offline error rates, the final text's
    error rate (after the second pass) and its mean lag (word end → revision, s; 0 without a second pass)."""
    latency, p90, rtf, decodes, stream, offline, vs, final, lag = row
    return (f"{window:>7} {chunk:>7} {latency:9.2f} {p90:6.2f} {rtf:6.3f} {decodes:7.0f} {stream:11.4f} "
            f"{offline:12.4f} {vs:17.4f} {final:10.4f} {lag:11.2f}")


def build_real_repeated(out_dir: Path) -> tuple[Path, str, float]:
    """bench_repeats.py's ``zh_real``: two real AISHELL-1 recordings (dataset/real/), each said 3 times, 1 s pauses,
    as a wav; returns (wav, reference, seconds)."""
    import soundfile as sf

    from tools.bench_repeats import build
    from utils.audio import SAMPLE_RATE

    audio, reference, _, _ = build("zh_real", out_dir, "")
    wav = out_dir / "zh_real.wav"
    sf.write(wav, audio, SAMPLE_RATE)
    return wav, reference, len(audio) / SAMPLE_RATE


def clips_alone(recording: str, model_path: str) -> int:
    """Error rate of the recording's clips each decoded alone: encoder window 30 / 15 s, lead silence 0 / 0.4 s."""
    import numpy as np

    from utils.audio import SAMPLE_RATE, load_record_audio
    from utils.data import load_manifest
    from utils.transcribe import DecodeOptions, load_transcriber

    sets = {**CLIP_SETS, "zh_real": REAL_ZH}  # zh_real says each clip 3 times: its clips alone have the same rate
    if recording not in sets:
        raise SystemExit(f"--alone needs a recording of clips: {', '.join(sets)}")
    manifest, language, metric, sep = sets[recording]
    records = [r for r in load_manifest(str(REPO_ROOT / manifest)) if r.sentence.strip()]
    engine = load_transcriber(model_path, backend="ct2")
    reference = sep.join(r.sentence for r in records)
    print(f"{len(records)} clips of {manifest}, each decoded alone, model {model_path}")
    print(f"{'window':>7} {'lead s':>6} {'errors':>6} {metric.upper():>7}")
    for window in (None, 15.0):
        options = DecodeOptions(language=language, timestamps=True, temperatures=(0.0,), encoder_window_s=window)
        for lead in (0.0, 0.4):
            silence = np.zeros(int(lead * SAMPLE_RATE), dtype=np.float32)
            texts = [engine.transcribe(np.concatenate([silence, load_record_audio(r)]), options).text
                     for r in records]
            counts = count_errors(reference, sep.join(texts), metric, language=language)
            print(f"{str(window):>7} {lead:6.1f} {counts.errors:6d} {counts.rate:7.4f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
