"""Benchmark aishell.py: time ``aishell.main`` on a synthetic archive with the real AISHELL-1 layout.

    python tools/bench_aishell.py --utterances 20000 --num_workers 2

The archive holds ``data_aishell/transcript/aishell_transcript_v0.8.txt`` and one nested
``data_aishell/wav/SXXXX.tar.gz`` per speaker (85% train, 10% dev, 5% test speakers, like the real
340/40/20) with tiny 16 kHz mono 16-bit wavs, so the time is the per-utterance cost (tar members,
files, wav headers, manifest lines), not decompression of 178 hours of audio. Prints one JSON line:
utterances/second (wall clock) for the first run (unpack + manifests) and for a re-run (everything
already unpacked), and the CPU seconds of the first run (this process + its worker processes), which
a busy machine disturbs less than the wall clock.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import resource
import shutil
import sys
import tarfile
import tempfile
import time
import wave
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aishell  # noqa: E402
from utils.audio import SAMPLE_RATE  # noqa: E402

WORDS = ["而", "对", "楼市", "成交", "抑制", "作用", "最", "大", "的", "限", "购", "广州", "房地产", "中介"]


def _wav(frames: int) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(SAMPLE_RATE)
        w.writeframes(os.urandom(2 * frames))
    return buf.getvalue()


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 1_500_000_000, 0o644
    tar.addfile(info, io.BytesIO(data))


def build_archive(path: Path, utterances: int, speakers: int) -> None:
    """Write a data_aishell.tgz with ``utterances`` tiny wavs (0.05–0.2 s) over ``speakers`` speakers."""
    wavs = [_wav(SAMPLE_RATE // 20 + 97 * i) for i in range(32)]  # 32 distinct lengths
    n_train, n_dev = round(speakers * 0.85), round(speakers * 0.10)
    lines = []
    with tarfile.open(path, "w:gz", compresslevel=1) as outer:
        for s in range(speakers):
            speaker = f"S{s + 2:04d}"
            split = "train" if s < n_train else "dev" if s < n_train + n_dev else "test"
            buf = io.BytesIO()
            with tarfile.open(fileobj=buf, mode="w:gz", compresslevel=1) as inner:
                for u in range(s, utterances, speakers):
                    utt = f"BAC009{speaker}W{u:05d}"
                    _add(inner, f"wav/{split}/{speaker}/{utt}.wav", wavs[u % len(wavs)])
                    lines.append(f"{utt} {' '.join(WORDS[(u + k) % len(WORDS)] for k in range(8))}")
            _add(outer, f"data_aishell/wav/{speaker}.tar.gz", buf.getvalue())
        _add(outer, aishell.TRANSCRIPT_MEMBER, ("\n".join(sorted(lines)) + "\n").encode("utf-8"))


def _cpu_seconds() -> float:
    """User + system CPU time of this process and its finished children (the unpacking workers)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--utterances", type=int, default=20_000, help="utterances in the synthetic archive")
    parser.add_argument("--speakers", type=int, default=400, help="speakers (one nested archive each)")
    parser.add_argument("--num_workers", type=int, default=min(4, os.cpu_count() or 1), help="aishell --num_workers")
    parser.add_argument("--workdir", type=str, default=None, help="scratch folder (default: a temporary one)")
    args = parser.parse_args(argv)

    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench_aishell_"))
    work.mkdir(parents=True, exist_ok=True)
    archive = work / "data_aishell.tgz"
    try:
        t0 = time.perf_counter()
        build_archive(archive, args.utterances, args.speakers)
        build_s = time.perf_counter() - t0
        os.environ.setdefault("LOG_LEVEL", "WARNING")
        flags = [f"--filepath={archive}", f"--target_dir={work / 'dataset/audio'}",
                 f"--annotation_text={work / 'dataset'}", f"--num_workers={args.num_workers}"]
        times, cpu = [], []
        for _ in range(2):  # first run unpacks; the second finds everything unpacked
            t0, c0 = time.perf_counter(), _cpu_seconds()
            if aishell.main(flags) != 0:
                return 1
            times.append(time.perf_counter() - t0)
            cpu.append(_cpu_seconds() - c0)
        written = sum(1 for split in aishell.SPLITS for _ in open(work / f"dataset/{split}.json", encoding="utf-8"))
        if written != args.utterances:
            logging.error("expected %d manifest lines, got %d", args.utterances, written)
            return 1
        print(json.dumps({
            "utterances": args.utterances, "speakers": args.speakers, "num_workers": args.num_workers,
            "cpus": os.cpu_count(), "archive_mb": round(archive.stat().st_size / 2**20, 1),
            "build_s": round(build_s, 2), "first_run_s": round(times[0], 2), "first_run_cpu_s": round(cpu[0], 2),
            "utterances_per_s": round(args.utterances / times[0]),
            "rerun_s": round(times[1], 2), "rerun_utterances_per_s": round(args.utterances / times[1]),
        }))
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
