"""The CUDA paths (run by tools/gpu_check.py on a GPU machine; deselected where torch sees no GPU): fp16 and
bf16 autocast training, 8-bit and 4-bit base weights, gradient checkpointing, the fp16 loss scaler in
checkpoints, merging an 8-bit-trained adapter, and inference in half precision on both backends.

Everything runs on the tiny random Whisper (real tokenizer) and espeak speech, so nothing is downloaded."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

import finetune
from utils.device import cuda_has_bf16
from tests.test_finetune import _args, corpus  # noqa: F401  (corpus is a fixture used below)

pytestmark = pytest.mark.cuda


def _losses(run: Path) -> list[float]:
    state = json.loads((run / "checkpoint-final" / "trainer_state.json").read_text())
    return [e["loss"] for e in state["log_history"] if "loss" in e]


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_autocast_training_has_a_finite_falling_loss(precision, tiny_whisper_dir, corpus, tmp_path):  # noqa: F811
    if precision == "bf16" and not cuda_has_bf16():
        pytest.fail("this GPU has no bf16; finetune.py falls back to fp16 there (tested with fp16)")
    out = tmp_path / precision
    assert finetune.main(_args(tiny_whisper_dir, corpus, out, precision=precision, max_steps=12, eval_steps=0,
                               save_steps=6, learning_rate=3e-3, timestamps=False)) == 0
    losses = _losses(out / tiny_whisper_dir.name)
    assert all(math.isfinite(x) for x in losses) and losses[-1] < losses[0], losses
    if precision == "fp16":  # the loss scaler's state is kept for resuming
        assert (out / tiny_whisper_dir.name / "checkpoint-6" / "scaler.pt").is_file()


@pytest.mark.parametrize("quantization", ["use_8bit", "use_4bit"])
def test_quantized_base_weights_train_and_the_adapter_merges(quantization, tiny_whisper_dir, corpus, tmp_path):  # noqa: F811
    import merge_lora

    out = tmp_path / quantization
    assert finetune.main(_args(tiny_whisper_dir, corpus, out, max_steps=5, eval_steps=0, save_steps=0,
                               timestamps=False, **{quantization: True})) == 0
    losses = _losses(out / tiny_whisper_dir.name)
    assert losses and all(math.isfinite(x) for x in losses), losses
    merged = tmp_path / "merged"
    assert merge_lora.main([f"--lora_model={out / tiny_whisper_dir.name / 'checkpoint-final'}",
                            f"--output_dir={merged}"]) == 0
    from transformers import WhisperForConditionalGeneration

    folders = [p for p in merged.iterdir() if p.is_dir()]
    assert len(folders) == 1
    WhisperForConditionalGeneration.from_pretrained(folders[0])


def test_gradient_checkpointing_gives_the_same_loss(tiny_whisper_dir, corpus, tmp_path):  # noqa: F811
    first = {}
    for checkpointing in (False, True):
        out = tmp_path / str(checkpointing)
        assert finetune.main(_args(tiny_whisper_dir, corpus, out, precision="fp32", max_steps=2, eval_steps=0,
                                   save_steps=0, lora_dropout=0.0, timestamps=False,
                                   gradient_checkpointing=checkpointing)) == 0
        first[checkpointing] = _losses(out / tiny_whisper_dir.name)
    assert first[True] == pytest.approx(first[False], rel=1e-4)


def test_half_precision_inference_on_both_backends(tiny_whisper_dir, en_wav, tmp_path):
    import merge_lora
    from utils.transcribe import DecodeOptions, load_transcriber

    hf = load_transcriber(str(tiny_whisper_dir), "transformers", device="cuda", dtype="float16")
    assert hf.transcribe(str(en_wav), DecodeOptions(language="en", temperatures=(0.0,))).duration > 1.0
    ct2_dir = merge_lora.export_ct2(tiny_whisper_dir, "float16", overwrite=True)
    ct2 = load_transcriber(str(ct2_dir), "ct2", device="cuda", compute_type="float16")
    assert ct2.transcribe(str(en_wav), DecodeOptions(language="en", temperatures=(0.0,))).duration > 1.0
