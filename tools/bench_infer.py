"""Benchmark long-form inference: infer.py's engine (each backend) vs faster-whisper, same recording, same threads.

    python tools/bench_infer.py --model_path=openai/whisper-base --threads=2

Builds a ≥ 60 s Mandarin recording from the demo test clips with sox (clips joined by 0.6 s of silence), then
transcribes it with every mode and prints time, real-time factor (time / audio duration) and CER against
the joined reference sentences. Model loading and a warm-up call are not timed.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from utils.audio import SAMPLE_RATE, load_audio  # noqa: E402
from utils.data import load_manifest  # noqa: E402
from utils.text import count_errors  # noqa: E402
from utils.transcribe import DecodeOptions, load_transcriber  # noqa: E402

GAP_S = 0.6  # silence between clips, seconds


def build_recording(manifest_path: str, min_seconds: float, out_dir: Path) -> tuple[Path, str, float]:
    """Join test clips (and silences) with sox until ≥ ``min_seconds``; returns (wav, reference, seconds)."""
    records = [r for r in load_manifest(manifest_path) if r.sentence.strip()]
    if not records:
        raise SystemExit(f"{manifest_path}: no clips with text")
    silence = out_dir / "silence.wav"
    subprocess.run(["sox", "-n", "-r", str(SAMPLE_RATE), "-c", "1", "-b", "16", str(silence),
                    "trim", "0", str(GAP_S)], check=True)
    inputs, refs, total = [], [], 0.0
    i = 0
    while total < min_seconds:
        r = records[i % len(records)]
        inputs += [r.audio_path, str(silence)]
        refs.append(r.sentence)
        total += r.duration + GAP_S
        i += 1
    out = out_dir / "long_zh.wav"
    subprocess.run(["sox", *inputs, "-r", str(SAMPLE_RATE), "-c", "1", "-b", "16", str(out)], check=True)
    return out, "".join(refs), len(load_audio(out)) / SAMPLE_RATE


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model_path", default="openai/whisper-base",
                        help="transformers model (hub id/folder)")
    parser.add_argument("--ct2_model", default=None, help="CTranslate2 folder (default: the model's CT2 copy)")
    parser.add_argument("--test_data", default="dataset/test.json", help="manifest whose clips are joined")
    parser.add_argument("--min_seconds", type=float, default=65.0, help="length of the joined recording")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="CPU threads for every engine")
    parser.add_argument("--batch_size", type=int, default=8, help="chunks per batch (batched modes)")
    parser.add_argument("--language", default="zh", help="forced language for every mode")
    parser.add_argument("--modes", default="fw_batched_int8,ct2_int8,ct2_int8_nofb,ct2_int8_beam5,ct2_int8_ct2enc,"
                        "ct2_int8_ct2enc_nofb,tf_fp32,tf_bf16,tf_bf16_nofb,fw_seq_int8",
                        help="comma-separated subset of the modes")
    args = parser.parse_args(argv)

    import torch
    from faster_whisper import BatchedInferencePipeline, WhisperModel

    torch.set_num_threads(args.threads)
    ct2_dir = args.ct2_model
    if ct2_dir is None:
        from utils.models import ct2_model_dir

        ct2_dir = ct2_model_dir(args.model_path)
    tmp = Path(tempfile.mkdtemp(prefix="bench_infer_"))
    wav, reference, seconds = build_recording(args.test_data, args.min_seconds, tmp)
    audio = load_audio(wav)
    warm = audio[: 5 * SAMPLE_RATE]
    print(f"recording: {wav} ({seconds:.1f} s, {len(reference)} reference characters), threads={args.threads}")

    def engine_mode(backend: str, beam: int, fallback: bool = True, **load_kw):
        engine = load_transcriber(args.model_path if backend == "transformers" else ct2_dir, backend,
                                  device="cpu", cpu_threads=args.threads if backend == "ct2" else 0, **load_kw)
        opts = DecodeOptions(language=args.language, beam_size=beam, batch_size=args.batch_size)
        if not fallback:  # infer.py --fallback=False: one greedy/beam pass per chunk, no re-decoding
            opts = DecodeOptions(language=args.language, beam_size=beam, batch_size=args.batch_size,
                                 temperatures=(0.0,), compression_ratio_threshold=None, logprob_threshold=None,
                                 no_speech_threshold=None)
        engine.transcribe(warm, opts)
        return lambda: engine.transcribe(audio, opts).text

    def fw_mode(batched: bool):
        model = WhisperModel(ct2_dir, device="cpu", compute_type="int8", cpu_threads=args.threads)
        runner = BatchedInferencePipeline(model) if batched else model
        kw = dict(language=args.language, batch_size=args.batch_size) if batched else \
            dict(language=args.language, vad_filter=True)

        def run(a=audio):
            segments, _ = runner.transcribe(a, **kw)
            return "".join(s.text for s in segments)
        run(warm)
        return run

    modes = {
        "tf_fp32": ("infer.py --backend transformers (fp32, batched, greedy)",
                    lambda: engine_mode("transformers", 1)),
        "tf_bf16": ("infer.py --backend transformers --dtype bfloat16 (autocast)",
                    lambda: engine_mode("transformers", 1, dtype="bfloat16")),
        "ct2_int8": ("infer.py --backend ct2 (int8, batched, greedy)", lambda: engine_mode("ct2", 1)),
        "ct2_int8_nofb": ("infer.py --backend ct2 --fallback=False (int8, batched, greedy)",
                          lambda: engine_mode("ct2", 1, fallback=False)),
        "tf_bf16_nofb": ("infer.py --backend transformers --dtype bfloat16 --fallback=False",
                         lambda: engine_mode("transformers", 1, fallback=False, dtype="bfloat16")),
        "ct2_int8_beam5": ("infer.py --backend ct2 --beam_size 5 (int8, batched)", lambda: engine_mode("ct2", 5)),
        "ct2_int8_ct2enc": ("infer.py --backend ct2 --ct2_encoder ct2 (all in CTranslate2)",
                            lambda: engine_mode("ct2", 1, ct2_encoder="ct2")),
        "ct2_int8_ct2enc_nofb": ("infer.py --backend ct2 --ct2_encoder ct2 --fallback=False",
                                 lambda: engine_mode("ct2", 1, fallback=False, ct2_encoder="ct2")),
        "fw_batched_int8": ("faster-whisper BatchedInferencePipeline int8 (beam 5)", lambda: fw_mode(True)),
        "fw_seq_int8": ("faster-whisper WhisperModel.transcribe int8 sequential (beam 5)", lambda: fw_mode(False)),
    }
    print(f"{'mode':<66} {'time s':>7} {'RTF':>6} {'CER':>7}")
    for key in args.modes.split(","):
        label, make = modes[key]
        run = make()
        t0 = time.perf_counter()
        text = run()
        elapsed = time.perf_counter() - t0
        cer = count_errors(reference, text, "cer").rate
        print(f"{label:<66} {elapsed:7.2f} {elapsed / seconds:6.3f} {cer:7.4f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
