"""finetune.py end to end on a tiny Whisper: checkpoints, CER-based best, AdaLoRA, resume after SIGKILL, DDP."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

import finetune
from tests.conftest import REPO_ROOT, make_speech

ZH_TEXTS = ["今天天气很好", "我们一起去公园", "你吃饭了吗", "明天见"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict[str, Path]:
    """A 6-item train manifest (Mandarin speech, one no-speech clip, one item with timestamps) and a 3-item test."""
    d = tmp_path_factory.mktemp("corpus")
    lines = []
    for i, text in enumerate(ZH_TEXTS):
        wav = make_speech(text, d / f"zh{i}.wav", voice="cmn-latn-pinyin")
        dur = sf.info(wav).duration
        line = {"audio": {"path": wav.name}, "sentence": text, "language": "Chinese", "duration": dur}
        if i == 0:
            line["sentences"] = [{"start": 0.0, "end": round(dur, 2), "text": text}]
        lines.append(line)
    noise = (np.random.default_rng(0).standard_normal(16000 * 2) * 0.01).astype(np.float32)
    sf.write(d / "silence.wav", noise, 16000)
    lines.append({"audio": {"path": "silence.wav"}, "sentence": "", "duration": 2.0})
    lines.append({"audio": {"path": "zh1.wav", "start_time": 0.0, "end_time": 1.0}, "sentence": "我们",
                  "language": "Chinese", "duration": 1.0})
    train = d / "train.json"
    train.write_text("".join(json.dumps(x, ensure_ascii=False) + "\n" for x in lines), encoding="utf-8")
    test = d / "test.json"
    test.write_text("".join(json.dumps(x, ensure_ascii=False) + "\n" for x in lines[:3]), encoding="utf-8")
    return {"train": train, "test": test}


def _args(model_dir: Path, corpus: dict[str, Path], out: Path, **extra) -> list[str]:
    args = {"base_model": str(model_dir), "output_dir": str(out), "train_data": str(corpus["train"]),
            "test_data": str(corpus["test"]), "language": "Chinese", "per_device_train_batch_size": 2,
            "per_device_eval_batch_size": 3, "max_steps": 4, "warmup_steps": 1, "logging_steps": 1,
            "eval_steps": 2, "save_steps": 2, "generation_max_length": 4, "num_workers": 0,
            "learning_rate": 1e-3, "timestamps": True, "pack_audio": False}  # the clip path; packing: own tests
    args.update(extra)
    return [f"--{k}={v}" for k, v in args.items()]


def test_strict_booleans():
    parser = finetune.build_parser()
    assert parser.parse_args(["--use_8bit=False"]).use_8bit is False
    assert parser.parse_args(["--use_8bit"]).use_8bit is True
    assert parser.parse_args(["--timestamps=yes"]).timestamps is True
    with pytest.raises(SystemExit):
        parser.parse_args(["--use_8bit=maybe"])
    assert parser.parse_args(["--language=None"]).language is None


def test_a_language_the_model_has_no_token_for_is_refused_before_training(tiny_whisper_dir, corpus, tmp_path,
                                                                          caplog):
    """Cantonese (yue: a token of large-v3 only) on a whisper-base tokenizer: the manifest was accepted and training
    died at its first step with a DataLoader worker's traceback ("the tokenizer has no language token for 'yue'");
    now one message naming the line (or the flag) and the fix, before the model trains, and nothing written."""
    lines = corpus["train"].read_text(encoding="utf-8").splitlines()
    record = json.loads(lines[2])
    record["language"] = "Cantonese"
    train = corpus["train"].parent / "cantonese.json"
    train.write_text("\n".join([*lines[:2], json.dumps(record, ensure_ascii=False), *lines[3:]]) + "\n",
                     encoding="utf-8")
    out = tmp_path / "out"
    for flags in ({"train_data": str(train)}, {"language": "Cantonese"}):
        caplog.clear()
        with caplog.at_level("ERROR"):
            assert finetune.main(_args(tiny_whisper_dir, corpus, out, **flags)) == 1
        errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
        assert len(errors) == 1 and "has no <|yue|> token" in errors[0], errors
        assert (f"{train}:3: 'language'" if "train_data" in flags else "--language") in errors[0]
        assert "Traceback" not in caplog.text and not (out / tiny_whisper_dir.name).exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU error path; CUDA machines quantize instead")
def test_use_8bit_on_cpu_is_a_clear_error(capsys):
    with pytest.raises(SystemExit) as exc:
        finetune.main(["--use_8bit=True", "--base_model=openai/whisper-base"])
    assert exc.value.code == 2
    assert "--use_8bit/--use_4bit need a CUDA GPU" in capsys.readouterr().err


def test_fp16_on_cpu_falls_back_with_message(caplog, monkeypatch):
    import utils.device

    P = utils.device.Precision
    for amx, cpu_auto in ((True, P("no", "bfloat16")), (False, P("no", "float32"))):
        monkeypatch.setattr(utils.device, "cpu_has_amx", lambda amx=amx: amx)
        caplog.clear()
        with caplog.at_level("WARNING"):
            assert utils.device.choose_precision("auto", True, "cpu") == cpu_auto
        assert "fp16 mixed precision needs a CUDA GPU" in caplog.text
        assert utils.device.choose_precision("auto", False, "cpu") == cpu_auto
        assert utils.device.choose_precision("fp32", False, "cpu") == P("no", "float32")
        assert utils.device.choose_precision("bf16", False, "cpu") == P("no", "bfloat16")  # bf16 weights, no autocast
    assert P("no", "bfloat16").describe() == "bf16 base weights, fp32 adapters"


def test_gpus_without_native_bf16_take_fp16_flash_attention_and_ct2_float16_only_where_they_run(monkeypatch):
    """PyTorch's is_bf16_supported() says yes for emulated bf16: --precision=auto chose bf16 on a T4 (compute
    capability 7.5), slow there. flash-attention 2 was chosen on any GPU and with fp32 weights (it rejects both), and
    the ct2 backend's auto compute type was float16 on a Pascal GPU, which has none. Emulated GPUs, on a CPU."""
    from types import SimpleNamespace

    import ctranslate2
    import importlib.util

    import utils.device
    from utils.transcribe import _attention_implementation, ct2_cuda_compute_type

    P = utils.device.Precision
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a, real=importlib.util.find_spec: (
        object() if name == "flash_attn" else real(name, *a)))
    for major, precision, attention in ((7, P("fp16", "float32"), "sdpa"), (8, P("bf16", "float32"),
                                                                              "flash_attention_2")):
        monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i, major=major: SimpleNamespace(major=major))
        assert utils.device.choose_precision("auto", False, "cuda") == precision
        assert _attention_implementation("auto", "cuda", torch.float16) == attention
        assert _attention_implementation("auto", "cuda", torch.float32) == "sdpa"  # fp32 weights: never FA2
    for supported, chosen in (({"float32", "int8", "int8_float16", "float16"}, "float16"),
                              ({"float32", "int8", "int8_float32"}, "int8")):  # Pascal: no efficient float16
        monkeypatch.setattr(ctranslate2, "get_supported_compute_types", lambda dev, i=0, s=supported: s)
        assert ct2_cuda_compute_type(0) == chosen


def test_each_launched_process_chooses_precision_by_its_own_gpu(monkeypatch):
    """finetune.py chooses the precision before accelerate sets the process's GPU: every torchrun process read GPU
    0's compute capability (current_device()), so on a box with a Turing card first and an Ampere card second the
    second process chose fp16. Emulated GPUs, on a CPU."""
    from types import SimpleNamespace

    import utils.device

    majors = {0: 7, 1: 8}
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: SimpleNamespace(major=majors[i]))
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    assert utils.device.choose_precision("auto", False, "cuda").mixed_precision == "fp16"
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert utils.device.choose_precision("auto", False, "cuda").mixed_precision == "bf16"
    assert utils.device.cuda_has_bf16(0) is False  # an explicit device wins


def test_4bit_compute_dtype_follows_the_runs_precision():
    """fp16 GPUs (T4, V100, GTX 10xx/16xx) have no bf16: 4-bit layers compute in the run's autocast dtype."""
    assert finetune.quantization_config(False, True, "fp16").bnb_4bit_compute_dtype == torch.float16
    assert finetune.quantization_config(False, True, "bf16").bnb_4bit_compute_dtype == torch.bfloat16
    assert finetune.quantization_config(True, False, "fp16").load_in_8bit
    assert finetune.quantization_config(False, False, "fp16") is None


def test_avx2_profile_takes_the_non_amx_choices_on_any_cpu(monkeypatch):
    """WHISPER_FT_CPU=avx2 (how an AMX machine measures and tests what most laptops run): fp32 training,
    CTranslate2's own encoder, no native bf16; an unknown value is an error, not ignored."""
    import utils.device
    from utils.device import cpu_has_amx, cpu_supports_bf16
    from utils.transcribe import uses_torch_encoder

    monkeypatch.setenv("WHISPER_FT_CPU", "avx2")
    assert cpu_has_amx() is False and cpu_supports_bf16() is False
    assert utils.device.choose_precision("auto", False, "cpu") == utils.device.Precision("no", "float32")
    assert uses_torch_encoder("auto", "cpu") is False
    monkeypatch.setenv("WHISPER_FT_CPU", "avx512")
    with pytest.raises(ValueError, match="WHISPER_FT_CPU"):
        cpu_has_amx()


def test_bf16_base_weights_train_fp32_adapters_with_an_fp32_loss(tiny_whisper_dir, corpus, tmp_path, caplog):
    """--precision=bf16 on a CPU: base weights bf16, LoRA weights fp32, loss finite and logged, adapter saved fp32."""
    from safetensors.torch import load_file

    out = tmp_path / "bf16"
    with caplog.at_level("INFO"):
        assert finetune.main(_args(tiny_whisper_dir, corpus, out, base_model=tiny_whisper_dir,
                                   precision="bf16", max_steps=4, save_steps=0, eval_steps=0)) == 0
    assert "precision: bf16 base weights, fp32 adapters" in caplog.text
    weights = load_file(str(out / tiny_whisper_dir.name / "checkpoint-final" / "adapter_model.safetensors"))
    assert weights and all(t.dtype == torch.float32 for t in weights.values())
    state = json.loads((out / tiny_whisper_dir.name / "checkpoint-final" / "trainer_state.json").read_text())
    losses = [e["loss"] for e in state["log_history"] if "loss" in e]
    assert losses and all(np.isfinite(losses))


def test_train_writes_checkpoints(tiny_whisper_dir, corpus, tmp_path):
    out = tmp_path / "out"
    assert finetune.main(_args(tiny_whisper_dir, corpus, out, base_model=tiny_whisper_dir)) == 0
    run = out / tiny_whisper_dir.name
    for name in ("checkpoint-2", "checkpoint-4", "checkpoint-best", "checkpoint-final"):
        assert (run / name / "adapter_model.safetensors").is_file(), name
        assert (run / name / "tokenizer.json").is_file(), name
        assert (run / name / "preprocessor_config.json").is_file() or (run / name / "processor_config.json").is_file()
    assert (run / "checkpoint-2" / "optimizer.pt").is_file()
    config = json.loads((run / "checkpoint-final" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(tiny_whisper_dir)
    assert set(config["target_modules"]) == {"q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"}
    state = json.loads((run / "checkpoint-final" / "trainer_state.json").read_text())
    assert state["global_step"] == 4
    assert [e["step"] for e in state["log_history"] if "loss" in e] == [1, 2, 3, 4]
    assert [e["step"] for e in state["log_history"] if "eval_cer" in e] == [2, 4]
    assert (run / "training_curves.png").stat().st_size > 1000
    assert any((run / "runs").iterdir())
    gen = json.loads((run / "checkpoint-final" / "generation_config.json").read_text())
    assert gen["language"] == "zh" and gen["task"] == "transcribe"


def test_a_run_shorter_than_its_warmup_says_so(tiny_whisper_dir, corpus, tmp_path, caplog):
    """A small set's run with the default warm-up (50 steps; a user's 33 clips at batch 8 for 3 epochs: 15 steps)
    rose all run and never reached the learning rate, without a word; now a warning with the fix."""
    with caplog.at_level("WARNING"):
        assert finetune.main(_args(tiny_whisper_dir, corpus, tmp_path / "out", max_steps=3, warmup_steps=50,
                                   eval_steps=0, save_steps=3)) == 0
    assert ("warmup_steps=50 is not shorter than this run's 3 optimizer steps: the learning rate rises all run (to "
            "75.0% of learning_rate=0.001 at the last step) and never falls; give --warmup_steps=0") in caplog.text
    state = json.loads((tmp_path / "out" / tiny_whisper_dir.name / "checkpoint-final" / "trainer_state.json"
                        ).read_text())
    rates = [e["learning_rate"] for e in state["log_history"] if "learning_rate" in e]
    assert rates == sorted(rates) and rates[-1] == pytest.approx(0.75e-3)
    caplog.clear()
    with caplog.at_level("WARNING"):
        assert finetune.main(_args(tiny_whisper_dir, corpus, tmp_path / "short", max_steps=3, warmup_steps=2,
                                   eval_steps=0, save_steps=3)) == 0
    assert "warmup_steps" not in caplog.text


def test_best_checkpoint_is_chosen_by_cer_not_loss(tiny_whisper_dir, corpus, tmp_path, monkeypatch):
    """Eval CER 0.5, 0.2, 0.4 at steps 1..3 while the loss keeps falling: best must be step 2."""
    import utils.trainer

    values = iter([0.5, 0.2, 0.4])
    monkeypatch.setattr(utils.trainer, "evaluate", lambda *a, **k: (next(values), []))
    out = tmp_path / "out"
    assert finetune.main(_args(tiny_whisper_dir, corpus, out, max_steps=3, eval_steps=1, save_steps=0)) == 0
    best = json.loads((out / tiny_whisper_dir.name / "checkpoint-best" / "trainer_state.json").read_text())
    assert best["global_step"] == 2 and best["best_step"] == 2 and best["best_metric"] == pytest.approx(0.2)
    final = json.loads((out / tiny_whisper_dir.name / "checkpoint-final" / "trainer_state.json").read_text())
    assert final["global_step"] == 3 and final["best_step"] == 2


def test_adalora_reallocates_ranks(tiny_whisper_dir, corpus, tmp_path):
    out = tmp_path / "out"
    assert finetune.main(_args(tiny_whisper_dir, corpus, out, use_adalora=True, lora_r=8, max_steps=20,
                               eval_steps=0, save_steps=0, logging_steps=5)) == 0
    config = json.loads((out / tiny_whisper_dir.name / "checkpoint-final" / "adapter_config.json").read_text())
    assert config["peft_type"] == "ADALORA" and config["total_step"] == 20
    ranks = config["rank_pattern"]
    assert ranks, "update_and_allocate never fixed a rank pattern"
    kept = [sum(mask) for mask in ranks.values()]
    assert min(kept) < config["init_r"], "budgeting did not prune any rank"
    assert sum(kept) < config["init_r"] * len(kept)


def test_an_adapter_named_by_a_hub_id_is_built_and_saved_without_warnings_or_hub_lookups(tiny_whisper_dir, tmp_path,
                                                                                         monkeypatch):
    """The base model is read from a local folder but named by its hub id (as the offline packaged whisper-base is):
    the adapter records the hub id for merge_lora.py, peft warns about no renamed base (nor about transformers'
    deprecations), and a checkpoint save asks the hub nothing (peft's default would, about the base's vocabulary,
    at every save)."""
    import warnings

    import peft.utils.save_and_load
    from transformers import WhisperForConditionalGeneration

    from utils.lora import LoraOptions, build_adapter, read_adapter_config, save_adapter

    def no_hub(*args, **kwargs):
        raise AssertionError(f"asked the hub: {args}")

    monkeypatch.setattr(peft.utils.save_and_load, "check_file_exists_on_hf_hub", no_hub)
    model = WhisperForConditionalGeneration.from_pretrained(tiny_whisper_dir)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        adapter = build_adapter(model, LoraOptions(), base_model_name="openai/whisper-tiny")
        save_adapter(adapter, tmp_path / "checkpoint")
    assert not caught, [f"{w.filename}: {w.message}" for w in caught]
    assert read_adapter_config(tmp_path / "checkpoint")["base_model_name_or_path"] == "openai/whisper-tiny"
    assert (tmp_path / "checkpoint" / "adapter_model.safetensors").is_file()


def test_adalora_regularizer_equals_pefts_own(tiny_whisper_dir):
    """Our loop computes its own loss, so it adds AdaLoRA's orthogonality penalty itself: the same amount peft
    adds to a loss the model computes from labels."""
    from transformers import WhisperForConditionalGeneration

    from utils.lora import LoraOptions, adalora_orth_regularization, build_adapter

    torch.manual_seed(0)
    model = WhisperForConditionalGeneration.from_pretrained(tiny_whisper_dir)
    model = build_adapter(model, LoraOptions(use_adalora=True, adalora_init_r=4, adalora_target_r=2, total_step=20),
                          base_model_name="tiny")
    for name, p in model.named_parameters():  # peft starts lora_B at 0: give both matrices a shape to penalise
        if "lora_" in name:
            torch.nn.init.normal_(p, std=0.3)
    model.eval()
    features = torch.randn(1, 80, 3000)
    labels = torch.tensor([[50258, 50260, 50359, 50363, 400, 500, 50257]])
    decoder_input_ids = torch.tensor([[50258, 50258, 50260, 50359, 50363, 400, 500]])
    with torch.no_grad():
        # peft adds it in AdaLoraModel.forward (PeftModel.forward without a task type skips that layer)
        out = model.base_model(input_features=features, decoder_input_ids=decoder_input_ids, labels=labels)
        plain = torch.nn.functional.cross_entropy(out.logits.flatten(0, 1), labels.flatten())
        ours = adalora_orth_regularization(model)
    assert float(ours) > 0.1
    assert float(out.loss - plain) == pytest.approx(float(ours), rel=1e-4)
    model.peft_config["default"].orth_reg_weight = 0.25
    assert float(adalora_orth_regularization(model)) == pytest.approx(float(ours) / 2, rel=1e-5)


def test_adalora_training_loss_includes_the_regularizer(tiny_whisper_dir, corpus, tmp_path, monkeypatch):
    """The logged AdaLoRA loss changes with orth_reg_weight (before, the penalty was silently dropped)."""
    import utils.lora

    losses = {}
    for weight in (0.5, 5.0):
        original = utils.lora.build_adapter

        def build(model, options, base_model_name, _weight=weight, _original=original):
            peft_model = _original(model, options, base_model_name)
            peft_model.peft_config["default"].orth_reg_weight = _weight
            return peft_model

        monkeypatch.setattr(utils.lora, "build_adapter", build)
        out = tmp_path / f"w{weight}"
        assert finetune.main(_args(tiny_whisper_dir, corpus, out, use_adalora=True, lora_r=8, max_steps=5,
                                   eval_steps=0, save_steps=0, lora_dropout=0.0, precision="fp32",
                                   timestamps=False)) == 0
        state = json.loads((out / tiny_whisper_dir.name / "checkpoint-final" / "trainer_state.json").read_text())
        losses[weight] = [e["loss"] for e in state["log_history"] if "loss" in e][0]
        monkeypatch.setattr(utils.lora, "build_adapter", original)
    assert losses[5.0] > losses[0.5] + 1e-3, losses


def test_adalora_fixes_the_final_ranks_when_fp16_skipped_that_step(tiny_whisper_dir, corpus, tmp_path,
                                                                    monkeypatch):
    """peft fixes AdaLoRA's final rank budget only at exactly step total_step - tfinal (14 of 20 here); when the
    fp16 scaler skipped that step, the run went on masking with an earlier, larger budget's pattern. Now the final
    ranks are fixed at the next step that runs, and the saved pattern keeps the target budget."""
    from accelerate.optimizer import AcceleratedOptimizer
    from peft.tuners.adalora import AdaLoraModel

    calls, allocated = [], []
    real_step, real_allocate = AcceleratedOptimizer.step, AdaLoraModel.update_and_allocate

    def step(self, closure=None):
        calls.append(len(calls))
        self.skipped_here = len(calls) - 1 == 14  # as the scaler does on inf/nan gradients: no update
        if not self.skipped_here:
            real_step(self, closure)

    def allocate(self, global_step):
        allocated.append(global_step)
        return real_allocate(self, global_step)

    monkeypatch.setattr(AcceleratedOptimizer, "step", step)
    monkeypatch.setattr(AcceleratedOptimizer, "step_was_skipped", property(lambda self: self.skipped_here))
    monkeypatch.setattr(AdaLoraModel, "update_and_allocate", allocate)
    out = tmp_path / "out"
    assert finetune.main(_args(tiny_whisper_dir, corpus, out, use_adalora=True, lora_r=8, max_steps=20,
                               eval_steps=0, save_steps=0, precision="fp32", timestamps=False)) == 0
    assert len(calls) == 20
    assert allocated == [*range(14), 14, 16, 17, 18, 19]  # step 14 skipped: the final budget fixed at step 15
    config = json.loads((out / tiny_whisper_dir.name / "checkpoint-final" / "adapter_config.json").read_text())
    kept = [sum(mask) for mask in config["rank_pattern"].values()]
    assert sum(kept) == config["target_r"] * len(kept)


def test_adalora_resume_restores_the_rank_allocator(tiny_whisper_dir, corpus, tmp_path):
    """Resuming an AdaLoRA run mid-budgeting gives the uninterrupted run's adapter: the importance statistics
    are checkpointed (without them the ranks would be pruned differently after the resume)."""
    import shutil

    from safetensors.torch import load_file

    common = dict(use_adalora=True, lora_r=8, max_steps=20, save_steps=10, eval_steps=0, precision="fp32",
                  lora_dropout=0.0, timestamps=False, save_total_limit=5)
    ref_out = tmp_path / "ref"
    assert finetune.main(_args(tiny_whisper_dir, corpus, ref_out, **common)) == 0
    ref_run = ref_out / tiny_whisper_dir.name
    saved = torch.load(ref_run / "checkpoint-10" / "adalora_state.pt", weights_only=True)
    assert saved["exp_avg_ipt"] and all(t.abs().sum() > 0 for t in saved["exp_avg_ipt"].values())
    assert saved["weights"] and all(t.shape[0] == 4 or t.shape[1] == 4 for t in saved["weights"].values())

    out = tmp_path / "resumed"
    run = out / tiny_whisper_dir.name
    run.mkdir(parents=True)
    shutil.copytree(ref_run / "checkpoint-10", run / "checkpoint-10")
    assert finetune.main(_args(tiny_whisper_dir, corpus, out, resume_from_checkpoint=str(run / "checkpoint-10"),
                               **common)) == 0
    ref = load_file(ref_run / "checkpoint-final" / "adapter_model.safetensors")
    got = load_file(run / "checkpoint-final" / "adapter_model.safetensors")
    assert ref.keys() == got.keys()
    for key in ref:
        torch.testing.assert_close(got[key], ref[key], atol=1e-4, rtol=1e-3)


def test_a_lora_checkpoint_resumed_with_use_adalora_says_to_drop_it(tiny_whisper_dir, corpus, tmp_path, caplog):
    """It said only "no adalora_state.pt; an AdaLoRA run resumes from a checkpoint-<step> folder of an AdaLoRA run"
    (the other way round already says to pass --use_adalora=True)."""
    out = tmp_path / "out"
    assert finetune.main(_args(tiny_whisper_dir, corpus, out, max_steps=2, eval_steps=0, save_steps=2)) == 0
    checkpoint = out / tiny_whisper_dir.name / "checkpoint-2"
    assert finetune.main(_args(tiny_whisper_dir, corpus, out, max_steps=4, use_adalora=True, eval_steps=0,
                               resume_from_checkpoint=str(checkpoint))) == 1
    assert "it is a plain LoRA checkpoint: resume it with --use_adalora=False" in caplog.text


def test_resume_with_another_learning_rate_and_weight_decay_goes_on_at_them_and_says_so(tiny_whisper_dir, corpus,
                                                                                          tmp_path, caplog):
    """The restored optimizer and scheduler held the saved run's peak rate and weight decay: a run resumed with
    --learning_rate=1e-5 trained on at 1e-3, bit for bit the run it resumed, and said nothing."""
    out = tmp_path / "out"
    common = dict(max_steps=4, eval_steps=0, save_steps=2, warmup_steps=0, weight_decay=0)
    assert finetune.main(_args(tiny_whisper_dir, corpus, out, **common)) == 0
    run = out / tiny_whisper_dir.name
    before = {e["step"]: e["learning_rate"] for e in _state(run)["log_history"] if "learning_rate" in e}
    again = tmp_path / "again"
    shutil.copytree(run / "checkpoint-2", again / tiny_whisper_dir.name / "checkpoint-2")
    with caplog.at_level("WARNING"):
        assert finetune.main(_args(tiny_whisper_dir, corpus, again, resume_from_checkpoint="auto",
                                   **{**common, "learning_rate": 1e-5, "weight_decay": 0.5})) == 0
    assert "was trained at --learning_rate=0.001 --weight_decay=0; this run goes on at 1e-05 and 0.5" in caplog.text
    after = {e["step"]: e["learning_rate"] for e in _state(again / tiny_whisper_dir.name)["log_history"]
             if "learning_rate" in e}
    assert after[3] == pytest.approx(before[3] / 100) and after[4] == pytest.approx(before[4] / 100)
    optimizer = torch.load(again / tiny_whisper_dir.name / "checkpoint-4" / "optimizer.pt", weights_only=True)
    assert {g["weight_decay"] for g in optimizer["param_groups"]} == {0.5}


@pytest.mark.parametrize("flags, named", [({"lora_r": 16}, "--lora_r (r 32 there, 16 here)"),
                                          ({"lora_alpha": 32}, "--lora_alpha (lora_alpha 64 there, 32 here)"),
                                          ({"lora_encoder_layers": 1}, "--target_modules / --lora_encoder_layers")])
def test_resume_with_other_adapter_settings_is_refused_naming_the_flag(tiny_whisper_dir, corpus, tmp_path, caplog,
                                                                       flags, named):
    """Another --lora_r ended in a traceback ("size mismatch for …") after the model and data had loaded; another
    --lora_alpha was taken silently (it rescales the trained update: the output jumps at the resumed step)."""
    out = tmp_path / "out"
    common = dict(max_steps=2, eval_steps=0, save_steps=2)
    assert finetune.main(_args(tiny_whisper_dir, corpus, out, **common)) == 0
    caplog.clear()
    assert finetune.main(_args(tiny_whisper_dir, corpus, out, resume_from_checkpoint="auto",
                               **{**common, "max_steps": 4}, **flags)) == 1
    assert "cannot resume" in caplog.text and named in caplog.text
    assert "Traceback" not in caplog.text
    assert not (out / tiny_whisper_dir.name / "checkpoint-4").exists()


def test_resume_with_the_same_modules_named_in_another_order_goes_on(tiny_whisper_dir, corpus, tmp_path):
    """With --lora_encoder_layers the modules are one regex, built in the order the flag names them: the same
    adapter named "v_proj,q_proj" was refused as other settings."""
    out = tmp_path / "out"
    common = dict(max_steps=2, eval_steps=0, save_steps=2, lora_encoder_layers=1)
    assert finetune.main(_args(tiny_whisper_dir, corpus, out, target_modules="q_proj,v_proj", **common)) == 0
    assert finetune.main(_args(tiny_whisper_dir, corpus, out, resume_from_checkpoint="auto", **{
        **common, "max_steps": 4, "target_modules": "v_proj,q_proj,q_proj"})) == 0
    assert (out / tiny_whisper_dir.name / "checkpoint-4").is_dir()
    assert finetune.main(_args(tiny_whisper_dir, corpus, out, resume_from_checkpoint="auto", **{
        **common, "max_steps": 6, "target_modules": "v_proj"})) == 1


def test_a_relative_base_model_folder_is_recorded_so_merge_lora_finds_it_from_anywhere(tiny_whisper_dir, corpus,
                                                                                      tmp_path, monkeypatch):
    """adapter_config.json named "scratch/tiny" as it was typed: merge_lora.py run from another folder could not
    find the base model (or found another folder of that name)."""
    monkeypatch.chdir(tiny_whisper_dir.parent)
    out = tmp_path / "out"
    assert finetune.main(_args(Path(tiny_whisper_dir.name), corpus, out, max_steps=2, eval_steps=0,
                               save_steps=2)) == 0
    config = json.loads((out / tiny_whisper_dir.name / "checkpoint-final" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == os.path.abspath(tiny_whisper_dir)


def _run_cli(args: list[str], **kwargs) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), OMP_NUM_THREADS="1")
    return subprocess.Popen(args, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, **kwargs)


def _state(run: Path, checkpoint: str = "checkpoint-final") -> dict:
    return json.loads((run / checkpoint / "trainer_state.json").read_text())


def test_resume_with_another_batch_size_goes_on_after_the_items_trained_on(tiny_whisper_dir, corpus, tmp_path,
                                                                           caplog):
    """checkpoint-4 of a batch-1 run had trained on the first 4 of the epoch's 6 clips; resumed with batches of 2
    (the same clips in the same order) the epoch goes on at its batch 2, the one holding clips 5 and 6."""
    out = tmp_path / "out"
    run = out / tiny_whisper_dir.name
    common = dict(max_steps=4, save_steps=4, eval_steps=0, timestamps=False, pack_audio=False)
    assert finetune.main(_args(tiny_whisper_dir, corpus, out, per_device_train_batch_size=1, **common)) == 0
    data = _state(run, "checkpoint-4")["data"]
    assert len(data.pop("fingerprint")) == 16
    assert data == {"description": "6 clips", "seed": 42, "per_batch": 1, "world_size": 1, "batches_per_epoch": 6}
    with caplog.at_level("INFO"):
        assert finetune.main(_args(tiny_whisper_dir, corpus, out, per_device_train_batch_size=2,
                                   resume_from_checkpoint="auto", **{**common, "max_steps": 6})) == 0
    assert "the checkpoint's run took 1 item(s) a batch on 1 process(es), this run 2 on 1: epoch 0 goes on after " \
           "its first 4 item(s) (batch 2)" in caplog.text
    assert "done: 6 steps (2 in this run) in " in caplog.text
    state = _state(run)
    # step 5 trains batch 2 (the epoch's last), step 6 the first batch of epoch 1
    assert state["global_step"] == 6 and state["epoch"] == 1 and state["batch_in_epoch"] == 1
    assert state["data"]["per_batch"] == 2 and state["data"]["batches_per_epoch"] == 3


def test_resume_on_another_number_of_processes_goes_on_after_the_items_trained_on(caplog):
    """A checkpoint of 2 processes resumed by 1 (or the other way) warned that the epoch's clips are "trained on twice
    or not at all"; the epoch's order does not depend on the number of processes (EpochSampler deals it out in
    turn), so the run goes on after the items trained on, exactly when they divide evenly."""
    from types import SimpleNamespace

    from utils.trainer import EpochSampler, Trainer, TrainerState

    two = [EpochSampler(30, seed=42, epoch=1, rank=r, world_size=2).indices[:6] for r in (0, 1)]  # 3 batches of 2
    seen = {i for rank in two for i in rank}
    rest = EpochSampler(30, seed=42, epoch=1, world_size=1, skip=12).indices
    assert len(seen) == 12 and not seen & set(rest) and seen | set(rest) == set(range(30))
    layout = {"fingerprint": "f" * 16, "description": "30 clips", "seed": 42}
    for (old, new, position), (moved, note) in {
        ((2, 2, 15), (4, 1, 8), 3): (3, "this run 4 on 1: epoch 1 goes on after its first 12 item(s) (batch 3)\n"),
        ((1, 1, 30), (1, 2, 15), 5): (2, "(batch 2); 1 item(s) are trained on again"),
    }.items():
        saved = TrainerState(epoch=1, batch_in_epoch=position, data={
            **layout, "per_batch": old[0], "world_size": old[1], "batches_per_epoch": old[2]})
        caplog.clear()
        with caplog.at_level("INFO"):
            Trainer._carry_position(SimpleNamespace(train_dataset=None, data_layout={
                **layout, "per_batch": new[0], "world_size": new[1], "batches_per_epoch": new[2]}), saved, Path("c"))
        assert saved.batch_in_epoch == moved and note in caplog.text + "\n", caplog.text
        assert "twice or not at all" not in caplog.text


def test_resume_with_another_eval_set_forgets_the_best_measured_on_the_old_one(tiny_whisper_dir, corpus, tmp_path,
                                                                               caplog):
    """A run resumed with another --test_data kept the best CER of the old eval set ("best cer 0.0917 at step 8"),
    which a score of the new one could not replace; now forgotten with a warning, and the next evaluation is the
    best. The same eval set keeps it."""
    out = tmp_path / "out"
    run = out / tiny_whisper_dir.name
    common = dict(save_steps=2, eval_steps=2, timestamps=False, pack_audio=False)
    assert finetune.main(_args(tiny_whisper_dir, corpus, out, max_steps=2, **common)) == 0
    first = _state(run, "checkpoint-2")
    assert first["best_step"] == 2 and len(first["eval_data"]) == 16
    lines = corpus["test"].read_text(encoding="utf-8").splitlines()
    other = corpus["test"].parent / "other_test.json"
    other.write_text("\n".join(lines[1:]) + "\n", encoding="utf-8")
    with caplog.at_level("WARNING"):
        assert finetune.main(_args(tiny_whisper_dir, {**corpus, "test": other}, out, max_steps=4,
                                   resume_from_checkpoint="auto", **common)) == 0
    assert "was measured on another eval set or metric" in caplog.text
    state = _state(run)
    assert state["best_step"] == 4 and state["eval_data"] != first["eval_data"]
    caplog.clear()
    with caplog.at_level("WARNING"):  # the same eval set again: nothing forgotten
        assert finetune.main(_args(tiny_whisper_dir, {**corpus, "test": other}, out, max_steps=6,
                                   resume_from_checkpoint="auto", **common)) == 0
    assert "another eval set" not in caplog.text and _state(run)["eval_data"] == state["eval_data"]


def test_resume_into_another_folder_brings_the_best_checkpoint_or_forgets_it(tiny_whisper_dir, corpus, tmp_path,
                                                                            caplog):
    """The best step a run reports is always a checkpoint-best of its folder: resumed into a fresh --output_dir,
    the resumed run's checkpoint-best is copied there; a checkpoint copied alone starts the best afresh. A longer
    --max_steps says how the learning rate changes."""
    common = dict(max_steps=4, timestamps=False, pack_audio=False)
    first = tmp_path / "first"
    assert finetune.main(_args(tiny_whisper_dir, corpus, first, **common)) == 0
    run1 = first / tiny_whisper_dir.name
    best1 = _state(run1, "checkpoint-best")
    assert best1["best_step"] in (2, 4)

    second = tmp_path / "second"
    with caplog.at_level("INFO"):
        assert finetune.main(_args(tiny_whisper_dir, corpus, second, resume_from_checkpoint=run1 / "checkpoint-4",
                                   **{**common, "max_steps": 6})) == 0
    assert "was saved by a run of 4 steps; this run has 6: the learning rate follows the schedule of a 6-step run " \
           "from here (at step 4: " in caplog.text
    run2 = second / tiny_whisper_dir.name
    final, best2 = _state(run2), _state(run2, "checkpoint-best")
    # step 5 trains at the 6-step schedule's rate (it trained at the 4-step run's last rate, 0)
    from utils.trainer import warmup_then_linear_decay
    rates = {e["step"]: e["learning_rate"] for e in final["log_history"] if "learning_rate" in e}
    assert rates[5] == pytest.approx(1e-3 * warmup_then_linear_decay(1, 6)(4)) and rates[5] > 0
    assert best2["global_step"] == final["best_step"] == best2["best_step"]
    assert final["best_step"] in (best1["best_step"], 6)

    alone = tmp_path / "alone" / "checkpoint-4"
    import shutil
    shutil.copytree(run1 / "checkpoint-4", alone)
    third = tmp_path / "third"
    caplog.clear()
    with caplog.at_level("INFO"):
        assert finetune.main(_args(tiny_whisper_dir, corpus, third, resume_from_checkpoint=alone,
                                   **{**common, "max_steps": 6})) == 0
    assert "the resumed run's best checkpoint (step" in caplog.text and "is not beside it" in caplog.text
    run3 = third / tiny_whisper_dir.name
    assert _state(run3)["best_step"] == 6 == _state(run3, "checkpoint-best")["global_step"]


def test_auto_resumes_the_run_saved_last_in_a_folder_that_held_a_longer_run(tiny_whisper_dir, corpus, tmp_path,
                                                                             caplog):
    """A new run in an --output_dir that still held a longer finished run: auto took the highest step, the other
    run's checkpoint-6, past this run's --max_steps, said "done: 0 steps in this run" and reported the other run's
    best while checkpoint-best held this run's. auto now takes the checkpoint saved last, a checkpoint past
    --max_steps is refused, and a best written by another run is never taken for this run's."""
    out = tmp_path / "out"
    run = out / tiny_whisper_dir.name
    common = dict(save_steps=2, eval_steps=2, timestamps=False, pack_audio=False)
    assert finetune.main(_args(tiny_whisper_dir, corpus, out, max_steps=6, **common)) == 0
    earlier = _state(run, "checkpoint-6")["run_id"]
    assert finetune.main(_args(tiny_whisper_dir, corpus, out, max_steps=2, **common)) == 0  # a new run, 2 steps
    this = _state(run, "checkpoint-2")["run_id"]
    assert this != earlier and _state(run, "checkpoint-best")["run_id"] == this
    with caplog.at_level("INFO"):
        assert finetune.main(_args(tiny_whisper_dir, corpus, out, max_steps=4, resume_from_checkpoint="AUTO",
                                   **common)) == 0
    assert f"resumed from {run / 'checkpoint-2'} at step 2" in caplog.text
    final, best = _state(run), _state(run, "checkpoint-best")
    assert final["global_step"] == 4 and final["run_id"] == best["run_id"] == this
    assert final["best_step"] == best["best_step"] == best["global_step"] in (2, 4)
    caplog.clear()
    assert finetune.main(_args(tiny_whisper_dir, corpus, tmp_path / "other", max_steps=4,
                               resume_from_checkpoint=run / "checkpoint-6", **common)) == 1
    assert "is at step 6, past this run's 4 steps (--max_steps)" in caplog.text


def test_resume_with_another_seed_warns(tiny_whisper_dir, corpus, tmp_path, caplog):
    """The epoch's order depends on the seed: resumed with another --seed, the clips trained on are not the first
    ones of the new order, so the run says so (the same clips and batch size looked unchanged)."""
    out = tmp_path / "out"
    common = dict(max_steps=4, save_steps=4, eval_steps=0, timestamps=False, pack_audio=False,
                  per_device_train_batch_size=1)
    assert finetune.main(_args(tiny_whisper_dir, corpus, out, **common)) == 0
    with caplog.at_level("WARNING"):
        assert finetune.main(_args(tiny_whisper_dir, corpus, out, resume_from_checkpoint="auto", seed=7,
                                   **{**common, "max_steps": 5})) == 0
    assert "data, seed or process count): the order of epoch 0 differs, so it goes on at batch 4 of 6" in caplog.text


def test_resume_of_an_older_checkpoint_with_a_larger_batch_starts_the_next_epoch(tiny_whisper_dir, corpus,
                                                                                 tmp_path, caplog):
    """A checkpoint that records no data layout (written before it was recorded) resumes at its batch as saved;
    past the end of this run's shorter epoch the next epoch starts (it used to stop with a ValueError)."""
    out = tmp_path / "out"
    run = out / tiny_whisper_dir.name
    common = dict(max_steps=4, save_steps=4, eval_steps=0, timestamps=False, pack_audio=False)
    assert finetune.main(_args(tiny_whisper_dir, corpus, out, per_device_train_batch_size=1, **common)) == 0
    path = run / "checkpoint-4" / "trainer_state.json"
    older = json.loads(path.read_text())
    del older["data"]
    path.write_text(json.dumps(older))
    with caplog.at_level("INFO"):
        assert finetune.main(_args(tiny_whisper_dir, corpus, out, per_device_train_batch_size=2,
                                   resume_from_checkpoint="auto", **{**common, "max_steps": 6})) == 0
    assert "records no data layout" in caplog.text
    assert "the checkpoint had trained 4 batches of epoch 0, more than this run's 3 an epoch" in caplog.text
    state = _state(run)
    assert state["global_step"] == 6 and state["epoch"] == 1 and state["batch_in_epoch"] == 2


def test_resume_with_other_packing_warns_and_keeps_the_share_of_the_epoch(tiny_whisper_dir, corpus, tmp_path,
                                                                         caplog):
    """Resumed with --pack_audio turned on, the epoch's batches are other windows in another order: the run warns
    (clips of the epoch are trained on twice or not at all) and goes on at the same share of the epoch. The warning
    is what was missing: a changed batch size or packing used to re-cut the data silently."""
    out = tmp_path / "out"
    run = out / tiny_whisper_dir.name
    common = dict(save_steps=4, eval_steps=0, timestamps=False)
    assert finetune.main(_args(tiny_whisper_dir, corpus, out, max_steps=4, pack_audio=False,
                               per_device_train_batch_size=1, **common)) == 0
    saved = _state(run, "checkpoint-4")  # 4 of the epoch's 6 batches of one clip
    assert (saved["epoch"], saved["batch_in_epoch"]) == (0, 4)
    with caplog.at_level("WARNING"):
        assert finetune.main(_args(tiny_whisper_dir, corpus, out, max_steps=6, pack_audio=True,
                                   per_device_train_batch_size=2, resume_from_checkpoint="auto", **common)) == 0
    state = _state(run)
    new = state["data"]
    assert new["description"].startswith("6 clips in ") and " windows in " in new["description"]
    assert new["fingerprint"] != saved["data"]["fingerprint"]
    assert "the checkpoint's run cut the training data into 6 clips on 1 process(es); this run cuts it into " \
           f"{new['description']} on 1" in caplog.text
    assert new["batches_per_epoch"] == 3  # 4 windows of the 6 clips in 3 batches of about 2 clips
    assert "it goes on at batch 2 of 3, the same share of the epoch (4/6 before)" in caplog.text
    assert state["global_step"] == 6


@pytest.mark.slow
@pytest.mark.parametrize("pack", [False, True], ids=["clips", "packed"])
def test_resume_after_sigkill(tiny_whisper_dir, corpus, tmp_path, pack):
    """Kill -9 after checkpoint-4, resume with =auto: same adapter as an uninterrupted run, valid best/final
    (packed: the resumed epoch skips the batches of windows it had trained on). With LoRA dropout: the resumed run
    draws the same dropout masks (the data loader does not draw from the RNG that dropout uses); with SpecAugment
    the same feature masks (transformers draws them from numpy's global RNG, which resuming did not restore: the
    masks of the run's first steps came again)."""
    spec = tmp_path / "spec.json"
    spec.write_text('[{"type": "specaugment", "params": {"mask_time_prob": 0.3, "mask_time_length": 10, '
                    '"mask_feature_prob": 0.3, "mask_feature_length": 10}}]', encoding="utf-8")
    common = dict(max_steps=10, save_steps=2, eval_steps=5, precision="fp32", lora_dropout=0.1,
                  learning_rate=5e-3, timestamps=False, pack_audio=pack, augment_config_path=spec)
    ref_out = tmp_path / "ref"
    assert finetune.main(_args(tiny_whisper_dir, corpus, ref_out, **common)) == 0

    out = tmp_path / "killed"
    run = out / tiny_whisper_dir.name
    proc = _run_cli([sys.executable, "finetune.py", *_args(tiny_whisper_dir, corpus, out, **common)])
    deadline = time.time() + 300
    while not (run / "checkpoint-4" / "trainer_state.json").is_file():
        assert proc.poll() is None, proc.stdout.read()
        assert time.time() < deadline, "no checkpoint-4 within 300 s"
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (run / "checkpoint-final").exists()

    assert finetune.main(_args(tiny_whisper_dir, corpus, out, resume_from_checkpoint="auto", **common)) == 0
    state = json.loads((run / "checkpoint-final" / "trainer_state.json").read_text())
    assert state["global_step"] == 10
    assert (run / "checkpoint-best" / "adapter_model.safetensors").is_file()
    from safetensors.torch import load_file

    ref = load_file(ref_out / tiny_whisper_dir.name / "checkpoint-final" / "adapter_model.safetensors")
    got = load_file(run / "checkpoint-final" / "adapter_model.safetensors")
    assert ref.keys() == got.keys()
    for key in ref:
        torch.testing.assert_close(got[key], ref[key], atol=1e-4, rtol=1e-3)


def _logged_learning_rates(run: Path) -> list[float]:
    state = json.loads((run / "checkpoint-final" / "trainer_state.json").read_text())
    return [e["learning_rate"] for e in state["log_history"] if "learning_rate" in e]


# the LR steps 1..6 train with: a linear rise over 2 warm-up steps (none at 0: the first step trained nothing with
# transformers' schedule), 1e-3 at step 3, then a linear fall; logged with the step that used it (it was the next's)
SCHEDULE_6_STEPS = [1e-3 / 3, 2e-3 / 3, 1e-3, 7.5e-4, 5e-4, 2.5e-4]


def test_learning_rate_follows_the_schedule_in_one_process(tiny_whisper_dir, corpus, tmp_path):
    out = tmp_path / "one"
    assert finetune.main(_args(tiny_whisper_dir, corpus, out, max_steps=6, warmup_steps=2, eval_steps=0,
                               save_steps=0, timestamps=False)) == 0
    assert _logged_learning_rates(out / tiny_whisper_dir.name) == pytest.approx(SCHEDULE_6_STEPS, abs=1e-9)


@pytest.mark.slow
@pytest.mark.parametrize("pack", [False, True], ids=["clips", "packed"])
def test_torchrun_two_processes_gloo(tiny_whisper_dir, corpus, tmp_path, pack):
    """Two processes train like one: same step count, and the same LR at every step (accelerate's scheduler
    wrapper used to step the schedule once per process, so warmup ended early and the LR hit 0 halfway).
    Packed: the ranks' batches hold different numbers of windows and still step together. Clips: two processes
    with batches of 2 learn what one process learns with batches of 4 (the same clips in each step): one mean over
    all the step's label tokens, not a mean of the processes' means."""
    out = tmp_path / "ddp"
    same = {"max_steps": 6, "warmup_steps": 2, "eval_steps": 6, "save_steps": 3, "timestamps": False,
            "pack_audio": pack, "lora_dropout": 0.0, "precision": "fp32"}
    proc = _run_cli([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "finetune.py",
                     *_args(tiny_whisper_dir, corpus, out, **same)])
    log, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, log[-3000:]
    assert "2 process(es)" in log
    run = out / tiny_whisper_dir.name
    state = json.loads((run / "checkpoint-final" / "trainer_state.json").read_text())
    assert state["global_step"] == 6
    assert _logged_learning_rates(run) == pytest.approx(SCHEDULE_6_STEPS, abs=1e-9)
    assert (run / "checkpoint-3" / "optimizer.pt").is_file()
    rng = torch.load(run / "checkpoint-3" / "rng_state.pt", weights_only=True)  # each rank's own, for resuming
    assert [r["rank"] for r in rng] == [0, 1] and not torch.equal(rng[0]["cpu"], rng[1]["cpu"])
    assert (run / "checkpoint-best" / "adapter_model.safetensors").is_file()
    if pack:
        return
    from safetensors.torch import load_file

    one = tmp_path / "one"
    assert finetune.main(_args(tiny_whisper_dir, corpus, one, per_device_train_batch_size=4, **same)) == 0
    one_run = one / tiny_whisper_dir.name
    losses = [json.loads((r / "checkpoint-final" / "trainer_state.json").read_text())["log_history"]
              for r in (run, one_run)]
    assert ([e["loss"] for e in losses[0] if "loss" in e]
            == pytest.approx([e["loss"] for e in losses[1] if "loss" in e], rel=1e-4))
    weights = [load_file(r / "checkpoint-final" / "adapter_model.safetensors") for r in (run, one_run)]
    assert weights[0].keys() == weights[1].keys()
    for name, value in weights[0].items():
        torch.testing.assert_close(value, weights[1][name], rtol=1e-3, atol=1e-5, msg=name)


@pytest.mark.slow
def test_torchrun_with_top_encoder_layer_adapters(tiny_whisper_dir, corpus, tmp_path):
    """The trained top encoder layer runs outside the DDP-wrapped forward (on cached states): its adapter
    gradients must still be reduced across processes, with and without gradient accumulation."""
    out = tmp_path / "ddp"
    proc = _run_cli([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "finetune.py",
                     *_args(tiny_whisper_dir, corpus, out, max_steps=4, eval_steps=4, save_steps=0,
                            timestamps=False, lora_encoder_layers=1, gradient_accumulation_steps=2)])
    log, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, log[-3000:]
    assert "encoder layers 1-1 of 2 are frozen" in log
    state = json.loads((out / tiny_whisper_dir.name / "checkpoint-final" / "trainer_state.json").read_text())
    assert state["global_step"] == 4


@pytest.mark.slow
def test_whisper_base_few_steps_lower_cer(whisper_base_dir, tmp_path):
    """A few decoder-LoRA steps on four espeak Mandarin clips lower whisper-base's CER on those clips."""
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

    from utils.audio import load_audio
    from utils.text import error_rate

    lines = []
    for i, text in enumerate(ZH_TEXTS):
        wav = make_speech(text, tmp_path / f"b{i}.wav", voice="cmn-latn-pinyin")
        lines.append({"audio": {"path": str(wav)}, "sentence": text, "language": "Chinese",
                      "duration": sf.info(wav).duration})
    manifest = tmp_path / "m.json"
    manifest.write_text("".join(json.dumps(x, ensure_ascii=False) + "\n" for x in lines), encoding="utf-8")
    processor = WhisperProcessor.from_pretrained(whisper_base_dir)
    feats = processor.feature_extractor([load_audio(x["audio"]["path"]) for x in lines], sampling_rate=16000,
                                        return_tensors="pt").input_features

    def cer_of(model) -> float:
        with torch.no_grad():
            ids = model.generate(input_features=feats, language="zh", task="transcribe", max_new_tokens=32)
        return error_rate(ZH_TEXTS, processor.batch_decode(ids, skip_special_tokens=True), "cer")

    base_cer = cer_of(WhisperForConditionalGeneration.from_pretrained(whisper_base_dir))
    out = tmp_path / "out"
    assert finetune.main([f"--base_model={whisper_base_dir}", f"--output_dir={out}", f"--train_data={manifest}",
                          f"--test_data={manifest}", "--language=Chinese", "--max_steps=12",
                          "--per_device_train_batch_size=4", "--learning_rate=2e-3", "--warmup_steps=2",
                          "--eval_steps=0", "--save_steps=0", "--num_workers=0", "--generation_max_length=32",
                          "--target_modules=decoder.q_proj,decoder.k_proj,decoder.v_proj,decoder.out_proj,"
                          "decoder.fc1,decoder.fc2"]) == 0
    state = json.loads((out / whisper_base_dir.name / "checkpoint-best" / "trainer_state.json").read_text())
    assert state["best_metric"] < base_cer, (state["best_metric"], base_cer)


def test_decoder_only_adapter_freezes_encoder(tiny_whisper_dir, corpus, tmp_path, caplog):
    from safetensors.torch import load_file

    targets = "decoder.q_proj,decoder.v_proj,decoder.fc1"
    out = tmp_path / "out"
    with caplog.at_level("INFO"):
        assert finetune.main(_args(tiny_whisper_dir, corpus, out, target_modules=targets, max_steps=6,
                                   eval_steps=3, save_steps=0)) == 0
    assert "the whole encoder is frozen" in caplog.text
    keys = load_file(out / tiny_whisper_dir.name / "checkpoint-final" / "adapter_model.safetensors").keys()
    assert keys and all(".decoder." in k for k in keys)
    assert any("encoder_attn.q_proj" in k for k in keys) and any("self_attn.v_proj" in k for k in keys)
    assert not any("k_proj" in k or "fc2" in k for k in keys)


def test_lora_encoder_layers_limits_adapters_to_the_top_layers():
    import re

    from utils.lora import DEFAULT_TARGET_MODULES, peft_target_modules, top_layer_ids

    def matches(pattern, name):
        return re.fullmatch(pattern, name) is not None

    top2 = peft_target_modules(DEFAULT_TARGET_MODULES, top_layer_ids(6, 2))
    assert matches(top2, "model.encoder.layers.5.self_attn.q_proj")
    assert matches(top2, "model.encoder.layers.4.fc2")
    assert not matches(top2, "model.encoder.layers.3.fc2")
    assert not matches(top2, "model.encoder.layers.14.fc2")
    assert matches(top2, "model.decoder.layers.0.encoder_attn.k_proj")
    none = peft_target_modules(DEFAULT_TARGET_MODULES, top_layer_ids(6, 0))
    assert not matches(none, "model.encoder.layers.5.fc1") and matches(none, "model.decoder.layers.5.fc1")
    assert top_layer_ids(6, None) is None and top_layer_ids(6, 6) is None and top_layer_ids(6, 9) is None
    assert peft_target_modules(DEFAULT_TARGET_MODULES) == list(DEFAULT_TARGET_MODULES)  # unchanged default
    with pytest.raises(ValueError, match="no adapter target left"):
        peft_target_modules(("encoder.fc1",), [])


def test_lora_encoder_layers_flag_values(capsys):
    parser = finetune.build_parser()
    assert parser.parse_args(["--lora_encoder_layers=all"]).lora_encoder_layers is None
    assert parser.parse_args(["--lora_encoder_layers=2"]).lora_encoder_layers == 2
    assert parser.parse_args([]).lora_encoder_layers is None  # every layer: the default
    for bad in ("-1", "two"):
        with pytest.raises(SystemExit):
            parser.parse_args([f"--lora_encoder_layers={bad}"])
        assert "--lora_encoder_layers" in capsys.readouterr().err


@pytest.mark.parametrize("frozen", [1, 2])
def test_encoder_cache_gives_the_encoders_output_and_gradients(tiny_whisper_dir, frozen):
    """Frozen bottom (cached) + top equals the encoder itself, forward and backward, on a cache miss and a hit."""
    from accelerate import Accelerator
    from transformers import WhisperForConditionalGeneration

    from utils.trainer import EncoderCache, frozen_encoder_layers

    torch.manual_seed(0)
    encoder = WhisperForConditionalGeneration.from_pretrained(tiny_whisper_dir).get_encoder()
    for p in encoder.parameters():
        p.requires_grad_(False)
    for p in encoder.layers[frozen:].parameters():
        p.requires_grad_(True)
    encoder.layer_norm.weight.requires_grad_(True)
    assert frozen_encoder_layers(encoder) == frozen
    feats = torch.randn(2, 80, 3000)
    expected = encoder(feats).last_hidden_state
    expected.square().sum().backward()
    want = encoder.layer_norm.weight.grad.clone()
    cache = EncoderCache(encoder, accelerator=Accelerator(cpu=True), max_bytes=1e9, frozen_layers=frozen)
    for _ in range(2):  # a miss, then a hit
        encoder.zero_grad()
        got = cache([7, 3], feats)
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
        got.square().sum().backward()
        torch.testing.assert_close(encoder.layer_norm.weight.grad, want, rtol=1e-4, atol=1e-5)
    assert (cache.misses, cache.hits) == (2, 2)
    encoder.conv1.weight.requires_grad_(True)
    assert frozen_encoder_layers(encoder) is None


def test_top_encoder_layer_adapters_train_and_the_layers_below_are_cached(tiny_whisper_dir, corpus, tmp_path,
                                                                         caplog):
    from safetensors.torch import load_file

    out = tmp_path / "out"
    with caplog.at_level("INFO"):
        assert finetune.main(_args(tiny_whisper_dir, corpus, out, lora_encoder_layers=1, max_steps=6,
                                   eval_steps=3, save_steps=0)) == 0
    assert "encoder layers 1-1 of 2 are frozen (adapters in the top 1)" in caplog.text
    weights = load_file(out / tiny_whisper_dir.name / "checkpoint-final" / "adapter_model.safetensors")
    encoder_keys = [k for k in weights if ".encoder." in k]
    assert encoder_keys and all(".encoder.layers.1." in k for k in encoder_keys)
    assert any(".decoder." in k for k in weights)
    # lora_B starts at zero: non-zero values show gradients reached the top layer through the cached path
    assert any(float(weights[k].abs().max()) > 0 for k in encoder_keys if "lora_B" in k)


def test_greedy_decode_matches_generate(whisper_base_dir, zh_wav, en_wav):
    """The eval decoder (lean greedy loop with KV cache) gives generate()'s greedy output."""
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

    from utils.audio import load_audio
    from utils.train_data import LabelTokens
    from utils.trainer import greedy_decode

    model = WhisperForConditionalGeneration.from_pretrained(whisper_base_dir).eval()
    processor = WhisperProcessor.from_pretrained(whisper_base_dir)
    tokens = LabelTokens.from_tokenizer(processor.tokenizer)
    feats = processor.feature_extractor([load_audio(zh_wav), load_audio(en_wav)], sampling_rate=16000,
                                        return_tensors="pt").input_features
    with torch.no_grad():
        want = model.generate(input_features=feats, language="zh", task="transcribe", max_new_tokens=20)
        states = model.get_encoder()(feats).last_hidden_state
    gen = model.generation_config
    got = greedy_decode(model, states, [tokens.start_of_transcript, tokens.languages["zh"],
                                        tokens.tasks["transcribe"], tokens.no_timestamps],
                        end_of_text=tokens.end_of_text, suppress_tokens=gen.suppress_tokens,
                        begin_suppress_tokens=gen.begin_suppress_tokens, max_new_tokens=20)
    want_text = processor.batch_decode(want, skip_special_tokens=True)
    got_text = processor.batch_decode(got, skip_special_tokens=True)
    assert got_text == want_text and all(want_text)
    # the demo test set's no-speech clips: whisper-base reads "你" and "你不要再想我了" into them, which inference
    # drops as silence (no-speech probability and log-probability); eval, which picks checkpoint-best, does as well
    demo_audio = Path(__file__).parents[1] / "dataset" / "demo" / "audio"
    silent = [load_audio(demo_audio / f"test_00{k}.flac") for k in ("04", "18")]
    feats = processor.feature_extractor([*silent, load_audio(zh_wav)], sampling_rate=16000,
                                        return_tensors="pt").input_features
    with torch.no_grad():
        states = model.get_encoder()(feats).last_hidden_state
    texts = {}
    for no_speech in (None, tokens.no_speech):
        ids = greedy_decode(model, states, tokens.prompt("zh", "transcribe"), end_of_text=tokens.end_of_text,
                            suppress_tokens=gen.suppress_tokens, max_new_tokens=30, no_speech=no_speech,
                            begin_suppress_tokens=[t for t in gen.begin_suppress_tokens if t != tokens.end_of_text])
        texts[no_speech] = processor.batch_decode(ids, skip_special_tokens=True)
    assert all(texts[None]) and texts[tokens.no_speech][:2] == ["", ""]
    assert texts[tokens.no_speech][2] == texts[None][2]  # speech keeps its text


def test_eval_of_a_batch_in_several_languages_drops_silence_and_detects_the_unknown(whisper_base_dir, en_wav,
                                                                                    repo_root):
    """A batch whose items are in several languages (or one unknown: no item or run language) went to generate(),
    which read "你" into the demo's no-speech clip (the eval that picks checkpoint-best scored it); each language's
    items are now decoded by the lean greedy decoder, which drops silence, the unknown one in the language the
    decoder detects."""
    from accelerate import Accelerator
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

    from utils.audio import load_audio
    from utils.train_data import LabelTokens
    from utils.trainer import EvalSet, detect_languages, evaluate

    model = WhisperForConditionalGeneration.from_pretrained(whisper_base_dir).eval()
    processor = WhisperProcessor.from_pretrained(whisper_base_dir)
    tokens = LabelTokens.from_tokenizer(processor.tokenizer)
    clips = [repo_root / "dataset" / "demo" / "audio" / "test_0004.flac",
             repo_root / "dataset" / "real" / "zh_aishell_0121.flac", en_wav]
    feats = processor.feature_extractor([load_audio(c) for c in clips], sampling_rate=16000,
                                        return_tensors="np").input_features
    with torch.no_grad():
        states = model.get_encoder()(torch.from_numpy(feats)).last_hidden_state
    assert detect_languages(model, states[1:], tokens) == ["zh", "en"]
    items = [{"input_features": f, "index": i} for i, f in enumerate(feats)]
    eval_set = EvalSet(items, ["", "", ""], ["Chinese", "Chinese", None], [3.0, 5.0, 3.0], tokens)
    _, hyps = evaluate(model, eval_set, None, processor.tokenizer, accelerator=Accelerator(cpu=True), language=None,
                       task="transcribe", metric="cer", batch_size=3, max_new_tokens=40, show_progress=False)
    assert hyps[0] == "" and any("\u4e00" <= ch <= "\u9fff" for ch in hyps[1]), hyps
    assert sum(ch.isascii() and ch.isalpha() for ch in hyps[2]) > 10, hyps


def _first_step(tiny_whisper_dir, corpus, out, monkeypatch, **extra) -> tuple[torch.Tensor, float]:
    """(the gradient of the adapter at the first optimizer step, the loss logged there) of a one-step fp32 run
    without dropout or clipping."""
    grads = []
    original_step = torch.optim.AdamW.step

    def recording_step(self, *args, **kwargs):
        params = [p for group in self.param_groups for p in group["params"] if p.grad is not None]
        grads.append(torch.cat([p.grad.detach().flatten() for p in params]).clone())
        return original_step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", recording_step)
    try:
        assert finetune.main(_args(tiny_whisper_dir, corpus, out, max_steps=1, eval_steps=0, save_steps=0,
                                   lora_dropout=0.0, precision="fp32", timestamps=False, max_grad_norm=0,
                                   **extra)) == 0
    finally:
        monkeypatch.setattr(torch.optim.AdamW, "step", original_step)
    state = json.loads((out / tiny_whisper_dir.name / "checkpoint-final" / "trainer_state.json").read_text())
    return grads[0], next(e["loss"] for e in state["log_history"] if "loss" in e)


def test_a_short_last_accumulation_group_is_averaged_over_its_own_batches(tiny_whisper_dir, corpus, tmp_path,
                                                                          monkeypatch):
    """6 items in batches of 2 = 3 batches an epoch. With --gradient_accumulation_steps=4 the epoch's only group
    has 3 batches: its gradient must be their mean (as with 3), not their sum over 4."""
    grads = {n: _first_step(tiny_whisper_dir, corpus, tmp_path / f"ga{n}", monkeypatch,
                            gradient_accumulation_steps=n)[0] for n in (3, 4)}
    assert grads[3].abs().sum() > 0
    torch.testing.assert_close(grads[4], grads[3], rtol=1e-4, atol=1e-7)


def test_accumulated_batches_train_like_one_batch_of_all_their_clips(tiny_whisper_dir, corpus, tmp_path,
                                                                      monkeypatch):
    """Six clips as 6 batches of 1 with --gradient_accumulation_steps=6 give the gradient of one batch of 6: one
    mean over all their label tokens. A mean of per-batch means made the 2-token no-speech clip weigh as much as
    a sentence."""
    (one_batch, loss), (accumulated, accumulated_loss) = (
        _first_step(tiny_whisper_dir, corpus, tmp_path / f"b{batch}", monkeypatch, per_device_train_batch_size=batch,
                    gradient_accumulation_steps=accumulation) for batch, accumulation in ((6, 1), (1, 6)))
    assert one_batch.abs().sum() > 0
    torch.testing.assert_close(accumulated, one_batch, rtol=1e-4, atol=1e-7)
    assert accumulated_loss == pytest.approx(loss, rel=1e-5)

def test_trainer_eval_scores_english_like_evaluation_py(tiny_whisper_dir, monkeypatch):
    """The eval WER that picks checkpoint-best puts English through Whisper's normaliser, as evaluation.py does:
    "mister smith paid $10" for "Mr. Smith paid ten dollars." is no error; Chinese items are scored as before."""
    from accelerate import Accelerator
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

    import utils.trainer
    from utils.train_data import LabelTokens

    model = WhisperForConditionalGeneration.from_pretrained(tiny_whisper_dir)
    processor = WhisperProcessor.from_pretrained(tiny_whisper_dir)
    tokens = LabelTokens.from_tokenizer(processor.tokenizer)
    said = {"English": "mister smith paid $10", "Chinese": "我们去公园"}

    def decode(model, states, prompt, **kwargs):
        language = "English" if prompt[1] == tokens.languages["en"] else "Chinese"
        return torch.tensor([prompt + processor.tokenizer.encode(said[language], add_special_tokens=False)])

    monkeypatch.setattr(utils.trainer, "greedy_decode", decode)
    feats = np.zeros((80, 3000), dtype=np.float32)
    for language, reference, expected in (("English", "Mr. Smith paid ten dollars.", 0.0),
                                          (None, "Mr. Smith paid ten dollars.", 0.0),  # the run's language
                                          ("Chinese", "我们去公园", 0.0)):
        eval_set = utils.trainer.EvalSet([{"input_features": feats, "index": 0}], [reference], [language], [2.0],
                                         tokens)
        rate, hyps = utils.trainer.evaluate(model, eval_set, None, processor.tokenizer,
                                            accelerator=Accelerator(cpu=True), language="en", task="transcribe",
                                            metric="wer", batch_size=1, max_new_tokens=8, show_progress=False)
        assert hyps == [said[language or "English"]] and rate == expected
    # a loop that ends the text is cut after its first unit, as inference cuts it (a checkpoint that read
    # "先气冷了。我们吃。我。我。我。…" to the token budget scored CER 3.3 here and 0.4 in evaluation.py)
    said["Chinese"] = "天气冷了。我们吃。" + "我。" * 30
    eval_set = utils.trainer.EvalSet([{"input_features": feats, "index": 0}], ["天气冷了，我们吃火锅吧。"], ["Chinese"],
                                     [2.0], tokens)
    rate, hyps = utils.trainer.evaluate(model, eval_set, None, processor.tokenizer, accelerator=Accelerator(cpu=True),
                                        language="zh", task="transcribe", metric="cer", batch_size=1,
                                        max_new_tokens=8, show_progress=False)
    assert hyps[0].rstrip("。") == "天气冷了。我们吃。我" and rate < 0.5, (hyps, rate)
    # ... and a loop of a longer unit that ran to the token budget (whisper-base on pink noise: "在那里, 要不然, 要不然,
    # …", a unit of 5 tokens), as inference cuts it now
    start, unit = (processor.tokenizer.encode(t, add_special_tokens=False) for t in ("在那里,", " 要不然,"))
    assert 4 < len(unit) <= 12
    loop = (start + unit * 40)[:40]  # generated ids only, as greedy_decode returns them
    monkeypatch.setattr(utils.trainer, "greedy_decode", lambda model, states, prompt, **kw: torch.tensor([loop]))
    eval_set = utils.trainer.EvalSet([{"input_features": feats, "index": 0}], ["在那里"], ["Chinese"], [18.0], tokens)
    rate, hyps = utils.trainer.evaluate(model, eval_set, None, processor.tokenizer, accelerator=Accelerator(cpu=True),
                                        language="zh", task="transcribe", metric="cer", batch_size=1,
                                        max_new_tokens=40, show_progress=False)
    assert hyps[0].rstrip(",") == "在那里, 要不然", hyps


def test_eval_decodes_with_a_budget_sized_for_dense_mandarin(tiny_whisper_dir, whisper_base_dir, corpus, tmp_path,
                                                             monkeypatch, repo_root):
    """A 30 s clip of Mandarin at 8 characters/s needs far more than the old fixed 128 tokens, so eval CER (which
    picks checkpoint-best) was inflated by truncation; the default budget now follows each batch's duration."""
    from transformers import WhisperTokenizer

    import utils.trainer
    from utils.transcribe import token_budget

    lines = [x for x in (repo_root / "tools" / "demo_sentences.txt").read_text(encoding="utf-8").splitlines()
             if x and not x.startswith("#")]
    dense = "".join(lines)[:240]  # 30 s at 8 characters/s
    needed = len(WhisperTokenizer.from_pretrained(whisper_base_dir).encode(dense, add_special_tokens=False)) + 1
    assert needed > 128
    assert needed <= token_budget(30.0, timestamps=False, limit=448 - 5)

    budgets, begin_suppressed = [], []
    original = utils.trainer.greedy_decode

    def recording(*args, max_new_tokens, **kwargs):
        assert kwargs["no_speech"] == 50362  # silence dropped as inference drops it (test_greedy_decode_…)
        budgets.append(max_new_tokens)
        begin_suppressed.append((kwargs["begin_suppress_tokens"], kwargs["end_of_text"]))
        return original(*args, max_new_tokens=max_new_tokens, **kwargs)

    monkeypatch.setattr(utils.trainer, "greedy_decode", recording)
    assert finetune.main(_args(tiny_whisper_dir, corpus, tmp_path / "out", max_steps=1, eval_steps=1, save_steps=0,
                               generation_max_length=0, per_device_eval_batch_size=3)) == 0
    longest = max(json.loads(x)["duration"] for x in corpus["test"].read_text(encoding="utf-8").splitlines())
    assert budgets and set(budgets) == {token_budget(longest, timestamps=False)}
    # a no-speech eval clip may end right after the prompt, as trained (the space stays suppressed there)
    assert all(eot not in begin and 220 in begin for begin, eot in begin_suppressed)


def test_training_with_previous_text_prompts(tiny_whisper_dir, corpus, tmp_path, caplog, monkeypatch):
    """--prompt_prob=1: every speech item is trained after a previous-text prompt (no loss on it); the batches
    the model sees start with <|startofprev|>, and the run trains and saves as usual."""
    import utils.collator

    seen = []
    collate = utils.collator.WhisperCollator.__call__

    def recording_collate(self, items):
        batch = collate(self, items)
        seen.append(batch["decoder_input_ids"][:, 0].tolist())
        return batch

    monkeypatch.setattr(utils.collator.WhisperCollator, "__call__", recording_collate)
    out = tmp_path / "out"
    with caplog.at_level("INFO"):
        assert finetune.main(_args(tiny_whisper_dir, corpus, out, prompt_prob=1.0, max_steps=2, eval_steps=2,
                                   save_steps=2)) == 0
    assert "previous-text prompts on 100% of the items: 0 of 6 have a preceding sentence" in caplog.text
    sot_prev = 50361  # <|startofprev|> of whisper-base's tokenizer
    assert seen and any(sot_prev in first for first in seen)
    assert (out / tiny_whisper_dir.name / "checkpoint-final" / "adapter_model.safetensors").is_file()


def test_a_model_trained_without_timestamps_says_so(tiny_whisper_dir, corpus, tmp_path, caplog, zh_wav):
    """--timestamps=False is logged while training, recorded in generation_config.json, and inference warns
    when segment timestamps are asked of the merged model (not silently), on either backend (the ct2 backend used to
    say nothing)."""
    import merge_lora
    from utils.transcribe import DecodeOptions, load_transcriber

    for timestamps in (False, True):
        out = tmp_path / f"ts-{timestamps}"
        caplog.clear()
        with caplog.at_level("INFO"):
            assert finetune.main(_args(tiny_whisper_dir, corpus, out, max_steps=2, eval_steps=0, save_steps=0,
                                       timestamps=timestamps)) == 0
        assert ("training without timestamp tokens" in caplog.text) is not timestamps
        final = out / tiny_whisper_dir.name / "checkpoint-final"
        assert json.loads((final / "generation_config.json").read_text())["finetune_timestamps"] is timestamps
        assert merge_lora.main([f"--lora_model={final}", f"--output_dir={out / 'models'}", "--ct2=True"]) == 0
        merged = out / "models" / f"{tiny_whisper_dir.name}-finetune"
        for backend, folder in (("transformers", merged), ("ct2", merged.with_name(merged.name + "-ct2"))):
            engine = load_transcriber(str(folder), backend)
            caplog.clear()
            with caplog.at_level("WARNING"):
                engine.transcribe(str(zh_wav), DecodeOptions(language="zh", timestamps=True, max_new_tokens=4))
            assert ("fine-tuned without timestamp tokens" in caplog.text) is not timestamps, backend



def test_timestamps_asked_for_data_without_sentences_marks_the_model_untimed(tiny_whisper_dir, corpus, tmp_path,
                                                                             caplog):
    """--timestamps=True on a manifest where no item has 'sentences' trains only <|notimestamps|> labels: said
    while training, and the model is marked as trained without timestamps (so inference warns). Packed windows
    do carry one timestamped segment per clip: marked as trained with them."""
    lines = [json.loads(x) for x in corpus["train"].read_text(encoding="utf-8").splitlines()]
    untimed = corpus["train"].parent / "untimed.json"
    untimed.write_text("".join(json.dumps({k: v for k, v in x.items() if k != "sentences"}, ensure_ascii=False)
                               + "\n" for x in lines), encoding="utf-8")
    for pack in (False, True):
        out = tmp_path / f"pack-{pack}"
        caplog.clear()
        with caplog.at_level("WARNING"):
            assert finetune.main(_args(tiny_whisper_dir, {**corpus, "train": untimed}, out, max_steps=1,
                                       eval_steps=0, save_steps=0, timestamps=True, pack_audio=pack)) == 0
        assert ("no training item has 'sentences'" in caplog.text) is not pack
        final = out / tiny_whisper_dir.name / "checkpoint-final"
        assert json.loads((final / "generation_config.json").read_text())["finetune_timestamps"] is pack

def test_an_eval_set_of_only_no_speech_clips_is_warned_about(tiny_whisper_dir, corpus, tmp_path, caplog):
    """Its CER is 0 or inf, so checkpoint-best would be chosen on nothing; the run says so (and still trains). A
    training set of only no-speech clips teaches the model to say nothing: said too (it was not)."""
    lines = [json.loads(x) for x in corpus["train"].read_text(encoding="utf-8").splitlines()]
    silent = corpus["train"].parent / "silent_test.json"
    silent.write_text("".join(json.dumps(x) + "\n" for x in lines if not x["sentence"]), encoding="utf-8")
    with caplog.at_level("WARNING"):
        assert finetune.main(_args(tiny_whisper_dir, {**corpus, "test": silent}, tmp_path / "out", max_steps=1,
                                   eval_steps=1, save_steps=0, timestamps=False)) == 0
    assert "every eval clip of" in caplog.text and "is a no-speech clip" in caplog.text
    assert "every training clip of" not in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING"):
        assert finetune.main(_args(tiny_whisper_dir, {**corpus, "train": silent}, tmp_path / "silent", max_steps=1,
                                   eval_steps=0, save_steps=0, timestamps=False)) == 0
    assert f"every training clip of {silent} is a no-speech clip" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING"):
        assert finetune.main(_args(tiny_whisper_dir, corpus, tmp_path / "speech", max_steps=1, eval_steps=1,
                                   save_steps=0, timestamps=False)) == 0
    assert "is a no-speech clip" not in caplog.text

def test_replay_mix_adds_general_items_with_stable_indices(tiny_whisper_dir, corpus):
    """--replay_ratio of each epoch comes from the replay set, in an order that uses every replay item before
    repeating one; a replay item keeps one index across epochs (the encoder cache is keyed by it)."""
    from transformers import WhisperProcessor

    from utils.data import load_manifest
    from utils.train_data import ReplayMix, SpeechDataset

    processor = WhisperProcessor.from_pretrained(tiny_whisper_dir)

    def dataset(path):
        return SpeechDataset(load_manifest(path), processor.feature_extractor, processor.tokenizer, language="zh")

    main, replay = dataset(corpus["train"]), dataset(corpus["test"])  # 6 and 3 items
    mix = ReplayMix(main, replay, ratio=0.25, seed=1)
    assert mix.per_epoch == 2 and len(mix) == 8  # 2 / 8 = 25 % of the epoch
    seen = []
    for epoch in range(3):
        mix.set_epoch(epoch)
        seen += mix.chosen
        item = mix[len(main)]
        assert item["index"] == len(main) + mix.chosen[0] and len(item["labels"]) > 0
    assert sorted(seen[:3]) == [0, 1, 2] and sorted(seen[3:6]) == [0, 1, 2]  # each cycle covers the replay set
    assert mix[0]["index"] == 0
    with pytest.raises(ValueError):
        ReplayMix(main, replay, ratio=1.0)


@pytest.mark.parametrize("pack", [False, True], ids=["clips", "packed"])
def test_finetune_with_replay_data(tiny_whisper_dir, corpus, tmp_path, caplog, pack):
    out = tmp_path / "out"
    with caplog.at_level("INFO"):
        assert finetune.main(_args(tiny_whisper_dir, corpus, out, max_steps=2, eval_steps=0, save_steps=0,
                                   replay_data=corpus["test"], replay_ratio=0.3, pack_audio=pack,
                                   gradient_accumulation_steps=2)) == 0
    assert "replay: 3 items of" in caplog.text  # round(6 * 0.3 / 0.7) = 3
    if pack:  # replay clips are one clip each, batched by clip count with the packed windows
        assert "train: 9 clips in" in caplog.text and "batches of about 2 clips" in caplog.text
    state = json.loads((out / tiny_whisper_dir.name / "checkpoint-final" / "trainer_state.json").read_text())
    assert state["global_step"] == 2
    with pytest.raises(SystemExit):
        finetune.main(_args(tiny_whisper_dir, corpus, out, replay_data=tmp_path / "missing.json"))


@pytest.mark.slow
def test_whisper_base_fine_tuned_with_timestamps_keeps_long_form_segments(whisper_base_dir, repo_root, tmp_path):
    """Fine-tuned on the demo corpus with --timestamps=True (its two-sentence clips carry 'sentences'), the merged
    model still cuts a 40 s recording into timed segments and writes a sensible SRT."""
    import merge_lora
    import numpy as np

    from utils.audio import load_audio
    from utils.subtitles import to_srt
    from utils.transcribe import DecodeOptions, load_transcriber

    out = tmp_path / "out"
    assert finetune.main([f"--base_model={whisper_base_dir}", f"--output_dir={out}",
                          f"--train_data={repo_root / 'dataset' / 'demo' / 'train.json'}",
                          f"--test_data={repo_root / 'dataset' / 'demo' / 'test.json'}", "--language=Chinese",
                          "--timestamps=True", "--lora_encoder_layers=0", "--max_steps=4",
                          "--per_device_train_batch_size=4", "--eval_steps=0", "--save_steps=0", "--num_workers=0",
                          "--max_eval_samples=4", "--generation_max_length=24"]) == 0
    final = out / whisper_base_dir.name / "checkpoint-final"
    assert merge_lora.main([f"--lora_model={final}", f"--output_dir={tmp_path / 'models'}"]) == 0
    tests = [json.loads(line) for line in (repo_root / "dataset" / "demo" / "test.json").read_text().splitlines()]
    clips = [load_audio(repo_root / "dataset" / "demo" / t["audio"]["path"]) for t in tests if t["sentence"]][:12]
    pause = np.zeros(8000, np.float32)
    audio = np.concatenate([x for clip in clips for x in (clip, pause)])
    assert len(audio) / 16000 > 30
    engine = load_transcriber(str(tmp_path / "models" / f"{whisper_base_dir.name}-finetune"), "transformers")
    transcript = engine.transcribe(audio, DecodeOptions(language="zh", timestamps=True))
    segments = transcript.segments
    assert len(segments) >= 4, segments
    assert all(a.start <= b.start for a, b in zip(segments, segments[1:]))
    assert segments[-1].end > 20 and all(s.end - s.start < 30 for s in segments)
    srt = to_srt(transcript)
    assert srt.count(" --> ") == len(segments) and srt.startswith("1\n00:00:")


def test_pack_audio_choice():
    parser = finetune.build_parser()
    assert parser.parse_args([]).pack_audio is None  # auto
    assert parser.parse_args(["--pack_audio=False"]).pack_audio is False
    assert parser.parse_args(["--pack_audio=auto"]).pack_audio is None
    def choice(flag, device_type="cpu", streaming=False, prompt_prob=0.0, batch_size=8):
        return finetune.pack_audio_choice(flag, device_type=device_type, streaming=streaming,
                                          prompt_prob=prompt_prob, batch_size=batch_size)

    assert choice(None) is True
    assert choice(None, device_type="cuda") is False
    assert choice(None, streaming=True) is False
    assert choice(None, prompt_prob=0.3) is False  # packs carry no prompt
    assert choice(None, batch_size=1) is False  # a window holds at most a batch: one clip, nothing to pack
    assert choice(None, batch_size=2) is True
    assert choice(True, device_type="cuda") is True
    assert choice(True, batch_size=1) is True
    assert choice(False) is False


def test_pack_audio_is_the_cpu_default_and_batches_count_clips(tiny_whisper_dir, corpus, tmp_path, caplog,
                                                               monkeypatch):
    # a set that fills fewer than PACK_MIN_WINDOWS windows is not packed (each step trained the same window:
    # whisper-base on 4 clips in one window read each clip alone as all four)
    with caplog.at_level("INFO"):
        assert finetune.main(_args(tiny_whisper_dir, corpus, tmp_path / "small", pack_audio="auto", max_steps=1,
                                   eval_steps=0, save_steps=0, per_device_train_batch_size=3)) == 0
    assert "--pack_audio=auto: off (the 6 training clips fill only" in caplog.text
    assert "batches of about" not in caplog.text
    caplog.clear()
    monkeypatch.setattr(finetune, "PACK_MIN_WINDOWS", 1)
    out = tmp_path / "out"
    with caplog.at_level("INFO"):
        assert finetune.main(_args(tiny_whisper_dir, corpus, out, pack_audio="auto", max_steps=2, eval_steps=2,
                                   save_steps=2, per_device_train_batch_size=3)) == 0
    assert "--pack_audio=auto: on" in caplog.text
    assert "packed 6 clips into" in caplog.text and "batches of about 3 clips" in caplog.text
    # 5 speech clips in windows of at most window_clip_limit(3) = 3, the no-speech clip alone: at least 3 windows
    # (without the limit all 5 speech clips shared one window, and a batch of "3 clips" took 5)
    windows = int(re.search(r"packed 6 clips into (\d+) windows", caplog.text).group(1))
    assert windows >= 3, caplog.text
    state = json.loads((out / tiny_whisper_dir.name / "checkpoint-final" / "trainer_state.json").read_text())
    assert state["global_step"] == 2 and all(np.isfinite(e["loss"]) for e in state["log_history"] if "loss" in e)


@pytest.mark.slow
def test_no_speech_clips_teach_no_speech_and_an_empty_forced_transcript(whisper_base_dir, tmp_path):
    """A no-speech clip trains <|nospeech|> right after the start token and <|endoftext|> right after the forced
    prompt <|zh|><|transcribe|><|notimestamps|> (what inference decodes when the no-speech probability is under the
    threshold; whisper-base writes "(" there on quiet noise), and never <|zh|> after silence."""
    from peft import PeftModel
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

    from utils.audio import load_audio
    from utils.train_data import LabelTokens, log_mel_features

    lines = []
    for i in range(2):
        noise = (np.random.default_rng(i).standard_normal(16000 * 2) * 0.01).astype(np.float32)
        sf.write(tmp_path / f"quiet{i}.wav", noise, 16000)
        lines.append({"audio": {"path": f"quiet{i}.wav"}, "sentence": "", "duration": 2.0})
    manifest = tmp_path / "quiet.json"
    manifest.write_text("".join(json.dumps(x) + "\n" for x in lines), encoding="utf-8")
    processor = WhisperProcessor.from_pretrained(whisper_base_dir)
    tokens = LabelTokens.from_tokenizer(processor.tokenizer)
    features = torch.from_numpy(log_mel_features(load_audio(tmp_path / "quiet0.wav"),
                                                 processor.feature_extractor.mel_filters))[None]
    prompt = torch.tensor([tokens.prompt("zh", "transcribe")])  # <|startoftranscript|><|zh|><|transcribe|><|nots.|>

    def log_probs(model) -> torch.Tensor:
        with torch.no_grad():
            return model(input_features=features, decoder_input_ids=prompt).logits[0].log_softmax(-1)

    base = WhisperForConditionalGeneration.from_pretrained(whisper_base_dir).eval()
    before = log_probs(base)
    assert int(before[-1].argmax()) != tokens.end_of_text  # the forced prompt makes it write something
    out = tmp_path / "out"
    assert finetune.main(_args(whisper_base_dir, {"train": manifest, "test": manifest}, out, max_steps=4,
                               per_device_train_batch_size=2, learning_rate=1e-3, eval_steps=0, save_steps=0,
                               lora_dropout=0.0, timestamps=False, generation_max_length=8)) == 0
    model = PeftModel.from_pretrained(base, out / whisper_base_dir.name / "checkpoint-final").eval()
    after = log_probs(model)
    assert int(after[0].argmax()) == tokens.no_speech and after[0, tokens.no_speech] > before[0, tokens.no_speech]
    assert int(after[-1].argmax()) == tokens.end_of_text


def test_ctrl_c_while_a_checkpoint_is_saved_leaves_no_staging_folder(tiny_whisper_dir, corpus, tmp_path,
                                                                      monkeypatch):
    """Ctrl-C while checkpoint-4 was written left .tmp-checkpoint-4 (partly written) in the run's folder; checkpoint-2
    stays as it was."""
    import utils.trainer

    real_save = torch.save

    def interrupted_at_step_4(obj, path, *args, **kwargs):
        if ".tmp-checkpoint-4" in str(path) and str(path).endswith("scheduler.pt"):
            raise KeyboardInterrupt
        return real_save(obj, path, *args, **kwargs)

    monkeypatch.setattr(utils.trainer.torch, "save", interrupted_at_step_4)
    out = tmp_path / "out"
    assert finetune.main(_args(tiny_whisper_dir, corpus, out, eval_steps=0)) == 130
    run = out / tiny_whisper_dir.name
    assert sorted(p.name for p in run.iterdir() if "checkpoint" in p.name) == ["checkpoint-2"]


def test_ctrl_c_during_training_says_where_it_stopped_and_how_to_resume(tiny_whisper_dir, corpus, tmp_path,
                                                                          monkeypatch, caplog):
    """Ctrl-C while training printed a 110-line traceback; now one line with the step and how to resume, exit 130.
    Ctrl-C before training starts (loading) says so, also without a traceback."""
    import utils.trainer

    def interrupted(self):
        self.state.global_step = 3
        raise KeyboardInterrupt

    monkeypatch.setattr(utils.trainer.Trainer, "train", interrupted)
    assert finetune.main(_args(tiny_whisper_dir, corpus, tmp_path / "out")) == 130
    # no checkpoint yet: "auto" would start afresh, so the message says so instead of pointing at it
    assert "interrupted at step 3, before any checkpoint was saved (every --save_steps=2): a new run starts from " \
           "the beginning" in caplog.text and "Traceback" not in caplog.text
    caplog.clear()
    run = tmp_path / "out" / tiny_whisper_dir.name
    (run / "checkpoint-2").mkdir(parents=True)
    (run / "checkpoint-2" / "trainer_state.json").write_text("{}")
    assert finetune.main(_args(tiny_whisper_dir, corpus, tmp_path / "out")) == 130
    assert f"interrupted at step 3: {run / 'checkpoint-2'} resumes with --resume_from_checkpoint=auto" in caplog.text
    caplog.clear()

    def interrupted_early(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(finetune, "load_data", interrupted_early)
    assert finetune.main(_args(tiny_whisper_dir, corpus, tmp_path / "out2")) == 130
    assert "interrupted before training started" in caplog.text


def test_adalora_too_short_and_encoder_layers_past_the_model(tiny_whisper_dir, corpus, tmp_path, capsys, caplog):
    """--use_adalora with 2 steps ended, after the whole load, on peft's "Decrease 'tfinal'/'tinit'"; now a parse
    error naming the flag. --lora_encoder_layers above the model's encoder layers says that all of them get one."""
    with pytest.raises(SystemExit) as exit_info:
        finetune.main(_args(tiny_whisper_dir, corpus, tmp_path / "a", use_adalora=True, max_steps=2))
    assert exit_info.value.code == 2 and "--use_adalora needs at least 3 optimizer steps" in capsys.readouterr().err
    assert finetune.main(_args(tiny_whisper_dir, corpus, tmp_path / "b", lora_encoder_layers=7, max_steps=1,
                               eval_steps=0, save_steps=0)) == 0
    assert "adapters asked for the top 7 encoder layers; this model has 2: all of them get one" in caplog.text


def test_a_slice_past_the_end_of_its_audio_stops_the_run_before_the_model_loads(tiny_whisper_dir, corpus, tmp_path,
                                                                                  monkeypatch, caplog):
    """A slice that starts past the end of its file was found at the first batch that drew it (hours into a run on
    real data), leaving a run folder behind; the audio headers are checked when the manifests load."""
    lines = corpus["train"].read_text(encoding="utf-8").splitlines()
    bad = json.loads(lines[1])
    bad["audio"]["start_time"], bad["audio"]["end_time"] = 40.0, 45.0
    train = corpus["train"].parent / "train_past_end.json"
    train.write_text("\n".join([*lines, json.dumps(bad, ensure_ascii=False)]) + "\n", encoding="utf-8")
    monkeypatch.setattr(finetune, "build_model", lambda *a, **k: pytest.fail("the model was loaded"))
    out = tmp_path / "out"
    assert finetune.main(_args(tiny_whisper_dir, corpus, out, train_data=train)) == 1
    assert f"{train}:{len(lines) + 1}: " in caplog.text and "'audio.start_time' 40.0 s is past the end" in caplog.text
    assert not list(out.rglob("runs"))


def test_clip_header_check_stops_a_clip_longer_than_the_window_and_warns_of_odd_lines(tiny_whisper_dir, corpus,
                                                                                      tmp_path, monkeypatch, caplog):
    """A 35 s clip whose 'duration' says 10 s got past the length bounds and stopped the run at the batch that drew
    it; a 'duration' far from the audio (packing and the bounds go by it), a line repeated and a sentence of
    punctuation only were silent. All found from the headers when the manifests load, before the model."""
    lines = [json.loads(x) for x in corpus["train"].read_text(encoding="utf-8").splitlines()]
    for line in lines:  # the manifest is written elsewhere: absolute paths
        line["audio"]["path"] = str(corpus["train"].parent / line["audio"]["path"])
    long_wav = tmp_path / "long.wav"
    sf.write(long_wav, np.zeros(16000 * 35, np.float32), 16000)
    wrong = {**lines[1], "duration": round(lines[1]["duration"] + 3.0, 2)}
    wordless = {**lines[2], "sentence": "。，！"}
    long_line = {"audio": {"path": str(long_wav)}, "sentence": "很长", "duration": 10.0}
    train = tmp_path / "train_odd.json"
    rows = [*lines, lines[3], wrong, wordless, long_line]
    train.write_text("".join(json.dumps(x, ensure_ascii=False) + "\n" for x in rows), encoding="utf-8")
    monkeypatch.setattr(finetune, "build_model", lambda *a, **k: pytest.fail("the model was loaded"))
    assert finetune.main(_args(tiny_whisper_dir, corpus, tmp_path / "out", train_data=train)) == 1
    n = len(lines)
    assert f"{train}:{n + 1}: the same clip as {train}:4 (" in caplog.text
    assert f"{train}:{n + 2}: " in caplog.text and f"'duration' says {wrong['duration']:.2f} s, the audio is" \
        in caplog.text
    assert f"{train}:{n + 3}: 'sentence' '。，！' holds no words" in caplog.text
    assert f"{train}:{n + 4}: {long_wav}: the clip is 35.00 s ('duration' says 10.00 s), longer than the 30 s " \
           "window training can hold; cut it (audio.start_time/end_time); fix the line or remove it" in caplog.text


@pytest.mark.parametrize("main, there", [(True, False), (False, False), (False, True), (True, True)])
def test_every_rank_meets_the_others_at_each_barrier_when_resuming_into_another_folder(tmp_path, main, there):
    """A run resumed into another folder copies the resumed run's checkpoint-best there (the main process) between
    barriers. Each rank looked for that copy on its own: one that looked after the main process had published it
    skipped the barrier and trained on while the main process waited there for ever (torchrun, 2 of 3 resumes). Now
    every rank looks before the first barrier, so all ranks pass the same barriers, whatever is already there."""
    from types import SimpleNamespace

    from utils.trainer import STATE_FILE, Trainer, TrainerState

    old = tmp_path / "old"
    (old / "checkpoint-best").mkdir(parents=True)
    TrainerState(global_step=3, best_metric=0.5, best_step=3).save(old / "checkpoint-best" / STATE_FILE)
    run_dir = tmp_path / "new"
    run_dir.mkdir()
    barriers = []

    def barrier():
        barriers.append(len(barriers))
        if main is False and len(barriers) == 1 and not there:  # meanwhile the main process publishes its copy
            (run_dir / "checkpoint-best").mkdir()
            TrainerState(best_metric=0.5).save(run_dir / "checkpoint-best" / STATE_FILE)

    if there:
        (run_dir / "checkpoint-best").mkdir()
        TrainerState(best_metric=0.5).save(run_dir / "checkpoint-best" / STATE_FILE)
    fake = SimpleNamespace(run_dir=run_dir, accelerator=SimpleNamespace(is_main_process=main,
                                                                       wait_for_everyone=barrier))
    Trainer._bring_best(fake, old / "checkpoint-3", TrainerState(global_step=3, best_metric=0.5, best_step=3))
    assert len(barriers) == (1 if there else 2)
    assert (run_dir / "checkpoint-best" / STATE_FILE).is_file()


def test_translate_on_chinese_sentences_is_refused_before_training(tiny_whisper_dir, zh_wav, tmp_path, caplog):
    """--task=translate on a transcript manifest taught the model to write Chinese behind <|translate|> (eval CER
    2.48 → 0.70, saved as the best checkpoint), without a word."""
    manifest = tmp_path / "zh.json"
    manifest.write_text(json.dumps({"audio": {"path": str(zh_wav)}, "sentence": "今天天气很好。", "duration": 3.0},
                                   ensure_ascii=False) + "\n", encoding="utf-8")
    rc = finetune.main([f"--base_model={tiny_whisper_dir}", f"--train_data={manifest}", f"--test_data={manifest}",
                        "--task=translate", f"--output_dir={tmp_path / 'out'}", "--max_steps=1"])
    assert rc != 0 and f"--test_data {manifest}: 1 of 1 sentences are written in Chinese/Japanese" in caplog.text
    assert not list((tmp_path / "out").glob("*/checkpoint-*"))


@pytest.mark.parametrize("processes", [2, 1])
def test_accelerate_launch_that_starts_one_of_several_processes_says_so(processes, tmp_path):
    """`accelerate launch --cpu --num_processes=2` starts a single process; the only sign was "1 process(es)" in an
    info line. (A model that does not exist ends the run right after the devices are set up.)"""
    accelerate = Path(sys.executable).with_name("accelerate")
    proc = subprocess.run([str(accelerate), "launch", "--cpu", f"--num_processes={processes}", "finetune.py",
                           "--base_model=does/not/exist", "--train_data=dataset/demo/train.json",
                           "--test_data=dataset/demo/test.json", f"--output_dir={tmp_path}"],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    out = proc.stdout + proc.stderr
    assert "does/not/exist: folder not found" in out
    assert ("was asked for several processes but started one" in out) == (processes > 1), out[-2000:]


def test_a_checkpoint_of_transformers_trainer_is_named_as_such_not_damaged(tmp_path):
    """An upstream (transformers Trainer) checkpoint given to --resume_from_checkpoint was called "damaged ...;
    copy it again": its trainer_state.json is whole, written by another trainer."""
    from utils.lora import AdapterError
    from utils.trainer import check_checkpoint

    checkpoint = tmp_path / "checkpoint-4"
    checkpoint.mkdir()
    (checkpoint / "trainer_state.json").write_text(json.dumps(
        {"best_model_checkpoint": None, "epoch": 1.0, "global_step": 4, "log_history": [], "max_steps": 4}))
    with pytest.raises(AdapterError, match=r"written by transformers' Trainer .* merge its adapter \(python "
                                           rf"merge_lora.py --lora_model={re.escape(str(checkpoint))}\)"):
        check_checkpoint(checkpoint, adalora=False)
    (checkpoint / "trainer_state.json").write_text(json.dumps({"global_step": 4, "colour": "red"}))
    with pytest.raises(AdapterError, match="damaged"):
        check_checkpoint(checkpoint, adalora=False)


def test_the_original_hub_model_id_flag_is_accepted_and_translating_english_is_warned(tmp_path, caplog):
    rc = finetune.main(["--base_model=does/not/exist", "--train_data=dataset/demo/train.json",
                        "--test_data=dataset/demo/test.json", f"--output_dir={tmp_path}", "--hub_model_id=me/whisper"])
    assert rc != 0 and "does/not/exist" in caplog.text
    assert "--hub_model_id=me/whisper (a flag of the original Whisper-Finetune): ignored: nothing is uploaded" \
        in caplog.text
    finetune.main(["--base_model=does/not/exist", "--train_data=dataset/demo/train.json", "--task=translate",
                   "--test_data=dataset/demo/test.json", f"--output_dir={tmp_path}", "--language=English"])
    assert "--task=translate with --language=English: the language names the speech" in caplog.text


def test_a_base_model_without_generation_config_trains_and_saves_a_whole_one(tiny_whisper_dir, corpus, tmp_path,
                                                                             caplog):
    """A base model saved by an older transformers (no generation_config.json): the checkpoints kept its config as
    "from the model config", which transformers reads back without any field, so the merged model lost its
    fine-tuned language and its CTranslate2 copy had no language ids."""
    from transformers import GenerationConfig

    base = tmp_path / "old-base"
    shutil.copytree(tiny_whisper_dir, base)
    (base / "generation_config.json").unlink()
    out = tmp_path / "out"
    assert finetune.main(_args(base, corpus, out, max_steps=2, eval_steps=0, save_steps=0)) == 0
    assert "generation_config.json missing or incomplete" in caplog.text
    saved = GenerationConfig.from_pretrained(out / "old-base" / "checkpoint-final")
    assert saved.language == "zh" and saved.task == "transcribe" and saved.lang_to_id["<|zh|>"] == 50260


def test_a_deepspeed_config_takes_the_runs_batch_and_clipping_and_refuses_what_it_cannot_train():
    """accelerate's DeepSpeed config from configs/accelerate_deepspeed_zero2.yaml has an "auto" per-GPU batch, which
    prepare() takes from a DataLoader it is given: the trainer gives none (it builds one per epoch), so DeepSpeed runs
    stopped at start-up; its clipping (the yaml's 1.0) replaced --max_grad_norm, as accelerate's clip_grad_norm_ does
    nothing under DeepSpeed; accumulation and AdaLoRA cannot work there and are refused with the way out."""
    from accelerate.utils import DeepSpeedPlugin

    from utils.trainer import TrainOptions, configure_deepspeed

    plugin = DeepSpeedPlugin(zero_stage=2, gradient_accumulation_steps=1, gradient_clipping=1.0)  # as the yaml
    config = plugin.deepspeed_config
    assert config["train_micro_batch_size_per_gpu"] == "auto"
    configure_deepspeed(config, TrainOptions(per_device_train_batch_size=6, max_grad_norm=0.5))
    assert (config["train_micro_batch_size_per_gpu"], config["gradient_clipping"]) == (6, 0.5)
    assert not plugin.is_auto("train_micro_batch_size_per_gpu")
    with pytest.raises(ValueError, match="keep --gradient_accumulation_steps=1"):
        configure_deepspeed(dict(config), TrainOptions(gradient_accumulation_steps=4))
    with pytest.raises(ValueError, match="config's gradient_accumulation_steps is 4"):
        configure_deepspeed({**config, "gradient_accumulation_steps": 4}, TrainOptions())
    with pytest.raises(ValueError, match="AdaLoRA's rank budget"):
        configure_deepspeed(dict(config), TrainOptions(use_adalora=True))
