"""Benchmark manifest loading at WenetSpeech scale: time and memory for a generated N-line manifest.

    python tools/bench_manifest.py --lines 1000000
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from utils.data import load_manifest  # noqa: E402

SENTENCE = "近几年，不但我用书给女儿压岁，也劝说亲朋不要给女儿压岁钱，而改送压岁书。"


def write_manifest(path: Path, lines: int) -> None:
    """Write ``lines`` realistic manifest lines (about 330 bytes each)."""
    with open(path, "w", encoding="utf-8") as f:
        for i in range(lines):
            duration = round(1.0 + (i % 2900) / 100, 2)
            rec = {
                "audio": {"path": f"/data/wenetspeech/audio/{i // 1000:05d}/{i:09d}.wav"},
                "sentence": SENTENCE,
                "language": "Chinese",
                "sentences": [{"start": 0, "end": duration, "text": SENTENCE}],
                "duration": duration,
            }
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lines", type=int, default=1_000_000, help="manifest lines to generate")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "big.json"
        t0 = time.perf_counter()
        write_manifest(path, args.lines)
        print(f"generated {args.lines} lines, {path.stat().st_size / 2**20:.0f} MiB in {time.perf_counter() - t0:.1f} s")
        rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        t0 = time.perf_counter()
        manifest = load_manifest(path, check_audio=False, max_duration=30.0, show_progress=False)
        elapsed = time.perf_counter() - t0
        rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        del manifest
        tracemalloc.start()  # second, traced load: Python-level peak allocation (slower, not timed)
        manifest = load_manifest(path, check_audio=False, max_duration=30.0, show_progress=False)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        kept = (manifest.offsets.nbytes + manifest.durations.nbytes + manifest.bases.nbytes
                + manifest.line_numbers.nbytes)
        t1 = time.perf_counter()
        n = min(len(manifest), 100_000)
        for i in range(0, len(manifest), max(1, len(manifest) // n)):
            manifest[i]
        access = (time.perf_counter() - t1) / n * 1e6
        print(f"load: {elapsed:.1f} s ({args.lines / elapsed:,.0f} lines/s), kept {len(manifest)} lines")
        print(f"memory: columns {kept / 2**20:.1f} MiB ({kept / len(manifest):.0f} B/line), "
              f"python peak during load {peak / 2**20:.1f} MiB, max RSS growth {(rss1 - rss0) / 1024:.0f} MiB")
        print(f"random access: {access:.1f} us per record")
    return 0


if __name__ == "__main__":
    sys.exit(main())
