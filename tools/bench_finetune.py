"""Benchmark finetune.py against a plain transformers Seq2SeqTrainer + peft LoRA recipe.

Same model, data, batch size, steps and learning rate; each recipe runs in its own process (so peak RSS
is its own), then both fine-tuned adapters are scored on the test set. By default each recipe places its
adapters the way its own default does: finetune.py's default command (``--lora_encoder_layers`` and
``--target_modules`` unset) against the usual recipe's LoRA on every encoder and decoder layer.

    python tools/bench_finetune.py --base_model=openai/whisper-base --train_data=dataset/demo/train.json \
        --test_data=dataset/demo/test.json --max_steps=30 --batch_size=8

Prints one JSON report: samples/s, peak memory and eval CER of each, and the speed ratio. Both adapters are
scored by the same code (fp32 base + adapter merged, decoded greedily by the toolkit's engine, as evaluation.py
does), so the CERs compare. finetune.py runs its default command: on CPU that packs several clips per 30 s
window (``--pack_audio=auto``) with batches that still count clips, so both recipes see the same number of clips per
step; samples/s counts clips. Other settings: ``--finetune_args``; one recipe at a time: ``--only``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from utils.cli import make_parser, optional_str  # noqa: E402
from utils.device import cpu_flags, isa_env  # noqa: E402
from utils.lora import DEFAULT_TARGET_MODULES  # noqa: E402

ALL_LAYERS = ",".join(DEFAULT_TARGET_MODULES)


def build_parser() -> argparse.ArgumentParser:
    p = make_parser("Training speed: finetune.py vs Seq2SeqTrainer + peft (same model/data/batch/steps).")
    p.add_argument("--base_model", default="openai/whisper-base")
    p.add_argument("--train_data", default="dataset/demo/train.json")
    p.add_argument("--test_data", default="dataset/demo/test.json")
    p.add_argument("--language", type=optional_str, default="Chinese")
    p.add_argument("--max_steps", type=int, default=30)
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--learning_rate", type=float, default=1e-3)
    p.add_argument("--warmup_steps", type=int, default=5)
    p.add_argument("--num_workers", type=int, default=1)
    p.add_argument("--target_modules", type=optional_str, default=None,
                   help="finetune.py's --target_modules (default: its own default)")
    p.add_argument("--lora_encoder_layers", type=optional_str, default=None,
                   help="finetune.py's --lora_encoder_layers (default: its own default)")
    p.add_argument("--baseline_target_modules", default=ALL_LAYERS,
                   help="the usual recipe's LoRA targets (default: every layer of both sides)")
    p.add_argument("--seed", type=int, default=42, help="seed of both recipes (data order, adapter init)")
    p.add_argument("--finetune_args", default="", help="extra flags for finetune.py (e.g. --precision=fp32)")
    p.add_argument("--only", choices=["ours", "baseline"], default=None, help="run one recipe only")
    p.add_argument("--baseline_worker", default=None, help=argparse.SUPPRESS)  # internal: JSON result path
    return p


def _run_measured(cmd: list[str]) -> tuple[int, str, float, float]:
    """Run ``cmd``; return (exit code, stderr, wall seconds, that process's own peak RSS in MiB).

    os.wait4 gives the rusage of this one child (RUSAGE_CHILDREN would be the max over all children so far).
    """
    with tempfile.TemporaryFile("w+") as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=err, text=True)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        err.seek(0)
        return proc.returncode, err.read(), wall, usage.ru_maxrss / 1024.0


def run_ours(args: argparse.Namespace, out_dir: Path) -> dict:
    cmd = [sys.executable, str(REPO_ROOT / "finetune.py"), f"--base_model={args.base_model}",
           f"--output_dir={out_dir}", f"--train_data={args.train_data}", f"--test_data={args.test_data}",
           f"--language={args.language}", f"--max_steps={args.max_steps}",
           f"--per_device_train_batch_size={args.batch_size}", f"--learning_rate={args.learning_rate}",
           f"--warmup_steps={args.warmup_steps}", f"--num_workers={args.num_workers}",
           *([f"--target_modules={args.target_modules}"] if args.target_modules else []),
           *([f"--lora_encoder_layers={args.lora_encoder_layers}"] if args.lora_encoder_layers else []),
           "--eval_steps=0", "--save_steps=0",
           f"--logging_steps={max(1, args.max_steps // 5)}", f"--seed={args.seed}", *args.finetune_args.split()]
    code, stderr, wall, peak_mb = _run_measured(cmd)
    if code != 0:
        raise RuntimeError(f"finetune.py failed:\n{stderr[-3000:]}")
    m = re.search(r"done: (\d+) steps in ([\d.]+) s \(([\d.]+) samples/s\)", stderr)
    final = out_dir / Path(args.base_model.rstrip("/")).name / "checkpoint-final"
    state = json.loads((final / "trainer_state.json").read_text())
    return {"train_seconds": float(m.group(2)), "samples_per_second": float(m.group(3)),
            "eval_cer": score_adapter(args, final),
            "own_eval_cer": [e["eval_cer"] for e in state["log_history"] if "eval_cer" in e][-1],
            "wall_seconds": wall, "peak_rss_mb": peak_mb}


def run_baseline(args: argparse.Namespace, out_dir: Path) -> dict:
    out_dir.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, str(Path(__file__).resolve()), *sys.argv[1:], f"--baseline_worker={out_dir / 'r.json'}"]
    code, stderr, wall, peak_mb = _run_measured(cmd)
    if code != 0:
        raise RuntimeError(f"baseline failed:\n{stderr[-3000:]}")
    result = json.loads((out_dir / "r.json").read_text())
    result.update(eval_cer=score_adapter(args, out_dir / "adapter"), wall_seconds=wall, peak_rss_mb=peak_mb)
    return result


def baseline_worker(args: argparse.Namespace, adapter_dir: Path) -> dict:
    """The usual recipe: HF feature extractor per item, tokenizer labels, Seq2SeqTrainer, fp32, peft LoRA."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import Seq2SeqTrainer, Seq2SeqTrainingArguments, WhisperForConditionalGeneration, \
        WhisperProcessor

    from utils.audio import SAMPLE_RATE, load_audio
    from utils.data import load_manifest
    from utils.lora import peft_target_modules
    from utils.models import resolve_model

    model_dir = resolve_model(args.base_model)
    processor = WhisperProcessor.from_pretrained(model_dir)
    processor.tokenizer.set_prefix_tokens(language=args.language, task="transcribe")
    model = WhisperForConditionalGeneration.from_pretrained(model_dir)
    model.config.forced_decoder_ids = None
    targets = tuple(args.baseline_target_modules.split(","))
    model = get_peft_model(model, LoraConfig(r=32, lora_alpha=64, lora_dropout=0.05,
                                             target_modules=peft_target_modules(targets)))
    train = load_manifest(args.train_data)

    class Data(torch.utils.data.Dataset):
        def __len__(self):
            return len(train)

        def __getitem__(self, i):
            r = train[i]
            audio = load_audio(r.audio_path, start_time=r.start_time, end_time=r.end_time)
            feats = processor.feature_extractor(audio, sampling_rate=SAMPLE_RATE).input_features[0]
            return {"input_features": feats, "labels": processor.tokenizer(r.sentence).input_ids}

    def collate(items):
        batch = processor.feature_extractor.pad([{"input_features": x["input_features"]} for x in items],
                                                return_tensors="pt")
        labels = processor.tokenizer.pad([{"input_ids": x["labels"]} for x in items], return_tensors="pt")
        ids = labels["input_ids"].masked_fill(labels.attention_mask.ne(1), -100)
        if (ids[:, 0] == model.config.decoder_start_token_id).all():
            ids = ids[:, 1:]
        batch["labels"] = ids
        return batch

    training_args = Seq2SeqTrainingArguments(
        output_dir=str(adapter_dir.parent / "trainer"), per_device_train_batch_size=args.batch_size,
        max_steps=args.max_steps,
        learning_rate=args.learning_rate, warmup_steps=args.warmup_steps, logging_steps=max(1, args.max_steps // 5),
        save_strategy="no", eval_strategy="no", report_to=[], remove_unused_columns=False, label_names=["labels"],
        dataloader_num_workers=args.num_workers, use_cpu=True, seed=args.seed)
    trainer = Seq2SeqTrainer(model=model, args=training_args, train_dataset=Data(), data_collator=collate)
    metrics = trainer.train().metrics
    model.save_pretrained(str(adapter_dir))
    return {"train_seconds": metrics["train_runtime"], "samples_per_second": metrics["train_samples_per_second"]}


def score_adapter(args: argparse.Namespace, adapter_dir: Path) -> float:
    """CER on the test set of the fp32 base + ``adapter_dir`` merged, decoded greedily by the toolkit's own engine
    (what evaluation.py --language=... reports, no-speech detection included): one scorer for both recipes."""
    import tempfile

    import torch
    from peft import PeftModel
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

    from utils.audio import load_audio
    from utils.data import load_manifest
    from utils.models import resolve_model
    from utils.text import error_rate
    from utils.transcribe import DecodeOptions, load_transcriber

    model_dir = resolve_model(args.base_model)
    base = WhisperForConditionalGeneration.from_pretrained(model_dir, dtype=torch.float32)
    merged = PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
    test = list(load_manifest(args.test_data))
    with tempfile.TemporaryDirectory(prefix="bench-merged-") as tmp:
        merged.save_pretrained(tmp)
        WhisperProcessor.from_pretrained(model_dir).save_pretrained(tmp)
        engine = load_transcriber(tmp, "transformers", device="cpu")
        audios = [load_audio(r.audio_path, start_time=r.start_time, end_time=r.end_time) for r in test]
        hyps = [t.text for t in engine.transcribe_batch(audios, DecodeOptions(language=args.language,
                                                                             temperatures=(0.0,), batch_size=8))]
    return error_rate([r.sentence for r in test], hyps, "cer")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.baseline_worker:
        result = baseline_worker(args, Path(args.baseline_worker).parent / "adapter")
        Path(args.baseline_worker).write_text(json.dumps(result), encoding="utf-8")
        return 0
    report = {"base_model": args.base_model, "max_steps": args.max_steps, "batch_size": args.batch_size,
              "finetune.py_flags": {"target_modules": args.target_modules or "default",
                                    "lora_encoder_layers": args.lora_encoder_layers or "default"},
              "baseline_target_modules": args.baseline_target_modules, "cpu_count": os.cpu_count(),
              "cpu_flags": cpu_flags(),
              "isa_env": isa_env()}
    with tempfile.TemporaryDirectory() as tmp:
        if args.only in (None, "ours"):
            report["finetune.py"] = run_ours(args, Path(tmp) / "ours")
        if args.only in (None, "baseline"):
            report["seq2seq_trainer"] = run_baseline(args, Path(tmp) / "baseline")
    if "finetune.py" in report and "seq2seq_trainer" in report:
        report["speedup"] = report["finetune.py"]["samples_per_second"] / report["seq2seq_trainer"]["samples_per_second"]
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
