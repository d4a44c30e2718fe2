"""Benchmark infer_server.py: requests/s and latency percentiles for short clips sent by concurrent clients.

    python tools/bench_server.py --model_path=openai/whisper-base --backend=ct2 --requests=40 --concurrency=4

Starts the real server on a free local port, sends ``--requests`` multipart uploads of one clip (default: a 5 s
English sentence spoken by espeak-ng, padded with silence to 5 s) from ``--concurrency`` threads, checks every
answer, and prints one JSON report (with the CPU's vector-extension flags).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from utils.cli import make_parser, optional_str  # noqa: E402
from utils.device import cpu_flags, isa_env  # noqa: E402
from utils.server import multipart_body  # noqa: E402

SENTENCE = "Please send the quarterly report to the finance team before Friday afternoon."


def build_parser() -> argparse.ArgumentParser:
    p = make_parser("Requests/s and p50/p95 latency of infer_server.py for short clips.")
    p.add_argument("--model_path", default="openai/whisper-base")
    p.add_argument("--backend", default="ct2", choices=["transformers", "ct2"])
    p.add_argument("--audio_path", type=optional_str, default=None, help="clip to send (default: 5 s espeak)")
    p.add_argument("--seconds", type=float, default=5.0, help="length of the generated clip")
    p.add_argument("--requests", type=int, default=40)
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--language", default="en")
    p.add_argument("--server_args", default="", help="extra flags for infer_server.py")
    return p


def make_clip(path: Path, seconds: float) -> Path:
    """SENTENCE by espeak-ng, 16 kHz mono, padded or cut to ``seconds``."""
    if shutil.which("espeak-ng") is None or shutil.which("sox") is None:
        raise SystemExit("espeak-ng and sox are needed to make the clip (or pass --audio_path)")
    raw = path.with_suffix(".raw.wav")
    subprocess.run(["espeak-ng", "-w", str(raw), SENTENCE], check=True)
    subprocess.run(["sox", "-R", str(raw), "-r", "16000", "-c", "1", "-b", "16", str(path), "pad", "0", str(seconds),
                    "trim", "0", str(seconds)], check=True)
    raw.unlink()
    return path


def post(url: str, data: bytes, language: str) -> tuple[int, float, str]:
    """(status, seconds, text) of one multipart upload."""
    body, content_type = multipart_body({"language": language}, ("clip.wav", data))
    request = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": content_type})
    t0 = time.perf_counter()
    try:
        with urllib.request.urlopen(request, timeout=600) as r:
            text = json.loads(r.read())["text"]
            return r.status, time.perf_counter() - t0, text
    except urllib.error.HTTPError as e:
        return e.code, time.perf_counter() - t0, e.read().decode("utf-8", "replace")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        clip = Path(args.audio_path) if args.audio_path else make_clip(Path(tmp) / "clip.wav", args.seconds)
        data = clip.read_bytes()
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        log = open(Path(tmp) / "server.log", "w+")
        server = subprocess.Popen([sys.executable, str(REPO_ROOT / "infer_server.py"), f"--port={port}",
                                   f"--model_path={args.model_path}", f"--backend={args.backend}",
                                   f"--max_queue={max(16, args.requests)}", *args.server_args.split()],
                                  cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT)
        try:
            base = f"http://127.0.0.1:{port}"
            t0 = time.perf_counter()
            while True:
                if server.poll() is not None:
                    log.seek(0)
                    raise SystemExit(f"server exited:\n{log.read()[-3000:]}")
                try:
                    urllib.request.urlopen(base + "/health", timeout=5).read()
                    break
                except OSError:
                    time.sleep(0.3)
            startup = time.perf_counter() - t0
            url = base + "/v1/audio/transcriptions"
            post(url, data, args.language)  # warm-up, not counted
            t0 = time.perf_counter()
            with ThreadPoolExecutor(args.concurrency) as pool:
                results = list(pool.map(lambda _: post(url, data, args.language), range(args.requests)))
            wall = time.perf_counter() - t0
        finally:
            server.terminate()
            server.wait(timeout=30)
            log.close()
    failed = [r for r in results if r[0] != 200]
    latencies = sorted(r[1] for r in results if r[0] == 200)
    report = {
        "model_path": args.model_path, "backend": args.backend, "clip_seconds": round(len(data) / 32000, 2),
        "requests": args.requests, "concurrency": args.concurrency, "failed": len(failed),
        "requests_per_second": round(len(latencies) / wall, 3), "audio_seconds_per_second":
            round(len(latencies) * len(data) / 32000 / wall, 2),
        "latency_p50_s": round(statistics.median(latencies), 3) if latencies else None,
        "latency_p95_s": round(latencies[min(len(latencies) - 1, int(0.95 * len(latencies)))], 3)
        if latencies else None,
        "server_startup_s": round(startup, 1), "text": results[0][2], "cpu_count": os.cpu_count(),
        "cpu_flags": cpu_flags(),
        "isa_env": isa_env(),
    }
    print(json.dumps(report, indent=2, ensure_ascii=False))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
