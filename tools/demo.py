"""The one-command demo: fine-tune whisper-base on the bundled Mandarin corpus and compare CER.

    python tools/demo.py            (what `make demo` runs)

Steps, each one of the toolkit's own commands (printed as it runs, so you can repeat them by hand):
1. finetune.py   LoRA on dataset/demo/train.json (whisper-base, resolved offline when the hub is unreachable)
2. merge_lora.py checkpoint-best → models/whisper-base-finetune
3. evaluation.py --compare: the base and the fine-tuned model on dataset/demo/test.json, on real English recordings
   (dataset/real/real_en.json) and on no-speech clips: the forgetting report, printed as a table.
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
    "--train_data=dataset/demo/train.json",
    "--test_data=dataset/demo/test.json",
    "--language=Chinese",
    # LoRA on every encoder and decoder layer (the default): the espeak voice is new acoustics, which the lower
    # encoder layers must learn (adapters on the decoder or the top encoder layer only: test CER ~0.37, not ~0.1)
    # on CPU several clips share a 30 s window (--pack_audio=auto: the encoder costs the same for 3 s or 30 s of
    # speech; about 6.6 demo clips per window) and the default batch of 8 clips is 1-2 windows (memory ~4-5 GB)
    "--max_steps=40",  # 320 clips, about 1.2 epochs of the 263 demo clips
    "--learning_rate=1e-3",
    "--warmup_steps=5",
    "--logging_steps=4",
    "--eval_steps=0",  # evaluated once, at the end
    "--save_steps=0",
    "--generation_max_length=40",
]


def _run(cmd: list[str]) -> None:
    print(f"\n$ {shlex.join(cmd)}", flush=True)
    t0 = time.perf_counter()
    subprocess.run([sys.executable, *cmd], cwd=REPO_ROOT, check=True)
    print(f"  ({time.perf_counter() - t0:.0f} s)", flush=True)


def _compare(base: str, tuned: str, report: Path, backend: str) -> dict:
    _run(["evaluation.py", "--compare", base, tuned, "--test_data=dataset/demo/test.json", "--language=Chinese",
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
    report = _compare("openai/whisper-base", str(merged), reports / "compare.json", args.backend)
    base, tuned = (report["models"][name]["target"]["cer"] for name in ("openai/whisper-base", str(merged)))
    print(f"\ntest CER: openai/whisper-base {base:.3f} -> {merged} {tuned:.3f} (the table above: what else changed)")
    print(f"demo finished in {(time.perf_counter() - t0) / 60:.1f} min; reports in {reports}/")
    return 0 if tuned < base else 1


if __name__ == "__main__":
    sys.exit(main())
