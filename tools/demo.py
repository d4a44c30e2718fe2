"""The one-command demo: fine-tune whisper-base on the bundled Mandarin corpus and compare CER.

    python tools/demo.py            (what `make demo` runs)

Steps, each one of the toolkit's own commands (printed as it runs, so you can repeat them by hand):
1. finetune.py   LoRA on dataset/train.json (whisper-base, resolved offline when the hub is unreachable)
2. merge_lora.py checkpoint-best → models/whisper-base-finetune
3. evaluation.py the base model and the fine-tuned model on dataset/test.json
4. a CER table.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent

# Recommended laptop-CPU settings, measured on a 2-core CPU (see README).
FINETUNE_ARGS = [
    "--base_model=openai/whisper-base",
    "--train_data=dataset/train.json",
    "--test_data=dataset/test.json",
    "--language=Chinese",
    # decoder-only LoRA: the frozen encoder's outputs are computed once and reused every epoch
    "--target_modules=decoder.q_proj,decoder.k_proj,decoder.v_proj,decoder.out_proj,decoder.fc1,decoder.fc2",
    "--per_device_train_batch_size=8",
    "--max_steps=132",  # 4 epochs of the 263 demo clips
    "--learning_rate=1e-3",
    "--warmup_steps=10",
    "--logging_steps=11",
    "--eval_steps=66",
    "--save_steps=33",
    "--generation_max_length=40",
]


def _run(cmd: list[str]) -> None:
    print(f"\n$ {shlex.join(cmd)}", flush=True)
    t0 = time.perf_counter()
    subprocess.run([sys.executable, *cmd], cwd=REPO_ROOT, check=True)
    print(f"  ({time.perf_counter() - t0:.0f} s)", flush=True)


def _evaluate(model: str, report: Path, backend: str) -> dict:
    _run(["evaluation.py", f"--model_path={model}", "--test_data=dataset/test.json", "--language=Chinese",
          "--metric=cer", f"--backend={backend}", f"--output={report}"])
    return json.loads(report.read_text(encoding="utf-8"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", default="output/", help="fine-tuning output folder")
    parser.add_argument("--models_dir", default="models/", help="merged model folder")
    parser.add_argument("--max_steps", type=int, default=None, help="override the number of training steps")
    parser.add_argument("--backend", default="transformers", choices=["transformers", "ct2"],
                        help="inference backend for evaluation")
    args = parser.parse_args(argv)

    t0 = time.perf_counter()
    finetune = [*FINETUNE_ARGS, f"--output_dir={args.output_dir}"]
    if args.max_steps is not None:
        finetune.append(f"--max_steps={args.max_steps}")
    _run(["finetune.py", *finetune])
    lora = Path(args.output_dir) / "whisper-base" / "checkpoint-best"
    _run(["merge_lora.py", f"--lora_model={lora}/", f"--output_dir={args.models_dir}", "--overwrite=True"])
    merged = Path(args.models_dir) / "whisper-base-finetune"
    reports = Path(args.output_dir) / "demo"
    base = _evaluate("openai/whisper-base", reports / "eval_base.json", args.backend)
    tuned = _evaluate(str(merged), reports / "eval_finetuned.json", args.backend)

    print("\n| model | test CER |\n|---|---|")
    print(f"| openai/whisper-base | {base['cer']:.3f} |")
    print(f"| {merged} | {tuned['cer']:.3f} |")
    print(f"\ndemo finished in {(time.perf_counter() - t0) / 60:.1f} min; reports in {reports}/")
    return 0 if tuned["cer"] < base["cer"] else 1


if __name__ == "__main__":
    sys.exit(main())
