"""The GPU check: one command that proves the CUDA paths and measures what fits a small GPU.

On your GPU machine, with a CUDA torch and the requirements installed (README, Install):

    make gpu-check        # = python tools/gpu_check.py --out gpu_check; the report is gpu_check/report.md

On a lent GPU machine without internet (the team's device tool ``run``; it has torch, transformers, peft and
accelerate):

    # here, once (PyPI is reachable here): wheels for the GPU image's Python (3.12) of the dependencies it
    # lacks, most needed first, as many as fit beside the tracked files in 63 MiB (the rest is listed)
    python tools/gpu_check.py --prepare
    # there, in one call with carry=[".gpu_carry"], timeout_s=600:
    python3 -m pip install -q --no-index --no-deps .gpu_carry/wheels/*.whl; \
        PYTHONUNBUFFERED=1 python3 tools/gpu_check.py --out $OUT/gpu

With 64 MiB to carry (the tracked files take ~16), bitsandbytes (41 MiB) goes and CTranslate2 + PyAV (75 MiB)
stay behind, so the ct2 half-precision test fails there and says so; whisper-tiny.en's weights (75 MiB) do not
fit either, so step 4 says they are missing unless that machine has them.

On a CPU (CI runs this, so the script cannot rot between GPU runs): the same steps on tiny sizes,

    python tools/gpu_check.py --dry_run --out /tmp/g

Steps: 1. the GPU, driver, torch/CUDA versions and which dependencies import; 2. the CUDA tests
(``pytest -m cuda``: fp16/bf16 training, 8-bit and 4-bit base weights, gradient checkpointing, merging, half
precision inference; ``--dry_run`` only collects them); 3. a memory table: LoRA training steps on 30 s inputs
for whisper-tiny/base/small/medium built from their configs with random weights (memory does not depend on
the weight values, so nothing is downloaded), batch 8 and 4, fp16 with and without 8-bit base weights and
gradient checkpointing: peak allocated and reserved GPU memory and samples/s; 4. a short real fine-tune of
whisper-tiny.en on demo clips with finetune.py (CER before and after); 5. ``report.md`` and ``report.json`` in
``--out``. A step that fails is recorded and the next one runs; the exit code is 1 if any failed.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

logger = logging.getLogger("gpu_check")

CARRY_DIR = REPO_ROOT / ".gpu_carry"
# a 4 GB card has ~3.7-3.8 GiB usable, and the CUDA context and cuBLAS workspace (0.3-0.6 GiB) lie outside the
# memory PyTorch reports as reserved
FITS_4GB_GIB = 3.0
CARRY_TOTAL_MB = 63.0  # the device tool carries at most 64 MiB: the tracked files plus .gpu_carry/
# What the GPU image (KINDS.md: Python 3.12 with torch, transformers, peft, accelerate, onnxruntime, tokenizers)
# lacks, most needed first; what does not fit is left out.
CARRY_PACKAGES = ("soundfile", "soxr", "zhconv", "rapidfuzz", "jiwer", "pypinyin", "bitsandbytes", "faster-whisper",
                  "ctranslate2", "av")
CARRY_PYTHON = "3.12"
DEPENDENCIES = ("torch", "transformers", "peft", "accelerate", "bitsandbytes", "ctranslate2", "faster_whisper",
                "soundfile", "soxr", "zhconv", "rapidfuzz", "jiwer", "onnxruntime", "deepspeed")

# Whisper architectures (transformers WhisperConfig fields); d_model, layers, heads, ffn
ARCHITECTURES = {
    "whisper-tiny": (384, 4, 6, 1536),
    "whisper-base": (512, 6, 8, 2048),
    "whisper-small": (768, 12, 12, 3072),
    "whisper-medium": (1024, 24, 16, 4096),
}
DRY_ARCHITECTURE = {"dry-tiny": (64, 2, 4, 128)}
LABEL_TOKENS = 120  # a 30 s Mandarin clip at ~4 characters/s plus prompt


# ---------------------------------------------------------------------------------------------------
# 1. environment
def environment() -> dict[str, Any]:
    """GPU, driver, versions, and which dependencies can be imported."""
    import torch

    from utils.device import cuda_has_bf16

    info: dict[str, Any] = {"python": platform.python_version(), "torch": torch.__version__,
                            "cuda_available": torch.cuda.is_available(), "torch_cuda": torch.version.cuda}
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2 ** 30, 1),
                    capability=f"{props.major}.{props.minor}", bf16=cuda_has_bf16(),
                    cudnn=torch.backends.cudnn.version())
    if shutil.which("nvidia-smi"):
        smi = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True)
        info["driver"] = smi.stdout.strip() or smi.stderr.strip()
    info["importable"] = {name: importlib.util.find_spec(name) is not None for name in DEPENDENCIES}
    return info


# ---------------------------------------------------------------------------------------------------
# 2. the CUDA tests
def cuda_tests(dry_run: bool, timeout_s: float) -> dict[str, Any]:
    """``pytest -m cuda`` (``--dry_run``: collect them only, which imports every test module they need)."""
    cmd = [sys.executable, "-m", "pytest", "-m", "cuda", "-q", "-p", "no:cacheprovider", "tests/test_cuda.py"]
    if dry_run:
        cmd.append("--collect-only")
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired as e:
        return {"ok": False, "summary": f"timed out after {timeout_s:.0f} s", "tail": str(e.stdout or "")[-3000:]}
    lines = [x for x in proc.stdout.splitlines() if x.strip()]
    # pytest exits 5 when it collected nothing: on a CPU the cuda tests are deselected, which is what --dry_run expects
    ok = proc.returncode == 0 or (dry_run and proc.returncode == 5)
    return {"ok": ok, "returncode": proc.returncode, "summary": lines[-1] if lines else "",
            "seconds": round(time.perf_counter() - t0, 1), "tail": (proc.stdout + proc.stderr)[-3000:]}


# ---------------------------------------------------------------------------------------------------
# 3. the memory table
def _random_whisper(name: str, dims: tuple[int, int, int, int], folder: Path) -> Path:
    """A randomly initialised Whisper of the given size, saved to ``folder / name``."""
    import torch
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    d_model, layers, heads, ffn = dims
    config = WhisperConfig(vocab_size=51865, num_mel_bins=80, d_model=d_model, encoder_layers=layers,
                           decoder_layers=layers, encoder_attention_heads=heads, decoder_attention_heads=heads,
                           encoder_ffn_dim=ffn, decoder_ffn_dim=ffn, max_source_positions=1500,
                           max_target_positions=448, decoder_start_token_id=50258, pad_token_id=50257)
    torch.manual_seed(0)
    out = folder / name
    WhisperForConditionalGeneration(config).save_pretrained(out)
    return out


def _train_steps(model_dir: Path, *, batch: int, eight_bit: bool, checkpointing: bool, device: str,
                 steps: int) -> dict[str, Any]:
    """LoRA training steps on random 30 s features; peak memory and samples/s (steps after the first)."""
    import torch
    import torch.nn.functional as F

    from finetune import load_model
    from utils.lora import LoraOptions, build_adapter

    cuda = device == "cuda"
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    model = load_model(str(model_dir), use_8bit=eight_bit, use_4bit=False, device_index=0 if cuda else None,
                       gradient_checkpointing=checkpointing, mixed_precision="fp16" if cuda else "no")
    if not eight_bit:  # an 8-bit model is already on its GPU (device_map) and cannot be moved
        model = model.to(device)
    model = build_adapter(model, LoraOptions(), base_model_name=model_dir.name)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    scaler = torch.amp.GradScaler("cuda") if cuda else None
    features = torch.randn(batch, 80, 3000, device=device)
    labels = torch.randint(0, 50000, (batch, LABEL_TOKENS), device=device)
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        with torch.autocast(device_type=device, dtype=torch.float16, enabled=cuda):
            logits = model(input_features=features, decoder_input_ids=labels, use_cache=False).logits
            loss = F.cross_entropy(logits.float().flatten(0, 1), labels.flatten())
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    result: dict[str, Any] = {"samples_per_s": round(batch * (len(times) - 1) / sum(times[1:]), 2)
                              if len(times) > 1 else None, "loss": round(float(loss), 3)}
    if cuda:
        result.update(peak_allocated_gib=round(torch.cuda.max_memory_allocated() / 2 ** 30, 2),
                      peak_reserved_gib=round(torch.cuda.max_memory_reserved() / 2 ** 30, 2))
    del model, optimizer
    return result


def memory_table(dry_run: bool, budget_s: float) -> list[dict[str, Any]]:
    """One row per (model, batch, 8-bit, gradient checkpointing), as many as ``budget_s`` allows."""
    import torch

    device = "cuda" if torch.cuda.is_available() and not dry_run else "cpu"
    architectures = DRY_ARCHITECTURE if dry_run else ARCHITECTURES
    batches = (2,) if dry_run else (8, 4)
    eight_bit_options = (False,) if device == "cpu" else (False, True)  # bitsandbytes 8-bit needs CUDA
    rows: list[dict[str, Any]] = []
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for name, dims in architectures.items():
            model_dir = _random_whisper(name, dims, Path(tmp))
            for batch in batches:
                for eight_bit in eight_bit_options:
                    for checkpointing in (False, True):
                        row: dict[str, Any] = {"model": name, "batch": batch, "8bit": eight_bit,
                                               "gradient_checkpointing": checkpointing, "device": device}
                        if time.perf_counter() - t_start > budget_s:
                            row["result"] = "not run: time budget spent"
                            rows.append(row)
                            continue
                        try:
                            row.update(_train_steps(model_dir, batch=batch, eight_bit=eight_bit,
                                                    checkpointing=checkpointing, device=device,
                                                    steps=2 if dry_run else 3))
                            row["result"] = "ok"
                        except torch.cuda.OutOfMemoryError:
                            row["result"] = "out of memory"
                        except (ImportError, RuntimeError, ValueError) as e:  # e.g. bitsandbytes missing
                            row["result"] = f"failed: {type(e).__name__}: {str(e)[:200]}"
                        logger.info("memory: %s", row)
                        rows.append(row)
                        if device == "cuda":
                            torch.cuda.empty_cache()
            shutil.rmtree(model_dir, ignore_errors=True)
    return rows


# ---------------------------------------------------------------------------------------------------
# 4. a short real fine-tune
def short_finetune(dry_run: bool, work: Path, timeout_s: float) -> dict[str, Any]:
    """finetune.py on whisper-tiny.en (its offline package) and demo clips; eval CER at step 0 and at the end, and the
    training loss of the first and the last step (the dry run's sign of learning: its 4 steps go twice over 4 clips,
    too few for the English-only model's CER on Mandarin to move; that CER fell only while the step-0 eval counted a
    decoder loop, which the eval now cuts as inference does)."""
    from utils.models import ModelResolutionError, resolve_model

    try:
        resolve_model("openai/whisper-tiny.en")
    except ModelResolutionError as e:
        return {"ok": False, "summary": f"whisper-tiny.en weights not available here: {str(e)[:300]}"}
    train_lines = (REPO_ROOT / "dataset" / "demo" / "train.json").read_text(encoding="utf-8").splitlines()
    test_lines = (REPO_ROOT / "dataset" / "demo" / "test.json").read_text(encoding="utf-8").splitlines()
    n_train, n_test, steps = (4, 2, 4) if dry_run else (48, 12, 30)
    work.mkdir(parents=True, exist_ok=True)
    for name, lines in (("train.json", train_lines[:n_train]), ("test.json", test_lines[:n_test])):
        rows = []
        for line in lines:  # paths relative to the demo manifest's folder, made absolute for the copy
            item = json.loads(line)
            item["audio"]["path"] = str((REPO_ROOT / "dataset" / "demo" / item["audio"]["path"]).resolve())
            rows.append(json.dumps(item, ensure_ascii=False))
        (work / name).write_text("\n".join(rows) + "\n", encoding="utf-8")
    cmd = [sys.executable, "finetune.py", "--base_model=openai/whisper-tiny.en", f"--output_dir={work / 'out'}",
           f"--train_data={work / 'train.json'}", f"--test_data={work / 'test.json'}", "--language=English",
           f"--max_steps={steps}", "--per_device_train_batch_size=8", "--warmup_steps=2", f"--eval_steps={steps}",
           "--save_steps=0", "--eval_at_start=True", "--num_workers=0", "--learning_rate=1e-3", "--logging_steps=1"]
    if dry_run:  # on a CPU: fp32, batches of 2, and unpacked clips like the GPU run (auto packs only on a CPU)
        cmd += ["--precision=fp32", "--pack_audio=False", "--per_device_train_batch_size=2"]
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return {"ok": False, "summary": f"timed out after {timeout_s:.0f} s"}
    result: dict[str, Any] = {"ok": proc.returncode == 0, "seconds": round(time.perf_counter() - t0, 1),
                              "command": " ".join(cmd[1:]), "tail": (proc.stdout + proc.stderr)[-2000:]}
    state_file = work / "out" / "whisper-tiny.en" / "checkpoint-final" / "trainer_state.json"
    if state_file.is_file():
        history = json.loads(state_file.read_text())["log_history"]
        evals = [e["eval_cer"] for e in history if "eval_cer" in e]
        losses = [e["loss"] for e in history if "loss" in e]
        if evals:
            result.update(cer_before=evals[0], cer_after=evals[-1])
        if losses:
            result.update(loss_first=losses[0], loss_last=losses[-1])
    result["summary"] = (f"CER {result.get('cer_before')} → {result.get('cer_after')}, training loss "
                         f"{result.get('loss_first')} → {result.get('loss_last')} in {steps} steps"
                         if result["ok"] else f"finetune.py exited {proc.returncode}")
    return result


# ---------------------------------------------------------------------------------------------------
# 5. the report
def write_report(out: Path, report: dict[str, Any]) -> None:
    """``report.json`` (everything) and ``report.md`` (the tables a README needs)."""
    from utils.io import write_json_atomic

    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "report.json", report)
    env = report["environment"]
    md = [f"# GPU check{' (dry run on CPU)' if report['dry_run'] else ''}", "",
          f"- GPU: {env.get('gpu', 'none')} ({env.get('gpu_memory_gib', '-')} GiB), driver {env.get('driver', '-')}, "
          f"torch {env['torch']} (CUDA {env.get('torch_cuda')}), bf16: {env.get('bf16', '-')}",
          "- importable: " + ", ".join(f"{k} {'yes' if v else 'NO'}" for k, v in env["importable"].items()), "",
          f"## CUDA tests\n\n{report['cuda_tests'].get('summary')}", "", "## Memory (LoRA training, 30 s inputs, fp16)", "",
          "| model | batch | 8-bit | grad. ckpt | peak allocated GiB | peak reserved GiB | samples/s | result |",
          "|---|---|---|---|---|---|---|---|"]
    for r in report["memory"]:
        md.append(f"| {r['model']} | {r['batch']} | {r['8bit']} | {r['gradient_checkpointing']} | "
                  f"{r.get('peak_allocated_gib', '-')} | {r.get('peak_reserved_gib', '-')} | "
                  f"{r.get('samples_per_s', '-')} | {r['result']} |")
    fits = sorted({f"{r['model']} (batch {r['batch']}, 8-bit {r['8bit']}, checkpointing {r['gradient_checkpointing']})"
                   for r in report["memory"]
                   if r.get("peak_reserved_gib") is not None and r["peak_reserved_gib"] < FITS_4GB_GIB})
    md += ["", f"Fits a 4 GB GPU (peak reserved < {FITS_4GB_GIB} GiB, leaving room for the CUDA context and cuBLAS): "
           + (", ".join(fits) if fits else "not measured" if report["dry_run"] else "none"), "",
           f"## Short fine-tune\n\n{report['finetune'].get('summary')}", "",
           f"Steps failed: {', '.join(report['failed']) or 'none'}; {report['seconds']:.0f} s in all."]
    (out / "report.md").write_text("\n".join(md) + "\n", encoding="utf-8")


# ---------------------------------------------------------------------------------------------------
def _tracked_mb() -> float:
    """Size of the files git tracks (they travel to the GPU machine with .gpu_carry/), MiB."""
    names = subprocess.run(["git", "ls-files", "-z"], cwd=REPO_ROOT, capture_output=True, text=True).stdout
    return sum((REPO_ROOT / n).stat().st_size for n in names.split("\0") if n and (REPO_ROOT / n).is_file()) / 2 ** 20


def prepare(python_version: str = CARRY_PYTHON) -> int:
    """Download wheels of the dependencies the GPU image lacks into .gpu_carry/ (git-ignored), as many as fit
    beside the tracked files in what the device tool carries, for CPython ``python_version`` on x86-64 Linux."""
    limit_mb = CARRY_TOTAL_MB - _tracked_mb()
    platform_flags = [f"--python-version={python_version}", "--implementation=cp",
                      f"--abi=cp{python_version.replace('.', '')}", "--abi=abi3", "--abi=none",
                      *(f"--platform={p}" for p in ("manylinux2014_x86_64", "manylinux_2_17_x86_64",
                                                    "manylinux_2_24_x86_64", "manylinux_2_28_x86_64", "any"))]
    wheels = CARRY_DIR / "wheels"
    shutil.rmtree(CARRY_DIR, ignore_errors=True)
    wheels.mkdir(parents=True)
    kept, left = [], []
    for package in CARRY_PACKAGES:
        with tempfile.TemporaryDirectory() as tmp:
            proc = subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                                   *platform_flags, "-d", tmp, package], capture_output=True, text=True)
            files = list(Path(tmp).iterdir())
            if proc.returncode != 0 or not files:
                left.append(f"{package} (pip download failed: {proc.stderr.strip()[-200:]})")
                continue
            size = sum(f.stat().st_size for f in files) / 2 ** 20
            used = sum(f.stat().st_size for f in wheels.iterdir()) / 2 ** 20
            if used + size > limit_mb:
                left.append(f"{package} ({size:.1f} MiB does not fit)")
                continue
            for f in files:
                shutil.move(str(f), wheels / f.name)
            kept.append(f"{package} ({size:.1f} MiB)")
    print(f"{CARRY_DIR} ({limit_mb:.1f} MiB beside the tracked files): {', '.join(kept)}")
    if left:
        print("left out: " + "; ".join(left))
    return 0


def main(argv: list[str] | None = None) -> int:
    from utils.cli import add_bool

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=str, default="gpu_check", help="folder for report.md and report.json")
    add_bool(parser, "dry_run", False, "the same steps on CPU with tiny sizes (CI)")
    add_bool(parser, "prepare", False, "download the wheels to carry to a GPU machine")
    parser.add_argument("--memory_budget_s", type=float, default=180.0, help="time for the memory table (s)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    if args.prepare:
        return prepare()
    import torch

    if not args.dry_run and not torch.cuda.is_available():
        parser.error("torch sees no CUDA GPU here; use --dry_run on a CPU")
    out = Path(args.out)
    t0 = time.perf_counter()
    report: dict[str, Any] = {"dry_run": args.dry_run, "failed": []}
    report["environment"] = environment()
    logger.info("environment: %s", report["environment"])
    report["cuda_tests"] = cuda_tests(args.dry_run, timeout_s=200)
    logger.info("CUDA tests: %s", report["cuda_tests"]["summary"])
    report["memory"] = memory_table(args.dry_run, args.memory_budget_s)
    with tempfile.TemporaryDirectory() as work:
        # the whole check fits one 10-minute device call: cuda tests ≤ 200 s, memory table ~180 s, fine-tune ≤ 150 s
        report["finetune"] = short_finetune(args.dry_run, Path(work), timeout_s=600 if args.dry_run else 150)
    logger.info("fine-tune: %s", report["finetune"]["summary"])
    if not report["cuda_tests"]["ok"]:
        report["failed"].append("cuda tests")
    if not any(r["result"] == "ok" for r in report["memory"]):
        report["failed"].append("memory table")
    if not report["finetune"]["ok"]:
        report["failed"].append("fine-tune")
    report["seconds"] = round(time.perf_counter() - t0, 1)
    write_report(out, report)
    print((out / "report.md").read_text(encoding="utf-8"))
    return 1 if report["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
