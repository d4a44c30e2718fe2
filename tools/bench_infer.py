"""Benchmark long-form inference: infer.py's engine (each backend) vs faster-whisper, same recording, same threads.

    python tools/bench_infer.py --model_path=openai/whisper-base --threads=2
    python tools/bench_infer.py --recording=en_long --whole_process=True      # the two commands, start to end
    python tools/bench_infer.py --recording=zh_repeated --whole_process=True
    python tools/bench_infer.py --encoder_batches=1,2,4,16                     # encoder s per 30 s window
    python tools/bench_infer.py --encoder_batches=1 --encoder_frames=3000,1500 # and per 15 s window

Recordings (sox): ``joined`` = ≥ ``--min_seconds`` of the ``--test_data`` clips joined by 0.6 s of silence;
``en_long`` = the English general set joined into ≥ 102 s; ``en_real`` = the real English recordings of
dataset/real/ (JFK, LibriVox, LibriSpeech, a fast talker …) joined into ≥ 80 s; ``zh_repeated`` = one Mandarin
sentence (espeak-ng, pinyin voice) said 8 times with 1 s pauses — read-back and language lessons, where three
repetitions fill one 30 s window; ``zh_real8`` = the same with a real recording (dataset/real/: an AISHELL-1 test
sentence, 41.6 s; give the demo model, which reads it); ``zh_fast`` = the ``--test_data`` sentences spoken by
espeak-ng at speed 320 (about 8 characters per second of speech, as fast Mandarin gets) joined by 0.6 s of silence
into ≥ 50 s: 30 s windows whose text needs most of the token budget (give the demo model); ``zh_dense`` = the same
with 0.2 s pauses, as many as fit in 29 s (about 220 characters, 7.6 per second: one window whose text needs more
than its 224 tokens). Engine mode (default): every mode transcribes the recording in this process; time, real-time
factor and CER/WER against the reference; model loading and a warm-up call are not timed.
``--whole_process=True``: the user's commands, timed start to end as subprocesses (imports, model load, audio
decoding, VAD, decoding): ``infer.py --backend=ct2`` and a faster-whisper ``BatchedInferencePipeline`` int8 batch 8
script, on the same CTranslate2 folder, each run ``--repeats`` times, interleaved; the best and the median time, each
with its ratio. The CPU flags are printed. ``--snr_db=10`` adds white noise (seeded) at that signal-to-noise ratio to
the whole recording, pauses included (the VAD then hears speech nearly everywhere):

    python tools/bench_infer.py --recording=en_long --whole_process=True --snr_db=5

``--reverb=90`` puts the recording in a reverberant room first (sox ``reverb``, no dither: every run hears the same
audio), as a classroom where a teacher repeats a sentence:

    python tools/bench_infer.py --recording=en_real --whole_process=True --reverb=90 --snr_db=10
"""

from __future__ import annotations

import argparse
import atexit
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from utils.audio import SAMPLE_RATE, load_audio  # noqa: E402
from utils.data import load_manifest  # noqa: E402
from utils.device import cpu_flags, isa_env  # noqa: E402
from utils.text import count_errors  # noqa: E402
from utils.transcribe import DecodeOptions, load_transcriber  # noqa: E402

GAP_S = 0.6  # silence between clips, seconds
REPEATED_SENTENCE = "近几年，不但我用书给女儿压岁，也劝说亲朋不要给女儿压岁钱。"
FW_SCRIPT = """
import sys
from faster_whisper import BatchedInferencePipeline, WhisperModel
model = WhisperModel(sys.argv[1], device="cpu", compute_type="int8", cpu_threads=int(sys.argv[4]))
segments, _ = BatchedInferencePipeline(model).transcribe(sys.argv[2], language=sys.argv[3], batch_size=8)
print("".join(s.text for s in segments))
"""


def add_noise(wav: Path, snr_db: float, seed: int = 0) -> Path:
    """A copy of ``wav`` with white noise at ``snr_db`` below the speech's RMS (samples above -50 dBFS)."""
    import soundfile as sf

    audio, rate = sf.read(wav, dtype="float32")
    speech = audio[np.abs(audio) > 10 ** (-50 / 20)]
    rms = float(np.sqrt(np.mean(speech ** 2))) if len(speech) else 0.1
    noise = np.random.default_rng(seed).standard_normal(len(audio)).astype(np.float32) * rms / 10 ** (snr_db / 20)
    out = wav.with_name(f"{wav.stem}_snr{snr_db:g}.wav")
    sf.write(out, np.clip(audio + noise, -1.0, 1.0), rate)
    return out


def add_reverb(wav: Path, reverberance: float) -> Path:
    """A copy of ``wav`` in a reverberant room (sox ``reverb``: ``reverberance`` %, HF damping 50 %, room scale 100 %;
    a classroom or a hall), as long as the original (the tail after the last word is cut), without dither (sox's
    default dither would make each copy differ)."""
    out = wav.with_name(f"{wav.stem}_reverb{reverberance:g}.wav")
    samples = subprocess.run(["soxi", "-s", str(wav)], capture_output=True, text=True, check=True).stdout.strip()
    subprocess.run(["sox", "-D", str(wav), str(out), "reverb", f"{reverberance:g}", "50", "100", "remix", "-",
                    "trim", "0", f"{samples}s"], check=True)
    return out


def room_and_noise(wav: Path, reverb: float | None, snr_db: float | None) -> tuple[Path, str]:
    """``wav`` in a room (:func:`add_reverb`, when ``reverb`` is given), then with white noise (:func:`add_noise`,
    when ``snr_db`` is given: a microphone's own noise is not reverberant); returns (the wav, what was done to it,
    e.g. ", reverberance 90 %, white noise at 10 dB SNR")."""
    if reverb is not None:
        wav = add_reverb(wav, reverb)
    if snr_db is not None:
        wav = add_noise(wav, snr_db)
    return wav, ("" if reverb is None else f", reverberance {reverb:g} %") + (
        "" if snr_db is None else f", white noise at {snr_db:g} dB SNR")


def build_real_repeated(name: str, out_dir: Path) -> tuple[Path, str, float]:
    """A real recording said several times (``tools/bench_repeats.py``'s ``name``) as a 16-bit wav; returns (wav,
    reference, seconds)."""
    import soundfile as sf

    from tools.bench_repeats import build

    audio, reference, _, _ = build(name, out_dir, "")
    wav = out_dir / f"{name}.wav"
    sf.write(str(wav), audio, SAMPLE_RATE, subtype="PCM_16")
    return wav, reference, len(audio) / SAMPLE_RATE


def build_recording(manifest_path: str, min_seconds: float, out_dir: Path, sep: str = "") -> tuple[Path, str, float]:
    """Join test clips (and silences) with sox until ≥ ``min_seconds``; returns (wav, reference, seconds).

    No dither (``sox -D``): the same clips give the same file, so runs decode the same samples.
    """
    records = [r for r in load_manifest(manifest_path) if r.sentence.strip()]
    if not records:
        raise SystemExit(f"{manifest_path}: no clips with text")
    silence = out_dir / "silence.wav"
    subprocess.run(["sox", "-D", "-n", "-r", str(SAMPLE_RATE), "-c", "1", "-b", "16", str(silence),
                    "trim", "0", str(GAP_S)], check=True)
    inputs, refs, total = [], [], 0.0
    i = 0
    while total < min_seconds:
        r = records[i % len(records)]
        inputs += [r.audio_path, str(silence)]
        refs.append(r.sentence)
        total += r.duration + GAP_S
        i += 1
    out = out_dir / "joined.wav"
    subprocess.run(["sox", "-D", *inputs, "-r", str(SAMPLE_RATE), "-c", "1", "-b", "16", str(out)], check=True)
    return out, sep.join(refs), len(load_audio(out)) / SAMPLE_RATE


def build_repeated(sentence: str, times: int, out_dir: Path) -> tuple[Path, str, float]:
    """One Mandarin sentence spoken by espeak-ng (pinyin voice), said ``times`` times with 1 s pauses."""
    from tools.make_demo_data import Voice, synthesize_speech, to_pinyin

    import soundfile as sf

    one = synthesize_speech(to_pinyin(sentence), Voice(name="cmn-latn-pinyin", speed=165, pitch=50, amplitude=100),
                            out_dir)
    gap = np.zeros(SAMPLE_RATE, dtype=one.dtype)
    out = out_dir / "repeated_zh.wav"
    sf.write(out, np.concatenate([p for _ in range(times) for p in (one, gap)]), SAMPLE_RATE)
    return out, sentence * times, len(load_audio(out)) / SAMPLE_RATE


def build_fast(manifest_path: str, min_seconds: float, out_dir: Path, speed: int = 320, gap_s: float = GAP_S,
               max_seconds: float | None = None, name: str = "zh_fast") -> tuple[Path, str, float]:
    """The manifest's Mandarin sentences spoken fast by espeak-ng (pinyin voice, ``speed`` words a minute: about 8
    characters per second of speech at 320), ``gap_s`` of silence after each, until ≥ ``min_seconds`` or as many as
    fit in ``max_seconds``; returns (``name``.wav, reference, seconds)."""
    import soundfile as sf

    from tools.make_demo_data import Voice, synthesize_speech, to_pinyin

    voice = Voice(name="cmn-latn-pinyin", speed=speed, pitch=50, amplitude=100)
    parts, said, total = [], [], 0
    for record in (r for r in load_manifest(manifest_path) if r.sentence.strip()):
        speech = synthesize_speech(to_pinyin(record.sentence), voice, out_dir)
        if max_seconds is not None and total + len(speech) > max_seconds * SAMPLE_RATE:
            break
        parts += [speech, np.zeros(int(gap_s * SAMPLE_RATE), speech.dtype)]
        said.append(record.sentence)
        total += len(parts[-2]) + len(parts[-1])
        if total >= min_seconds * SAMPLE_RATE:
            break
    else:
        if max_seconds is None:
            raise SystemExit(f"{manifest_path}: its sentences said fast last under {min_seconds:g} s")
    if not said:
        raise SystemExit(f"{manifest_path}: no sentence said fast fits in {max_seconds:g} s")
    wav = out_dir / f"{name}.wav"
    sf.write(wav, np.concatenate(parts), SAMPLE_RATE)
    return wav, "".join(said), total / SAMPLE_RATE


def cpu_report() -> str:
    """This CPU's vector flags and the instruction-set overrides in force, for the printed report."""
    isa = isa_env()
    return " ".join(cpu_flags()) + (f"  (forced: {isa})" if isa else "")


def whole_process(ct2_dir: str, wav: Path, reference: str, seconds: float, language: str, threads: int,
                  repeats: int, metric: str, variants: list[list[str]]) -> None:
    """Time infer.py --backend=ct2 (once per list of extra flags in ``variants``) and the faster-whisper batched script
    as the user runs them, interleaved; each infer.py row gets its ratio to faster-whisper."""
    root = Path(__file__).resolve().parent.parent
    out_dir = wav.parent / "infer_out"
    fw_label = "faster-whisper BatchedInferencePipeline int8 b8"
    commands = {
        " ".join(["infer.py --backend=ct2", *flags]): [
            sys.executable, str(root / "infer.py"), "--backend=ct2", f"--model_path={ct2_dir}", f"--audio_path={wav}",
            f"--language={language}", f"--cpu_threads={threads}", "--output_format=txt", f"--output_dir={out_dir}",
            *flags]
        for flags in variants}
    commands[fw_label] = [sys.executable, "-c", FW_SCRIPT, ct2_dir, str(wav), language, str(threads)]
    times: dict[str, list[float]] = {label: [] for label in commands}
    texts = {label: "" for label in commands}
    # as a user's machine runs them: Python keeps compiled modules (a CI or sandbox may say not to write them, and
    # compiling ours at every start cost infer.py 0.06 s that faster-whisper's script, mostly site-packages, did not)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    for _ in range(repeats):  # interleaved, so a slow spell of a shared machine hits every command alike
        for label, cmd in commands.items():
            t0 = time.perf_counter()
            proc = subprocess.run(cmd, capture_output=True, text=True, cwd=root, env=env)
            elapsed = time.perf_counter() - t0
            if proc.returncode != 0:
                raise SystemExit(f"{label} failed:\n{proc.stderr[-2000:]}")
            times[label].append(elapsed)
            texts[label] = ((out_dir / f"{wav.stem}.txt").read_text(encoding="utf-8") if label != fw_label
                            else proc.stdout)
    # a shared machine's speed moves between rounds (±30 % within minutes on our 2-core VMs): the best run and the
    # median, each against faster-whisper's
    best = {label: min(runs) for label, runs in times.items()}
    median = {label: float(np.median(runs)) for label, runs in times.items()}
    print(f"{'whole process':<60} {'best s':>7} {'RTF':>6} {metric.upper():>7} {'vs fw':>6} {'median s':>8} "
          f"{'vs fw':>6}")
    for label in commands:
        rate = count_errors(reference, texts[label], metric, language=language).rate
        print(f"{label:<60} {best[label]:7.2f} {best[label] / seconds:6.3f} {rate:7.4f} "
              f"{best[label] / best[fw_label]:5.2f}x {median[label]:8.2f} {median[label] / median[fw_label]:5.2f}x",
              flush=True)


def encoder_batches(model_path: str, ct2_dir: str, sizes: list[int], threads: int, rounds: int = 3,
                    frames: int = 3000) -> None:
    """Seconds per window of the audio encoder (``frames`` log-mel frames: 3000 = 30 s, streaming's 15 s = 1500),
    per windows per call: PyTorch fp32 (30 s only: transformers' encoder takes nothing else), PyTorch bf16 (the ct2
    backend's ``--ct2_encoder=torch``), onnxruntime int8 (``--ct2_encoder=onnx``, auto with VNNI; int8 weights with
    VNNI, else uint8) and fp32 (``--ct2_encoder=onnx --compute_type=float32``) and CTranslate2 int8, interleaved
    ``rounds`` times (best kept)."""
    import ctranslate2
    import torch
    from transformers import WhisperForConditionalGeneration

    from utils.audio_encoder import load_ct2_encoder
    from utils.models import resolve_model
    from utils.onnx_encoder import load_onnx_encoder

    torch.set_num_threads(threads)
    encoder = WhisperForConditionalGeneration.from_pretrained(resolve_model(model_path)).eval().model.encoder
    ct2 = ctranslate2.models.Whisper(ct2_dir, device="cpu", compute_type="int8", intra_threads=threads)
    onnx = load_onnx_encoder(ct2_dir, threads=threads)
    onnx_int8 = load_onnx_encoder(ct2_dir, threads=threads, int8=True)
    rng = np.random.default_rng(0)
    bf16 = load_ct2_encoder(ct2_dir, dtype="bfloat16")  # the ct2 backend's --ct2_encoder=torch (auto with AMX)
    engines = {
        "torch fp32": lambda x: encoder(torch.from_numpy(x)),
        "torch bf16": lambda x: bf16(torch.from_numpy(x).to(torch.bfloat16)),
        "onnxruntime int8": onnx_int8,
        "onnxruntime fp32": onnx,
        "ct2 int8": lambda x: ct2.encode(ctranslate2.StorageView.from_array(x)),
    }
    if frames != 3000:
        del engines["torch fp32"]
    print(f"{frames} frames ({frames / 100:g} s) per window")
    print(f"{'windows per call':>16} " + " ".join(f"{name + ' s/window':>24}" for name in engines))
    for b in sizes:
        feats = rng.standard_normal((b, 80, frames)).astype(np.float32)
        best = {name: float("inf") for name in engines}
        with torch.inference_mode():
            for name, run in engines.items():
                run(feats)  # warm-up
            for _ in range(rounds):
                for name, run in engines.items():
                    t0 = time.perf_counter()
                    run(feats)
                    best[name] = min(best[name], (time.perf_counter() - t0) / b)
        print(f"{b:>16} " + " ".join(f"{best[name]:>24.3f}" for name in engines), flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model_path", default="openai/whisper-base",
                        help="transformers model (hub id/folder)")
    parser.add_argument("--ct2_model", default=None, help="CTranslate2 folder (default: the model's CT2 copy)")
    parser.add_argument("--test_data", default="dataset/demo/test.json", help="manifest whose clips are joined")
    parser.add_argument("--min_seconds", type=float, default=65.0, help="length of the joined recording")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="CPU threads for every engine")
    parser.add_argument("--batch_size", type=int, default=8, help="chunks per batch (batched modes)")
    parser.add_argument("--language", default="zh", help="forced language for every mode")
    parser.add_argument("--recording", default="joined",
                        choices=("joined", "en_long", "en_real", "zh_repeated", "zh_real8", "zh_fast", "zh_dense"),
                        help="what is transcribed (see above)")
    parser.add_argument("--snr_db", type=float, default=None,
                        help="add white noise (seeded) at this SNR (dB) to the recording, pauses included")
    parser.add_argument("--reverb", type=float, default=None,
                        help="put the recording in a reverberant room: sox reverb's reverberance (%%), e.g. 50 or 90")
    parser.add_argument("--whole_process", default="False", choices=("True", "False"),
                        help="time infer.py --backend=ct2 and faster-whisper as whole commands")
    parser.add_argument("--repeats", type=int, default=2,
                        help="--whole_process: runs per command (best and median shown)")
    parser.add_argument("--infer_args", action="append", default=None,
                        help="--whole_process: more infer.py flags, e.g. --beam_size=5; given several times, one "
                             "infer.py row each (all interleaved)")
    parser.add_argument("--encoder_batches", default=None,
                        help="comma-separated windows per encoder call: time only the encoder")
    parser.add_argument("--encoder_frames", default="3000",
                        help="--encoder_batches: comma-separated log-mel frames per window (3000 = 30 s; 1500 = "
                             "streaming's 15 s)")
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
    print(f"CPU flags: {cpu_report()}")
    if args.encoder_batches:
        for frames in (int(f) for f in args.encoder_frames.split(",")):
            encoder_batches(args.model_path, ct2_dir, [int(b) for b in args.encoder_batches.split(",")], args.threads,
                            frames=frames)
        return 0
    tmp = Path(tempfile.mkdtemp(prefix="bench_infer_"))
    atexit.register(shutil.rmtree, tmp, True)  # the recordings built for this run
    metric = "cer"
    if args.recording == "en_long":
        wav, reference, seconds = build_recording("dataset/general/general_en.json", 102.0, tmp, sep=" ")
        args.language, metric = "en", "wer"
    elif args.recording == "en_real":
        wav, reference, seconds = build_recording("dataset/real/real_en.json", 80.0, tmp, sep=" ")
        args.language, metric = "en", "wer"
    elif args.recording == "zh_repeated":
        wav, reference, seconds = build_repeated(REPEATED_SENTENCE, 8, tmp)
        args.language = "zh"
    elif args.recording == "zh_real8":
        wav, reference, seconds = build_real_repeated("zh_real8", tmp)
        args.language = "zh"
    elif args.recording == "zh_fast":
        wav, reference, seconds = build_fast(args.test_data, 50.0, tmp)
        args.language = "zh"
    elif args.recording == "zh_dense":
        wav, reference, seconds = build_fast(args.test_data, math.inf, tmp, gap_s=0.2, max_seconds=29.0,
                                             name="zh_dense")
        args.language = "zh"
    else:
        wav, reference, seconds = build_recording(args.test_data, args.min_seconds, tmp)
    wav, noise = room_and_noise(wav, args.reverb, args.snr_db)
    size = f"{len(reference.split())} reference words" if metric == "wer" else f"{len(reference)} reference characters"
    print(f"recording: {wav} ({seconds:.1f} s{noise}, {size}), threads={args.threads}")
    if args.whole_process == "True":
        whole_process(ct2_dir, wav, reference, seconds, args.language, args.threads, args.repeats, metric,
                      [flags.split() for flags in args.infer_args or [""]])
        return 0
    audio = load_audio(wav)
    warm = audio[: 5 * SAMPLE_RATE]

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
    print(f"{'mode':<66} {'time s':>7} {'RTF':>6} {metric.upper():>7}")
    unknown = [key for key in args.modes.split(",") if key not in modes]
    if unknown:
        print(f"--modes: unknown {', '.join(unknown)}; the modes: {', '.join(modes)}", file=sys.stderr)
        return 2
    for key in args.modes.split(","):
        label, make = modes[key]
        run = make()
        t0 = time.perf_counter()
        text = run()
        elapsed = time.perf_counter() - t0
        rate = count_errors(reference, text, metric, language=args.language).rate
        print(f"{label:<66} {elapsed:7.2f} {elapsed / seconds:6.3f} {rate:7.4f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
