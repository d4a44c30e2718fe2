"""Benchmark evaluation.py: decoding time and real-time factor of the default command, per clip length.

    python tools/bench_eval.py --model_path=models/whisper-base-finetune
    python tools/bench_eval.py --model_path=models/whisper-base-finetune --eval_args="--backend=ct2" \
        --model_path=models/whisper-base-finetune-ct2

In Whisper's 30 s encoder window every clip costs the same whatever its length, so the real-time factor falls as
clips get longer; evaluation.py's default on a CPU encodes each batch in at least 15 s, its longest clip + 5 s
(``--encoder_window_seconds=auto``). The demo test set's clips average 2.6 s; AISHELL-1's test set averages 5.0 s
(7176 utterances, 10 h). Runs of ``evaluation.py`` (in this process, after one warm-up run on 4 clips), for each
``--windows`` value (``--encoder_window_seconds``; the values alternate within each set): ``test`` = ``--test_data``
as it is; ``pairs`` = the same clips joined two by two with 0.6 s of silence between them (sox, no dither; a
reference is the two sentences joined), about AISHELL-1's length. Printed per run: clips, mean clip seconds, audio
seconds, decoding seconds (the report's ``decode_seconds``: reading audio, features, encoder, decoder), real-time
factor and the error rate; with the CPU flags.

    python tools/bench_eval.py --windows=auto,None
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import io
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

import evaluation  # noqa: E402
from tools.bench_infer import GAP_S, cpu_report  # noqa: E402
from utils.audio import SAMPLE_RATE  # noqa: E402
from utils.data import load_manifest  # noqa: E402
from utils.text import METRICS  # noqa: E402


def paired_manifest(manifest: str, out_dir: Path) -> Path:
    """The manifest's clips with text joined two by two (0.6 s of silence between); an odd last clip stays alone."""
    records = [r for r in load_manifest(manifest) if r.sentence.strip()]
    silence = out_dir / "silence.wav"
    subprocess.run(["sox", "-D", "-n", "-r", str(SAMPLE_RATE), "-c", "1", "-b", "16", str(silence), "trim", "0",
                    str(GAP_S)], check=True)
    lines = []
    for k in range(0, len(records), 2):
        pair = records[k: k + 2]
        wav = out_dir / f"pair_{k // 2:04d}.wav"
        parts = [str(pair[0].audio_path)] + [p for r in pair[1:] for p in (str(silence), str(r.audio_path))]
        subprocess.run(["sox", "-D", *parts, "-r", str(SAMPLE_RATE), "-c", "1", "-b", "16", str(wav)], check=True)
        seconds = float(subprocess.run(["soxi", "-D", str(wav)], check=True, capture_output=True,
                                       text=True).stdout)
        lines.append(json.dumps({"audio": {"path": str(wav)}, "sentence": "".join(r.sentence for r in pair),
                                 "language": pair[0].language, "duration": round(seconds, 2)}, ensure_ascii=False))
    out = out_dir / "pairs.json"
    out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return out


def run(model_path: str, test_data: str, metric: str, extra: list[str], out: Path, limit: int | None = None) -> dict:
    flags = [f"--model_path={model_path}", f"--metric={metric}", f"--test_data={test_data}", f"--output={out}", *extra]
    if limit:
        flags.append(f"--limit={limit}")
    with contextlib.redirect_stdout(io.StringIO()):
        rc = evaluation.main(flags)
    if rc != 0:
        raise SystemExit(f"evaluation.py {' '.join(flags)} failed ({rc})")
    return json.loads(out.read_text(encoding="utf-8"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model_path", default="models/whisper-base-finetune")
    parser.add_argument("--test_data", default="dataset/demo/test.json")
    parser.add_argument("--metric", default="cer", choices=METRICS)
    parser.add_argument("--eval_args", default="", help="more evaluation.py flags, e.g. --backend=ct2")
    parser.add_argument("--windows", default="auto,None", help="comma-separated --encoder_window_seconds values")
    args = parser.parse_args(argv)

    print(f"CPU flags: {cpu_report()}")
    work = Path(tempfile.mkdtemp(prefix="bench_eval_"))
    atexit.register(shutil.rmtree, work, True)
    extra = args.eval_args.split()
    sets = {"test": args.test_data, "pairs": str(paired_manifest(args.test_data, work))}
    run(args.model_path, args.test_data, args.metric, extra, work / "warmup.json", limit=4)
    print(f"model {args.model_path} {' '.join(extra)}")
    print(f"{'set':<6} {'window':>6} {'clips':>5} {'mean s':>6} {'audio s':>7} {'decode s':>8} {'RTF':>6} "
          f"{args.metric.upper():>7}")
    for name, data in sets.items():
        for window in args.windows.split(","):
            r = run(args.model_path, data, args.metric, [*extra, f"--encoder_window_seconds={window}"],
                    work / f"{name}_{window}.json")
            n = r["utterances_scored"]
            print(f"{name:<6} {window:>6} {n:5d} {r['audio_seconds'] / n:6.2f} {r['audio_seconds']:7.1f} "
                  f"{r['decode_seconds']:8.1f} {r['decode_seconds'] / r['audio_seconds']:6.3f} {r[args.metric]:7.4f}",
                  flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
